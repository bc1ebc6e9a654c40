"""``layergraph embed``: every image of a split through the RUN net, to .npy
(+ labels file) or .npz, with projector TSV; the rows equal a direct forward
pass of the same images, in database order."""
import os

import numpy as np
import pytest

import layergraph as lg
from layergraph.cli import main
from layergraph.cli.embed import embed_dataset, labels_path
from layergraph.imagedb.store import open_source

TOWER = """
layer { name: "conv" type: "Convolution" bottom: "images" top: "conv"
        convolution_param { num_output: 3 kernel_size: 5 stride: 3
                            weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "feat" type: "InnerProduct" bottom: "conv" top: "feat"
        inner_product_param { num_output: 6 weight_filler { type: "xavier" }
                              bias_filler { type: "constant" value: 0.1 } } }
"""
TRAIN_VAL = """
name: "embed"
layer { name: "data" type: "Data" top: "images" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 mean_value: 20 }
        data_param { source: "TINY.training" batch_size: 20 backend: IMAGEDB } }
""" + TOWER + """
layer { name: "loss" type: "OnlineTripletLoss" bottom: "feat" bottom: "label" top: "loss"
        exclude { phase: RUN } online_triplet_loss_param { miner: BATCH_ALL } }
"""
#: the same tower as a deploy file: no Data layer, so no transform_param
DEPLOY = """
name: "embed"
layer { name: "input" type: "Input" top: "images"
        input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }
""" + TOWER


@pytest.fixture
def model(db, tmp_path):
    path = tmp_path / "train_val.prototxt"
    path.write_text(TRAIN_VAL)
    weights = tmp_path / "w.caffemodel"
    net = lg.Net(str(path), lg.TRAIN, seed=4)
    try:
        net.save(str(weights))
    finally:
        net.close()
    return str(path), str(weights)


def forward_pass(model, weights, split="testing", blob="feat"):
    """The reference: all images of TINY.<split> in one forward pass."""
    images, labels = open_source(f"TINY.{split}").read_all()
    net = lg.Net(model, lg.RUN, weights=weights, input_shape=(1, 1, 28, 28))
    net.forward(images=(images.astype(np.float32) - 20) * np.float32(1 / 256))
    return np.array(net.blobs[blob].data).reshape(len(images), -1), labels


def test_npz_and_tsv_equal_a_forward_pass(model, tmp_path, capsys):
    path, weights = model
    out = tmp_path / "out" / "emb.npz"
    code = main(["embed", "--model", path, "--weights", weights, "--layer", "feat",
                 "--dataset", "TINY", "--out", str(out), "--tsv", str(tmp_path / "tsv"),
                 "--batch-size", "7"])
    assert code == 0
    assert "120 x 6 float32 embeddings of 'feat'" in capsys.readouterr().out
    expected, labels = forward_pass(path, weights)
    with np.load(out) as z:
        assert sorted(z.files) == ["embeddings", "labels"]
        emb, got_labels = z["embeddings"], z["labels"]
    assert emb.dtype == np.float32 and emb.shape == (120, 6)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    tsv = np.loadtxt(tmp_path / "tsv" / "tensors.tsv", delimiter="\t")
    np.testing.assert_allclose(tsv, expected, rtol=1e-5, atol=1e-5)
    meta = (tmp_path / "tsv" / "metadata.tsv").read_text().split()
    assert [int(v) for v in meta] == labels.tolist()
    assert sorted(os.listdir(tmp_path / "out")) == ["emb.npz"]  # no temporaries left
    assert sorted(os.listdir(tmp_path / "tsv")) == ["metadata.tsv", "tensors.tsv"]


def test_npy_in_chunks_with_sibling_labels(model, tmp_path):
    """Chunks of 16 images (not a multiple of the batch of 5): the memory-
    mapped .npy gets every row in place; a blob of several axes is flattened."""
    path, weights = model
    out = tmp_path / "emb.npy"
    result = embed_dataset(path, weights, "TINY", str(out), layer="conv", split="training",
                           batch_size=5, chunk_size=16, progress=False)
    expected, labels = forward_pass(path, weights, split="training", blob="conv")
    assert result["labels_file"] == labels_path(str(out)) == str(tmp_path / "emb.labels.npy")
    assert (result["count"], result["dimensions"], result["layer"]) == (120, 3 * 8 * 8, "conv")
    emb = np.load(out)
    assert emb.dtype == np.float32 and emb.shape == (120, 192)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(result["labels_file"]), labels)
    assert sorted(os.listdir(tmp_path)) == ["emb.labels.npy", "emb.npy",
                                            "train_val.prototxt", "w.caffemodel"]


def test_default_layer_is_the_last_output(model, tmp_path):
    path, weights = model
    result = embed_dataset(path, weights, "TINY.testing", str(tmp_path / "e.npz"),
                           progress=False)
    assert result["layer"] == "feat"


@pytest.mark.parametrize("how", [["--scale", "0.00390625", "--mean", "20"],
                                 ["--train-val", "TRAIN_VAL"]])
def test_deploy_model_takes_the_transform_options(model, tmp_path, capsys, how):
    path, weights = model
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    how = [path if a == "TRAIN_VAL" else a for a in how]
    out = tmp_path / "d.npz"
    assert main(["embed", "--model", str(deploy), "--weights", weights, "--dataset", "TINY",
                 "--out", str(out)] + how) == 0
    assert "raw 0-255" not in capsys.readouterr().err
    expected, _ = forward_pass(path, weights)
    with np.load(out) as z:
        np.testing.assert_allclose(z["embeddings"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, fragment", [
    (["--out", "emb.txt"], "give a .npy or .npz file"),
    (["--out", "emb.npy", "--layer", "nope"], "no layer or blob 'nope'"),
    (["--out", "emb.npy", "--dataset", "MISSING"], "MISSING"),
])
def test_mistakes_are_one_line(model, tmp_path, capsys, monkeypatch, args, fragment):
    path, weights = model
    monkeypatch.chdir(tmp_path)
    argv = ["embed", "--model", path, "--weights", weights, "--dataset", "TINY"] + args
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("layergraph: error: ")
    assert fragment in lines[0]
    assert not [n for n in os.listdir(tmp_path) if n.startswith("emb")]
