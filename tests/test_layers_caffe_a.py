"""BVLC layer types, part A: AbsVal, BNLL, Exp, Log, Power, Swish,
Threshold, Clip, BatchNorm, Scale, Bias, LRN, MVN, Deconvolution, Crop,
Im2col, SPP.  Forward values against formulas written here independently
(closed forms, naive loops, adjoint identities), backward against central
differences (float64), Caffe's parameter defaults and refusals."""
import numpy as np
import pytest

from layergraph import Net
from layergraph.blob import Blob
from layergraph.errors import LayerError, ShapeError
from layergraph.proto import pb
from layergraph.prototxt import parse_net
from layergraph.testing import (check_gradient, check_layer_gradient, make_layer, run_layer,
                                setup_layer)

RNG = np.random.default_rng(1234)


def away_from(shape, points=(0.0,), gap=0.1, seed=0, spread=2.0):
    """Random values at least ``gap`` away from every kink in ``points``."""
    x = np.random.default_rng(seed).uniform(-spread, spread, shape)
    for p in points:
        close = np.abs(x - p) < gap
        x[close] = p + np.where(x[close] >= p, gap, -gap)
    return x


def distinct(shape, seed=0, step=0.1):
    """All values distinct and ``step`` apart (max pooling never ties)."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * step - n * step / 2).reshape(shape)


def in_place_run(spec, x, dy, phase=pb.TRAIN, prepare=None):
    """Forward/backward once with top is bottom; returns (y, dx, layer)."""
    layer = make_layer(spec, phase=phase)
    b = Blob(x.shape, dtype=np.float64, name="x")
    b.data[...] = x
    layer.setup([b], [b])
    if prepare:
        prepare(layer)
    layer.reshape([b], [b])
    layer.forward([b], [b])
    y = b.data.copy()
    b.diff[...] = dy
    layer.backward([b], [True], [b])
    return y, b.diff.copy(), layer


def out_of_place_run(spec, x, dy, phase=pb.TRAIN, prepare=None):
    layer = make_layer(spec, phase=phase)
    bottom, top = setup_layer(layer, [x])
    if prepare:
        prepare(layer)
        layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    return top[0].data.copy(), bottom[0].diff.copy(), layer


# ---------------------------------------------------------------- AbsVal --
def test_absval_forward_and_gradient():
    x = np.array([[-2.5, -0.0, 0.0, 1.5]])
    _, (y,) = run_layer('type: "AbsVal"', [x])
    np.testing.assert_array_equal(y, [[2.5, 0.0, 0.0, 1.5]])
    check_layer_gradient('type: "AbsVal"', [away_from((2, 3, 4))])


def test_absval_refuses_in_place():
    layer = make_layer('type: "AbsVal"')
    b = Blob((2,), dtype=np.float64)
    with pytest.raises(LayerError, match="in-place"):
        layer.setup([b], [b])


# ------------------------------------------------------------------ BNLL --
def test_bnll_forward_is_softplus_without_overflow():
    x = np.array([-800.0, -30.0, -1.0, 0.0, 2.0, 60.0, 800.0])
    _, (y,) = run_layer('type: "BNLL"', [x])
    np.testing.assert_allclose(y, np.logaddexp(0.0, x), rtol=1e-14)
    assert np.all(np.isfinite(y))


def test_bnll_gradient_and_in_place():
    x = RNG.standard_normal((2, 3, 4)) * 3
    check_layer_gradient('type: "BNLL"', [x])
    dy = RNG.standard_normal(x.shape)
    y0, dx0, _ = out_of_place_run('type: "BNLL"', x, dy)
    y1, dx1, _ = in_place_run('type: "BNLL"', x, dy)
    np.testing.assert_allclose(y1, y0)
    np.testing.assert_allclose(dx1, dx0)
    np.testing.assert_allclose(dx0, dy / (1 + np.exp(-x)), rtol=1e-12)


# ------------------------------------------------------------------- Exp --
@pytest.mark.parametrize("body, formula", [
    ("", lambda x: np.exp(x)),
    ("base: 2 scale: 2 shift: 1", lambda x: 2.0 ** (1 + 2 * x)),
    ("scale: -0.5 shift: 0.25", lambda x: np.exp(0.25 - 0.5 * x)),
    ("base: 10 scale: 0.25", lambda x: 10.0 ** (0.25 * x)),
])
def test_exp_forward_and_gradient(body, formula):
    spec = f'type: "Exp" exp_param {{ {body} }}'
    x = RNG.standard_normal((3, 4))
    _, (y,) = run_layer(spec, [x])
    np.testing.assert_allclose(y, formula(x), rtol=1e-12)
    check_layer_gradient(spec, [x])


def test_exp_refuses_non_positive_base():
    with pytest.raises(LayerError, match="base must be > 0"):
        run_layer('type: "Exp" exp_param { base: -2 }', [np.ones(2)])


# ------------------------------------------------------------------- Log --
@pytest.mark.parametrize("body, formula", [
    ("", np.log),
    ("base: 2 scale: 2 shift: 4", lambda x: np.log2(4 + 2 * x)),
    ("base: 10 scale: 0.5 shift: 1", lambda x: np.log10(1 + 0.5 * x)),
])
def test_log_forward_and_gradient(body, formula):
    spec = f'type: "Log" log_param {{ {body} }}'
    x = RNG.uniform(0.5, 3.0, (3, 4))
    _, (y,) = run_layer(spec, [x])
    np.testing.assert_allclose(y, formula(x), rtol=1e-12)
    check_layer_gradient(spec, [x])
    dy = RNG.standard_normal(x.shape)
    y0, dx0, _ = out_of_place_run(spec, x, dy)
    y1, dx1, _ = in_place_run(spec, x, dy)
    np.testing.assert_allclose(dx1, dx0)


@pytest.mark.parametrize("base", [1, 0, -3])
def test_log_refuses_bad_base(base):
    with pytest.raises(LayerError, match="base"):
        run_layer(f'type: "Log" log_param {{ base: {base} }}', [np.ones(2)])


# ----------------------------------------------------------------- Power --
@pytest.mark.parametrize("power, scale, shift", [
    (2, 3, 1), (0.5, 2, 5), (-1.5, 1, 4), (3, -1, 0), (1, 2, 0.5), (1, 1, 0)])
def test_power_forward_and_gradient(power, scale, shift):
    spec = f'type: "Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}'
    x = RNG.uniform(-1.0, 1.0, (2, 3, 2))
    _, (y,) = run_layer(spec, [x])
    np.testing.assert_allclose(y, (shift + scale * x) ** power, rtol=1e-12)
    check_layer_gradient(spec, [x])


def test_power_defaults_are_identity_and_constant_cases():
    x = RNG.standard_normal((2, 5))
    _, (y,) = run_layer('type: "Power"', [x])
    np.testing.assert_array_equal(y, x)
    # power 0: y = 1; scale 0: y = shift^power; both with zero gradient
    for body, value in (("power: 0 shift: 3", 1.0), ("power: 2 scale: 0 shift: 3", 9.0)):
        spec = f'type: "Power" power_param {{ {body} }}'
        y, dx, _ = out_of_place_run(spec, x, np.ones_like(x))
        np.testing.assert_array_equal(y, np.full_like(x, value))
        np.testing.assert_array_equal(dx, np.zeros_like(x))


def test_power_gradient_is_finite_at_zero_without_shift():
    """Caffe's p*y/x would be 0/0 at x = 0; the closed form is 0 there."""
    x = np.array([0.0, 1.0, -2.0])
    _, dx, _ = out_of_place_run('type: "Power" power_param { power: 3 }', x, np.ones(3))
    np.testing.assert_allclose(dx, 3 * x ** 2)


