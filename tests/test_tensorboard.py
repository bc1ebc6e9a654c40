"""What ``train`` reports: TensorBoard event files (read back with the
tensorboard package's reader: the scalars equal the JSON log's, the projector
config and files present), ``inspect --projector``, the one-line error without
tensorboardX, and the progress lines when stderr is not a terminal."""
import json
import os
import re
import sys

import numpy as np
import pytest

import layergraph as lg
from layergraph.cli import main
from layergraph.imagedb.store import open_source

TRAIN_VAL = """
name: "tb"
layer { name: "data" type: "Data" top: "images" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 }
        data_param { source: "TINY.training" batch_size: 20 backend: IMAGEDB } }
layer { name: "data" type: "Data" top: "images" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 }
        data_param { source: "TINY.testing" batch_size: 20 backend: IMAGEDB } }
layer { name: "feat" type: "InnerProduct" bottom: "images" top: "feat"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "OnlineTripletLoss" bottom: "feat" bottom: "label"
        top: "loss" top: "active" loss_weight: 1 loss_weight: 0 exclude { phase: RUN }
        online_triplet_loss_param { miner: BATCH_ALL margin: 0.2 } }
layer { name: "decode" type: "Decode" bottom: "feat" bottom: "label" top: "distances"
        decode_param { target: CENTROID cache_size: 10 pregen_label_count: 10 } }
layer { name: "silence" type: "Silence" bottom: "distances" include { phase: TRAIN } }
layer { name: "accuracy" type: "AccuracyDecode" bottom: "distances" bottom: "label"
        top: "accuracy" include { phase: TEST } }
"""
SOLVER = """
net: "train_val.prototxt"
base_lr: 0.01
momentum: 0.9
lr_policy: "inv"
gamma: 0.1
power: 0.75
max_iter: 6
display: 2
average_loss: 3
test_iter: 2
test_interval: 3
snapshot: 0
snapshot_prefix: "snap/tb"
random_seed: 2
solver_mode: CPU
"""


@pytest.fixture
def project(db, tmp_path):
    (tmp_path / "train_val.prototxt").write_text(TRAIN_VAL)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path


def one_line_error(code, err, fragment):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("layergraph: error: ") and fragment in lines[0], lines[0]


