"""The compiled CPU loops (kernels/cpu/window_ops.cpp) against the NumPy
reference path of Convolution and Pooling, and the NumPy path's own
gradient checks (the rest of the suite runs the compiled path)."""
import os

import numpy as np
import pytest

from layergraph import cpu_kernels
from layergraph.testing import check_layer_gradient, compare_backends

pytestmark = pytest.mark.skipif(not cpu_kernels.status()[0], reason=cpu_kernels.status()[1])

RNG = np.random.default_rng(5)

CONVOLUTIONS = [
    # (convolution_param, bottom shape)
    ("num_output: 4 kernel_size: 3", (2, 3, 7, 6)),
    ("num_output: 5 kernel_size: 5", (3, 1, 12, 12)),           # LeNet conv1-like
    ("num_output: 6 kernel_size: 3 pad: 1 stride: 2", (2, 2, 9, 8)),
    ("num_output: 4 kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 2 stride_h: 1 stride_w: 3",
     (2, 2, 6, 7)),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2", (2, 2, 8, 8)),
    ("num_output: 6 kernel_size: 3 group: 3 pad: 1", (2, 6, 5, 5)),
    ("num_output: 3 kernel_size: 2 bias_term: false stride: 2", (3, 2, 6, 6)),
    ("num_output: 2 kernel_size: 1", (2, 3, 4, 5)),
    ("num_output: 3 kernel_size: 4 pad: 3 stride: 3", (2, 1, 5, 5)),  # windows mostly padding
]

POOLINGS = [
    ("pool: MAX kernel_size: 2 stride: 2", (2, 3, 8, 8), 1),       # the 2x2 fast path
    ("pool: MAX kernel_size: 2 stride: 2", (2, 3, 7, 9), 1),       # ceil: last window cut
    ("pool: MAX kernel_size: 3 stride: 2", (2, 2, 9, 9), 1),       # overlapping
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (2, 2, 8, 7), 2),  # with the mask top
    ("pool: MAX kernel_size: 1 stride: 3", (1, 2, 5, 5), 2),       # windows past the image
    ("pool: MAX global_pooling: true", (2, 3, 5, 4), 1),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 2, 8, 7), 1),
    ("pool: AVE kernel_size: 2 stride: 2", (2, 3, 8, 8), 1),
    ("pool: AVE kernel_size: 1 stride: 3", (1, 2, 5, 5), 1),
    ("pool: AVE global_pooling: true", (2, 3, 5, 4), 1),
]


def _conv(param):
    return (f'type: "Convolution" convolution_param {{ {param} '
            f'weight_filler {{ type: "gaussian" std: 0.5 }} '
            f'bias_filler {{ type: "uniform" min: -1 max: 1 }} }}')


@pytest.mark.parametrize("param,shape", CONVOLUTIONS)
def test_convolution_loops_match_numpy(param, shape):
    x = RNG.standard_normal(shape)
    report = compare_backends(_conv(param), [x], backend="cpu", reference="numpy",
                              iterations=2, rtol=1e-5, atol=1e-6)
    assert any("bottom_diff" in k for k in report) and any("param_diff" in k for k in report)


