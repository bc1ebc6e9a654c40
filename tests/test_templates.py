"""The TripletNet_28x28 and Siamese_28x28 templates, MyCaffe's files
unmodified, test-many and inspect: end to end on a tiny dataset."""
import json
import os
import shutil

import numpy as np
import pytest

import layergraph as lg
from layergraph.cli import main
from layergraph.evaluation import inspect
from layergraph.evaluation import test_many as run_test_many
from layergraph.tools.templates import new_from_template

COMPAT = os.environ.get("LAYERGRAPH_COMPAT", os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "compat")))


def train_template(template, tmp_path, iterations=6):
    run = tmp_path / template
    new_from_template(template, "TINY", str(run))
    solver = lg.Solver(str(run / "solver.prototxt"), log=None, overrides={
        "max_iter": iterations, "test_interval": 3, "test_iter": [2], "snapshot": 0})
    results = []

    class Collect:
        def on_test(self, s, test_id, res):
            results.append(res)
    solver.add_callback(Collect())
    solver.solve()
    weights = f"{solver.snapshot_prefix()}_iter_{iterations}.caffemodel"
    return solver, run, weights, results


@pytest.mark.parametrize("template", ["TripletNet_28x28", "Siamese_28x28"])
def test_template_trains_tests_and_keeps_centroids(template, db, tmp_path):
    solver, run, weights, results = train_template(template, tmp_path)
    assert os.path.exists(weights)
    assert np.isfinite(solver.smoothed_loss)
    assert results and 0.0 <= results[-1]["accuracy"] <= 1.0
    decode = solver.net.layer("decode")
    # the TEST net sees the training net's centroids (same blobs)
    assert solver.test_nets[0].layer("decode").blobs[0] is decode.blobs[0]
    assert decode.blobs[1].data.sum() > 0  # centroids were updated
    # a snapshot round trip keeps the centroids; the RUN net uses them
    run_net = lg.Net(str(run / "train_val.prototxt"), lg.RUN, weights=weights,
                     input_shape=(1, 1, 28, 28))
    np.testing.assert_array_equal(run_net.layer("decode").blobs[0].data, decode.blobs[0].data)
    assert run_net.inputs == [run_net.bottom_names[1][0]]
    assert "loss" not in run_net.layer_names
    out = run_net.forward(**{run_net.inputs[0]: np.zeros((3, 1, 28, 28), np.float32)})
    assert out["distances"].shape == (3, 10)
    solver.close()


def test_test_many_and_inspect_end_to_end(db, tmp_path, capsys):
    solver, run, weights, _ = train_template("TripletNet_28x28", tmp_path)
    solver.close()
    model = str(run / "train_val.prototxt")
    report = run_test_many(model, weights, "TINY", count=None, out=str(tmp_path / "report"),
                       log=None)
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == report["count"] == 120
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert json.load(open(tmp_path / "report" / "report.json"))["count"] == 120
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000
    refit = run_test_many(model, weights, "TINY", count=None, centroids="training", log=None)
    assert 0.0 <= refit["accuracy"] <= 1.0
    code = main(["test-many", "--model", model, "--weights", weights, "--dataset", "TINY",
                 "--count", "50"])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy:" in out and "confusion matrix" in out
    result = inspect(model, weights, "feat", "TINY", out=str(tmp_path / "tsne.png"),
                     projector=str(tmp_path / "proj"), count=60, log=None)
    assert result["embeddings"].shape == (60, 16)
    assert (tmp_path / "tsne.png").stat().st_size > 1000
    lines = (tmp_path / "proj" / "tensors.tsv").read_text().splitlines()
    assert len(lines) == 60 and len(lines[0].split("\t")) == 16
    assert len((tmp_path / "proj" / "metadata.tsv").read_text().splitlines()) == 60


