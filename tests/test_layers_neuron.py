"""Element-wise and per-item layers: ReLU, PReLU, ELU, Sigmoid, TanH,
Dropout, Normalize.  Forward values against NumPy references written here,
backward against central differences (float64), in-place use against the
out-of-place result."""
import numpy as np
import pytest

from layergraph.blob import Blob
from layergraph.errors import LayerError, ShapeError
from layergraph.proto import pb
from layergraph.testing import check_layer_gradient, make_layer, run_layer, setup_layer


def away_from_zero(shape, seed=0, gap=0.1):
    """Random values with |x| >= gap, so finite differences never cross a kink."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.sign(x) * (np.abs(x) + gap)


def forward_backward(spec, x, top_diff, in_place, phase=pb.TRAIN, prepare=None):
    """Run setup/reshape/forward/backward once; returns (top data, bottom diff, layer).
    ``prepare(layer)`` may set parameters after setup."""
    layer = make_layer(spec, phase=phase)
    bottom = Blob(x.shape, dtype=np.float64, name="x")
    bottom.data[...] = x
    top = [bottom] if in_place else [Blob((), dtype=np.float64, name="y")]
    layer.setup([bottom], top)
    if prepare is not None:
        prepare(layer)
    layer.reshape([bottom], top)
    layer.forward([bottom], top)
    y = top[0].data.copy()
    top[0].diff[...] = top_diff
    layer.backward(top, [True], [bottom])
    return y, bottom.diff.copy(), layer


def assert_in_place_matches(spec, x, phase=pb.TRAIN, prepare=None):
    g = np.random.default_rng(7).standard_normal(x.shape)
    y0, dx0, l0 = forward_backward(spec, x, g, False, phase, prepare)
    y1, dx1, l1 = forward_backward(spec, x, g, True, phase, prepare)
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=0)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=0)
    for b0, b1 in zip(l0.blobs, l1.blobs):
        np.testing.assert_allclose(b1.diff, b0.diff, rtol=1e-12, atol=0)
    return y0, dx0


# ------------------------------------------------------------------ ReLU --
def test_relu_forward():
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    _, (y,) = run_layer('type: "ReLU"', [x])
    np.testing.assert_array_equal(y, [[0, 0, 0, 0.5, 3.0]])


@pytest.mark.parametrize("slope", [0.1, -0.3])
def test_leaky_relu_forward(slope):
    x = np.random.default_rng(1).standard_normal((3, 4, 2))
    _, (y,) = run_layer(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}', [x])
    np.testing.assert_allclose(y, np.where(x > 0, x, slope * x))


def test_relu_gradient_skips_kink():
    x = np.random.default_rng(2).standard_normal((2, 3, 4))
    x[0, 0, 0] = 0.003  # inside the kink range: skipped, not compared
    checked = check_layer_gradient('type: "ReLU"', [x], kink=0.0, kink_range=2e-2)
    assert 0 < checked <= x.size


@pytest.mark.parametrize("slope", [0.1, -0.3])
def test_leaky_relu_gradient(slope):
    check_layer_gradient(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}',
                         [away_from_zero((2, 3, 4), seed=3)])


@pytest.mark.parametrize("slope", [0.0, 0.2, -0.5])
def test_relu_in_place(slope):
    x = away_from_zero((3, 5), seed=4)
    _, dx = assert_in_place_matches(
        f'type: "ReLU" relu_param {{ negative_slope: {slope} }}', x)
    g = np.random.default_rng(7).standard_normal(x.shape)
    np.testing.assert_allclose(dx, np.where(x > 0, g, slope * g))


# ----------------------------------------------------------------- PReLU --
def _set_slopes(values):
    def prepare(layer):
        layer.blobs[0].data[...] = values
    return prepare


def test_prelu_default_filler_and_shapes():
    x = np.zeros((2, 3, 4, 4))
    layer = make_layer('type: "PReLU"')
    setup_layer(layer, [x])
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    shared = make_layer('type: "PReLU" prelu_param { channel_shared: true }')
    setup_layer(shared, [x])
    assert shared.blobs[0].shape == (1,)
    filled = make_layer('type: "PReLU" prelu_param { filler { type: "constant" value: 0.75 } }')
    setup_layer(filled, [x])
    np.testing.assert_array_equal(filled.blobs[0].data, 0.75)


def test_prelu_forward_per_channel():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 2, 2))
    slopes = np.array([0.1, -0.2, 0.5])
    layer = make_layer('type: "PReLU"')
    bottom, top = setup_layer(layer, [x])
    layer.blobs[0].data[...] = slopes
    layer.forward(bottom, top)
    expected = np.empty_like(x)
    for c in range(3):
        xc = x[:, c]
        expected[:, c] = np.where(xc > 0, xc, slopes[c] * xc)
    np.testing.assert_allclose(top[0].data, expected)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient(shared):
    spec = (f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} '
            f'filler {{ type: "uniform" min: -0.5 max: 0.5 }} }}')
    checked = check_layer_gradient(spec, [away_from_zero((2, 3, 2, 3), seed=6)])
    assert checked == 2 * 3 * 2 * 3 + (1 if shared else 3)


def test_prelu_slope_gradient_accumulates_and_matches_reference():
    x = away_from_zero((2, 3, 4), seed=8)
    g = np.random.default_rng(9).standard_normal(x.shape)
    layer = make_layer('type: "PReLU"')
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    top[0].diff[...] = g
    layer.blobs[0].diff[...] = 1.0  # pre-existing gradient (weight sharing)
    layer.backward(top, [True], bottom)
    expected = (g * x * (x <= 0)).sum(axis=(0, 2))
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + expected)
    layer.backward(top, [False], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + 2 * expected)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_in_place(shared):
    spec = f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} }}'
    slopes = np.array([0.3]) if shared else np.array([0.1, -0.4, 0.6])
    assert_in_place_matches(spec, away_from_zero((2, 3, 5), seed=10), prepare=_set_slopes(slopes))


def test_prelu_channel_mismatch_is_shape_error():
    layer = make_layer('type: "PReLU"')
    bottom, top = setup_layer(layer, [np.zeros((2, 3))])
    bottom[0].reshape((2, 4))
    with pytest.raises(ShapeError, match=r"\(2, 4\).*\(3,\)"):
        layer.reshape(bottom, top)
    with pytest.raises(ShapeError, match="channel"):
        setup_layer(make_layer('type: "PReLU"'), [np.zeros(5)])
    setup_layer(make_layer('type: "PReLU" prelu_param { channel_shared: true }'), [np.zeros(5)])


# ------------------------------------------------------------------- ELU --
@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_elu_forward(alpha):
    x = np.random.default_rng(11).standard_normal((4, 5)) * 3
    x[0, 0] = 800.0  # no overflow warning from the unused exp branch
    with np.errstate(over="raise"):
        _, (y,) = run_layer(f'type: "ELU" elu_param {{ alpha: {alpha} }}', [x])
    negative = alpha * (np.exp(np.minimum(x, 0)) - 1)
    np.testing.assert_allclose(y, np.where(x > 0, x, negative), rtol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 0.5, -0.7])
def test_elu_gradient(alpha):
    check_layer_gradient(f'type: "ELU" elu_param {{ alpha: {alpha} }}',
                         [away_from_zero((3, 4), seed=12)])


@pytest.mark.parametrize("alpha", [1.0, -0.7])
def test_elu_in_place(alpha):
    x = away_from_zero((3, 6), seed=13)
    _, dx = assert_in_place_matches(f'type: "ELU" elu_param {{ alpha: {alpha} }}', x)
    g = np.random.default_rng(7).standard_normal(x.shape)
    np.testing.assert_allclose(dx, g * np.where(x > 0, 1, alpha * np.exp(x)))


def test_elu_in_place_survives_a_later_in_place_layer():
    """A following in-place layer (here: top data scaled, as Dropout does)
    must not change ELU's gradient: forward kept what backward needs."""
    x = away_from_zero((2, 5), seed=14)
    layer = make_layer('type: "ELU"')
    blob = Blob(x.shape, dtype=np.float64)
    blob.data[...] = x
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    blob.data[...] *= 2.0
    blob.diff[...] = 1.0
    layer.backward([blob], [True], [blob])
    np.testing.assert_allclose(blob.diff, np.where(x > 0, 1.0, np.exp(x)))


