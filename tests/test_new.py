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


# ------------------------------------------------------------- recipes --

def _large(monkeypatch, smallest):
    """Pretend the dataset's smallest label has ``smallest`` training images."""
    from layergraph.tools import templates
    real = templates._dataset_facts

    def facts(dataset):
        info = real(dataset)
        return None if info is None else dict(info, smallest_label=smallest)
    monkeypatch.setattr(templates, "_dataset_facts", facts)


def test_a_large_dataset_gets_the_large_dataset_recipe(db, tmp_path, monkeypatch):
    """BatchHard's recipes.json: from 2,000 images per label, no
    augmentation, 10 x 16 batches, 32/64 filters, 4,000 iterations (the
    schedule scaled with it), and the copied files say so."""
    _large(monkeypatch, 6000)
    notes = []
    new_from_template("TripletNet_28x28_BatchHard", "L12", str(tmp_path / "r"), log=notes.append)
    net = (tmp_path / "r" / "train_val.prototxt").read_text()
    body = "\n".join(line for line in net.splitlines() if not line.lstrip().startswith("#"))
    for gone in ("max_shift", "max_rotation", "min_scale", "max_scale", "elastic_alpha"):
        assert gone not in body
    assert 160 in _field(body, "batch_size") and _field(body, "images_per_label") == [16]
    assert _field(body, "labels_per_batch") == [10]
    assert [int(v) for v in re.findall(r"num_output:\s*(\d+)\s+kernel_size", body)] == [32, 64]
    assert net.startswith("# `layergraph new` applied this template's 'large_dataset' recipe")
    solver = (tmp_path / "r" / "solver.prototxt").read_text()
    assert _field(solver, "max_iter") == [4000]
    assert _field(solver, "stepvalue") == [2000, 2667, 3333]
    assert "'large_dataset' recipe" in (tmp_path / "r" / "README.md").read_text()
    assert any("applied the template's 'large_dataset' recipe" in n and "6,000" in n
               for n in notes)
    lg.Net(str(tmp_path / "r" / "train_val.prototxt"), lg.TRAIN).close()   # it builds


def test_recipes_apply_only_when_the_dataset_qualifies_or_when_asked(db, tmp_path, monkeypatch):
    _large(monkeypatch, 1999)               # below the recipe's 2,000: the template
    new_from_template("TripletNet_28x28_BatchHard", "L12", str(tmp_path / "a"))
    text = (tmp_path / "a" / "train_val.prototxt").read_text()
    assert "elastic_alpha: 34" in text and 300 in _field(text, "batch_size")
    _large(monkeypatch, 6000)
    new_from_template("TripletNet_28x28_BatchHard", "L12", str(tmp_path / "b"),
                      recipe="template")    # asked for the template as it is
    assert (tmp_path / "b" / "train_val.prototxt").read_text() == \
        (tmp_path / "a" / "train_val.prototxt").read_text()
    new_from_template("TripletNet_28x28_BatchHard", "L12", str(tmp_path / "c"), max_iter=500,
                      recipe="large_dataset")   # by name; --max-iter wins over its 4,000
    assert _field((tmp_path / "c" / "solver.prototxt").read_text(), "max_iter") == [500]
    # templates without recipes.json are unaffected
    new_from_template("TripletNet_28x28", "L12", str(tmp_path / "d"))
    assert "applied" not in (tmp_path / "d" / "train_val.prototxt").read_text()[:200]
    assert not (tmp_path / "d" / "recipes.json").exists()


def test_every_recipe_still_fits_its_template(tmp_path):
    """A recipe's text replacements must all occur in the template (a
    template edit that breaks one fails here, not in a user's `new`)."""
    from layergraph.tools.templates import load_recipes
    for template in list_templates():
        for name in load_recipes(template):
            new_from_template(template, None, str(tmp_path / f"{template}_{name}"), recipe=name)


def test_an_unknown_recipe_is_a_one_line_error(db, tmp_path, capsys):
    code = main(["new", "--template", "TripletNet_28x28_BatchHard", "--dataset", "L12",
                 "--out", str(tmp_path / "r"), "--recipe", "huge"])
    err = capsys.readouterr().err
    assert code != 0 and "has no recipe 'huge'" in err and "large_dataset" in err
    assert len(err.strip().splitlines()) == 1
