"""Input, Flatten, Reshape, Concat, Slice, Split, Silence and Eltwise:
shapes (Caffe's rules), values against NumPy, data sharing, gradients, errors."""
import numpy as np
import pytest

from layergraph.blob import Blob
from layergraph.errors import LayerError, ShapeError
from layergraph.testing import check_gradient, check_layer_gradient, make_layer, run_layer, setup_layer

RNG = np.random.default_rng(7)


def blob(array):
    b = Blob(np.shape(array), dtype=np.float64)
    b.data[...] = array
    return b


# ----------------------------------------------------------------- Input ---

def test_input_shapes_once_or_per_top():
    layer = make_layer('type: "Input" input_param { shape { dim: 2 dim: 3 } }')
    _, top = setup_layer(layer, [], num_tops=2)
    assert [t.shape for t in top] == [(2, 3), (2, 3)]
    layer = make_layer('type: "Input" input_param { shape { dim: 4 dim: 1 dim: 2 dim: 2 } '
                       'shape { dim: 4 } }')
    _, top = setup_layer(layer, [], num_tops=2)
    assert [t.shape for t in top] == [(4, 1, 2, 2), (4,)]
    assert not layer.has_backward


def test_input_keeps_external_data_and_shape():
    layer = make_layer('type: "Input" input_param { shape { dim: 2 dim: 3 } }')
    bottom, top = setup_layer(layer, [])
    top[0].reshape((5, 3))              # the caller changes the batch size
    top[0].data[...] = 1.5
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (5, 3) and np.all(top[0].data == 1.5)


def test_input_errors():
    layer = make_layer('type: "Input" input_param { shape { dim: 1 } shape { dim: 2 } }')
    with pytest.raises(LayerError, match="once per top"):
        setup_layer(layer, [], num_tops=3)
    with pytest.raises(LayerError, match="exactly 0 bottom"):
        run_layer('type: "Input" input_param { shape { dim: 1 } }', [np.zeros(1)])


# --------------------------------------------------------------- Flatten ---

@pytest.mark.parametrize("params, expected", [
    ("", (2, 60)),
    ("axis: 0", (120,)),
    ("axis: 2", (2, 3, 20)),
    ("axis: 1 end_axis: 2", (2, 12, 5)),
    ("axis: -3 end_axis: -2", (2, 12, 5)),
    ("axis: 3", (2, 3, 4, 5)),
])
def test_flatten_shapes_values_and_gradient(params, expected):
    x = RNG.standard_normal((2, 3, 4, 5))
    spec = f'type: "Flatten" flatten_param {{ {params} }}'
    layer = make_layer(spec)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    assert top[0].shape == expected
    np.testing.assert_array_equal(top[0].data, x.reshape(expected))
    assert np.shares_memory(top[0].data, bottom[0].data)   # a view, no copy
    top[0].diff[...] = RNG.standard_normal(expected)
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, top[0].diff.reshape(x.shape))
    check_layer_gradient(spec, [RNG.standard_normal((2, 3, 2, 1))])


def test_flatten_errors():
    with pytest.raises(ShapeError, match="end_axis"):
        run_layer('type: "Flatten" flatten_param { axis: 2 end_axis: 1 }', [np.zeros((2, 3, 4))])
    with pytest.raises(ShapeError, match=r"axis 4 .*\(2, 3, 4\)"):
        run_layer('type: "Flatten" flatten_param { axis: 4 }', [np.zeros((2, 3, 4))])
    layer = make_layer('type: "Flatten"')
    b = blob(np.zeros((2, 3)))
    with pytest.raises(LayerError, match="in-place"):
        layer.setup([b], [b])


# --------------------------------------------------------------- Reshape ---

def shape_param(*dims):
    return "shape { " + " ".join(f"dim: {d}" for d in dims) + " }"