def test_power_in_place_matches():
    spec = 'type: "Power" power_param { power: 2 scale: -0.5 shift: 1 }'
    x, dy = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))
    y0, dx0, _ = out_of_place_run(spec, x, dy)
    y1, dx1, _ = in_place_run(spec, x, dy)
    np.testing.assert_allclose(y1, y0)
    np.testing.assert_allclose(dx1, dx0)


# ----------------------------------------------------------------- Swish --
@pytest.mark.parametrize("beta", [1.0, 0.375, 2.5])
def test_swish_forward_and_gradient(beta):
    spec = f'type: "Swish" swish_param {{ beta: {beta} }}'
    x = RNG.standard_normal((3, 4)) * 3
    _, (y,) = run_layer(spec, [x])
    np.testing.assert_allclose(y, x / (1 + np.exp(-beta * x)), rtol=1e-12)
    check_layer_gradient(spec, [x])
    dy = RNG.standard_normal(x.shape)
    _, dx0, _ = out_of_place_run(spec, x, dy)
    _, dx1, _ = in_place_run(spec, x, dy)
    np.testing.assert_allclose(dx1, dx0)


def test_swish_does_not_overflow():
    _, (y,) = run_layer('type: "Swish"', [np.array([-1000.0, 1000.0])])
    np.testing.assert_array_equal(y, [-0.0, 1000.0])


# ------------------------------------------------------------- Threshold --
def test_threshold_forward_and_no_backward():
    x = np.array([[-1.0, 0.0, 0.2, 0.5, 0.7]])
    _, (y,) = run_layer('type: "Threshold"', [x])
    np.testing.assert_array_equal(y, [[0, 0, 1, 1, 1]])
    layer, (y,) = run_layer('type: "Threshold" threshold_param { threshold: 0.5 }', [x])
    np.testing.assert_array_equal(y, [[0, 0, 0, 0, 1]])
    assert not layer.has_backward


