"""`layergraph new` points a template at a dataset and rewrites what depends
on it: label counts, P x K batches, test_iter, the copied README; --max-iter
scales the schedule."""
import os
import re

import numpy as np
import pytest
from PIL import Image

import layergraph as lg
from layergraph.cli import main
from layergraph.tools.templates import list_templates, new_from_template


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A 5-label and a 12-label dataset of small synthetic digits-like images."""
    root = tmp_path_factory.mktemp("imagedb")
    old = os.environ.get("LAYERGRAPH_DB")
    os.environ["LAYERGRAPH_DB"] = str(root)
    rng = np.random.default_rng(0)
    for labels in (5, 12):
        folder = tmp_path_factory.mktemp(f"folder{labels}")
        for label in range(labels):
            os.makedirs(folder / f"class{label:02d}")
            for i in range(20):
                img = (rng.random((28, 28)) * 60).astype(np.uint8)
                img[4 + label:10 + label, 4:24] = 255  # a bar whose height says the label
                Image.fromarray(img).save(folder / f"class{label:02d}" / f"{i}.png")
        assert main(["data", "images", "--dir", str(folder), "--name", f"L{labels}",
                     "--size", "28x28", "--channels", "1"]) == 0
    yield root
    if old is None:
        os.environ.pop("LAYERGRAPH_DB", None)
    else:
        os.environ["LAYERGRAPH_DB"] = old


def _field(text, name):
    return [int(v) for v in re.findall(rf"\b{name}:\s*(\d+)", text)]


@pytest.mark.parametrize("template", ["TripletNet_28x28", "TripletNet_28x28_BatchHard",
                                      "DeepHash_28x28", "Siamese_28x28"])
def test_twelve_labels_train_without_hand_edits(template, db, tmp_path):
    assert template in list_templates()
    run = tmp_path / template
    notes = []
    new_from_template(template, "L12", str(run), log=notes.append)
    net = (run / "train_val.prototxt").read_text()
    assert "MNIST" not in net.split("name:", 1)[1].split("layer", 1)[1]  # sources rewritten
    for name in ("label_count", "pregen_label_count"):
        assert set(_field(net, name)) <= {12}
    assert notes and "epochs" in notes[0]
    solver = lg.Solver(str(run / "solver.prototxt"), log=None,
                       overrides={"max_iter": 2, "test_interval": 2, "test_iter": [1],
                                  "snapshot": 0})
    solver.solve()
    assert np.isfinite(solver.smoothed_loss)
    solver.close()


def test_pxk_batches_shrink_to_the_labels_there_are(db, tmp_path):
    new_from_template("TripletNet_28x28_BatchHard", "L5", str(tmp_path / "r"))
    net = (tmp_path / "r" / "train_val.prototxt").read_text()
    assert _field(net, "labels_per_batch") == [5]
    assert 150 in _field(net, "batch_size")  # 5 labels x 30 images
    solver_text = (tmp_path / "r" / "solver.prototxt").read_text()
    # 5 x 20 testing images / batch 100 -> one batch covers the split
    assert _field(solver_text, "test_iter") == [1]


def test_max_iter_scales_the_schedule(db, tmp_path):
    new_from_template("TripletNet_28x28_BatchHard", "L12", str(tmp_path / "r"), max_iter=6000)
    text = (tmp_path / "r" / "solver.prototxt").read_text()
    assert _field(text, "max_iter") == [6000]
    assert _field(text, "stepvalue") == [3000, 4000, 5000]  # 1500, 2000, 2500 x 2
    assert _field(text, "snapshot") == [3000]
    readme = tmp_path / "r" / "README.md"
    if readme.exists():
        assert "L12" in readme.read_text()