def test_missing_tensorboardx_is_one_line(project, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    code = main(["train", "--solver", str(project / "solver.prototxt"), "--quiet",
                 "--tensorboard", str(project / "tb")])
    one_line_error(code, capsys.readouterr().err,
                   "needs tensorboardX: pip install -e '.[tensorboard]'")
    assert not (project / "tb").exists()


def test_histograms_need_a_tensorboard_dir(project, capsys):
    code = main(["train", "--solver", str(project / "solver.prototxt"), "--quiet",
                 "--tensorboard-histograms"])
    one_line_error(code, capsys.readouterr().err, "need --tensorboard DIR")


def test_progress_lines_when_stderr_is_not_a_terminal(project, capsys):
    code = main(["train", "--solver", str(project / "solver.prototxt"),
                 "--progress-seconds", "0"])
    assert code == 0
    err = capsys.readouterr().err
    lines = re.findall(r"^iteration (\d+)/6, loss (\S+), (\d+) images/s from the data layer"
                       r"(?: \(\d+ through the weight-shared towers\))?, ETA (\d+:\d\d:\d\d)$",
                       err, re.M)
    assert [int(it) for it, *_ in lines] == [1, 2, 3, 4, 5, 6], err
    assert all(float(loss) >= 0 for _, loss, _, _ in lines)
    assert lines[-1][3] == "0:00:00"


def test_quiet_prints_no_progress(project, capsys):
    assert main(["train", "--solver", str(project / "solver.prototxt"), "--quiet",
                 "--progress-seconds", "0"]) == 0
    assert "images/s from the data layer" not in capsys.readouterr().err


# ------------------------------------------------------- the event file ----

def _reader(logdir):
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.SCALARS: 0,
                                    event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def _projector_config(logdir):
    from google.protobuf import text_format
    projector = pytest.importorskip("tensorboard.plugins.projector.projector_config_pb2")
    config = projector.ProjectorConfig()
    text_format.Parse((logdir / "projector_config.pbtxt").read_text(), config)
    return config


def test_event_file_matches_the_json_log(project, capsys):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    code = main(["train", "--solver", str(project / "solver.prototxt"), "--quiet",
                 "--tensorboard", str(project / "tb"), "--tensorboard-histograms"])
    assert code == 0, capsys.readouterr().err
    acc = _reader(project / "tb")
    log = [json.loads(line) for line in (project / "snap" / "tb_log.jsonl").read_text()
           .splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    tests = [r for r in log if r["kind"] == "test"]
    assert [r["iter"] for r in train] == [0, 2, 4] and [r["iter"] for r in tests] == [0, 3, 6]

    def scalars(tag):
        return {e.step: e.value for e in acc.Scalars(tag)}

    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/smoothed_loss", "train/lr", "train/images_per_s",
            "train/output/loss", "train/output/active", "test/loss", "test/active",
            "test/accuracy"} <= tags
    assert "train/tower_images_per_s" not in tags  # no weight-shared branches here
    for key in ("loss", "smoothed_loss", "lr", "images_per_s"):
        values = scalars(f"train/{key}")
        assert sorted(values) == list(range(6))          # every iteration
        for r in train:                                   # the logged ones: equal
            assert values[r["iter"]] == pytest.approx(r[key], rel=1e-6), key
    for r in tests:
        for name, value in r["outputs"].items():
            assert scalars(f"test/{name}")[r["iter"]] == pytest.approx(value, rel=1e-6)
    active = scalars("train/output/active")
    assert all(0.0 <= v <= 1.0 for v in active.values())
    assert {"weights/feat/0", "weights/feat/1"} <= set(acc.Tags()["histograms"])

    # the projector: one embedding per test, labels and a sprite
    config = _projector_config(project / "tb")
    assert [e.tensor_name for e in config.embeddings] == ["feat:00000", "feat:00003",
                                                          "feat:00006"]
    first = config.embeddings[0]
    tensors = np.loadtxt(project / "tb" / first.tensor_path, delimiter="\t")
    assert tensors.shape == (40, 4)                      # test_iter 2 x batch 20
    labels = [int(v) for v in (project / "tb" / first.metadata_path).read_text().split()]
    assert labels == open_source("TINY.testing").labels()[:40].tolist()  # database order
    assert list(first.sprite.single_image_dim) == [28, 28]
    from PIL import Image
    sprite = Image.open(project / "tb" / first.sprite.image_path)
    assert sprite.size == (7 * 28, 7 * 28)               # ceil(sqrt(40)) images a side


def test_solver_field_relative_to_the_solver_file(project, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    text = (project / "solver.prototxt").read_text().replace("max_iter: 6", "max_iter: 2")
    (project / "solver.prototxt").write_text(
        text + 'tensorboard_dir: "events"\ntensorboard_embedding: "feat"\n')
    monkeypatch.chdir(tmp_path.parent)
    solver = lg.Solver(str(project / "solver.prototxt"), log=None)
    try:
        assert solver.tensorboard.logdir == str(project / "events")
        solver.solve()
    finally:
        solver.close()
    acc = _reader(project / "events")
    assert sorted(e.step for e in acc.Scalars("train/loss")) == [0, 1]


def test_resume_purges_the_redone_iterations(project):
    """A run resumed from iteration 4 hides the first run's events of
    iterations >= 4 (purge_step): each step keeps one value."""
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    solver_file = str(project / "solver.prototxt")
    text = (project / "solver.prototxt").read_text().replace("snapshot: 0", "snapshot: 4")
    (project / "solver.prototxt").write_text(text)
    tb = str(project / "tb")
    assert main(["train", "--solver", solver_file, "--quiet", "--tensorboard", tb]) == 0
    assert main(["train", "--solver", solver_file, "--quiet", "--tensorboard", tb,
                 "--snapshot", str(project / "snap" / "tb_iter_4.solverstate")]) == 0
    steps = [e.step for e in _reader(project / "tb").Scalars("train/loss")]
    assert sorted(steps) == list(range(6))


def test_inspect_projector(project, capsys):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    model, weights = str(project / "train_val.prototxt"), str(project / "w.caffemodel")
    net = lg.Net(model, lg.TRAIN, seed=1)
    try:
        net.save(weights)
    finally:
        net.close()
    out = project / "proj"
    code = main(["inspect", "--model", model, "--weights", weights, "--layer", "feat",
                 "--dataset", "TINY", "--count", "30", "--projector", str(out)])
    assert code == 0, capsys.readouterr().err
    flat = np.loadtxt(out / "tensors.tsv", delimiter="\t")       # the plain TSV, kept
    assert flat.shape == (30, 4)
    config = _projector_config(out)
    (entry,) = config.embeddings
    assert entry.tensor_name == "feat:00000"
    np.testing.assert_allclose(np.loadtxt(out / entry.tensor_path, delimiter="\t"), flat,
                               rtol=1e-4, atol=1e-5)
    assert (out / entry.metadata_path).read_text() == (out / "metadata.tsv").read_text()
    assert (out / entry.sprite.image_path).stat().st_size > 0
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out))
