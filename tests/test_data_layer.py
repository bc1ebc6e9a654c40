"""Data layer: sources, transforms, pairs, P x K batches, determinism and resume."""
import io
import os
import threading

import lmdb
import numpy as np
import pytest
from PIL import Image

from layergraph.errors import DataError, DatasetNotFoundError, LayerError
from layergraph.imagedb import store
from layergraph.prototxt import read_net
from layergraph.proto import pb
from layergraph.testing import make_layer, setup_layer

# label counts of the toy dataset: unequal on purpose
COUNTS = {0: 7, 1: 5, 2: 6, 3: 4, 4: 8}


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A database with TOY (1x6x6, 30 training images, 5 labels) and RGB (3x4x5)."""
    monkeypatch.setenv("LAYERGRAPH_DB", str(tmp_path / "db"))
    rng = np.random.default_rng(42)
    labels = np.concatenate([np.full(n, y) for y, n in COUNTS.items()])
    labels = labels[rng.permutation(len(labels))]
    images = rng.integers(0, 256, (len(labels), 1, 6, 6), dtype=np.uint8)
    test_labels = np.arange(10) % 5
    test_images = rng.integers(0, 256, (10, 1, 6, 6), dtype=np.uint8)
    with store.DatasetWriter("TOY") as w:
        w.add("training", images[:13], labels[:13])   # two chunks on purpose
        w.add("training", images[13:], labels[13:])
        w.add("testing", test_images, test_labels)
    rgb = rng.integers(0, 256, (6, 3, 4, 5), dtype=np.uint8)
    with store.DatasetWriter("RGB") as w:
        w.add("training", rgb, np.arange(6) % 2)
        w.add("testing", rgb[:2], [0, 1])
    return {"images": images, "labels": labels, "test_images": test_images,
            "test_labels": test_labels, "rgb": rgb}


def data_layer(data_param, transform="", tops=2, phase=pb.TRAIN, seed=0, name="data"):
    spec = (f'name: "{name}" type: "Data" top: "data" top: "label" '
            f'transform_param {{ {transform} }} data_param {{ {data_param} }}')
    layer = make_layer(spec, phase=phase, seed=seed, dtype=np.float32)
    bottom, top = setup_layer(layer, [], tops)
    return layer, top


def batches(layer, top, n):
    out = []
    for _ in range(n):
        layer.forward([], top)
        out.append(tuple(t.data.copy() for t in top))
    return out


def lookup(db, split="training"):
    """content -> (index, label) of the stored images."""
    key = "images" if split == "training" else "test_images"
    lab = "labels" if split == "training" else "test_labels"
    return {img.tobytes(): (i, int(y)) for i, (img, y) in enumerate(zip(db[key], db[lab]))}


# ----------------------------------------------------------------- basics --

def test_sequential_batches_scale_and_wraparound(db):
    layer, top = data_layer('source: "TOY.training" batch_size: 8 backend: IMAGEDB',
                            "scale: 0.00390625")
    assert top[0].shape == (8, 1, 6, 6) and top[1].shape == (8,)
    assert top[1].data.dtype == np.float32  # labels in the net's dtype, like Caffe
    got = batches(layer, top, 4)  # 32 > 30 images: the last batch wraps around
    order = np.arange(32) % 30
    for k, (data, label) in enumerate(got):
        idx = order[8 * k:8 * k + 8]
        np.testing.assert_allclose(data, db["images"][idx] * np.float32(1 / 256), rtol=1e-6)
        np.testing.assert_array_equal(label, db["labels"][idx])
    layer.close()


def test_mean_value_mean_file_and_imagedb_mean(db, tmp_path):
    images = db["images"][:4].astype(np.float64)
    layer, top = data_layer('source: "TOY.training" batch_size: 4',
                            "scale: 0.5 mean_value: 100")
    layer.forward([], top)
    np.testing.assert_allclose(top[0].data, (images - 100) * 0.5, rtol=1e-5)
    train_mean = db["images"].astype(np.float64).mean(axis=0)
    layer, top = data_layer('source: "TOY.training" batch_size: 4', "use_imagedb_mean: true")
    layer.forward([], top)
    np.testing.assert_allclose(top[0].data, images - train_mean, rtol=1e-5, atol=1e-4)
    # mean_file: a BVLC .binaryproto
    mean = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    proto = pb.BlobProto(num=1, channels=1, height=6, width=6, data=mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(proto.SerializeToString())
    layer, top = data_layer('source: "TOY.training" batch_size: 4',
                            f'mean_file: "{path}" scale: 2')
    layer.forward([], top)
    np.testing.assert_allclose(top[0].data, (images - mean[0]) * 2, rtol=1e-6)
    with pytest.raises(LayerError, match="only one of"):
        data_layer('source: "TOY.training" batch_size: 4',
                   f'mean_file: "{path}" mean_value: 3')
    with pytest.raises(LayerError, match="mean_value"):
        data_layer('source: "RGB.training" batch_size: 2', "mean_value: 1 mean_value: 2")


def test_mirror_flips_about_half(db):
    layer, top = data_layer('source: "TOY.training" batch_size: 30', "mirror: true")
    flipped = plain = 0
    src = db["images"].astype(np.float32)
    for data, label in batches(layer, top, 4):
        for i, img in enumerate(data):
            if np.array_equal(img, src[i]):
                plain += 1
            else:
                np.testing.assert_array_equal(img, src[i][..., ::-1])
                flipped += 1
    assert flipped + plain == 120 and 30 < flipped < 90


def test_crop_random_in_train_center_in_test(db):
    layer, top = data_layer('source: "TOY.training" batch_size: 30', "crop_size: 4")
    assert top[0].shape == (30, 1, 4, 4)
    offsets = set()
    for data, _ in batches(layer, top, 3):
        for i, img in enumerate(data):
            full = db["images"][i, 0].astype(np.float32)
            windows = [(r, c) for r in range(3) for c in range(3)
                       if np.array_equal(full[r:r + 4, c:c + 4], img[0])]
            assert windows
            offsets.update(windows)
    assert len(offsets) > 4  # the offsets vary
    layer, top = data_layer('source: "TOY.testing" batch_size: 10', "crop_size: 4",
                            phase=pb.TEST)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, db["test_images"][:, :, 1:5, 1:5])
    with pytest.raises(LayerError, match="crop_size 7 exceeds"):
        data_layer('source: "TOY.training" batch_size: 2', "crop_size: 7")


def test_color_order_and_force_gray(db):
    rgb = db["rgb"].astype(np.float32)
    layer, top = data_layer('source: "RGB.training" batch_size: 6', "color_order: BGR")
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, rgb[:, ::-1])
    layer, top = data_layer('source: "RGB.training" batch_size: 6', "force_gray: true")
    layer.forward([], top)
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    np.testing.assert_allclose(top[0].data[:, 0], luma, rtol=1e-5)
    layer, top = data_layer('source: "TOY.training" batch_size: 2',
                            "force_color: true color_order: BGR")
    layer.forward([], top)
    assert top[0].shape == (2, 3, 6, 6)
    np.testing.assert_array_equal(top[0].data, np.repeat(db["images"][:2], 3, axis=1))


def test_mycaffe_extension_messages(db):
    inactive_but_on = """distortion_param { option { active: True } active: True
        brightness_prob: 0 contrast_prob: 0 contrast_lower: 0.5 contrast_upper: 1.5
        saturation_prob: 0 random_order_prob: 0 use_gpu: True random_seed: 0 }
        mask_param { option { active: False } boundary_left: 0 }
        label_mapping { option { active: False } }"""
    layer, top = data_layer('source: "TOY.training" batch_size: 3', inactive_but_on)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, db["images"][:3])
    for transform, what in (
            ("distortion_param { active: true brightness_prob: 0.5 }", "distortion_param"),
            ("distortion_param { option { active: true } hue_prob: 1 }", "distortion_param"),
            ("mask_param { option { active: true } boundary_left: 2 }", "mask_param"),
            ('label_mapping { option { active: true } mapping: "0->1" }', "label_mapping")):
        with pytest.raises(LayerError, match=f"{what}.*not supported"):
            data_layer('source: "TOY.training" batch_size: 3', transform)


def test_mycaffe_prototxt_data_layers_set_up(db, monkeypatch):
    """The Data layers of MyCaffe's lenet and triplet files, unmodified."""
    # their sources are MNIST.training / MNIST.testing: make a tiny MNIST
    with store.DatasetWriter("MNIST") as w:
        w.add("training", db["images"], db["labels"])
        w.add("testing", db["test_images"], db["test_labels"])
    compat = "/work/shared/compat/mycaffe"
    if not os.path.isdir(compat):
        pytest.skip("MyCaffe compat files not present")
    for fname in ("lenet_train_test.prototxt", "triplet_train_val.prototxt",
                  "siamese_train_val.prototxt"):
        net = read_net(os.path.join(compat, fname))
        for param in [lp for lp in net.layer if lp.type == "Data"]:
            phase = param.include[0].phase if len(param.include) else pb.TRAIN
            layer = make_layer(param, phase=phase, dtype=np.float32)
            _, top = setup_layer(layer, [], len(param.top))
            layer.forward([], top)
            assert top[0].shape[0] == param.data_param.batch_size
            assert np.isfinite(top[0].data).all()
            layer.close()


