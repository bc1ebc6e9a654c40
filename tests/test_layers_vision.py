"""Convolution, Pooling and InnerProduct against naive loop references
(written from the definitions, independent of the implementations) and
central-difference gradient checks."""
import math

import numpy as np
import pytest

from layergraph.blob import Blob
from layergraph.errors import LayerError, ShapeError
from layergraph.layers import convolution
from layergraph.testing import check_gradient, check_layer_gradient, make_layer, run_layer, setup_layer

RNG = np.random.default_rng(20240607)
GAUSSIAN = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def distinct(shape, rng=RNG):
    """Values 0.1 apart in random order: every max is unique and stays put
    under the gradient checker's +-0.01 steps."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0


# ----------------------------------------------------------- Convolution ---

def conv_reference(x, w, b, pad=(0, 0), stride=(1, 1), dilation=(1, 1), group=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (ph, pw), (sh, sw), (dh, dw) = pad, stride, dilation
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    og = o // group
    y = np.zeros((n, o, ho, wo))
    for ni in range(n):
        for oi in range(o):
            g = oi // og
            for r in range(ho):
                for s in range(wo):
                    acc = 0.0 if b is None else b[oi]
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                hh, ww = r * sh - ph + i * dh, s * sw - pw + j * dw
                                if 0 <= hh < h and 0 <= ww < wd:
                                    acc += w[oi, ci, i, j] * x[ni, g * cg + ci, hh, ww]
                    y[ni, oi, r, s] = acc
    return y


@pytest.fixture(params=["batch_last", "batch_first"])
def column_order(request, monkeypatch):
    """Run a test with both column orders of the im2col buffer."""
    monkeypatch.setattr(convolution, "BATCH_LAST_BELOW", 10**6 if request.param == "batch_last" else 0)
    return request.param


CONV_CASES = [
    # (bottom shape, convolution_param body, pad, stride, dilation, group)
    ((2, 3, 6, 7), "num_output: 4 kernel_size: 3", (0, 0), (1, 1), (1, 1), 1),
    ((2, 3, 6, 7), "num_output: 4 kernel_size: 3 pad: 1 stride: 2", (1, 1), (2, 2), (1, 1), 1),
    ((1, 2, 7, 9), "num_output: 3 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 stride_h: 2 "
                   "stride_w: 3", (2, 1), (2, 3), (1, 1), 1),
    ((2, 2, 8, 8), "num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (1, 1), (1, 1), (2, 2), 1),
    ((2, 4, 5, 6), "num_output: 6 kernel_size: 3 pad: 1 group: 2", (1, 1), (1, 1), (1, 1), 2),
    ((1, 4, 5, 5), "num_output: 4 kernel_size: 1 group: 4 bias_term: false", (0, 0), (1, 1),
     (1, 1), 4),
    ((1, 2, 9, 9), "num_output: 2 kernel_size: 2 kernel_size: 3 stride: 2 stride: 1 "
                   "dilation: 3 dilation: 2", (0, 0), (2, 1), (3, 2), 1),
]


@pytest.mark.parametrize("shape, body, pad, stride, dilation, group", CONV_CASES)
def test_convolution_forward_matches_reference(column_order, shape, body, pad, stride,
                                               dilation, group):
    x = RNG.standard_normal(shape)
    layer, (y,) = run_layer(f'type: "Convolution" convolution_param {{ {body} {GAUSSIAN} }}', [x])
    w = layer.blobs[0].data
    b = layer.blobs[1].data if len(layer.blobs) > 1 else None
    expected = conv_reference(x, w, b, pad, stride, dilation, group)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)


def test_convolution_parameter_shapes_and_fillers():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 '
                       'kernel_w: 2 group: 3 weight_filler { type: "constant" value: 0.25 } '
                       'bias_filler { type: "constant" value: -1 } }')
    bottom, top = setup_layer(layer, [np.zeros((2, 9, 5, 4))])
    assert [b.shape for b in layer.blobs] == [(6, 3, 3, 2), (6,)]
    assert np.all(layer.blobs[0].data == 0.25) and np.all(layer.blobs[1].data == -1)
    assert top[0].shape == (2, 6, 3, 3)
    # no filler given: Caffe's default FillerParameter (constant 0)
    plain = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }')
    setup_layer(plain, [np.ones((1, 1, 2, 2))])
    assert np.all(plain.blobs[0].data == 0)


def test_convolution_float32_and_new_batch_size(column_order):
    body = f'type: "Convolution" convolution_param {{ num_output: 5 kernel_size: 3 pad: 1 {GAUSSIAN} }}'
    layer = make_layer(body, dtype=np.float32)
    x = RNG.standard_normal((3, 2, 6, 20)).astype(np.float32)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    w, b = (blob.data.astype(np.float64) for blob in layer.blobs)
    assert top[0].data.dtype == np.float32
    np.testing.assert_allclose(top[0].data, conv_reference(x, w, b, (1, 1)), rtol=1e-4, atol=1e-4)
    # a different batch (and width) reallocates the work buffers
    x2 = RNG.standard_normal((5, 2, 4, 4)).astype(np.float32)
    bottom2 = [Blob(x2.shape, dtype=np.float32)]
    bottom2[0].data[...] = x2
    layer.reshape(bottom2, top)
    layer.forward(bottom2, top)
    np.testing.assert_allclose(top[0].data, conv_reference(x2, w, b, (1, 1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("body, shape", [
    ("num_output: 3 kernel_size: 3 pad: 1 stride: 2", (2, 2, 5, 6)),
    ("num_output: 2 kernel_h: 2 kernel_w: 3 dilation: 2 stride_h: 1 stride_w: 2 pad_h: 1 "
     "pad_w: 0", (2, 2, 6, 7)),
    ("num_output: 4 kernel_size: 2 group: 2", (2, 4, 4, 5)),
])
def test_convolution_gradient(column_order, body, shape):
    check_layer_gradient(f'type: "Convolution" convolution_param {{ {body} {GAUSSIAN} }}',
                         [RNG.standard_normal(shape)])


def test_convolution_param_gradients_accumulate():
    layer = make_layer(f'type: "Convolution" convolution_param {{ num_output: 2 kernel_size: 2 '
                       f'{GAUSSIAN} }}')
    bottom, top = setup_layer(layer, [RNG.standard_normal((2, 2, 4, 4))])
    layer.forward(bottom, top)
    top[0].diff[...] = RNG.standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    dx = bottom[0].diff.copy()
    layer.backward(top, [True], bottom)
    for blob, first in zip(layer.blobs, once):
        np.testing.assert_allclose(blob.diff, 2 * first)
    np.testing.assert_allclose(bottom[0].diff, dx)   # bottom diffs are overwritten
    # the bias gradient is the sum of dy over batch and positions
    np.testing.assert_allclose(once[1], top[0].diff.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("body, shape, error, words", [
    ("num_output: 2 kernel_size: 3 axis: 2", (1, 1, 4, 4), LayerError, "axis"),
    ("num_output: 2 kernel_size: 3", (1, 1, 4, 4, 4), ShapeError, "4-D"),
    ("num_output: 2 kernel_size: 7 pad: 1", (1, 1, 4, 4), ShapeError, "larger than the padded"),
    ("num_output: 2 kernel_size: 3 dilation: 3", (1, 1, 6, 6), ShapeError, "extent 7x7"),
    ("num_output: 3 kernel_size: 1 group: 2", (1, 2, 4, 4), LayerError, "group"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 1, 4, 4), LayerError, "not both"),
    ("num_output: 2", (1, 1, 4, 4), LayerError, "required"),
    ("num_output: 2 kernel_h: 3", (1, 1, 4, 4), LayerError, "kernel must be > 0"),
    ("num_output: 2 kernel_size: 1 stride: 0", (1, 1, 4, 4), LayerError, "stride"),
    ("kernel_size: 1", (1, 1, 4, 4), LayerError, "num_output"),
])
def test_convolution_bad_parameters(body, shape, error, words):
    with pytest.raises(error, match=words):
        run_layer(f'type: "Convolution" convolution_param {{ {body} }}', [np.zeros(shape)])


def test_convolution_channel_mismatch_on_reshape():
    layer = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }')
    bottom, top = setup_layer(layer, [np.zeros((1, 3, 4, 4))])
    bottom[0].reshape((1, 2, 4, 4))
    with pytest.raises(ShapeError, match=r"\(1, 2, 4, 4\).*\(2, 3, 1, 1\)"):
        layer.reshape(bottom, top)


# --------------------------------------------------------------- Pooling ---

def pool_reference(x, kernel, stride, pad, method, ceil=True):
    """Caffe's pooling loops, transcribed (output size, window clipping,
    AVE divisor counting the padding, MAX mask = first max in row-major order)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    rnd = math.ceil if ceil else math.floor
    ho = int(rnd((h + 2 * ph - kh) / sh)) + 1
    wo = int(rnd((w + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (ho - 1) * sh >= h + ph:
            ho -= 1
        if (wo - 1) * sw >= w + pw:
            wo -= 1
    y = np.zeros((n, c, ho, wo))
    mask = np.full((n, c, ho, wo), -1)
    for a in range(n):
        for b in range(c):
            for r in range(ho):
                for s in range(wo):
                    hs, ws = r * sh - ph, s * sw - pw
                    he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                    size = (he - hs) * (we - ws)
                    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                    if method == "AVE":
                        y[a, b, r, s] = x[a, b, hs:he, ws:we].sum() / size
                        continue
                    best = -np.inf
                    for hh in range(hs, he):
                        for ww in range(ws, we):
                            if x[a, b, hh, ww] > best:
                                best, mask[a, b, r, s] = x[a, b, hh, ww], hh * w + ww
                    y[a, b, r, s] = best
    return y, mask


def pool_spec(method, kernel, stride, pad, extra=""):
    return (f'type: "Pooling" pooling_param {{ pool: {method} kernel_h: {kernel[0]} '
            f'kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]} '
            f'pad_h: {pad[0]} pad_w: {pad[1]} {extra} }}')


POOL_CASES = [
    # (bottom shape, kernel, stride, pad): non-overlapping fast path, overlap,
    # ceil overhang, padding (incl. the "last window starts inside" rule)
    ((2, 3, 8, 6), (2, 2), (2, 2), (0, 0)),
    ((2, 2, 6, 7), (3, 3), (1, 1), (0, 0)),
    ((2, 2, 7, 5), (3, 2), (2, 2), (0, 0)),
    ((1, 2, 5, 5), (2, 2), (2, 2), (1, 1)),
    ((2, 2, 6, 7), (3, 3), (2, 2), (1, 1)),
    ((1, 3, 7, 8), (3, 2), (2, 3), (2, 0)),
    ((1, 2, 8, 8), (2, 2), (3, 3), (0, 0)),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, kernel, stride, pad", POOL_CASES)
def test_pooling_forward_matches_reference(method, shape, kernel, stride, pad):
    x = RNG.standard_normal(shape)
    _, (y,) = run_layer(pool_spec(method, kernel, stride, pad), [x])
    expected, _ = pool_reference(x, kernel, stride, pad, method)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_pooling_output_size_rules():
    def out_shape(spec, shape):
        return run_layer(spec, [np.zeros(shape)])[1][0].shape[2:]
    # ceil((5 + 2 - 2) / 2) + 1 = 4, but window 3 would start at 6 >= 5 + 1: dropped
    assert out_shape(pool_spec("MAX", (2, 2), (2, 2), (1, 1)), (1, 1, 5, 5)) == (3, 3)
    # no padding: no correction, the ceil-rounded last window overhangs
    assert out_shape(pool_spec("MAX", (2, 2), (2, 2), (0, 0)), (1, 1, 5, 5)) == (3, 3)
    assert out_shape(pool_spec("MAX", (3, 3), (2, 2), (0, 0)), (1, 1, 6, 6)) == (3, 3)
    assert out_shape(pool_spec("MAX", (3, 3), (2, 2), (0, 0), "round_mode: FLOOR"),
                     (1, 1, 6, 6)) == (2, 2)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_floor_round_mode(method):
    x = distinct((2, 2, 7, 8))
    for kernel, stride, pad in (((3, 2), (2, 3), (1, 1)), ((2, 2), (2, 2), (0, 0))):
        spec = pool_spec(method, kernel, stride, pad, "round_mode: FLOOR")
        _, (y,) = run_layer(spec, [x])
        expected, _ = pool_reference(x, kernel, stride, pad, method, ceil=False)
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, rtol=1e-12)
        check_layer_gradient(spec, [x])   # rows/columns no window reads get 0


def test_pooling_average_divisor_counts_padding_not_overhang():
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    # 3x3 window, pad 1: the corner window holds 4 pixels but divides by 9
    _, (y,) = run_layer(pool_spec("AVE", (3, 3), (1, 1), (1, 1)), [x])
    assert y[0, 0, 0, 0] == pytest.approx((1 + 2 + 4 + 5) / 9)
    assert y[0, 0, 1, 1] == pytest.approx(45 / 9)
    # ceil rounding, no pad: the last window (column 2 only) divides by 1 per row
    _, (y,) = run_layer(pool_spec("AVE", (3, 2), (1, 2), (0, 0)), [x])
    assert y.shape == (1, 1, 1, 2)
    np.testing.assert_allclose(y[0, 0, 0], [(1 + 2 + 4 + 5 + 7 + 8) / 6, (3 + 6 + 9) / 3])


def test_pooling_global():
    x = RNG.standard_normal((2, 3, 5, 4))
    _, (y,) = run_layer('type: "Pooling" pooling_param { pool: AVE global_pooling: true }', [x])
    np.testing.assert_allclose(y, x.mean(axis=(2, 3), keepdims=True))
    _, (y, mask) = run_layer('type: "Pooling" pooling_param { global_pooling: true }', [x],
                             num_tops=2)
    np.testing.assert_allclose(y, x.max(axis=(2, 3), keepdims=True))
    np.testing.assert_array_equal(mask[..., 0, 0], x.reshape(2, 3, -1).argmax(axis=2))


def test_pooling_max_ties_route_to_first_in_row_major_order():
    x = np.array([[[[0.0, 5.0], [5.0, 0.0]], [[7.0, 7.0], [7.0, 7.0]]]])  # 1 x 2 x 2 x 2
    layer = make_layer(pool_spec("MAX", (2, 2), (2, 2), (0, 0)))
    bottom, top = setup_layer(layer, [x], num_tops=2)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[1].data.ravel(), [1, 0])   # Caffe's mask top
    top[0].diff[...] = 3.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[[[0, 3], [0, 0]], [[3, 0], [0, 0]]]])