# Caffe's test_reshape_layer.cpp cases on a (2, 3, 6, 5) bottom, and a few more.
RESHAPE_CASES = [
    (shape_param(0, -1), (2, 90)),
    (shape_param(0, 0, 0, 0), (2, 3, 6, 5)),
    (shape_param(0, 3, 10, -1), (2, 3, 10, 3)),
    (shape_param(-1) + " axis: 1 num_axes: 2", (2, 18, 5)),
    (shape_param(1, 1, 1) + " axis: 0 num_axes: 0", (1, 1, 1, 2, 3, 6, 5)),
    (shape_param(1, 1, 1) + " axis: 2 num_axes: 0", (2, 3, 1, 1, 1, 6, 5)),
    (shape_param(1, 1, 1) + " axis: -1 num_axes: 0", (2, 3, 6, 5, 1, 1, 1)),
    (shape_param(0, -1) + " axis: 2", (2, 3, 6, 5)),
    (shape_param(-1, 6) + " axis: -3", (2, 3, 5, 6)),
    (shape_param(9, 10) + " axis: 1 num_axes: -1", (2, 9, 10)),
    (shape_param(2, 0, -1), (2, 3, 30)),
]


@pytest.mark.parametrize("params, expected", RESHAPE_CASES)
def test_reshape_caffe_semantics(params, expected):
    x = RNG.standard_normal((2, 3, 6, 5))
    layer = make_layer(f'type: "Reshape" reshape_param {{ {params} }}')
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    assert top[0].shape == expected
    np.testing.assert_array_equal(top[0].data.ravel(), x.ravel())
    assert np.shares_memory(top[0].data, bottom[0].data)


def test_reshape_gradient_and_new_batch():
    spec = f'type: "Reshape" reshape_param {{ {shape_param(0, -1)} }}'
    check_layer_gradient(spec, [RNG.standard_normal((2, 3, 2))])
    layer = make_layer(spec)
    bottom, top = setup_layer(layer, [np.zeros((2, 3, 2))])
    bottom[0].reshape((7, 3, 2))
    layer.reshape(bottom, top)
    assert top[0].shape == (7, 6)


@pytest.mark.parametrize("params, shape, error, words", [
    (shape_param(-1, -1), (2, 3), LayerError, "more than one -1"),
    (shape_param(0, -2), (2, 3), LayerError, "below -1"),
    (shape_param(4, -1), (2, 3), ShapeError, r"\(2, 3\).*\(4, -1\).*not divisible"),
    (shape_param(5), (2, 3), ShapeError, r"\(2, 3\).*\(5,\)"),
    (shape_param(0, 0, 0), (2, 3), ShapeError, "no axis 2"),
    (shape_param(6) + " axis: 3", (2, 3), ShapeError, "axis 3"),
    (shape_param(6) + " axis: 1 num_axes: 2", (2, 3), ShapeError, "num_axes"),
    (shape_param(6) + " num_axes: -2", (2, 3), LayerError, "num_axes"),
])
def test_reshape_errors(params, shape, error, words):
    with pytest.raises(error, match=words):
        run_layer(f'type: "Reshape" reshape_param {{ {params} }}', [np.zeros(shape)])


# ---------------------------------------------------------------- Concat ---

@pytest.mark.parametrize("params, axis", [
    ("", 1), ("axis: 0", 0), ("axis: -1", 2), ("concat_dim: 2", 2),
    ("axis: 1 concat_dim: 1", 1),                                    # MyCaffe writes both
])
def test_concat_values_and_gradient(params, axis):
    shapes = [(2, 3, 4), (2, 3, 4), (2, 3, 4)]
    shapes = [s[:axis] + (k,) + s[axis + 1:] for s, k in zip(shapes, (1, 2, 3))]
    xs = [RNG.standard_normal(s) for s in shapes]
    spec = f'type: "Concat" concat_param {{ {params} }}'
    _, (y,) = run_layer(spec, xs)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))
    check_layer_gradient(spec, xs)