def test_new_refuses_unknown_template_and_nonempty_dir(db, tmp_path, capsys):
    assert main(["new", "--template", "Nope", "--dataset", "TINY",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown template" in capsys.readouterr().err
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "f").write_text("x")
    assert main(["new", "--template", "Siamese_28x28", "--out", str(tmp_path / "y")]) == 2


@pytest.mark.skipif(not os.path.isdir(COMPAT), reason="shared/compat not present")
@pytest.mark.parametrize("net, solver", [
    ("triplet_train_val.prototxt", "triplet_solver.prototxt"),
    ("siamese_train_val.prototxt", "siamese_solver.prototxt"),
    ("lenet_train_test.prototxt", "lenet_solver.prototxt"),
])
def test_mycaffe_files_train_unmodified(net, solver, db, tmp_path, capsys):
    """MyCaffe's files, byte for byte, train once the MNIST dataset exists
    (through the CLI; test_iter is cut down through the Python API only to
    keep the test fast)."""
    for name in (net, solver):
        shutil.copyfile(os.path.join(COMPAT, "mycaffe", name), tmp_path / name)
    if net.startswith("siamese"):  # no initial test: the real CLI run is cheap
        code = main(["train", "--solver", str(tmp_path / solver), "--model",
                     str(tmp_path / net), "--iterations", "3", "--snapshot-prefix",
                     str(tmp_path / "snap" / "m"), "--quiet"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "Optimization done" in captured.out + captured.err
        return
    s = lg.Solver(str(tmp_path / solver), log=None, overrides={
        "net": str(tmp_path / net), "max_iter": 3, "test_iter": [2],
        "snapshot_prefix": str(tmp_path / "snap" / "m")})
    results = s.test_all()
    s.solve()
    assert s.iter == 3 and np.isfinite(s.smoothed_loss)
    assert 0.0 <= float(np.ravel(results[0]["accuracy1" if "triplet" in net else
                                            "accuracy"])[0]) <= 1.0
    s.close()


def test_resumed_template_run_matches_uninterrupted(db, tmp_path):
    """Data prefetching, DataSequence caches and Decode centroids all resume:
    3 + 3 iterations from a snapshot give exactly the 6-iteration result."""
    def solver_for(run, iterations, snapshot):
        new_from_template("TripletNet_28x28", "TINY", str(run), force=True)
        return lg.Solver(str(run / "solver.prototxt"), log=None, overrides={
            "max_iter": iterations, "test_interval": 0, "snapshot": snapshot})
    straight = solver_for(tmp_path / "a", 6, 0)
    straight.solve()
    first = solver_for(tmp_path / "b", 3, 3)
    first.solve()
    first.close()
    resumed = solver_for(tmp_path / "b", 6, 0)
    resumed.solve(resume=f"{resumed.snapshot_prefix()}_iter_3.solverstate")
    for name in ("conv1", "feat", "decode"):
        for a, b in zip(straight.net.params[name], resumed.net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    assert straight.losses[-3:] == resumed.losses[-3:]
    straight.close()
    resumed.close()


def test_inspect_reads_a_debug_layer_store(db, tmp_path):
    """inspect --layer <Debug layer> takes the embeddings the Debug layer kept."""
    solver, run, weights, _ = train_template("TripletNet_28x28", tmp_path, iterations=2)
    solver.close()
    model = run / "train_val.prototxt"
    text = model.read_text()
    anchor = 'name: "feat" type: "InnerProduct"'
    end = text.index("\n}\n", text.index(anchor)) + 3
    model.write_text(text[:end] + 'layer { name: "debug" type: "Debug" bottom: "feat" '
                     'top: "feat" debug_param { max_stored: 50 } }\n' + text[end:])
    result = inspect(str(model), weights, "debug", "TINY", projector=str(tmp_path / "p"),
                     count=80, log=None)
    assert result["embeddings"].shape == (50, 16)
    assert len(result["labels"]) == 50
    direct = inspect(str(model), weights, "feat", "TINY", projector=str(tmp_path / "q"),
                     count=80, log=None)
    np.testing.assert_allclose(result["embeddings"], direct["embeddings"][-50:], rtol=1e-6)
    np.testing.assert_array_equal(result["labels"], direct["labels"][-50:])
