"""im2col / col2im on strided views, shared by the sliding-window layers.

A 4-D image batch ``x`` has logical axes (N, C, H, W) whatever its memory
order: a batch-last buffer (memory order C, H, W, N) is handed around as its
transposed view.  :func:`window_view` exposes every kernel tap of every output
position as one strided view (no copy):

    view[c, i, j, n, y, z] = x[n, c, y*sh + i*dh, z*sw + j*dw]

ordered (C, kh, kw, N, Ho, Wo), or (C, kh, kw, Ho, Wo, N) with
``batch_last``.  Flattened, rows are (c, i, j) -- the order of a Caffe weight
(O, C, kh, kw) -- and columns are the output positions, so a convolution is
one matrix product ``W (O, C*kh*kw) @ col (C*kh*kw, N*Ho*Wo)``.

col2im reads its rows tap-major instead, (g, kh, kw, C/g) for g channel
groups: each tap's rows are then one contiguous block, which makes the
strided accumulation markedly faster.

Why two column orders: copying a window view runs NumPy's inner loop over
the last axis.  With few output columns (Wo = 8 in LeNet's second
convolution) that loop is too short to be efficient; putting the batch last
makes it Wo*N long at the price of transposing the input and the output.
"""
import numpy as np

from ..backend import get_array_module


def conv_out_size(size, kernel, pad, stride, dilation=1):
    """Caffe's convolution output size: floor((size + 2p - extent) / s) + 1,
    extent = d*(k - 1) + 1; None when the kernel does not fit the padded input."""
    extent = dilation * (kernel - 1) + 1
    if size + 2 * pad < extent:
        return None
    return (size + 2 * pad - extent) // stride + 1


def window_view(x, kernel, stride, dilation, out_size, batch_last=False, tap_major=0):
    """Every kernel tap of every output position of ``x`` (logical N, C, H, W)
    as a read/write strided view; see the module docstring for its axes.
    ``tap_major=g`` orders the leading axes (g, kh, kw, C/g) instead of
    (C, kh, kw)."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_size
    n, c = x.shape[:2]
    b_n, b_c, b_h, b_w = x.strides
    if tap_major:
        g = tap_major
        shape, strides = (g, kh, kw, c // g), (b_c * (c // g), b_h * dh, b_w * dw, b_c)
    else:
        shape, strides = (c, kh, kw), (b_c, b_h * dh, b_w * dw)
    if batch_last:
        shape += (ho, wo, n)
        strides += (b_h * sh, b_w * sw, b_n)
    else:
        shape += (n, ho, wo)
        strides += (b_n, b_h * sh, b_w * sw)
    if isinstance(x, np.ndarray):
        return np.lib.stride_tricks.as_strided(x, shape, strides)
    from cupy.lib.stride_tricks import as_strided  # pragma: no cover - GPU
    return as_strided(x, shape, strides)  # pragma: no cover - GPU


def im2col(x, col, kernel, stride, dilation, out_size, batch_last=False):
    """Copy the windows of ``x`` into the contiguous ``col`` buffer of shape
    (C*kh*kw, N*Ho*Wo) (columns ordered as :func:`window_view` says)."""
    xp = get_array_module(x)
    view = window_view(x, kernel, stride, dilation, out_size, batch_last)
    xp.copyto(col.reshape(view.shape), view)
    return col


def col2im(col, dx, kernel, stride, dilation, out_size, batch_last=False, groups=1):
    """The adjoint of :func:`im2col`, reading ``col`` with its rows tap-major,
    (groups, kh, kw, C/groups): ``dx[window of tap] += rows of tap``.

    ``dx`` (logical N, C, Hp, Wp) is accumulated into, not cleared.  One
    strided add per tap (kh*kw of them); within a tap the output positions
    address distinct elements of ``dx``, so the add is well defined.
    """
    view = window_view(dx, kernel, stride, dilation, out_size, batch_last, tap_major=groups)
    taps = col.reshape(view.shape)
    for i in range(view.shape[1]):
        for j in range(view.shape[2]):
            view[:, i, j] += taps[:, i, j]
    return dx


def matmul_accumulate(a, b, out):
    """``out += a @ b`` for 2-D arrays (``a``, ``b`` may be transposed views),
    the parameter-gradient update of the kernel paths.  On CuPy it is one
    cuBLAS GEMM with beta = 1 (no temporary, no separate add); on NumPy the
    plain expression."""
    xp = get_array_module(out)
    if xp is np:
        out += a @ b
        return out
    from cupy import cublas  # pragma: no cover - GPU
    return cublas.gemm("N", "N", a, b, out=out, alpha=1.0, beta=1.0)  # pragma: no cover - GPU