# ------------------------------------------------------------------- pairs --

def _pair_labels(db, data):
    table = lookup(db)
    c = data.shape[1] // 2
    first = [table[np.asarray(img, np.uint8).tobytes()] for img in data[:, :c]]
    second = [table[np.asarray(img, np.uint8).tobytes()] for img in data[:, c:]]
    return first, second


def test_pairs_balance_matches_exactly_alternating(db):
    layer, top = data_layer('source: "TOY.training" batch_size: 10 images_per_blob: 2 '
                            'balance_matches: true enable_random_selection: true')
    assert top[0].shape == (10, 2, 6, 6) and top[1].shape == (10,)
    for data, sim in batches(layer, top, 6):
        np.testing.assert_array_equal(sim, np.arange(10) % 2 == 0)  # 1, 0, 1, 0, ...
        first, second = _pair_labels(db, data)
        for (i1, y1), (i2, y2), s in zip(first, second, sim):
            assert (y1 == y2) == bool(s)
            if s:
                assert i1 != i2  # a match pairs two different images


def test_pairs_output_all_labels(db):
    layer, top = data_layer('source: "TOY.training" batch_size: 8 images_per_blob: 2 '
                            'output_all_labels: true balance_matches: true')
    assert top[1].shape == (8, 2)
    for data, labels in batches(layer, top, 3):
        first, second = _pair_labels(db, data)
        np.testing.assert_array_equal(labels[:, 0], [y for _, y in first])
        np.testing.assert_array_equal(labels[:, 1], [y for _, y in second])
        assert (labels[0::2, 0] == labels[0::2, 1]).all()
        assert (labels[1::2, 0] != labels[1::2, 1]).all()


