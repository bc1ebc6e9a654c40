"""Convolution, Pooling and InnerProduct on the kernel path (kernels/im2col.cu,
kernels/pooling.cu, cuBLAS products) against the NumPy path: forward and
backward on odd shapes, batch 1, every option; plus the im2col/col2im
kernels against the NumPy functions of layers/_im2col.py."""
import numpy as np
import pytest

from layergraph.backend import get_backend, to_numpy
from layergraph.layers._im2col import col2im, conv_out_size, im2col
from layergraph.testing import compare_backends, make_layer, setup_layer

RNG = np.random.default_rng(11)
FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


# ----------------------------------------------------------- Convolution ---

def conv_spec(body, num_output=4):
    return (f'type: "Convolution" convolution_param {{ num_output: {num_output} {body} '
            f'{FILLERS} }}')


CONV_CASES = [
    # (bottom shape, convolution_param body, num_output)
    ((2, 3, 7, 9), "kernel_size: 1", 4),
    ((2, 3, 7, 9), "kernel_size: 3", 5),
    ((2, 3, 7, 9), "kernel_size: 5 pad: 2", 4),
    ((2, 3, 7, 9), "kernel_size: 3 pad: 1 stride: 2", 3),
    ((1, 3, 7, 9), "kernel_size: 3 pad: 1", 4),                      # batch 1
    ((1, 2, 9, 8), "kernel_size: 3 pad: 2 stride: 2", 3),
    ((2, 3, 9, 7), "kernel_size: 3 dilation: 2", 4),
    ((2, 3, 9, 11), "kernel_size: 3 dilation: 2 pad: 2 stride: 2", 4),
    ((2, 4, 7, 9), "kernel_size: 3 pad: 1 group: 2", 6),
    ((1, 6, 5, 7), "kernel_size: 3 pad: 1 stride: 2 group: 3 dilation: 2", 3),
    ((2, 3, 7, 9), "kernel_size: 3 bias_term: false", 4),
    ((2, 4, 7, 9), "kernel_size: 3 group: 2 bias_term: false", 4),
    ((2, 3, 8, 9), "kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1", 4),
    ((1, 1, 1, 1), "kernel_size: 1", 1),
    ((3, 2, 17, 19), "kernel_size: 5 stride: 3 pad: 1", 2),         # Wo >= 16
]


@pytest.mark.parametrize("shape, body, num_output", CONV_CASES)
def test_convolution_matches_numpy(kernel_backend, shape, body, num_output):
    x = RNG.standard_normal(shape)
    report = compare_backends(conv_spec(body, num_output), [x], backend=kernel_backend,
                              iterations=2)
    assert "iter1.bottom_diff[0]" in report and "iter1.param_diff[0]" in report


@pytest.mark.parametrize("body", ["kernel_size: 3 pad: 1", "kernel_size: 3 bias_term: false"])
def test_convolution_without_propagate_down(kernel_backend, body):
    x = RNG.standard_normal((2, 3, 5, 6))
    report = compare_backends(conv_spec(body), [x], backend=kernel_backend, propagate=[False])
    assert "iter0.param_diff[0]" in report and "iter0.bottom_diff[0]" not in report


def _run_twice(spec, backend, shapes, num_tops=None):
    """Forward + backward on two bottom shapes in a row (the kernel path
    reallocates its buffers on a geometry change); param diffs accumulate."""
    be = get_backend(backend)
    layer = make_layer(spec, dtype=np.float32, backend=be)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    bottom, top = setup_layer(layer, [xs[0]], num_tops)
    out = []
    for x in xs:
        bottom[0].reshape(x.shape)
        bottom[0].data[...] = be.xp.asarray(x)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        top[0].diff[...] = be.xp.asarray(np.cos(np.arange(top[0].count)).reshape(top[0].shape)
                                         .astype(np.float32))
        layer.backward(top, [True], bottom)
        out += [to_numpy(t.data).copy() for t in top] + [to_numpy(bottom[0].diff).copy()]
    out += [to_numpy(b.diff).copy() for b in layer.blobs]
    return out