@pytest.mark.parametrize("shape, kernel, stride, pad", POOL_CASES)
def test_pooling_max_mask_top(shape, kernel, stride, pad):
    x = distinct(shape)
    _, (y, mask) = run_layer(pool_spec("MAX", kernel, stride, pad), [x], num_tops=2)
    _, expected = pool_reference(x, kernel, stride, pad, "MAX")
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, kernel, stride, pad", POOL_CASES)
def test_pooling_gradient(method, shape, kernel, stride, pad):
    check_layer_gradient(pool_spec(method, kernel, stride, pad), [distinct(shape)])


def test_pooling_float32_fast_path():
    layer = make_layer(pool_spec("MAX", (2, 2), (2, 2), (0, 0)), dtype=np.float32)
    x = RNG.standard_normal((4, 3, 12, 10)).astype(np.float32)
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    assert top[0].data.dtype == np.float32
    np.testing.assert_array_equal(top[0].data, x.reshape(4, 3, 6, 2, 5, 2).max(axis=(3, 5)))


@pytest.mark.parametrize("body, shape, error, words", [
    ("pool: STOCHASTIC kernel_size: 2", (1, 1, 4, 4), LayerError, "STOCHASTIC"),
    ("kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 1, 4, 4), LayerError, "not both"),
    ("kernel_h: 2", (1, 1, 4, 4), LayerError, "kernel"),
    ("global_pooling: true kernel_size: 2", (1, 1, 4, 4), LayerError, "global_pooling"),
    ("global_pooling: true stride: 2", (1, 1, 4, 4), LayerError, "global_pooling"),
    ("kernel_size: 2 pad: 2", (1, 1, 4, 4), LayerError, "smaller than the kernel"),
    ("kernel_size: 2 stride_h: 2", (1, 1, 4, 4), LayerError, "stride_h and stride_w"),
    ("kernel_size: 6 pad: 1", (1, 1, 3, 3), ShapeError, "larger than the padded input"),
    ("kernel_size: 2", (2, 4, 4), ShapeError, "4-D"),
])
def test_pooling_bad_parameters(body, shape, error, words):
    with pytest.raises(error, match=words):
        run_layer(f'type: "Pooling" pooling_param {{ {body} }}', [np.zeros(shape)])


def test_pooling_mask_top_needs_max():
    with pytest.raises(LayerError, match="MAX"):
        run_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }',
                  [np.zeros((1, 1, 4, 4))], num_tops=2)