def test_concat_backward_respects_propagate_down():
    layer = make_layer('type: "Concat"')
    bottom, top = setup_layer(layer, [np.zeros((2, 1)), np.zeros((2, 2))])
    layer.forward(bottom, top)
    top[0].diff[...] = np.arange(6.0).reshape(2, 3)
    bottom[0].diff[...] = -1
    layer.backward(top, [False, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, -np.ones((2, 1)))
    np.testing.assert_array_equal(bottom[1].diff, [[1, 2], [4, 5]])


def test_concat_errors():
    with pytest.raises(ShapeError, match=r"bottom\[1\] shape \(2, 3, 5\).*\(2, 3, 4\)"):
        run_layer('type: "Concat"', [np.zeros((2, 3, 4)), np.zeros((2, 3, 5))])
    with pytest.raises(ShapeError, match="bottom\\[1\\]"):
        run_layer('type: "Concat"', [np.zeros((2, 3, 4)), np.zeros((2, 3))])
    with pytest.raises(LayerError, match=r"axis \(0\) and concat_dim \(1\) disagree"):
        run_layer('type: "Concat" concat_param { axis: 0 concat_dim: 1 }', [np.zeros((2, 3))])
    with pytest.raises(ShapeError, match="concat_dim 2"):
        run_layer('type: "Concat" concat_param { concat_dim: 2 }', [np.zeros((2, 3))])


# ----------------------------------------------------------------- Slice ---

def test_slice_with_points_values_and_gradient():
    x = RNG.standard_normal((2, 7, 3))
    spec = 'type: "Slice" slice_param { axis: 1 slice_point: 2 slice_point: 3 }'
    _, tops = run_layer(spec, [x], num_tops=3)
    for got, want in zip(tops, (x[:, :2], x[:, 2:3], x[:, 3:])):
        np.testing.assert_array_equal(got, want)
    check_layer_gradient(spec, [x], num_tops=3)


@pytest.mark.parametrize("params, axis", [("", 1), ("axis: -1", 2), ("slice_dim: 0", 0),
                                          ("axis: 1 slice_dim: 1", 1)])   # MyCaffe writes both
def test_slice_equal_parts(params, axis):
    x = RNG.standard_normal((4, 6, 2))
    spec = f'type: "Slice" slice_param {{ {params} }}'
    _, tops = run_layer(spec, [x], num_tops=2)
    for got, want in zip(tops, np.split(x, 2, axis=axis)):
        np.testing.assert_array_equal(got, want)
    check_layer_gradient(spec, [x], num_tops=2)


@pytest.mark.parametrize("params, shape, tops, error, words", [
    ("", (2, 5), 2, ShapeError, r"\(2, 5\).*not divisible into 2"),
    ("slice_point: 1", (2, 5), 3, LayerError, "need exactly 2"),
    ("slice_point: 3 slice_point: 2", (2, 5), 3, ShapeError, "increase strictly"),
    ("slice_point: 5", (2, 5), 2, ShapeError, "increase strictly"),
    ("axis: 1 slice_dim: 0", (2, 4), 2, LayerError, "disagree"),
    ("axis: 2", (2, 4), 2, ShapeError, "axis 2"),
])
def test_slice_errors(params, shape, tops, error, words):
    with pytest.raises(error, match=words):
        run_layer(f'type: "Slice" slice_param {{ {params} }}', [np.zeros(shape)], num_tops=tops)


# ----------------------------------------------------------------- Split ---

def test_split_shares_data_and_sums_gradients():
    x = RNG.standard_normal((3, 4))
    layer = make_layer('type: "Split"')
    bottom, top = setup_layer(layer, [x], num_tops=3)
    layer.forward(bottom, top)
    for t in top:
        assert t.data is bottom[0].data   # no copy
    diffs = [RNG.standard_normal((3, 4)) for _ in top]
    for t, d in zip(top, diffs):
        t.diff[...] = d
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, sum(diffs))
    assert not np.shares_memory(top[0].diff, top[1].diff)
    check_gradient(layer, bottom, top)
    check_layer_gradient('type: "Split"', [x], num_tops=1)


# --------------------------------------------------------------- Silence ---