@pytest.mark.parametrize("spec", [
    conv_spec("kernel_size: 3 pad: 1 stride: 2"),
    'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
    'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
    f'type: "InnerProduct" inner_product_param {{ num_output: 3 {FILLERS} }}',
])
def test_new_bottom_shape_and_accumulation(kernel_backend, spec):
    shapes = [(2, 3, 7, 9), (3, 3, 7, 9)]
    expected = _run_twice(spec, "cpu", shapes)
    got = _run_twice(spec, kernel_backend, shapes)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(e).max()))


# --------------------------------------------------------------- Pooling ---

def pool_spec(method, kernel, stride, pad, extra=""):
    return (f'type: "Pooling" pooling_param {{ pool: {method} kernel_h: {kernel[0]} '
            f'kernel_w: {kernel[1]} stride_h: {stride[0]} stride_w: {stride[1]} '
            f'pad_h: {pad[0]} pad_w: {pad[1]} {extra} }}')


POOL_CASES = [
    # (bottom shape, kernel, stride, pad)
    ((2, 3, 8, 6), (2, 2), (2, 2), (0, 0)),     # tiles the input
    ((2, 2, 6, 7), (3, 3), (1, 1), (0, 0)),     # overlapping
    ((2, 2, 7, 5), (3, 2), (2, 2), (0, 0)),     # ceil overhang
    ((1, 2, 5, 5), (2, 2), (2, 2), (1, 1)),     # last window dropped (pad rule)
    ((2, 2, 6, 7), (3, 3), (2, 2), (1, 1)),
    ((1, 3, 7, 8), (3, 2), (2, 3), (2, 0)),
    ((1, 2, 8, 8), (2, 2), (3, 3), (0, 0)),     # stride > kernel
    ((3, 5, 9, 11), (3, 3), (3, 3), (1, 1)),
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0)),
]


@pytest.mark.parametrize("round_mode", ["CEIL", "FLOOR"])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape, kernel, stride, pad", POOL_CASES)
def test_pooling_matches_numpy(kernel_backend, method, round_mode, shape, kernel, stride, pad):
    x = RNG.standard_normal(shape)
    spec = pool_spec(method, kernel, stride, pad, f"round_mode: {round_mode}")
    compare_backends(spec, [x], backend=kernel_backend, iterations=2)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (1, 2, 13, 11)])
def test_pooling_global_matches_numpy(kernel_backend, method, shape):
    spec = f'type: "Pooling" pooling_param {{ pool: {method} global_pooling: true }}'
    compare_backends(spec, [RNG.standard_normal(shape)], backend=kernel_backend)


@pytest.mark.parametrize("shape, kernel, stride, pad", POOL_CASES[:6])
def test_pooling_mask_top_matches_numpy(kernel_backend, shape, kernel, stride, pad):
    spec = pool_spec("MAX", kernel, stride, pad)
    report = compare_backends(spec, [RNG.standard_normal(shape)], backend=kernel_backend,
                              num_tops=2)
    assert "iter0.top[1]" in report


@pytest.mark.parametrize("kernel, stride, pad", [((3, 3), (1, 1), (0, 0)),
                                                 ((2, 2), (2, 2), (1, 1)),
                                                 ((3, 2), (2, 1), (1, 1))])
def test_pooling_max_ties_match_numpy(kernel_backend, kernel, stride, pad):
    """Few distinct values: ties everywhere, so the argmax (mask top) and the
    routed gradient must pick the first maximum in row-major order, as NumPy."""
    x = RNG.integers(0, 3, size=(2, 3, 7, 6)).astype(np.float32)
    spec = pool_spec("MAX", kernel, stride, pad)
    report = compare_backends(spec, [x], backend=kernel_backend, num_tops=2)
    assert report["iter0.top[1]"] == 0          # the very same argmax


# ---------------------------------------------------------- InnerProduct ---

@pytest.mark.parametrize("shape, axis, transpose, bias", [
    ((4, 3, 2, 2), 1, False, True),
    ((4, 3, 2, 2), 1, True, True),
    ((2, 3, 5), 2, False, True),
    ((2, 3, 5), -1, True, True),
    ((6, 7), 0, False, True),
    ((5, 7), 1, False, False),
    ((5, 7), 1, True, False),
    ((1, 9), 1, False, True),                    # batch 1
    ((131, 3), 1, False, True),                  # more rows than the emulated grid
])
def test_inner_product_matches_numpy(kernel_backend, shape, axis, transpose, bias):
    spec = (f'type: "InnerProduct" inner_product_param {{ num_output: 5 axis: {axis} '
            f'transpose: {"true" if transpose else "false"} '
            f'bias_term: {"true" if bias else "false"} {FILLERS} }}')
    report = compare_backends(spec, [RNG.standard_normal(shape)], backend=kernel_backend,
                              iterations=2)
    assert "iter1.bottom_diff[0]" in report