# ---------------------------------------------------------- InnerProduct ---

@pytest.mark.parametrize("shape, axis, transpose", [
    ((4, 3, 2, 2), 1, False),
    ((4, 3, 2, 2), 1, True),
    ((2, 3, 5), 2, False),
    ((2, 3, 5), -1, True),
    ((6, 7), 0, False),
])
def test_inner_product_forward_and_gradient(shape, axis, transpose):
    spec = (f'type: "InnerProduct" inner_product_param {{ num_output: 3 axis: {axis} '
            f'transpose: {"true" if transpose else "false"} {GAUSSIAN} }}')
    x = RNG.standard_normal(shape)
    layer, (y,) = run_layer(spec, [x])
    ax = axis % len(shape)
    k = int(np.prod(shape[ax:]))
    w, b = (blob.data for blob in layer.blobs)
    assert w.shape == ((k, 3) if transpose else (3, k))
    weight = w if transpose else w.T     # (K, O)
    expected = np.einsum("mk,ko->mo", x.reshape(-1, k), weight) + b
    assert y.shape == shape[:ax] + (3,)
    np.testing.assert_allclose(y.reshape(-1, 3), expected, rtol=1e-12)
    check_layer_gradient(spec, [x])


def test_inner_product_without_bias_and_accumulation():
    spec = ('type: "InnerProduct" inner_product_param { num_output: 2 bias_term: false '
            'weight_filler { type: "constant" value: 0.5 } }')
    layer = make_layer(spec)
    x = RNG.standard_normal((3, 4))
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    assert len(layer.blobs) == 1
    np.testing.assert_allclose(top[0].data, np.repeat(x.sum(1, keepdims=True) / 2, 2, axis=1))
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * np.tile(x.sum(0), (2, 1)))
    np.testing.assert_allclose(bottom[0].diff, np.ones((3, 4)))
    check_gradient(layer, bottom, top)


def test_inner_product_errors():
    with pytest.raises(LayerError, match="num_output"):
        run_layer('type: "InnerProduct"', [np.zeros((2, 3))])
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 }')
    bottom, top = setup_layer(layer, [np.zeros((2, 3, 4))])
    bottom[0].reshape((2, 5, 4))
    with pytest.raises(ShapeError, match=r"\(2, 5, 4\).*20.*\(2, 12\)"):
        layer.reshape(bottom, top)
    with pytest.raises(ShapeError, match="axis 3"):
        run_layer('type: "InnerProduct" inner_product_param { num_output: 2 axis: 3 }',
                  [np.zeros((2, 3))])