def test_silence_zeroes_bottom_diffs():
    layer = make_layer('type: "Silence"')
    bottom, top = setup_layer(layer, [np.ones((2, 3)), np.ones(4)], num_tops=0)
    layer.forward(bottom, top)
    for b in bottom:
        b.diff[...] = 5.0
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)
    np.testing.assert_array_equal(bottom[1].diff, 5)
    check_layer_gradient('type: "Silence"', [RNG.standard_normal((2, 2))], num_tops=0)
    with pytest.raises(LayerError, match="exactly 0 top"):
        run_layer('type: "Silence"', [np.zeros(2)], num_tops=1)


# --------------------------------------------------------------- Eltwise ---

def distinct_bottoms(count, shape):
    # 0.1 apart (MAX stays put under +-0.01 steps) and never 0 (PROD divides)
    values = (RNG.permutation(count * int(np.prod(shape))) + 0.5) / 10.0 - 1.0
    return list(values.reshape((count,) + shape))


@pytest.mark.parametrize("params, reference", [
    ("operation: SUM", lambda xs: xs[0] + xs[1] + xs[2]),
    ("operation: SUM coeff: 0.5 coeff: -2 coeff: 3", lambda xs: 0.5 * xs[0] - 2 * xs[1] + 3 * xs[2]),
    ("operation: PROD", lambda xs: xs[0] * xs[1] * xs[2]),
    ("operation: PROD stable_prod_grad: false", lambda xs: xs[0] * xs[1] * xs[2]),
    ("operation: MAX", lambda xs: np.maximum(np.maximum(xs[0], xs[1]), xs[2])),
])
def test_eltwise_values_and_gradient(params, reference):
    xs = distinct_bottoms(3, (2, 3, 2))
    spec = f'type: "Eltwise" eltwise_param {{ {params} }}'
    _, (y,) = run_layer(spec, xs)
    np.testing.assert_allclose(y, reference(xs), rtol=1e-12)
    check_layer_gradient(spec, xs)


def test_eltwise_max_tie_rule():
    # Caffe: bottom 1 wins a tie with bottom 0; a later bottom must be strictly greater.
    xs = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 3.0]), np.array([1.0, 2.0, 0.0])]
    layer = make_layer('type: "Eltwise" eltwise_param { operation: MAX }')
    bottom, top = setup_layer(layer, xs)
    layer.forward(bottom, top)
    top[0].diff[...] = [10.0, 20.0, 30.0]
    layer.backward(top, [True, True, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [0, 20, 0])
    np.testing.assert_array_equal(bottom[1].diff, [10, 0, 30])
    np.testing.assert_array_equal(bottom[2].diff, [0, 0, 0])


@pytest.mark.parametrize("params", ["operation: SUM coeff: 2 coeff: -1", "operation: PROD",
                                    "operation: PROD stable_prod_grad: false",
                                    "operation: MAX"])
def test_eltwise_in_place_matches_out_of_place(params):
    xs = distinct_bottoms(2, (3, 4))
    dy = RNG.standard_normal((3, 4))
    results = []
    for in_place in (False, True):
        layer = make_layer(f'type: "Eltwise" eltwise_param {{ {params} }}')
        bottom = [blob(x) for x in xs]
        top = [bottom[0]] if in_place else [Blob(dtype=np.float64)]
        layer.setup(bottom, top)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True, True], bottom)
        results.append((y, bottom[0].diff.copy(), bottom[1].diff.copy()))
    for out_of_place, in_place in zip(*results):
        np.testing.assert_allclose(in_place, out_of_place, rtol=1e-12)


def test_eltwise_errors():
    with pytest.raises(LayerError, match="only allowed with operation: SUM"):
        run_layer('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 1 }',
                  [np.zeros(2), np.zeros(2)])
    with pytest.raises(LayerError, match="1 coeff values given for 2 bottoms"):
        run_layer('type: "Eltwise" eltwise_param { coeff: 1 }', [np.zeros(2), np.zeros(2)])
    with pytest.raises(ShapeError, match=r"bottom\[1\] shape \(3,\) differs .* \(2,\)"):
        run_layer('type: "Eltwise"', [np.zeros(2), np.zeros(3)])
    with pytest.raises(LayerError, match="at least 2 bottom"):
        run_layer('type: "Eltwise"', [np.zeros(2)])
