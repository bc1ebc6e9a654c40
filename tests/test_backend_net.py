"""Whole nets on the kernel path: the TripletNet_28x28 and Siamese_28x28
templates train a few iterations on the kernel backend (``emu`` here: every
kernel of kernels/ run on the CPU; ``gpu`` where a GPU is lent) and follow
the NumPy run's loss curve and weights."""

import numpy as np
import pytest

import layergraph as lg
from layergraph.backend import get_backend, to_numpy
from layergraph.tools.evaluate import new_from_template


def _solver(template, run_dir, backend, iterations):
    if not (run_dir / "solver.prototxt").exists():
        new_from_template(template, "TINY", str(run_dir))
    return lg.Solver(str(run_dir / "solver.prototxt"), log=None, backend=backend, overrides={
        "max_iter": iterations, "test_interval": 0, "snapshot": 0,
        "snapshot_prefix": str(run_dir / backend / "snap")})


def _first_gradients(template, run_dir, backend):
    solver = _solver(template, run_dir, backend, 1)
    solver.net.clear_param_diffs()
    loss = solver.net.forward_backward()
    grads = [to_numpy(b.diff).copy() for b in solver.net.learnable_params]
    solver.close()
    return loss, grads


def _losses(template, run_dir, backend, iterations):
    solver = _solver(template, run_dir, backend, iterations)
    losses = []

    class Collect:
        def on_iteration(self, s, record):
            losses.append(record["loss"])
    solver.add_callback(Collect())
    be = solver.backend
    start = be.launches
    solver.step(iterations)
    launches = (be.launches - start) / iterations
    solver.close()
    return np.array(losses), launches


@pytest.mark.parametrize("template", ["TripletNet_28x28", "Siamese_28x28"])
def test_template_gradients_and_loss_curve_match_cpu(template, kernel_backend, db, tmp_path):
    """The first step's loss and every parameter gradient agree with the
    NumPy path to float32 rounding; the loss curve then follows it.  (Weights
    are not compared after several Adam steps: Adam turns the 1e-8 rounding
    noise of gradients that are zero in exact arithmetic -- the last biases of
    a distance loss -- into steps of the size of the learning rate.)"""
    cpu_loss, cpu_grads = _first_gradients(template, tmp_path, "cpu")
    loss, grads = _first_gradients(template, tmp_path, kernel_backend)
    assert loss == pytest.approx(cpu_loss, rel=1e-5)
    for a, b in zip(grads, cpu_grads):
        scale = max(float(np.abs(b).max()), 1e-6)
        assert float(np.abs(a - b).max()) <= 1e-4 * scale + 1e-7
    iterations = 3 if kernel_backend == "emu" else 30
    cpu_curve, _ = _losses(template, tmp_path, "cpu", iterations)
    curve, launches = _losses(template, tmp_path, kernel_backend, iterations)
    assert get_backend(kernel_backend).kernels is not None and launches > 0
    np.testing.assert_allclose(curve, cpu_curve, rtol=2e-3, atol=1e-4)