# ------------------------------------------------------------------ Clip --
def test_clip_forward_gradient_and_bounds():
    spec = 'type: "Clip" clip_param { min: -0.5 max: 1 }'
    x = away_from((3, 4, 2), points=(-0.5, 1.0), gap=0.05, seed=3)
    _, (y,) = run_layer(spec, [x])
    np.testing.assert_array_equal(y, np.clip(x, -0.5, 1.0))
    check_layer_gradient(spec, [x])
    # the closed interval passes the gradient, as Caffe
    _, dx, _ = out_of_place_run(spec, np.array([-0.5, 1.0, 1.5]), np.ones(3))
    np.testing.assert_array_equal(dx, [1, 1, 0])
    dy = RNG.standard_normal(x.shape)
    _, dx0, _ = out_of_place_run(spec, x, dy)
    _, dx1, _ = in_place_run(spec, x, dy)
    np.testing.assert_array_equal(dx1, dx0)


@pytest.mark.parametrize("body, message", [
    ("min: 0", "max"), ("", "min and max"), ("min: 2 max: 1", "must be <=")])
def test_clip_refuses_missing_or_crossed_bounds(body, message):
    with pytest.raises(LayerError, match=message):
        run_layer(f'type: "Clip" clip_param {{ {body} }}', [np.ones(2)])


# ------------------------------------------------------------- BatchNorm --
def batch_stats(x):
    axes = (0,) + tuple(range(2, x.ndim)) if x.ndim > 1 else (0,)
    return x.mean(axis=axes), x.var(axis=axes), x.size // (x.shape[1] if x.ndim > 1 else 1)


def bcast(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2)) if x.ndim > 1 else v


@pytest.mark.parametrize("shape", [(4, 3, 2, 5), (6, 4), (7,), (3, 2, 5)])
def test_batchnorm_train_forward_and_running_sums(shape):
    xs = [RNG.standard_normal(shape) * 2 + 1 for _ in range(3)]
    layer = make_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }')
    bottom, top = setup_layer(layer, [xs[0]])
    channels = shape[1] if len(shape) > 1 else 1
    assert [b.shape for b in layer.blobs] == [(channels,), (channels,), (1,)]
    mean_sum = var_sum = 0.0
    factor = 0.0
    for x in xs:
        bottom[0].data[...] = x
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        mu, var, m = batch_stats(x)
        np.testing.assert_allclose(top[0].data, (x - bcast(mu, x)) / np.sqrt(bcast(var, x) + 1e-5),
                                   rtol=1e-6, atol=1e-12)
        factor = 0.9 * factor + 1
        mean_sum = mu + 0.9 * mean_sum
        var_sum = var * m / (m - 1) + 0.9 * var_sum
    np.testing.assert_allclose(layer.blobs[2].data, [factor], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].data, mean_sum, rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].data, var_sum, rtol=1e-6)


def set_stats(layer, mean_sum, var_sum, factor):
    for blob, value in zip(layer.blobs, (mean_sum, var_sum, [factor])):
        blob.data[...] = value


@pytest.mark.parametrize("phase, body, global_stats", [
    (pb.TRAIN, "", False),
    (pb.TEST, "", True),
    (pb.TRAIN, "use_global_stats: true", True),
    (pb.TEST, "use_global_stats: false", False),
])
def test_batchnorm_global_stats_default_follows_phase(phase, body, global_stats):
    x = RNG.standard_normal((5, 3, 2)) + 4
    spec = f'type: "BatchNorm" batch_norm_param {{ {body} eps: 0.01 }}'
    mean_sum, var_sum = np.array([2.0, -1.0, 0.5]), np.array([4.0, 1.0, 9.0])
    layer = make_layer(spec, phase=phase)
    bottom, top = setup_layer(layer, [x])
    set_stats(layer, mean_sum, var_sum, 2.0)
    layer.forward(bottom, top)
    assert layer.use_global_stats is global_stats
    if global_stats:
        expected = (x - bcast(mean_sum / 2, x)) / np.sqrt(bcast(var_sum / 2, x) + 0.01)
        np.testing.assert_array_equal(layer.blobs[2].data, [2.0])  # not updated
    else:
        mu, var, _ = batch_stats(x)
        expected = (x - bcast(mu, x)) / np.sqrt(bcast(var, x) + 0.01)
    np.testing.assert_allclose(top[0].data, expected, rtol=1e-6)