# ------------------------------------------------------------------- P x K --

def test_label_balanced_pxk_batches(db):
    layer, top = data_layer('source: "TOY.training" batch_size: 6 labels_per_batch: 3 '
                            'images_per_label: 2')
    plan = layer._plan
    per_epoch = plan.batches_per_epoch
    table = lookup(db)
    seen = []
    for data, label in batches(layer, top, per_epoch):
        blocks = label.reshape(3, 2)
        assert (blocks[:, 0] == blocks[:, 1]).all()          # K images per label, contiguous
        assert len(set(blocks[:, 0].tolist())) == 3          # P distinct labels
        for img, y in zip(data, label):
            idx, true_label = table[np.asarray(img, np.uint8).tobytes()]
            assert true_label == y
            seen.append(idx)
    # one epoch visits every image; only the padding of odd-sized labels repeats images
    assert set(seen) == set(range(30))
    padding = sum((-n) % 2 for n in COUNTS.values())
    assert len(seen) - 30 <= padding + 6
    with pytest.raises(LayerError, match="batch_size 5 must equal"):
        data_layer('source: "TOY.training" batch_size: 5 labels_per_batch: 3 '
                   'images_per_label: 2')
    with pytest.raises(LayerError, match="labels_per_batch 6 exceeds the 5 labels"):
        data_layer('source: "TOY.training" batch_size: 12 labels_per_batch: 6 '
                   'images_per_label: 2')


# ------------------------------------------------- determinism and resume --

MODES = [
    "enable_random_selection: true",
    "enable_random_selection: true images_per_blob: 2 balance_matches: true",
    "labels_per_batch: 2 images_per_label: 3",
]


