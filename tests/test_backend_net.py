"""Whole nets on the kernel path: the TripletNet_28x28 and Siamese_28x28
templates train a few iterations on the kernel backend (``emu`` here: every
kernel of kernels/ run on the CPU; ``gpu`` where a GPU is lent) and follow
the NumPy run's loss curve and weights."""
import os

import numpy as np
import pytest

import layergraph as lg
from layergraph.backend import get_backend, to_numpy
from layergraph.imagedb.creators import copy_dataset, create_mnist
from layergraph.tools.evaluate import new_from_template


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagedb")
    old = os.environ.get("LAYERGRAPH_DB")
    os.environ["LAYERGRAPH_DB"] = str(root)
    create_mnist(None, name="MNIST", download=False)
    copy_dataset("MNIST", "TINY", max_per_label=12, seed=0)
    yield root
    if old is None:
        os.environ.pop("LAYERGRAPH_DB", None)
    else:
        os.environ["LAYERGRAPH_DB"] = old


def _train(template, run_dir, backend, iterations):
    if not (run_dir / "solver.prototxt").exists():
        new_from_template(template, "TINY", str(run_dir))
    solver = lg.Solver(str(run_dir / "solver.prototxt"), log=None, backend=backend, overrides={
        "max_iter": iterations, "test_interval": 0, "snapshot": 0,
        "snapshot_prefix": str(run_dir / backend / "snap")})
    losses = []

    class Collect:
        def on_iteration(self, s, record):
            losses.append(record["loss"])
    solver.add_callback(Collect())
    be = solver.backend
    start = be.launches
    solver.step(iterations)
    launches = (be.launches - start) / iterations
    weights = {name: [to_numpy(b.data).copy() for b in blobs]
               for name, blobs in solver.net.params.items()}
    solver.close()
    return np.array(losses), weights, launches


@pytest.mark.parametrize("template", ["TripletNet_28x28", "Siamese_28x28"])
def test_template_follows_cpu_loss_curve(template, kernel_backend, db, tmp_path):
    iterations = 3 if kernel_backend == "emu" else 30
    cpu_loss, cpu_w, _ = _train(template, tmp_path, "cpu", iterations)
    loss, w, launches = _train(template, tmp_path, kernel_backend, iterations)
    assert get_backend(kernel_backend).kernels is not None
    assert launches > 0
    np.testing.assert_allclose(loss, cpu_loss, rtol=2e-3, atol=1e-4)
    for name in cpu_w:
        for a, b in zip(w[name], cpu_w[name]):
            scale = max(float(np.abs(b).max()), 1e-3)
            assert float(np.abs(a - b).max()) <= 2e-3 * scale, name