def test_batchnorm_global_stats_with_zero_factor_use_zero_statistics():
    x = RNG.standard_normal((2, 3))
    _, (y,) = run_layer('type: "BatchNorm"', [x], phase=pb.TEST)
    np.testing.assert_allclose(y, x / np.sqrt(1e-5), rtol=1e-6)


@pytest.mark.parametrize("phase", [pb.TRAIN, pb.TEST])
@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (5, 2)])
def test_batchnorm_gradient(phase, shape):
    layer = make_layer('type: "BatchNorm"', phase=phase)
    bottom, top = setup_layer(layer, [RNG.standard_normal(shape)])
    set_stats(layer, RNG.standard_normal(shape[1]), RNG.uniform(1, 2, shape[1]), 1.5)
    # the statistics are not parameters: no gradient is defined for them
    assert check_gradient(layer, bottom, top, check_params=False) == np.prod(shape)


def test_batchnorm_in_place_matches_out_of_place():
    x, dy = RNG.standard_normal((4, 3, 5)), RNG.standard_normal((4, 3, 5))
    y0, dx0, l0 = out_of_place_run('type: "BatchNorm"', x, dy)
    y1, dx1, l1 = in_place_run('type: "BatchNorm"', x, dy)
    np.testing.assert_allclose(y1, y0, rtol=1e-12)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-15)


def test_batchnorm_statistics_are_not_learned():
    layer, _ = run_layer('type: "BatchNorm"', [RNG.standard_normal((2, 3))])
    assert [b.learnable for b in layer.blobs] == [False] * 3
    with pytest.raises(LayerError, match="cannot be learned"):
        run_layer('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }',
                  [np.ones((2, 3))])
    run_layer('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 0 } '
              'param { lr_mult: 0 }', [np.ones((2, 3))])


RESNET_BLOCK = """
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 }
                      shape { dim: 4 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "scale" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "loss" type: "EuclideanLoss" bottom: "c" bottom: "t" top: "loss" }
"""


def test_batchnorm_scale_block_in_a_net():
    """Conv -> BatchNorm -> Scale -> ReLU, all in place: the statistics are
    no learnable parameters, and a TEST net uses the global statistics."""
    net = Net(parse_net(RESNET_BLOCK), pb.TRAIN, dtype=np.float64)
    bn = net.layer("bn")
    assert all(b not in net.learnable_params for b in bn.blobs)
    assert len(net.learnable_params) == 4  # conv w, b; scale, bias
    rng = np.random.default_rng(0)
    for name in ("x", "t"):
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape)
    net.clear_param_diffs()
    net.forward_backward()
    assert bn.blobs[2].data[0] == 1.0
    assert np.any(net.layer("scale").blobs[0].diff != 0)
    test = Net(parse_net(RESNET_BLOCK), pb.TEST, dtype=np.float64)
    assert test.layer("bn").use_global_stats


# ----------------------------------------------------------------- Scale --
FILLERS = 'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


@pytest.mark.parametrize("body, scale_shape, view", [
    ("", (3,), (1, 3, 1, 1)),
    ("axis: 1 num_axes: 2", (3, 4), (1, 3, 4, 1)),
    ("axis: -1", (5,), (1, 1, 1, 5)),
    ("axis: 0 num_axes: -1", (2, 3, 4, 5), (2, 3, 4, 5)),
    ("num_axes: 0", (), (1, 1, 1, 1)),
    ("axis: 2 num_axes: -1", (4, 5), (1, 1, 4, 5)),
])
@pytest.mark.parametrize("bias", [False, True])
def test_scale_one_bottom(body, scale_shape, view, bias):
    spec = f'type: "Scale" scale_param {{ {body} bias_term: {str(bias).lower()} {FILLERS} }}'
    x = RNG.standard_normal((2, 3, 4, 5))
    layer, (y,) = run_layer(spec, [x])
    s = layer.blobs[0].data
    assert s.shape == scale_shape
    expected = x * s.reshape(view)
    if bias:
        assert layer.blobs[1].shape == scale_shape
        expected = expected + layer.blobs[1].data.reshape(view)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    check_layer_gradient(spec, [x])


def test_scale_defaults_to_identity_with_zero_bias():
    x = RNG.standard_normal((2, 3, 2))
    layer, (y,) = run_layer('type: "Scale" scale_param { bias_term: true }', [x])
    np.testing.assert_array_equal(layer.blobs[0].data, np.ones(3))
    np.testing.assert_array_equal(layer.blobs[1].data, np.zeros(3))
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("body, scale_shape", [
    ("", (3,)), ("axis: 1", (3, 4)), ("axis: 0", (2,)), ("", ()), ("axis: -2", (4, 5))])