@pytest.mark.parametrize("mode", MODES)
def test_load_methods_identical(db, mode):
    spec = f'source: "TOY.training" batch_size: 6 {mode}'
    transform = "mirror: true crop_size: 5 scale: 0.1"
    a, ta = data_layer(spec + " load_method: LOAD_ALL", transform, seed=7)
    b, tb = data_layer(spec + " load_method: LOAD_ON_DEMAND prefetch: 2", transform, seed=7)
    for (da, la), (db_, lb) in zip(batches(a, ta, 12), batches(b, tb, 12)):
        np.testing.assert_array_equal(da, db_)
        np.testing.assert_array_equal(la, lb)
    c, tc = data_layer(spec, transform, seed=8)
    assert not all(np.array_equal(x[0], y[0])
                   for x, y in zip(batches(a, ta, 3), batches(c, tc, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_resume_gives_the_same_next_batches(db, mode):
    spec = f'source: "TOY.training" batch_size: 6 {mode}'
    a, ta = data_layer(spec, "mirror: true", seed=3)
    batches(a, ta, 4)
    state = a.state_dict()
    assert state["batch"] == 4
    expected = batches(a, ta, 5)
    b, tb = data_layer(spec, "mirror: true", seed=3)
    batches(b, tb, 2)               # a running prefetch thread is restarted at the counter
    b.load_state_dict(state)
    for (d1, l1), (d2, l2) in zip(expected, batches(b, tb, 5)):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
    # no thread: the same batches (batch k depends only on seed, name and k)
    c, tc = data_layer(spec + " prefetch: 0", "mirror: true", seed=3)
    c.load_state_dict(state)
    np.testing.assert_array_equal(batches(c, tc, 1)[0][0], expected[0][0])


def test_random_selection_is_a_permutation_per_epoch_and_test_phase_deterministic(db):
    spec = 'source: "TOY.training" batch_size: 10 enable_random_selection: true'
    layer, top = data_layer(spec, phase=pb.TEST)
    table = lookup(db)
    epoch = [table[np.asarray(img, np.uint8).tobytes()][0]
             for data, _ in batches(layer, top, 3) for img in data]
    assert sorted(epoch) == list(range(30)) and epoch != list(range(30))
    other, top2 = data_layer(spec, phase=pb.TEST)
    again = [table[np.asarray(img, np.uint8).tobytes()][0]
             for data, _ in batches(other, top2, 3) for img in data]
    assert again == epoch


# ------------------------------------------------------------------ errors --

def test_missing_source_lists_datasets(db):
    with pytest.raises(DatasetNotFoundError) as err:
        data_layer('source: "MNIST.training" batch_size: 4 backend: IMAGEDB')
    text = str(err.value)
    assert "layer 'data'" in text and "MNIST.training" in text
    assert "datasets: RGB, TOY" in text
    with pytest.raises(DataError, match="LEVELDB is not supported"):
        data_layer('source: "TOY.training" batch_size: 4 backend: LEVELDB')
    with pytest.raises(LayerError, match="batch_size"):
        data_layer('source: "TOY.training"')


# -------------------------------------------------------------------- LMDB --

def _caffe_lmdb(path, items):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, datum in items:
            txn.put(key, datum.SerializeToString())
    env.close()


def test_lmdb_backend_reads_caffe_databases(db, tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (5, 1, 3, 4), dtype=np.uint8)
    keys = [b"img_b", b"img_a", b"zz_0", b"img_c", b"m_9"]  # arbitrary keys
    _caffe_lmdb(tmp_path / "raw_lmdb", [
        (k, pb.Datum(channels=1, height=3, width=4, data=img.tobytes(), label=i))
        for i, (k, img) in enumerate(zip(keys, raw))])
    layer, top = data_layer(f'source: "{tmp_path / "raw_lmdb"}" batch_size: 5 backend: LMDB')
    layer.forward([], top)
    order = np.argsort(keys)  # LMDB key order
    np.testing.assert_array_equal(top[0].data, raw[order])
    np.testing.assert_array_equal(top[1].data, order)
    # encoded PNG colour images (as convert_imageset --encoded writes them): BGR like OpenCV
    rgb = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    items = []
    for i, img in enumerate(rgb):
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, "PNG")
        items.append((b"%08d_x.png" % i, pb.Datum(data=buf.getvalue(), encoded=True, label=i)))
    _caffe_lmdb(tmp_path / "png_lmdb", items)
    layer, top = data_layer(f'source: "{tmp_path / "png_lmdb"}" batch_size: 3 backend: LMDB')
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, rgb.transpose(0, 3, 1, 2)[:, ::-1])
    # backend LMDB with an image-database source name or the split folder also works
    path = store.dataset_info("TOY")["path"]
    for source in ("TOY.testing", os.path.join(path, "testing")):
        layer, top = data_layer(f'source: "{source}" batch_size: 10 backend: LMDB')
        layer.forward([], top)
        np.testing.assert_array_equal(top[0].data, db["test_images"])


def test_close_stops_the_prefetch_thread(db):
    layer, top = data_layer('source: "TOY.training" batch_size: 4 prefetch: 3')
    layer.forward([], top)
    thread = layer._res.prefetcher.thread
    assert thread.is_alive() and thread.daemon
    layer.close()
    assert not thread.is_alive()
    with pytest.raises(LayerError, match="closed"):
        layer.forward([], top)
    before = threading.active_count()
    layer, top = data_layer('source: "TOY.training" batch_size: 4')
    layer.forward([], top)
    thread = layer._res.prefetcher.thread
    del layer  # garbage collection stops the thread too
    thread.join(timeout=5)
    assert not thread.is_alive() and threading.active_count() <= before
