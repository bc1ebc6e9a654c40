"""Decode refit_centroids: centroids recomputed from the training source in one
pass (layergraph/refit.py), checked against per-label means of embeddings
computed here by hand from the stored images and the net's weights."""
import numpy as np
import pytest

from layergraph import Solver
from layergraph.errors import LayerError
from layergraph.imagedb import store
from layergraph.net import Net
from layergraph.proto import pb
from layergraph.prototxt import parse_text
from layergraph.refit import refit_centroids, refit_for_solver

COUNTS = {0: 7, 1: 5, 2: 6, 3: 4, 4: 8}
SCALE = 0.00390625
BATCH = 6
CACHE = 1          # M = cache_size * N = 6: labels 0 and 4 (7 and 8 images) saturate


@pytest.fixture
def db(tmp_path, monkeypatch):
    """TOY: 1x6x6 images, 30 training (5 labels, unequal counts), 10 testing;
    the working directory is tmp_path (snapshots and logs land there)."""
    monkeypatch.setenv("LAYERGRAPH_DB", str(tmp_path / "db"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    labels = np.concatenate([np.full(n, y) for y, n in COUNTS.items()])
    labels = labels[rng.permutation(len(labels))]
    images = rng.integers(0, 256, (len(labels), 1, 6, 6), dtype=np.uint8)
    test_images = rng.integers(0, 256, (10, 1, 6, 6), dtype=np.uint8)
    with store.DatasetWriter("TOY") as w:
        w.add("training", images, labels)
        w.add("testing", test_images, np.arange(10) % 5)
    return {"images": images, "labels": labels, "test_images": test_images,
            "test_labels": np.arange(10) % 5}


def tower(name, bottom, top):
    return f"""
layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}"
  param {{ name: "feat_w" }} param {{ name: "feat_b" }}
  inner_product_param {{ num_output: 3
    weight_filler {{ type: "gaussian" std: 0.05 }}
    bias_filler {{ type: "constant" value: 0.2 }} }} }}"""


def net_text(refit=True, extra_decode="", decode_extra=""):
    """A tiny TripletNet: Data -> DataSequence -> 3 shared linear towers ->
    TripletLoss, and Decode(feat, labels) like the template's."""
    return f"""
name: "tiny"
layer {{ name: "data" type: "Data" top: "images" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: {SCALE} }}
  data_param {{ source: "TOY.training" batch_size: {BATCH}
                enable_random_selection: true }} }}
layer {{ name: "data" type: "Data" top: "images" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: {SCALE} }}
  data_param {{ source: "TOY.testing" batch_size: 5 }} }}
layer {{ name: "sequence" type: "DataSequence" bottom: "images" bottom: "label"
  top: "anchor" top: "positive" top: "negative" top: "labels"
  data_sequence_param {{ cache_size: 8 k: 1 output_labels: true label_count: 5 }} }}
{tower("feat", "anchor", "feat")}
{tower("feat_p", "positive", "feat_p")}
{tower("feat_n", "negative", "feat_n")}
layer {{ name: "loss" type: "TripletLoss" bottom: "feat" bottom: "feat_p" bottom: "feat_n"
  bottom: "labels" top: "loss" triplet_loss_param {{ alpha: 1 }} }}
layer {{ name: "decode" type: "Decode" bottom: "feat" bottom: "labels" top: "distances"
  decode_param {{ cache_size: {CACHE} pregen_label_count: 5
    refit_centroids: {str(refit).lower()} {decode_extra} }} }}
{extra_decode}
layer {{ name: "silence" type: "Silence" bottom: "distances" include {{ phase: TRAIN }} }}
layer {{ name: "accuracy" type: "AccuracyDecode" bottom: "distances" bottom: "labels"
  top: "accuracy" include {{ phase: TEST }} }}
"""


def solver(text, **fields):
    param = pb.SolverParameter(base_lr=0.05, momentum=0.9, lr_policy="fixed", max_iter=4,
                               random_seed=3, test_iter=[2], test_interval=2, snapshot=0,
                               snapshot_prefix="run")
    param.net_param.CopyFrom(parse_text(text, pb.NetParameter()))
    for key, value in fields.items():
        setattr(param, key, value)
    return Solver(param, log=None)


def embeddings(net, images):
    """feat = W x + b computed here from the stored uint8 images."""
    w, b = (np.asarray(blob.data, np.float64) for blob in net.params["feat"])
    x = images.reshape(len(images), -1).astype(np.float32) * np.float32(SCALE)
    return x.astype(np.float64) @ w.T + b


def label_means(emb, labels):
    return np.stack([emb[labels == y].mean(0) for y in range(5)])


def expected_counts(labels):
    return np.minimum(np.bincount(labels, minlength=5), CACHE * BATCH)


# ---------------------------------------------------------------- refit --

def test_refit_sets_the_per_label_means_and_counts(db):
    s = solver(net_text())
    s.step(3)  # the running averages now hold something else
    decode = s.net.layer("decode")
    before = decode.blobs[0].data.copy()
    counts = refit_centroids(s.net)["decode"]
    want = label_means(embeddings(s.net, db["images"]), db["labels"])
    np.testing.assert_allclose(decode.blobs[0].data, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(before, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(counts, np.bincount(db["labels"], minlength=5))
    np.testing.assert_array_equal(decode.blobs[1].data, expected_counts(db["labels"]))
    # the TEST net shares the blobs and classifies with the refit centroids
    test = s.test_nets[0]
    assert test.layer("decode").blobs[0] is decode.blobs[0]
    test.forward_prefilled()
    anchors = test.blobs["anchor"].data.reshape(5, -1)
    x = db["test_images"][:5].reshape(5, -1).astype(np.float32) * np.float32(SCALE)
    np.testing.assert_array_equal(anchors, x)
    emb = embeddings(s.net, db["test_images"][:5])
    dist = np.sqrt(((emb[:, None] - want[None]) ** 2).sum(-1))
    np.testing.assert_allclose(test.blobs["distances"].data, dist, rtol=1e-4, atol=1e-5)
    s.close()


def test_running_update_continues_from_the_refit(db):
    """Counts below M continue the exact mean; saturated ones the moving average."""
    s = solver(net_text())
    refit_centroids(s.net)
    decode = s.net.layer("decode")
    c0, n0 = decode.blobs[0].data.copy(), decode.blobs[1].data.copy()
    s.net.forward_prefilled()
    rows = s.net.blobs["labels"].data[:, 0].astype(int)
    feat = s.net.blobs["feat"].data.astype(np.float64)
    M = CACHE * BATCH
    for y in np.unique(rows):
        m, mean = (rows == y).sum(), feat[rows == y].mean(0)
        if n0[y] < M:
            want = (n0[y] * c0[y] + m * mean) / (n0[y] + m)
        else:
            want = (1 - m / M) * c0[y] + m / M * mean
        np.testing.assert_allclose(decode.blobs[0].data[y], want, rtol=1e-5, atol=1e-6)
    s.close()


def test_refit_source_and_ignore_labels(db):
    s = solver(net_text(decode_extra='refit_source: "TOY.testing" ignore_labels: 2'))
    decode = s.net.layer("decode")
    decode.blobs[0].data[2] = 7.0  # an ignored label keeps its state
    decode.blobs[1].data[2] = 3.0
    counts = refit_centroids(s.net)["decode"]
    np.testing.assert_array_equal(counts, [2, 2, 0, 2, 2])
    want = label_means(embeddings(s.net, db["test_images"]), db["test_labels"])
    keep = [0, 1, 3, 4]
    np.testing.assert_allclose(decode.blobs[0].data[keep], want[keep], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(decode.blobs[0].data[2], 7.0)
    np.testing.assert_array_equal(decode.blobs[1].data, [2, 2, 3, 2, 2])
    s.close()


def test_a_one_tower_net_refits_too(db):
    """Data -> feat -> Decode(feat, label): no DataSequence on the way; the
    last, wrapped-around batch counts only the records not seen yet."""
    text = f"""
layer {{ name: "data" type: "Data" top: "images" top: "label"
  transform_param {{ scale: {SCALE} }}
  data_param {{ source: "TOY.training" batch_size: 8 enable_random_selection: true
               rand_skip: 5 }} }}
{tower("feat", "images", "feat")}
layer {{ name: "decode" type: "Decode" bottom: "feat" bottom: "label" top: "distances"
  decode_param {{ cache_size: 2 pregen_label_count: 5 refit_centroids: true }} }}"""
    net = Net(parse_text(text, pb.NetParameter()), phase=pb.TRAIN, seed=1)
    net.forward_prefilled()
    state = net.state_dict()
    counts = refit_centroids(net)["decode"]
    np.testing.assert_array_equal(counts, np.bincount(db["labels"], minlength=5))
    want = label_means(embeddings(net, db["images"]), db["labels"])
    np.testing.assert_allclose(net.layer("decode").blobs[0].data, want, rtol=1e-5, atol=1e-6)
    assert net.state_dict() == state  # the net's own Data layer did not move
    net.close()


# --------------------------------------------------------------- solver --

def test_solver_refits_at_each_test_and_after_training(db, tmp_path):
    s = solver(net_text(), snapshot=4, snapshot_prefix=str(tmp_path / "run"))
    seen = []

    class AtTest:
        def on_test(self, solver_, test_id, results):
            want = label_means(embeddings(solver_.net, db["images"]), db["labels"])
            got = solver_.test_nets[0].layer("decode").blobs[0].data
            seen.append((solver_.iter, np.allclose(got, want, rtol=1e-5, atol=1e-6)))
    s.add_callback(AtTest())
    s.solve()
    assert seen == [(0, True), (2, True), (4, True)]  # test_initialization, 2, 4
    want = label_means(embeddings(s.net, db["images"]), db["labels"])
    np.testing.assert_allclose(s.net.layer("decode").blobs[0].data, want, rtol=1e-5, atol=1e-6)
    # the last snapshot (written inside the last step) carries the refit centroids
    saved = Net(parse_text(net_text(), pb.NetParameter()), phase=pb.TEST,
                weights=str(tmp_path / "run_iter_4.caffemodel"))
    np.testing.assert_allclose(saved.layer("decode").blobs[0].data, want, rtol=1e-5, atol=1e-6)
    saved.close()
    s.close()


def test_refit_leaves_training_and_other_decodes_untouched(db):
    """The weights, the layers' state and a Decode without refit_centroids
    come out exactly as in a run without any refit."""
    plain = """layer { name: "decode_plain" type: "Decode" bottom: "feat" bottom: "labels"
  top: "distances_plain" decode_param { cache_size: 1 pregen_label_count: 5 } }
layer { name: "silence_plain" type: "Silence" bottom: "distances_plain" }"""
    a = solver(net_text(refit=True, extra_decode=plain))
    b = solver(net_text(refit=False, extra_decode=plain), snapshot_prefix="plain")
    a.solve()
    b.solve()
    for name in ("feat", "decode_plain"):
        for x, y in zip(a.net.params[name], b.net.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    assert a.net.state_dict() == b.net.state_dict()
    assert not np.allclose(a.net.layer("decode").blobs[0].data,
                           b.net.layer("decode").blobs[0].data)
    assert refit_for_solver(b) is False  # nothing to refit: nothing done
    a.close()
    b.close()


def test_decode_only_in_the_test_net_refits_from_the_training_source(db):
    text = net_text(refit=False).replace(
        'layer { name: "accuracy"',
        """layer { name: "decode_test" type: "Decode" bottom: "feat" bottom: "labels"
  top: "distances_test" include { phase: TEST }
  decode_param { pregen_label_count: 5 refit_centroids: true } }
layer { name: "silence_test" type: "Silence" bottom: "distances_test"
  include { phase: TEST } }
layer { name: "accuracy\"""")
    s = solver(text)
    s.test_all()
    want = label_means(embeddings(s.net, db["images"]), db["labels"])
    got = s.test_nets[0].layer("decode_test").blobs[0].data
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    s.close()


def test_refit_errors(db):
    with pytest.raises(LayerError, match="needs target CENTROID"):
        solver(net_text(decode_extra="target: KNN"))
    s = solver(net_text(decode_extra='refit_source: "TOY.nowhere"'))
    with pytest.raises(Exception, match="nowhere"):
        refit_centroids(s.net)
    s.close()