def test_scale_two_bottoms(body, scale_shape):
    spec = f'type: "Scale" scale_param {{ {body} bias_term: true {FILLERS} }}'
    x = RNG.standard_normal((2, 3, 4, 5))
    s = RNG.standard_normal(scale_shape)
    layer, (y,) = run_layer(spec, [x, s])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == scale_shape   # the bias
    axis = 0 if not scale_shape else {"": 1, "axis: 1": 1, "axis: 0": 0, "axis: -2": 2}[body]
    view = (1,) * axis + scale_shape + (1,) * (4 - axis - len(scale_shape))
    expected = x * s.reshape(view) + layer.blobs[0].data.reshape(view)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    check_layer_gradient(spec, [x, s])


def test_scale_gradient_to_scale_bottom_is_overwritten_param_accumulated():
    x, s = RNG.standard_normal((2, 3)), RNG.standard_normal(3)
    layer = make_layer('type: "Scale"')
    bottom, top = setup_layer(layer, [x, s])
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    bottom[1].diff[...] = 100.0
    layer.backward(top, [True, True], bottom)
    np.testing.assert_allclose(bottom[1].diff, x.sum(0))
    one = make_layer('type: "Scale"')
    bottom, top = setup_layer(one, [x])
    one.forward(bottom, top)
    top[0].diff[...] = 1.0
    one.blobs[0].diff[...] = 100.0
    one.backward(top, [True], bottom)
    np.testing.assert_allclose(one.blobs[0].diff, 100.0 + x.sum(0))


def test_scale_in_place_matches_out_of_place():
    spec = f'type: "Scale" scale_param {{ bias_term: true {FILLERS} }}'
    x, dy = RNG.standard_normal((3, 4, 2)), RNG.standard_normal((3, 4, 2))
    y0, dx0, l0 = out_of_place_run(spec, x, dy)
    y1, dx1, l1 = in_place_run(spec, x, dy)
    np.testing.assert_allclose(y1, y0)
    np.testing.assert_allclose(dx1, dx0)
    for b0, b1 in zip(l0.blobs, l1.blobs):
        np.testing.assert_allclose(b1.diff, b0.diff)


def test_scale_refuses_mismatched_shapes():
    with pytest.raises(ShapeError, match="does not match"):
        run_layer('type: "Scale"', [np.ones((2, 3, 4)), np.ones(4)])
    with pytest.raises(ShapeError, match="extends past"):
        run_layer('type: "Scale" scale_param { axis: 2 num_axes: 2 }', [np.ones((2, 3, 4))])


# ------------------------------------------------------------------ Bias --
@pytest.mark.parametrize("body, shape, view", [
    ("", (3,), (1, 3, 1, 1)), ("axis: 2 num_axes: 2", (4, 5), (1, 1, 4, 5)),
    ("num_axes: 0", (), (1, 1, 1, 1)), ("axis: -3 num_axes: -1", (3, 4, 5), (1, 3, 4, 5))])
def test_bias_one_bottom(body, shape, view):
    spec = f'type: "Bias" bias_param {{ {body} filler {{ type: "gaussian" std: 1 }} }}'
    x = RNG.standard_normal((2, 3, 4, 5))
    layer, (y,) = run_layer(spec, [x])
    assert layer.blobs[0].shape == shape
    np.testing.assert_allclose(y, x + layer.blobs[0].data.reshape(view))
    check_layer_gradient(spec, [x])


def test_bias_defaults_to_zero_and_two_bottoms():
    x, b = RNG.standard_normal((2, 3, 4)), RNG.standard_normal((3, 4))
    layer, (y,) = run_layer('type: "Bias"', [x])
    np.testing.assert_array_equal(layer.blobs[0].data, np.zeros(3))
    np.testing.assert_array_equal(y, x)
    layer, (y,) = run_layer('type: "Bias"', [x, b])
    assert layer.blobs == []
    np.testing.assert_allclose(y, x + b[None])
    check_layer_gradient('type: "Bias"', [x, b])


# ------------------------------------------------------------------- LRN --
def lrn_reference(x, size, alpha, beta, k, within):
    """Naive loops, straight from the definition."""
    n, c, h, w = x.shape
    half = (size - 1) // 2
    y = np.empty_like(x)
    for a in range(n):
        for ch in range(c):
            for r in range(h):
                for s in range(w):
                    if within:
                        win = x[a, ch, max(r - half, 0):r + half + 1, max(s - half, 0):s + half + 1]
                        scale = 1 + alpha / size ** 2 * np.sum(win ** 2)
                    else:
                        win = x[a, max(ch - half, 0):ch + half + 1, r, s]
                        scale = k + alpha / size * np.sum(win ** 2)
                    y[a, ch, r, s] = x[a, ch, r, s] * scale ** -beta
    return y