# -------------------------------------------------------- Sigmoid, TanH --
def test_sigmoid_forward_extremes():
    x = np.array([[-800.0, -3.0, 0.0, 2.0, 800.0]])
    with np.errstate(over="raise"):
        _, (y,) = run_layer('type: "Sigmoid"', [x])
    expected = [0.0, 1 / (1 + np.exp(3.0)), 0.5, 1 / (1 + np.exp(-2.0)), 1.0]
    np.testing.assert_allclose(y[0], expected, rtol=1e-12, atol=1e-300)


def test_tanh_forward():
    x = np.random.default_rng(15).standard_normal((3, 4)) * 2
    _, (y,) = run_layer('type: "TanH"', [x])
    np.testing.assert_allclose(y, (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1), rtol=1e-12)


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_smooth_gradient_and_in_place(kind):
    x = np.random.default_rng(16).standard_normal((2, 3, 4))
    check_layer_gradient(f'type: "{kind}"', [x])
    assert_in_place_matches(f'type: "{kind}"', x)


# --------------------------------------------------------------- Dropout --
def test_dropout_train_mask_and_scale():
    x = np.random.default_rng(17).uniform(1, 2, size=(100, 200))
    layer, (y,) = run_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [x])
    kept = y != 0
    # the ratio is a proto float: scale 1 / (1 - float32(0.3))
    np.testing.assert_allclose(y[kept], x[kept] / (1 - np.float64(np.float32(0.3))), rtol=1e-12)
    assert abs(kept.mean() - 0.7) < 0.01  # 20000 draws: sd 0.0032
    assert abs(y.mean() / x.mean() - 1) < 0.02  # inverted dropout keeps the mean