@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize("param,shape", [
    ("num_output: 5 kernel_size: 3 pad: 1", (7, 3, 6, 6)),       # 7 images: unequal parts
    ("num_output: 6 kernel_size: 3 group: 3 pad: 1", (5, 6, 5, 5)),
    ("num_output: 3 kernel_size: 2 bias_term: false stride: 2", (4, 2, 6, 6)),
])
def test_convolution_batch_split_matches_numpy(param, shape, threads, monkeypatch):
    """The batch cut into parts run on threads of their own (LAYERGRAPH_BATCH_THREADS):
    same top, bottom gradient and summed parameter gradients as the NumPy path."""
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", threads)
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(_conv(param), dtype=np.float32)
    setup_layer(layer, [np.zeros(shape, np.float32)])
    assert len(layer._parts) == min(int(threads), shape[0] // 2)
    report = compare_backends(_conv(param), [RNG.standard_normal(shape)], backend="cpu",
                              reference="numpy", iterations=2, rtol=1e-5, atol=1e-6)
    assert any("param_diff" in k for k in report)


@pytest.mark.parametrize("threads", ["2", "3"])
def test_inner_product_batch_split_matches_numpy(threads, monkeypatch):
    """InnerProduct splits y and dx by rows of the batch, dw by its rows."""
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", threads)
    monkeypatch.setattr("layergraph.layers.inner_product.SPLIT_WORK", 1)
    spec = ('type: "InnerProduct" inner_product_param { num_output: 7 '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" } }')
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(spec, dtype=np.float32)
    setup_layer(layer, [np.zeros((9, 2, 3), np.float32)])
    assert len(layer._parts) == int(threads)
    compare_backends(spec, [RNG.standard_normal((9, 2, 3))], backend="cpu", reference="numpy",
                     iterations=2, rtol=1e-5, atol=1e-6)


def test_split_backward_on_fresh_blobs(monkeypatch):
    """Regression: Blob.diff is allocated on first use; parts touching a
    fresh diff from two threads lost one part's gradient now and then."""
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", "2")
    monkeypatch.setattr("layergraph.layers.inner_product.SPLIT_WORK", 1)
    from layergraph.testing import make_layer, setup_layer
    x = RNG.standard_normal((64, 300)).astype(np.float32)
    dy = RNG.standard_normal((64, 200)).astype(np.float32)
    for _ in range(60):
        layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 200 '
                           'weight_filler { type: "gaussian" std: 0.1 } }', dtype=np.float32)
        bottom, top = setup_layer(layer, [x])
        layer.forward(bottom, top)
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        np.testing.assert_allclose(layer.blobs[0].diff, dy.T @ x, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(0), rtol=1e-4, atol=1e-4)


def test_run_parts_runs_every_part_and_raises_their_errors(monkeypatch):
    seen = []
    cpu_kernels.run_parts(lambda i: seen.append(i), 3)
    assert sorted(seen) == [0, 1, 2]

    def fail(i):
        if i == 2:
            raise ValueError("part 2")
    with pytest.raises(ValueError, match="part 2"):
        cpu_kernels.run_parts(fail, 3)
    # the BLAS and OpenMP thread counts are restored after the parts
    assert cpu_kernels.library().lg_get_threads() == cpu_kernels._threads()


def test_batch_parts_cover_the_batch(monkeypatch):
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", "3")
    assert cpu_kernels.batch_parts(7) == [(0, 2), (2, 4), (4, 7)]
    assert cpu_kernels.batch_parts(3) == [(0, 3)]          # parts of >= 2 images
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", "1")
    assert cpu_kernels.batch_parts(64) == [(0, 64)]


@pytest.mark.parametrize("param,shape,tops", POOLINGS)
def test_pooling_loops_match_numpy(param, shape, tops):
    x = RNG.standard_normal(shape)
    report = compare_backends(f'type: "Pooling" pooling_param {{ {param} }}', [x],
                              backend="cpu", reference="numpy", num_tops=tops,
                              rtol=1e-6, atol=0)
    assert "iter0.bottom_diff[0]" in report


def test_max_pooling_ties_take_the_first_maximum():
    """Caffe's rule: the first maximum of the window in row-major order gets
    the gradient; the compiled loop must agree with NumPy on plateaus."""
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = 1.0
    compare_backends('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
                     [x], backend="cpu", reference="numpy", num_tops=2, rtol=0, atol=0)


@pytest.mark.parametrize("param,shape", CONVOLUTIONS[:6])
def test_convolution_numpy_path_gradient(param, shape):
    with cpu_kernels.disabled():
        check_layer_gradient(_conv(param), [RNG.standard_normal(shape)])


@pytest.mark.parametrize("param,shape,tops", [p for p in POOLINGS if p[2] == 1])
def test_pooling_numpy_path_gradient(param, shape, tops):
    x = RNG.permutation(np.prod(shape)).reshape(shape) * 0.1  # distinct: no ties
    with cpu_kernels.disabled():
        check_layer_gradient(f'type: "Pooling" pooling_param {{ {param} }}', [x])


def test_disabled_by_environment(tmp_path):
    import subprocess
    import sys
    code = ("from layergraph import cpu_kernels; ok, why = cpu_kernels.status(); "
            "print(ok, why)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "LAYERGRAPH_CPU_KERNELS": "0"})
    assert out.stdout.startswith("False NumPy") and "LAYERGRAPH_CPU_KERNELS=0" in out.stdout


def test_no_compiler_falls_back_to_numpy(tmp_path):
    import os
    import subprocess
    import sys
    code = ("from layergraph import cpu_kernels; ok, why = cpu_kernels.status(); print(ok, why)")
    env = {**os.environ, "CXX": "no-such-compiler", "XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.startswith("False NumPy")
    assert "no-such-compiler" in out.stdout


def test_layers_report_their_path():
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(_conv("num_output: 2 kernel_size: 3"), dtype=np.float32)
    setup_layer(layer, [np.zeros((1, 1, 5, 5), np.float32)])
    assert layer.cpu_loops
    with cpu_kernels.disabled():
        layer = make_layer(_conv("num_output: 2 kernel_size: 3"), dtype=np.float32)
        setup_layer(layer, [np.zeros((1, 1, 5, 5), np.float32)])
    assert not layer.cpu_loops


def _losses(solver, steps):
    """The loss of each of ``steps`` solver iterations; closes the solver."""
    losses = []
    solver.add_callback(type("Record", (), {
        "on_iteration": lambda self, s, record: losses.append(record["loss"])})())
    solver.step(steps)
    solver.close()
    return np.array(losses)


@pytest.mark.parametrize("template", ["TripletNet_28x28", "Siamese_28x28"])
def test_templates_train_alike_on_both_paths(template, db, tmp_path):
    """The seed tutorial's numbers do not move with the path: the same seed
    gives the same losses, step after step, to float32 rounding."""
    from layergraph.solver import Solver
    from layergraph.tools.evaluate import new_from_template
    new_from_template(template, "TINY", str(tmp_path / "run"))
    curves = []
    for loops in (False, True):
        with cpu_kernels.disabled() if not loops else _nothing():
            solver = Solver(str(tmp_path / "run" / "solver.prototxt"), log=lambda *a: None)
        assert any(getattr(layer, "cpu_loops", False) for layer in solver.net.layers) == loops
        curves.append(_losses(solver, 8))
    assert len(curves[0]) == 8 and curves[0].std() > 0
    np.testing.assert_allclose(curves[1], curves[0], rtol=2e-4, atol=1e-6)


def _nothing():
    import contextlib
    return contextlib.nullcontext()


def test_time_reports_the_batch_split(db, tmp_path, monkeypatch, capsys):
    from layergraph.cli import main
    from layergraph.tools.evaluate import new_from_template
    new_from_template("TripletNet_28x28", "TINY", str(tmp_path / "run"))
    model = str(tmp_path / "run" / "train_val.prototxt")
    for threads, expect in (("2", "conv1 (2 parts), conv2 (2 parts), ip1 (2 parts)"),
                            ("1", "batch split over threads: none")):
        monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", threads)
        assert main(["time", "--model", model, "--iterations", "1"]) == 0
        out = capsys.readouterr().out
        assert expect in out and "conv1_p (" not in out
        assert ("direct convolution (no columns, AVX-512): conv1" in out) == \
            cpu_kernels.direct_conv_available()
        assert "backward skips items whose gradient is all zero" in out
        if threads == "2":   # how the split passes run, and which columns are chunked
            assert cpu_kernels.native_status() in out
            assert ("one call per split pass" in out) == cpu_kernels.native_parts(np.float32)
            assert ("conv2 (4 images at a time)" in out) == cpu_kernels.native_parts(np.float32)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork")
def test_split_works_in_a_forked_child(monkeypatch):
    """The pool's threads do not survive fork(): a child starts its own."""
    import os
    cpu_kernels.run_parts(lambda i: None, 2)          # the parent's pool exists
    pid = os.fork()
    if pid == 0:
        try:
            import signal
            signal.alarm(30)                            # a hang ends the child, not CI
            seen = []
            cpu_kernels.run_parts(seen.append, 2)
            os._exit(0 if sorted(seen) == [0, 1] else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


@pytest.mark.parametrize("solver_type,extra", [
    ("SGD", {}), ("Adam", {}), ("AdaDelta", {}),
    ("SGD", {"regularization_type": "L1", "iter_size": 2}),
    ("Adam", {"regularization_type": "L1", "iter_size": 2}),
])
def test_cpu_updates_are_bit_identical_to_numpy(solver_type, extra, db, tmp_path, monkeypatch):
    """SGD and Adam run as one compiled pass per parameter
    (kernels/cpu/solver_ops.cpp), the other rules parameter range by range
    on the parts' threads: the same bits as the NumPy path on one thread."""
    from layergraph.solver import Solver
    from layergraph.tools.evaluate import new_from_template
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", "2")
    new_from_template("TripletNet_28x28", "TINY", str(tmp_path / "run"))
    solvers = []
    for _ in range(2):
        solver = Solver(str(tmp_path / "run" / "solver.prototxt"), log=lambda *a: None,
                        overrides={"type": solver_type, "momentum": 0.9, "weight_decay": 1e-3,
                                   **extra})
        solvers.append(solver)
    params = solvers[1].net.learnable_params
    solvers[1]._fused = False                                  # the NumPy reference
    solvers[1]._groups = [[(i, 0, params[i].count) for i in range(len(params))]]
    groups = solvers[0]._update_groups()
    sizes = [sum(hi - lo for _, lo, hi in g) for g in groups]
    assert len(groups) == 2 and abs(sizes[0] - sizes[1]) <= 1      # halves, arrays cut
    covered = sorted(r for g in groups for r in g)
    for (i, lo, hi), (j, lo2, hi2) in zip(covered, covered[1:]):
        assert (j, lo2) == (i, hi) or (j == i + 1 and lo2 == 0 and hi == params[i].count)
    rng = np.random.default_rng(0)
    for step in range(3):
        grads = [rng.standard_normal(b.shape).astype(b.dtype)
                 for b in solvers[0].net.learnable_params]
        for solver in solvers:
            for b, g in zip(solver.net.learnable_params, grads):
                b.diff[...] = g
            solver.apply_update()
    assert solvers[0]._fused == (solver_type in ("SGD", "Adam"))
    for a, b in zip(solvers[0].net.learnable_params, solvers[1].net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.diff, b.diff)
    for a, b in zip(solvers[0].history, solvers[1].history):
        np.testing.assert_array_equal(a, b)
    for solver in solvers:
        solver.close()


# ------------------------------------------------ skipping inactive items --
def _sparse_diffs(shape, active, rng):
    """A top gradient whose items outside ``active`` are all zero."""
    d = np.zeros(shape, np.float32)
    d[list(active)] = rng.standard_normal((len(active),) + tuple(shape[1:]))
    return d


def _spy_skips(monkeypatch):
    """Record what cpu_kernels.skip_inactive returned to the layers."""
    seen = []
    real = cpu_kernels.skip_inactive

    def spy(active, n):
        out = real(active, n)
        seen.append(active.tolist() if out else None)
        return out
    monkeypatch.setattr(cpu_kernels, "skip_inactive", spy)
    return seen


def test_active_items_finds_every_nonzero_item():
    a = np.zeros((10, 70, 3), np.float32)
    a[2, 65, 1] = 1.0           # past the first block of 64
    a[7, 0, 0] = np.nan         # NaN is not zero: the item stays
    a[9, 69, 2] = -1e-40        # a denormal is not zero either
    assert cpu_kernels.active_items(a).tolist() == [2, 7, 9]
    assert cpu_kernels.active_items(a.astype(np.float64)).tolist() == [2, 7, 9]
    assert cpu_kernels.active_items(np.ones((3, 4), np.float32)) is None    # all active
    assert cpu_kernels.active_items(np.zeros((4, 5), np.float32)).tolist() == []
    assert cpu_kernels.skip_inactive(cpu_kernels.active_items(a), 10)      # 3 of 10
    assert not cpu_kernels.skip_inactive(np.arange(1, 5), 5)   # 4 of 5: run them all
    assert not cpu_kernels.skip_inactive(None, 5)


@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize("param,shape,active", [
    ("num_output: 5 kernel_size: 3 pad: 1", (8, 3, 6, 6), [1, 4, 6]),
    ("num_output: 5 kernel_size: 5", (9, 1, 12, 12), [0, 8]),                   # conv1-like
    ("num_output: 6 kernel_size: 3 group: 3 pad: 1 stride: 2", (7, 6, 7, 7), [3]),
    ("num_output: 3 kernel_size: 2 bias_term: false", (6, 2, 5, 5), [0, 1, 2, 5]),
    ("num_output: 4 kernel_size: 3", (5, 2, 6, 6), []),                         # none active
])
def test_convolution_skips_images_with_zero_gradient(param, shape, active, threads,
                                                     monkeypatch):
    """Images whose top gradient is all zero are left out of the backward
    products: same gradients as the NumPy path, and their dx is zero."""
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", threads)
    seen = _spy_skips(monkeypatch)
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape)
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(_conv(param), dtype=np.float32)
    bottom, top = setup_layer(layer, [x.astype(np.float32)])
    diffs = [_sparse_diffs(top[0].shape, active, rng)]
    for propagate in ([True], [False]):
        compare_backends(_conv(param), [x], backend="cpu", reference="numpy", iterations=2,
                         top_diffs=diffs, propagate=propagate, rtol=1e-5, atol=1e-6)
    assert seen and all(s == active for s in seen)
    # dx of a skipped image is written (zero), not left as it was
    layer.forward(bottom, top)
    top[0].diff[...] = diffs[0]
    bottom[0].diff[...] = np.nan
    layer.backward(top, [True], bottom)
    assert np.isfinite(bottom[0].diff).all()
    skipped = [i for i in range(shape[0]) if i not in active]
    assert not bottom[0].diff[skipped].any()


@pytest.mark.parametrize("split_work", [1, 10**9])
@pytest.mark.parametrize("active", [[0, 3, 4], [], [2]])
def test_inner_product_skips_zero_rows(active, split_work, monkeypatch):
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", "2")
    monkeypatch.setattr("layergraph.layers.inner_product.SPLIT_WORK", split_work)
    seen = _spy_skips(monkeypatch)
    spec = ('type: "InnerProduct" inner_product_param { num_output: 7 '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" } }')
    rng = np.random.default_rng(12)
    x = rng.standard_normal((9, 2, 3))
    diffs = [_sparse_diffs((9, 7), active, rng)]
    for propagate in ([True], [False]):
        compare_backends(spec, [x], backend="cpu", reference="numpy", iterations=2,
                         top_diffs=diffs, propagate=propagate, rtol=1e-5, atol=1e-6)
    assert seen and all(s == active for s in seen)
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(spec, dtype=np.float32)
    bottom, top = setup_layer(layer, [x.astype(np.float32)])
    layer.forward(bottom, top)
    top[0].diff[...] = diffs[0]
    bottom[0].diff[...] = np.nan
    layer.backward(top, [True], bottom)
    skipped = [i for i in range(9) if i not in active]
    assert np.isfinite(bottom[0].diff).all() and not bottom[0].diff[skipped].any()


SKIP_NET = """
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 8 dim: 2 dim: 6 dim: 6 } shape { dim: 8 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "uniform" } } }
layer { name: "%s" type: "%s" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }
"""


@pytest.mark.parametrize("between,conv_skips", [("BatchNorm", False), ("ReLU", True)])
def test_net_clears_the_hint_after_a_layer_that_does_not_keep_it(between, conv_skips,
                                                                 monkeypatch):
    """A top gradient zero in rows 0, 2-4, 6, 7 (targets met): InnerProduct
    skips them and says so; BatchNorm in place between it and the
    convolution makes every row nonzero again and does not track the hint,
    so the Net clears it and the convolution runs every image (ReLU keeps
    the hint, and the convolution skips too).  Gradients as without skipping."""
    import layergraph as lg
    from layergraph.prototxt import parse_text
    seen = _spy_skips(monkeypatch)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 2, 6, 6)).astype(np.float32)
    grads = []
    for skip_below in (cpu_kernels.SKIP_BELOW, 0.0):
        monkeypatch.setattr(cpu_kernels, "SKIP_BELOW", skip_below)
        net = lg.Net(parse_text(SKIP_NET % ("between", between), lg.pb.NetParameter()),
                     lg.TRAIN)
        net.forward(x=x, t=np.zeros((8, 4), np.float32))
        target = net.blobs["ip"].data.copy()
        target[[1, 5]] += 1.0                  # only rows 1 and 5 miss their target
        net.forward(x=x, t=target)
        net.clear_param_diffs()
        net.backward()
        grads.append([p.diff.copy() for p in net.learnable_params])
    assert seen[0] == [1, 5]                   # the InnerProduct skipped
    assert (seen[1] == [1, 5]) == conv_skips   # the convolution only behind ReLU
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_skipping_keeps_the_template_losses(db, tmp_path, monkeypatch):
    """TripletNet_28x28: most triplets meet the margin within a few steps;
    the run that skips them gives the losses of the run that does not."""
    from layergraph.solver import Solver
    from layergraph.tools.evaluate import new_from_template
    new_from_template("TripletNet_28x28", "TINY", str(tmp_path / "run"))
    seen = _spy_skips(monkeypatch)
    curves = []
    for skip_below in (cpu_kernels.SKIP_BELOW, 0.0):
        monkeypatch.setattr(cpu_kernels, "SKIP_BELOW", skip_below)
        solver = Solver(str(tmp_path / "run" / "solver.prototxt"), log=lambda *a: None)
        curves.append(_losses(solver, 12))
    assert sum(s is not None for s in seen) >= 10    # layers skipped, step after step
    np.testing.assert_allclose(curves[0], curves[1], rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("param", ["pool: MAX kernel_size: 2 stride: 2",
                                   "pool: AVE kernel_size: 3 stride: 2 pad: 1"])
def test_pooling_backward_uses_the_hint(param):
    """With ``top.active`` naming few items, the others' planes are only
    zeroed: same bottom gradient as without the hint, and the hint passed on."""
    from layergraph.testing import make_layer, setup_layer
    rng = np.random.default_rng(4)
    layer = make_layer(f'type: "Pooling" pooling_param {{ {param} }}', dtype=np.float32)
    bottom, top = setup_layer(layer, [rng.standard_normal((6, 3, 8, 8)).astype(np.float32)])
    layer.forward(bottom, top)
    active = np.array([1, 4])
    top[0].diff[...] = _sparse_diffs(top[0].shape, active, rng)
    results = []
    for hint in (None, active):
        top[0].active = hint
        bottom[0].diff[...] = np.nan
        layer.backward(top, [True], bottom)
        results.append(bottom[0].diff.copy())
        assert bottom[0].active is hint
    assert np.isfinite(results[1]).all() and not results[1][[0, 2, 3, 5]].any()
    np.testing.assert_array_equal(results[0], results[1])


def test_row_hash_matches_the_numpy_twin():
    from layergraph.layers.data_sequence import _content_hash, _row_hash
    rng = np.random.default_rng(6)
    items = rng.standard_normal((37, 785)).astype(np.float32)
    items[3] = items[5]                         # equal content, equal hash
    items[7, 0] = -0.0
    expected = _row_hash(items)
    np.testing.assert_array_equal(cpu_kernels.row_hash(items), expected)
    np.testing.assert_array_equal(_content_hash(items), expected)
    assert expected[3] == expected[5] and len(set(expected.tolist())) == 36
    assert cpu_kernels.row_hash(items.astype(np.float64)) is None
    for width in (1, 5, 8, 17):   # 8 elements per vector step, then the rest one by one
        short = np.ascontiguousarray(items[:, :width])
        np.testing.assert_array_equal(cpu_kernels.row_hash(short), _row_hash(short))


@pytest.mark.skipif(not cpu_kernels.direct_conv_available(), reason="no AVX-512F here")
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("param,shape,direct", [
    ("num_output: 20 kernel_size: 5", (4, 1, 28, 28), True),           # conv1 of the templates
    ("num_output: 13 kernel_size: 3", (5, 3, 9, 11), True),            # 8 + 5 channels, RGB
    ("num_output: 9 kernel_h: 2 kernel_w: 3", (3, 2, 6, 7), True),
    ("num_output: 3 kernel_size: 1", (2, 4, 1, 1), True),              # a 1x1 plane
    ("num_output: 7 kernel_size: 4", (3, 2, 30, 19), True),            # tiles and their rests
    ("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 6, 6), False),      # padding: columns
    ("num_output: 4 kernel_size: 5", (2, 3, 9, 9), False),             # 75 values per window
])
def test_direct_convolution_matches_numpy(param, shape, direct, threads, monkeypatch):
    """Windows of at most 64 values, stride 1, no padding: the forward pass
    runs without columns (cpu_kernels.direct_conv), and so does the weight
    gradient when no bottom gradient is asked for (a first layer) -- same
    top and gradients as the NumPy path; with a bottom gradient the
    backward pass makes the columns itself."""
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", threads)
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(_conv(param), dtype=np.float32)
    setup_layer(layer, [np.zeros(shape, np.float32)])
    assert layer._direct == direct
    x = RNG.standard_normal(shape)
    for propagate in ([True], [False]):   # [False]: the weight gradient without columns
        compare_backends(_conv(param), [x], backend="cpu", reference="numpy", iterations=2,
                         propagate=propagate, rtol=1e-5, atol=1e-6)


def test_compile_sources_is_the_loaded_library():
    """compile_sources + load (benchmarks/ab_kernels.py builds a second
    revision's loops this way) give the library the layers use: the same
    cached file for the same sources."""
    from layergraph.kernels import kernel_dir
    if cpu_kernels.library() is None:
        pytest.skip("no compiled loops here")
    path = cpu_kernels.compile_sources(kernel_dir())
    assert path == cpu_kernels.library()._name
    assert cpu_kernels.load(path).lg_get_threads() >= 1


def test_ab_kernels_compares_the_c_interfaces(tmp_path):
    """benchmarks/ab_kernels.py refuses a base whose C functions or
    arguments differ from the working tree's (the Python side would call
    them wrongly): the interface it reads off the sources."""
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "ab_kernels", os.path.join(root, "benchmarks", "ab_kernels.py"))
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    from layergraph.kernels import kernel_dir
    ours = ab.c_interface(kernel_dir())
    assert ours["lg_ip_backward_parts_f32"].endswith("float* w_diff, float* b_diff, float* dx")
    assert ours["lg_im2col_"].startswith("const T* x, i64 n, int c")    # (a macro's)
    assert {"lg_data_sequence_f32", "lg_sgd_update_many_", "lg_set_threads"} <= set(ours)
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "a.cpp").write_text(
        'extern "C" void lg_f(int a,\n    float* b) {}\n#define X(S) \\\n'
        '  extern "C" int lg_g_##S(const T* x, \\\n   i64 n) { return 0; }\n')
    assert ab.c_interface(str(tmp_path)) == {"lg_f": "int a, float* b",
                                            "lg_g_": "const T* x, i64 n"}


def test_direct_convolution_refuses_large_windows():
    x = np.zeros((1, 3, 9, 9), np.float32)
    w = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="at most 64"):
        cpu_kernels.direct_conv(x, w, None, np.zeros((1, 2, 5, 5), np.float32),
                                cpu_kernels.direct_conv_scratch(2, 5, 9))


@pytest.mark.parametrize("threads", ["1", "2"])
def test_convolution_backward_in_chunks_of_images(threads, monkeypatch):
    """dcol -> col2im runs a few images at a time (cache-sized chunks): with
    chunks of 2 images, the same gradients as the NumPy path, also for the
    active images only."""
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", threads)
    from layergraph.testing import make_layer, setup_layer
    spec = _conv("num_output: 4 kernel_size: 3 pad: 1")
    x = np.random.default_rng(8).standard_normal((7, 3, 6, 6)).astype(np.float32)
    results = []
    for loops in (False, True):
        with cpu_kernels.disabled() if not loops else _nothing():
            layer = make_layer(spec, dtype=np.float32, seed=1)
            bottom, top = setup_layer(layer, [x])
        if loops:
            layer._dcol_images = 2
        got = []
        for active in (None, [0, 3, 4]):
            layer.forward(bottom, top)
            draw = np.random.default_rng(9)          # the same diffs on both paths
            top[0].diff[...] = (draw.standard_normal(top[0].shape) if active is None
                                else _sparse_diffs(top[0].shape, active, draw))
            for b in layer.blobs:
                b.zero_diff()
            layer.backward(top, [True], bottom)
            got.append([bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
        results.append(got)
    for ref, new in zip(*results):
        for a, b in zip(ref, new):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


# ------------------------------------------- a layer's pass in one call ----
def _pass_both_ways(spec, x, diffs, propagate, threads, monkeypatch, split_work=None):
    """(top, bottom diff, param diffs) of forward + backward per top gradient
    in ``diffs``, with the split pass in one call (layer_parts.cpp) and on
    the Python thread pool (LAYERGRAPH_NATIVE_PARTS=0)."""
    from layergraph.testing import make_layer, setup_layer
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", threads)
    if split_work is not None:
        monkeypatch.setattr("layergraph.layers.inner_product.SPLIT_WORK", split_work)
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv("LAYERGRAPH_NATIVE_PARTS", native)
        layer = make_layer(spec, dtype=np.float32, seed=3)
        bottom, top = setup_layer(layer, [x])
        got = []
        for dy in diffs:
            layer.forward(bottom, top)
            top[0].diff[...] = dy
            bottom[0].diff[...] = np.nan
            top[0].active = None
            layer.backward(top, [propagate], bottom)   # param diffs accumulate
            got.append([top[0].data.copy()] + ([bottom[0].diff.copy()] if propagate else [])
                       + [b.diff.copy() for b in layer.blobs])
        results.append(got)
    return results


@pytest.mark.skipif(not cpu_kernels.native_parts(np.float32), reason="no sgemm found")
@pytest.mark.parametrize("threads", ["1", "2", "3"])
@pytest.mark.parametrize("propagate", [True, False])
@pytest.mark.parametrize("param,shape", [
    ("num_output: 5 kernel_size: 3 pad: 1", (7, 3, 6, 6)),          # unequal parts
    ("num_output: 6 kernel_size: 3 group: 3 pad: 1 stride: 2", (6, 6, 7, 7)),
    ("num_output: 3 kernel_size: 2 bias_term: false", (6, 2, 5, 5)),
    ("num_output: 8 kernel_size: 5", (6, 1, 12, 12)),               # direct where it can
    ("num_output: 4 kernel_size: 3 dilation: 2", (5, 2, 9, 9)),
])
def test_convolution_native_parts_match_the_thread_pool(param, shape, propagate, threads,
                                                        monkeypatch):
    """The split pass as one call gives the thread pool's bits: every
    image, some images active (gathered), none active; the parts' weight
    and bias gradients added into the diffs in the same order."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal(shape).astype(np.float32)
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(_conv(param), dtype=np.float32)
    _, top = setup_layer(layer, [x])
    assert layer._native
    n = shape[0]
    diffs = [rng.standard_normal(top[0].shape).astype(np.float32),
             _sparse_diffs(top[0].shape, [1, n - 1], rng),
             _sparse_diffs(top[0].shape, [], rng)]
    native, pool = _pass_both_ways(_conv(param), x, diffs, propagate, threads, monkeypatch)
    for a, b in zip(native, pool):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


@pytest.mark.skipif(not cpu_kernels.native_parts(np.float32), reason="no sgemm found")
@pytest.mark.parametrize("threads", ["2", "3"])
@pytest.mark.parametrize("propagate", [True, False])
@pytest.mark.parametrize("bias", ["true", "false"])
def test_inner_product_native_parts_match_the_thread_pool(threads, propagate, bias,
                                                          monkeypatch):
    spec = ('type: "InnerProduct" inner_product_param { num_output: 11 bias_term: %s '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" } }'
            % bias)
    rng = np.random.default_rng(22)
    x = rng.standard_normal((9, 2, 5)).astype(np.float32)
    diffs = [rng.standard_normal((9, 11)).astype(np.float32),
             _sparse_diffs((9, 11), [0, 4, 8], rng),          # too few rows to split
             _sparse_diffs((9, 11), [0, 2, 3, 5, 8], rng)]    # gathered, then split
    native, pool = _pass_both_ways(spec, x, diffs, propagate, threads, monkeypatch,
                                   split_work=1)
    for a, b in zip(native, pool):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


@pytest.mark.skipif(not cpu_kernels.native_parts(np.float32), reason="no sgemm found")
def test_inner_product_native_parts_on_a_large_batch(monkeypatch):
    """The one-call pass adds dw into the diff inside the product: beyond
    the BLAS's K block (more batch rows than 384 in OpenBLAS) the sums are
    the thread pool's to float32 rounding rather than bit for bit."""
    spec = ('type: "InnerProduct" inner_product_param { num_output: 40 '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" } }')
    rng = np.random.default_rng(24)
    x = rng.standard_normal((1000, 300)).astype(np.float32)
    diffs = [rng.standard_normal((1000, 40)).astype(np.float32) for _ in range(2)]
    native, pool = _pass_both_ways(spec, x, diffs, True, "2", monkeypatch, split_work=1)
    for a, b in zip(native, pool):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-4)


def test_native_parts_follow_the_environment(monkeypatch):
    monkeypatch.setenv("LAYERGRAPH_NATIVE_PARTS", "0")
    assert not cpu_kernels.native_parts(np.float32)
    monkeypatch.setenv("LAYERGRAPH_NATIVE_PARTS", "1")
    assert not cpu_kernels.native_parts(np.float64)      # float32 only
    if cpu_kernels._sgemm_ready():
        assert cpu_kernels.native_parts(np.float32)


@pytest.mark.skipif(not cpu_kernels.native_parts(np.float32), reason="no sgemm found")
@pytest.mark.parametrize("threads", ["1", "2"])
@pytest.mark.parametrize("param,shape", [
    ("num_output: 5 kernel_size: 3 pad: 1", (7, 3, 6, 6)),
    ("num_output: 6 kernel_size: 3 group: 3 pad: 1 stride: 2", (6, 6, 7, 7)),
])
def test_convolution_columns_in_chunks_match_numpy(param, shape, threads, monkeypatch):
    """The one-call pass makes its columns a few images at a time
    (COLUMN_CHUNK_BYTES) and again in backward: the NumPy path's results,
    for every image and for the active ones only."""
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", threads)
    monkeypatch.setattr("layergraph.layers.convolution.COLUMN_CHUNK_BYTES", 1)  # 1 image
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(_conv(param), dtype=np.float32)
    _, top = setup_layer(layer, [np.zeros(shape, np.float32)])
    assert layer._chunk == 1
    rng = np.random.default_rng(23)
    x = rng.standard_normal(shape)
    for diffs in ([rng.standard_normal(top[0].shape)],
                  [_sparse_diffs(top[0].shape, [0, 2, shape[0] - 1], rng)]):
        for propagate in ([True], [False]):
            compare_backends(_conv(param), [x], backend="cpu", reference="numpy",
                             iterations=2, top_diffs=diffs, propagate=propagate,
                             rtol=1e-5, atol=1e-6)


def test_without_an_sgemm_the_split_passes_use_the_thread_pool(monkeypatch):
    """A BLAS whose sgemm cannot be found (or fails the check product)
    leaves the split passes on the Python thread pool, same results."""
    monkeypatch.setattr(cpu_kernels, "_sgemm", None)
    monkeypatch.setattr(cpu_kernels, "_find_sgemm", lambda: None)
    assert not cpu_kernels.native_parts(np.float32)
    assert "no usable BLAS sgemm found" in cpu_kernels.native_status()
    monkeypatch.setenv("LAYERGRAPH_BATCH_THREADS", "2")
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer(_conv("num_output: 5 kernel_size: 3 pad: 1"), dtype=np.float32)
    setup_layer(layer, [np.zeros((6, 3, 6, 6), np.float32)])
    assert not layer._native and layer._chunk == 0
    compare_backends(_conv("num_output: 5 kernel_size: 3 pad: 1"),
                     [RNG.standard_normal((6, 3, 6, 6))], backend="cpu", reference="numpy",
                     iterations=2, rtol=1e-5, atol=1e-6)