@pytest.mark.parametrize("body, size, alpha, beta, k, within", [
    ("", 5, 1.0, 0.75, 1.0, False),
    ("local_size: 3 alpha: 2 beta: 0.625 k: 2", 3, 2.0, 0.625, 2.0, False),
    ("norm_region: WITHIN_CHANNEL local_size: 3 alpha: 2 beta: 0.625 k: 7",
     3, 2.0, 0.625, 7.0, True),                       # k is not used within channels
    ("norm_region: WITHIN_CHANNEL", 5, 1.0, 0.75, 1.0, True),
])
def test_lrn_forward_and_gradient(body, size, alpha, beta, k, within):
    spec = f'type: "LRN" lrn_param {{ {body} }}'
    x = RNG.standard_normal((2, 7, 4, 5))
    _, (y,) = run_layer(spec, [x])
    np.testing.assert_allclose(y, lrn_reference(x, size, alpha, beta, k, within), rtol=1e-12)
    check_layer_gradient(spec, [x[:, :, :3, :3]])


def test_lrn_refuses_even_size_and_non_4d():
    with pytest.raises(LayerError, match="odd"):
        run_layer('type: "LRN" lrn_param { local_size: 4 }', [np.ones((1, 2, 3, 3))])
    with pytest.raises(ShapeError, match="4-D"):
        run_layer('type: "LRN"', [np.ones((2, 3))])


# ------------------------------------------------------------------- MVN --
@pytest.mark.parametrize("body, axes", [
    ("", (2, 3)), ("across_channels: true", (1, 2, 3)), ("eps: 0.125", (2, 3))])
def test_mvn_forward_and_gradient(body, axes):
    spec = f'type: "MVN" mvn_param {{ {body} }}'
    eps = 0.125 if "eps" in body else 1e-9
    x = RNG.standard_normal((2, 3, 4, 5)) * 3 + 2
    _, (y,) = run_layer(spec, [x])
    mu = x.mean(axis=axes, keepdims=True)
    sigma = np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True))
    np.testing.assert_allclose(y, (x - mu) / (sigma + eps), rtol=1e-10)
    check_layer_gradient(spec, [x[:, :, :2]])


def test_mvn_mean_only_and_in_place():
    spec = 'type: "MVN" mvn_param { normalize_variance: false }'
    x = RNG.standard_normal((3, 2, 4))
    _, (y,) = run_layer(spec, [x])
    np.testing.assert_allclose(y, x - x.mean(axis=2, keepdims=True))
    check_layer_gradient(spec, [x])
    dy = RNG.standard_normal(x.shape)
    for s in (spec, 'type: "MVN"'):
        y0, dx0, _ = out_of_place_run(s, x, dy)
        y1, dx1, _ = in_place_run(s, x, dy)
        np.testing.assert_allclose(y1, y0)
        np.testing.assert_allclose(dx1, dx0)


# --------------------------------------------------------- Deconvolution --
DECONV_FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
                  'bias_filler { type: "gaussian" std: 0.5 }')


def deconv_reference(x, weight, bias, stride, pad, dilation, group):
    """Scatter every input pixel through the kernel (the definition)."""
    n, c, h, w = x.shape
    _, o_g, kh, kw = weight.shape
    o = o_g * group
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    ho, wo = sh * (h - 1) + dh * (kh - 1) + 1, sw * (w - 1) + dw * (kw - 1) + 1
    full = np.zeros((n, o, ho, wo))
    c_g = c // group
    for ch in range(c):
        g = ch // c_g
        for i in range(kh):
            for j in range(kw):
                for oo in range(o_g):
                    full[:, g * o_g + oo, i * dh:i * dh + sh * (h - 1) + 1:sh,
                         j * dw:j * dw + sw * (w - 1) + 1:sw] += weight[ch, oo, i, j] * x[:, ch]
    y = full[:, :, ph:ho - ph, pw:wo - pw]
    return y + (bias[None, :, None, None] if bias is not None else 0)


DECONV_CASES = [
    ((2, 3, 4, 5), "num_output: 4 kernel_size: 3"),
    ((2, 4, 3, 4), "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2"),
    ((1, 2, 3, 3), "num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 dilation: 2 "
                   "pad_h: 1"),
    ((2, 3, 3, 2), "num_output: 2 kernel_size: 4 stride: 2 bias_term: false"),
]


@pytest.mark.parametrize("shape, body", DECONV_CASES)
def test_deconvolution_forward_and_gradient(shape, body):
    spec = f'type: "Deconvolution" convolution_param {{ {body} {DECONV_FILLERS} }}'
    x = RNG.standard_normal(shape)
    layer, (y,) = run_layer(spec, [x])
    bias = layer.blobs[1].data if len(layer.blobs) > 1 else None
    expected = deconv_reference(x, layer.blobs[0].data, bias, layer.stride, layer.pad,
                                layer.dilation, layer.group)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    check_layer_gradient(spec, [x])