def test_inner_product_without_propagate_down(kernel_backend):
    spec = f'type: "InnerProduct" inner_product_param {{ num_output: 4 {FILLERS} }}'
    report = compare_backends(spec, [RNG.standard_normal((3, 6))], backend=kernel_backend,
                              propagate=[False])
    assert "iter0.bottom_diff[0]" not in report and "iter0.param_diff[1]" in report


# ------------------------------------------------------ im2col / col2im ---

IM2COL_CASES = [
    # (shape, kernel, pad, stride, dilation)
    ((2, 3, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 8, 7), (3, 2), (2, 0), (2, 3), (1, 1)),
    ((2, 2, 9, 9), (3, 3), (2, 1), (2, 1), (2, 3)),
    ((3, 1, 5, 6), (1, 1), (0, 0), (1, 1), (1, 1)),
    ((1, 3, 6, 6), (5, 5), (2, 2), (3, 3), (1, 1)),
]


def _geometry(shape, kernel, pad, stride, dilation):
    n, c, h, w = shape
    ho = conv_out_size(h, kernel[0], pad[0], stride[0], dilation[0])
    wo = conv_out_size(w, kernel[1], pad[1], stride[1], dilation[1])
    return (n, c, h, w, kernel[0], kernel[1], pad[0], pad[1], stride[0], stride[1],
            dilation[0], dilation[1], ho, wo)


def _numpy_im2col(x, kernel, pad, stride, dilation, out_size):
    (n, c, h, w), (ph, pw), (kh, kw) = x.shape, pad, kernel
    xpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    xpad[:, :, ph:ph + h, pw:pw + w] = x
    col = np.empty((c * kh * kw, n * out_size[0] * out_size[1]), x.dtype)
    return im2col(xpad, col, kernel, stride, dilation, out_size)


def _numpy_col2im(col, shape, kernel, pad, stride, dilation, out_size):
    """_im2col.col2im reads tap-major rows: reorder the (c, i, j) rows first."""
    (n, c, h, w), (ph, pw), (kh, kw) = shape, pad, kernel
    taps = col.reshape(c, kh, kw, -1).transpose(1, 2, 0, 3).reshape(col.shape).copy()
    dx = np.zeros((n, c, h + 2 * ph, w + 2 * pw), col.dtype)
    col2im(taps, dx, kernel, stride, dilation, out_size)
    return dx[:, :, ph:ph + h, pw:pw + w]


@pytest.mark.parametrize("shape, kernel, pad, stride, dilation", IM2COL_CASES)
def test_im2col_col2im_kernels_match_numpy(kernel_backend, shape, kernel, pad, stride, dilation):
    be = get_backend(kernel_backend)
    geometry = _geometry(shape, kernel, pad, stride, dilation)
    out_size = geometry[-2:]
    x = RNG.standard_normal(shape).astype(np.float32)
    expected_col = _numpy_im2col(x, kernel, pad, stride, dilation, out_size)
    col = be.xp.full(expected_col.shape, np.nan, dtype=np.float32)
    windows = expected_col.size // (kernel[0] * kernel[1])
    be.launch("im2col_nchw", (windows, be.xp.asarray(x), *geometry, col), n=windows)
    np.testing.assert_array_equal(to_numpy(col), expected_col)   # a copy: exact

    c = RNG.standard_normal(expected_col.shape).astype(np.float32)
    dx = be.xp.full(shape, np.nan, dtype=np.float32)               # overwritten
    be.launch("col2im_nchw", (dx.size, be.xp.asarray(c), *geometry, dx), n=dx.size)
    dx = to_numpy(dx)
    expected_dx = _numpy_col2im(c, shape, kernel, pad, stride, dilation, out_size)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-5)
    # col2im is im2col's adjoint: <im2col(x), c> == <x, col2im(c)>
    lhs = np.dot(expected_col.astype(np.float64).ravel(), c.astype(np.float64).ravel())
    rhs = np.dot(x.astype(np.float64).ravel(), dx.astype(np.float64).ravel())
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))