def test_dropout_default_ratio_and_reproducible_draws():
    x = np.ones((50, 40))
    _, (a,) = run_layer('type: "Dropout"', [x], seed=3)
    _, (b,) = run_layer('type: "Dropout"', [x], seed=3)
    _, (c,) = run_layer('type: "Dropout"', [x], seed=4)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 2.0}
    assert (a != c).any()
    # successive forwards draw new masks; restoring the state repeats one
    layer = make_layer('type: "Dropout"')
    bottom, top = setup_layer(layer, [x])
    state = layer.state_dict()
    layer.forward(bottom, top)
    first = top[0].data.copy()
    layer.forward(bottom, top)
    assert (top[0].data != first).any()
    layer.load_state_dict(state)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, first)


@pytest.mark.parametrize("phase", [pb.TEST, pb.RUN])
def test_dropout_is_identity_outside_train(phase):
    x = np.random.default_rng(18).standard_normal((4, 6))
    y, dx = assert_in_place_matches('type: "Dropout"', x, phase=phase)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, np.random.default_rng(7).standard_normal(x.shape))


def test_dropout_gradient_train():
    x = np.random.default_rng(19).standard_normal((3, 8))
    check_layer_gradient('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', [x])


def test_dropout_in_place_train():
    x = np.random.default_rng(20).standard_normal((6, 7))
    y, dx = assert_in_place_matches('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', x)
    g = np.random.default_rng(7).standard_normal(x.shape)
    mask = y / x  # 0 or 1/(1-p) per element
    assert set(np.round(np.unique(mask), 12)) <= {0.0, round(1 / 0.75, 12)}
    np.testing.assert_allclose(dx, g * mask, rtol=1e-12)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_dropout_bad_ratio(ratio):
    with pytest.raises(LayerError, match="dropout_ratio"):
        setup_layer(make_layer(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}'),
                    [np.zeros(3)])


# ------------------------------------------------------------- Normalize --
def test_normalize_forward():
    x = np.random.default_rng(21).standard_normal((3, 2, 4, 5))
    x[1] = 0.0  # a zero item stays zero (eps keeps it finite)
    layer, (y,) = run_layer('type: "Normalize"', [x])
    assert layer.eps == pytest.approx(1e-10)  # the proto's default
    for n in range(3):
        norm = np.sqrt(np.sum(x[n] ** 2) + 1e-10)
        np.testing.assert_allclose(y[n], x[n] / norm, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt((y[[0, 2]] ** 2).sum(axis=(1, 2, 3))), 1.0)
    assert np.all(y[1] == 0.0)


def test_normalize_eps_parameter():
    x = np.array([[3.0, 4.0]])
    _, (y,) = run_layer('type: "Normalize" normalize_param { eps: 11 }', [x])
    np.testing.assert_allclose(y, x / 6.0)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 2, 2)])
def test_normalize_gradient(shape):
    x = np.random.default_rng(22).standard_normal(shape)
    check_layer_gradient('type: "Normalize"', [x])


def test_normalize_backward_formula_and_in_place():
    x = np.random.default_rng(23).standard_normal((4, 6))
    _, dx = assert_in_place_matches('type: "Normalize"', x)
    g = np.random.default_rng(7).standard_normal(x.shape)
    # independent reference: the Jacobian (I - y y^T) / r applied per item
    for n in range(4):
        r = np.sqrt(np.sum(x[n] ** 2) + np.float32(1e-10))  # eps is a proto float
        yn = x[n] / r
        jac = (np.eye(6) - np.outer(yn, yn)) / r
        np.testing.assert_allclose(dx[n], jac.T @ g[n], rtol=1e-9, atol=1e-12)