def test_deconvolution_is_the_adjoint_of_convolution():
    """<conv(z), x> = <z, deconv(x)> with the same weights and no bias; the
    output shape is the Convolution's input shape."""
    body = 'kernel_size: 3 stride: 2 pad: 1 group: 2 bias_term: false'
    conv = make_layer(f'type: "Convolution" convolution_param {{ num_output: 4 {body} '
                      f'weight_filler {{ type: "gaussian" std: 1 }} }}')
    z = RNG.standard_normal((2, 6, 7, 9))
    cb, ct = setup_layer(conv, [z])
    conv.forward(cb, ct)
    x = RNG.standard_normal(ct[0].shape)
    deconv = make_layer(f'type: "Deconvolution" convolution_param {{ num_output: 6 {body} }}')
    db, dt = setup_layer(deconv, [x])
    assert deconv.blobs[0].shape == conv.blobs[0].shape == (4, 3, 3, 3)
    deconv.blobs[0].data[...] = conv.blobs[0].data
    deconv.forward(db, dt)
    assert dt[0].shape == z.shape
    assert np.sum(ct[0].data * x) == pytest.approx(np.sum(z * dt[0].data), rel=1e-12)


def test_deconvolution_by_hand():
    """Stride 2, kernel 2: each input pixel stamps the kernel on its own 2x2 tile."""
    x = np.array([[[[1.0, 2.0]]]])
    layer = make_layer('type: "Deconvolution" convolution_param { num_output: 1 kernel_size: 2 '
                       'stride: 2 bias_filler { type: "constant" value: 0.5 } }')
    bottom, top = setup_layer(layer, [x])
    layer.blobs[0].data[...] = [[[[1, 2], [3, 4]]]]
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[0, 0],
                                  [[1.5, 2.5, 2.5, 4.5], [3.5, 4.5, 6.5, 8.5]])


def test_deconvolution_refuses_oversized_pad():
    with pytest.raises(ShapeError, match="too large"):
        run_layer('type: "Deconvolution" convolution_param { num_output: 1 kernel_size: 1 '
                  'pad: 1 }', [np.ones((1, 1, 1, 1))])


# ------------------------------------------------------------------ Crop --
@pytest.mark.parametrize("body, ref_shape, window", [
    ("", (1, 1, 2, 3), (slice(None), slice(None), slice(0, 2), slice(0, 3))),
    ("offset: 1", (9, 9, 2, 3), (slice(None), slice(None), slice(1, 3), slice(1, 4))),
    ("axis: 1 offset: 1", (2, 2, 3, 2), (slice(None), slice(1, 3), slice(1, 4), slice(1, 3))),
    ("axis: -3 offset: 1 offset: 0 offset: 2", (1, 2, 3, 2),
     (slice(None), slice(1, 3), slice(0, 3), slice(2, 4))),
    ("axis: 0 offset: 1 offset: 2 offset: 0 offset: 1", (1, 1, 2, 2),
     (slice(1, 2), slice(2, 3), slice(0, 2), slice(1, 3))),
])
def test_crop_forward_and_gradient(body, ref_shape, window):
    spec = f'type: "Crop" crop_param {{ {body} }}'
    x = RNG.standard_normal((2, 3, 4, 5))
    ref = np.zeros(ref_shape)
    _, (y,) = run_layer(spec, [x, ref])
    np.testing.assert_array_equal(y, x[window])
    check_layer_gradient(spec, [x, ref], check_bottom=[0])
    layer = make_layer(spec)
    assert layer.label_bottoms == (1,)   # bottom[1] only gives a shape


@pytest.mark.parametrize("body, ref_shape, message", [
    ("offset: 3", (1, 1, 2, 2), "cannot crop axis 2"),
    ("offset: 1 offset: 1 offset: 1", (1, 1, 2, 2), "3 offsets"),
    ("", (1, 1, 5, 5), "cannot crop axis 2"),
])
def test_crop_refuses_impossible_windows(body, ref_shape, message):
    with pytest.raises(LayerError, match=message):
        run_layer(f'type: "Crop" crop_param {{ {body} }}', [np.ones((1, 1, 4, 4)),
                                                              np.ones(ref_shape)])


# ---------------------------------------------------------------- Im2col --
IM2COL_CASES = [
    "kernel_size: 3",
    "kernel_size: 3 pad: 1 stride: 2 dilation: 2",
    "kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2",
]


@pytest.mark.parametrize("body", IM2COL_CASES)
def test_im2col_forward_and_gradient(body):
    spec = f'type: "Im2col" convolution_param {{ {body} }}'
    x = RNG.standard_normal((2, 3, 6, 7))
    layer, (y,) = run_layer(spec, [x])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel, layer.stride, layer.pad, layer.dilation
    n, c, h, w = x.shape
    assert y.shape[:2] == (n, c * kh * kw)
    for ch in range(c):
        for i in range(kh):
            for j in range(kw):
                for r in range(y.shape[2]):
                    for s in range(y.shape[3]):
                        hh, ww = r * sh - ph + i * dh, s * sw - pw + j * dw
                        inside = 0 <= hh < h and 0 <= ww < w
                        value = x[:, ch, hh, ww] if inside else 0.0
                        np.testing.assert_array_equal(y[:, (ch * kh + i) * kw + j, r, s], value)
    check_layer_gradient(spec, [x[:1, :2]])


def test_im2col_rows_feed_a_convolution():
    """Convolution = its weights (O, C*kh*kw) times the Im2col columns."""
    body = "kernel_size: 3 pad: 1 stride: 2"
    x = RNG.standard_normal((2, 3, 7, 6))
    conv, (y,) = run_layer(f'type: "Convolution" convolution_param {{ num_output: 4 {body} '
                           f'weight_filler {{ type: "gaussian" std: 1 }} bias_term: false }}', [x])
    _, (cols,) = run_layer(f'type: "Im2col" convolution_param {{ {body} }}', [x])
    expected = np.einsum("ok,nkhw->nohw", conv.blobs[0].data.reshape(4, -1), cols)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------- SPP --
def test_spp_forward_by_hand():
    """pyramid_height 2 on 4x4: level 0 pools everything, level 1 the four
    2x2 quadrants; flattened per level, concatenated."""
    x = distinct((2, 3, 4, 4), seed=5)
    _, (y,) = run_layer('type: "SPP" spp_param { pyramid_height: 2 }', [x])
    assert y.shape == (2, 3 * (1 + 4))
    quadrants = x.reshape(2, 3, 2, 2, 2, 2).max(axis=(3, 5))
    expected = np.concatenate([x.max(axis=(2, 3)).reshape(2, -1), quadrants.reshape(2, -1)], 1)
    np.testing.assert_array_equal(y, expected)
    _, (avg,) = run_layer('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', [x])
    expected = np.concatenate([x.mean(axis=(2, 3)).reshape(2, -1),
                               x.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5)).reshape(2, -1)], 1)
    np.testing.assert_allclose(avg, expected, rtol=1e-12)


def test_spp_padded_levels_and_height_one():
    """7 wide on 4 bins: kernel 2, pad 1 -- still 4 bins; pyramid_height 1
    keeps the 4-D pooling top."""
    x = distinct((1, 2, 8, 7), seed=6)
    _, (y,) = run_layer('type: "SPP" spp_param { pyramid_height: 3 }', [x])
    assert y.shape == (1, 2 * (1 + 4 + 16))
    padded = np.full((1, 2, 8, 9), -np.inf)
    padded[..., 1:8] = x
    level2 = padded[..., :8].reshape(1, 2, 4, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(y[:, 2 * 5:], level2.reshape(1, -1))
    _, (y1,) = run_layer('type: "SPP" spp_param { pyramid_height: 1 }', [x])
    np.testing.assert_array_equal(y1, x.max(axis=(2, 3), keepdims=True))


@pytest.mark.parametrize("body", ["pyramid_height: 3", "pyramid_height: 2 pool: AVE",
                                  "pyramid_height: 1"])
def test_spp_gradient(body):
    check_layer_gradient(f'type: "SPP" spp_param {{ {body} }}', [distinct((2, 2, 8, 7), seed=7)])


def test_spp_follows_bottom_size_and_refuses_bad_params():
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 2 }')
    bottom, top = setup_layer(layer, [np.ones((1, 2, 4, 4))])
    bottom[0].reshape((3, 2, 6, 9))
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (3, 2 * 5)
    with pytest.raises(LayerError, match="pyramid_height"):
        run_layer('type: "SPP"', [np.ones((1, 1, 4, 4))])
    with pytest.raises(LayerError, match="pyramid level 2"):
        run_layer('type: "SPP" spp_param { pyramid_height: 3 }', [np.ones((1, 1, 5, 5))])


# --------------------------------------------------------------- registry --
def test_every_type_is_registered_under_its_caffe_name():
    from layergraph.layer import known_layer_types
    names = {"AbsVal", "BNLL", "Exp", "Log", "Power", "Swish", "Threshold", "Clip",
             "BatchNorm", "Scale", "Bias", "LRN", "MVN", "Deconvolution", "Crop", "Im2col",
             "SPP"}
    assert names <= set(known_layer_types())
