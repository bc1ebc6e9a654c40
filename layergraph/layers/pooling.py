"""Pooling: MAX or AVE over 2-D windows (Caffe semantics).

Bottom x (N, C, H, W); top y (N, C, Ho, Wo); optional second top (MAX only):
the argmax index h*W + w into each input plane, as Caffe's mask top.
Window (r, s) covers rows hs = r*sh - ph .. hs + kh - 1 and columns
ws = s*sw - pw .. ws + kw - 1, clipped to the image:

    MAX:  y[n, c, r, s] = max over the window of x[n, c, h, w]
    AVE:  y[n, c, r, s] = (sum over the window of x[n, c, h, w]) / size[r, s]

with Caffe's divisor size[r, s] = (min(hs + kh, H + ph) - hs) *
(min(ws + kw, W + pw) - ws): padding counts, the overhang of a ceil-rounded
last window does not.  Output size (round_mode CEIL; FLOOR uses floor):

    Ho = ceil((H + 2*ph - kh) / sh) + 1,   and when any pad > 0:
    Ho -= 1 if (Ho - 1)*sh >= H + ph       (the last window must start inside)

With a stride larger than the kernel (kernel 1, stride 3 on 5x5: Ho = 3),
the last window can start past the image (hs >= H, or ws >= W) and cover no
input at all; Caffe keeps it: MAX gives -FLT_MAX (and mask -1), AVE gives 0
(Caffe divides 0 by its divisor: 0 too, or NaN where the divisor is 0), and
no gradient flows from it.

global_pooling takes kh, kw = H, W.  Backward: MAX sends dy to the first
maximum of its window in row-major order (Caffe's choice on ties); AVE spreads
dy[r, s] / size[r, s] over the window.

The 2-D window is separable, which is how it is computed: a 1-D pass along
W (kw strided views), then along H (kh strided views) -- elementwise ufuncs
over long arrays instead of a gather.  Taking the first maximum in each row
and then the first row holding the maximum gives exactly Caffe's row-major
first maximum.  When stride == kernel, pad == 0 and the kernel divides the
input, the views are plain reshapes of the input (no padded copy).

Compiled CPU path (the cpu backend when layergraph.cpu_kernels can build
kernels/cpu/window_ops.cpp): one OpenMP loop over the planes forward
(MAX keeping the flat argmax, as the kernel path) and one backward (MAX
routes each window's gradient to its argmax; AVE spreads it).

Kernel path (GPU and its emulation, kernels/pooling.cu): one launch forward
(one thread per output, MAX keeping an int32 argmax per output for backward
and writing the mask top in the same launch), one launch backward (a gather:
one thread per input pixel, no atomics).
"""
import math

import numpy as np

from .. import cpu_kernels
from ..layer import Layer, register_layer
from ..proto import pb

_P = pb.PoolingParameter
#: MAX over a window that sees no input (Caffe starts its maximum at -FLT_MAX)
_NO_INPUT = float(np.finfo(np.float32).min)


@register_layer("Pooling")
class Pooling(Layer):
    exact_bottoms = 1
    min_tops = 1
    max_tops = 2
    tracks_active_items = True   # a zero top gradient gives a zero bottom one

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.pooling_param
        self.method = p.pool
        if self.method == _P.STOCHASTIC:
            raise self.error("pool: STOCHASTIC is not implemented (use MAX or AVE)")
        if len(top) == 2 and self.method != _P.MAX:
            raise self.error("a second (mask) top is only available with pool: MAX")
        has = p.HasField
        self.global_pooling = bool(p.global_pooling)
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error("with global_pooling: true the kernel size cannot be specified")
            kernel = (0, 0)  # taken from the bottom in reshape
        else:
            if has("kernel_size") == (has("kernel_h") and has("kernel_w")):
                raise self.error("the kernel is kernel_size OR kernel_h and kernel_w; not both")
            if has("kernel_size"):
                kernel = (p.kernel_size, p.kernel_size)
            else:
                kernel = (p.kernel_h, p.kernel_w)
            if min(kernel) <= 0:
                raise self.error(f"kernel must be > 0, got {kernel[0]}x{kernel[1]}")
        for name in ("pad", "stride"):
            h, w = has(name + "_h"), has(name + "_w")
            if (h or w) and (has(name) or not (h and w)):
                raise self.error(f"{name} is {name} OR {name}_h and {name}_w")
        self.pad = (p.pad_h, p.pad_w) if has("pad_h") else (p.pad, p.pad)
        self.stride = (p.stride_h, p.stride_w) if has("stride_h") else (p.stride, p.stride)
        if min(self.stride) <= 0:
            raise self.error(f"stride must be > 0, got {self.stride[0]}x{self.stride[1]}")
        if self.global_pooling and (max(self.pad) > 0 or max(self.stride) > 1):
            raise self.error("with global_pooling: true only pad = 0 and stride = 1 are allowed")
        if not self.global_pooling and (self.pad[0] >= kernel[0] or self.pad[1] >= kernel[1]):
            raise self.error(f"pad {self.pad[0]}x{self.pad[1]} must be smaller than the kernel "
                             f"{kernel[0]}x{kernel[1]}")
        self.kernel = tuple(int(k) for k in kernel)
        self.pad = tuple(int(v) for v in self.pad)
        self.stride = tuple(int(v) for v in self.stride)
        self.round_mode = p.round_mode
        self._geometry = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got shape {shape}")
        n, c, h, w = shape
        if self.global_pooling:
            self.kernel = (h, w)
        out = [self._pooled(size, k, p, s)
               for size, k, p, s in zip((h, w), self.kernel, self.pad, self.stride)]
        if max(self.pad) > 0:  # Caffe: the last window must start inside image + pad
            out = [o - 1 if (o - 1) * s >= size + p else o
                   for o, s, size, p in zip(out, self.stride, (h, w), self.pad)]
        ho, wo = out
        top[0].reshape((n, c, ho, wo))
        if len(top) > 1:
            top[1].reshape((n, c, ho, wo))
        geometry = (shape, self.kernel, bottom[0].dtype)
        if geometry != self._geometry:
            self._allocate(n, c, h, w, ho, wo)
            self._geometry = geometry

    def _pooled(self, size, kernel, pad, stride):
        if size + 2 * pad < kernel:
            raise self.shape_error(
                f"kernel {self.kernel[0]}x{self.kernel[1]} is larger than the padded input "
                f"(bottom height/width {size} + 2*pad {pad})")
        span = (size + 2 * pad - kernel) / stride
        rounded = math.floor(span) if self.round_mode == _P.FLOOR else math.ceil(span)
        return int(rounded) + 1

    def _allocate(self, n, c, h, w, ho, wo):
        """Work buffers, reused while the bottom shape stays the same."""
        xp, dt = self.xp, self.dtype
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.pad
        self.out_size = (ho, wo)
        # windows that start past the image (stride > kernel): they see no input
        empty_h = np.arange(ho) * sh - ph >= h
        empty_w = np.arange(wo) * sw - pw >= w
        self._empty = ((xp.asarray(np.flatnonzero(empty_h)), xp.asarray(np.flatnonzero(empty_w)))
                       if empty_h.any() or empty_w.any() else None)
        self.cpu_loops = (not self.use_kernels and xp is np
                          and cpu_kernels.available(dt))
        if self.use_kernels or self.cpu_loops:  # both read x directly
            self._window = (h, w, ho, wo, kh, kw, sh, sw, ph, pw)
            self._argmax = (xp.empty((n, c, ho, wo), dtype=np.int32)
                            if self.method == _P.MAX else None)
            return
        # The padded plane the windows read: rows -ph .. (ho-1)*sh - ph + kh.
        hb = ph + max(h, (ho - 1) * sh + kh - ph)
        wb = pw + max(w, (wo - 1) * sw + kw - pw)
        self._needs_buffer = (hb, wb) != (h, w)
        self._interior = (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + w))
        self._xpad = self._dxpad = None
        if self._needs_buffer:
            fill = xp.finfo(dt).min if self.method == _P.MAX else 0
            self._xpad = xp.full((n, c, hb, wb), fill, dtype=dt)
        # Row pass result (N, C, Hb, Wo), and its gradient.
        self._rows = xp.empty((n, c, hb, wo), dtype=dt)
        self._drows = None
        # Each pass's views partition their input exactly when stride == kernel
        # and the windows tile it: then backward assigns instead of adding.
        self._tiles = (sw == kw and wb == wo * kw, sh == kh and hb == ho * kh)
        if self.method == _P.MAX:
            idx_type = np.int8 if max(kh, kw) <= 127 else np.int32
            self._col_idx = xp.empty((n, c, hb, wo), dtype=idx_type)   # argmax along W
            self._row_idx = xp.empty((n, c, ho, wo), dtype=idx_type)   # argmax along H
        else:
            size_h = np.minimum(np.arange(ho) * sh - ph + kh, h + ph) - (np.arange(ho) * sh - ph)
            size_w = np.minimum(np.arange(wo) * sw - pw + kw, w + pw) - (np.arange(wo) * sw - pw)
            size = np.outer(size_h, size_w).astype(np.float64)
            empty = np.logical_or.outer(empty_h, empty_w)
            inv = np.divide(1.0, size, out=np.zeros_like(size), where=~empty)
            self._inv_size = xp.asarray(inv, dtype=dt)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if self.cpu_loops:    # kernels/cpu/window_ops.cpp
            y, planes = top[0].data, x.shape[0] * x.shape[1]
            if self.method == _P.MAX:
                cpu_kernels.call("max_pool_forward", self.dtype, x, planes, *self._window, y,
                                 self._argmax)
                if len(top) > 1:
                    top[1].data[...] = self._argmax
            else:
                cpu_kernels.call("ave_pool_forward", self.dtype, x, planes, *self._window, y)
            return
        if self.use_kernels:  # kernels/pooling.cu
            y = top[0].data
            if self.method == _P.MAX:
                mask = top[1].data if len(top) > 1 else y  # y: not written without a mask
                self.launch("max_pool_forward", y.size, x, *self._window, y, self._argmax,
                            int(len(top) > 1), mask, n=y.size)
            else:
                self.launch("ave_pool_forward", y.size, x, *self._window, y, n=y.size)
            return
        if self._needs_buffer:
            xp.copyto(self._xpad[self._interior], x)
            x = self._xpad
        (kh, kw), (sh, sw), (ho, wo) = self.kernel, self.stride, self.out_size
        cols = [x[..., j:j + sw * (wo - 1) + 1:sw] for j in range(kw)]
        rows = [self._rows[:, :, i:i + sh * (ho - 1) + 1:sh] for i in range(kh)]
        y = top[0].data
        if self.method == _P.MAX:
            self._max_pass(cols, self._rows, self._col_idx)
            self._max_pass(rows, y, self._row_idx)
            if len(top) > 1:
                self._mask(top[1].data, bottom[0].shape)
            if self._empty is not None:   # Caffe's value for a window with no input
                rows_out, cols_out = self._empty
                y[:, :, rows_out, :] = _NO_INPUT
                y[:, :, :, cols_out] = _NO_INPUT
                if len(top) > 1:
                    top[1].data[:, :, rows_out, :] = -1
                    top[1].data[:, :, :, cols_out] = -1
        else:
            self._sum_pass(cols, self._rows)
            self._sum_pass(rows, y)
            y *= self._inv_size

    def _max_pass(self, views, out, idx):
        """out = max over views; idx = index of the first view attaining it."""
        xp = self.xp
        if len(views) == 1:
            xp.copyto(out, views[0])
            idx.fill(0)
            return
        greater = xp.empty(out.shape, dtype=bool)
        # bools are 0/1 bytes: as int8 they mix with idx without a cast
        hit = greater.view(np.int8) if idx.dtype == np.int8 else greater
        xp.greater(views[1], views[0], out=greater)
        xp.maximum(views[0], views[1], out=out)
        xp.copyto(idx, hit)
        if len(views) == 2:
            return
        step = xp.empty(out.shape, dtype=idx.dtype)
        for k, v in enumerate(views[2:], 2):
            xp.greater(v, out, out=greater)
            xp.maximum(out, v, out=out)
            # idx = where(greater, k, idx), arithmetically: masked writes are
            # several times slower than ufuncs for random masks.
            xp.subtract(idx, k, out=step)
            step *= hit
            idx -= step

    def _sum_pass(self, views, out):
        self.xp.copyto(out, views[0])
        for v in views[1:]:
            out += v

    def _mask(self, mask, bottom_shape):
        """Caffe's mask top: the flat index h*W + w of each window's maximum."""
        xp = self.xp
        (sh, sw), (ph, pw), (ho, wo) = self.stride, self.pad, self.out_size
        r = xp.arange(ho).reshape(ho, 1) * sh
        row = r + self._row_idx                                  # row in the padded plane
        col_idx = xp.take_along_axis(self._col_idx, row.astype(np.intp), axis=2)
        col = xp.arange(wo) * sw + col_idx
        mask[...] = (row - ph) * bottom_shape[3] + (col - pw)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        bottom[0].active = top[0].active
        if self.cpu_loops:    # kernels/cpu/window_ops.cpp
            dy, dx = top[0].diff, bottom[0].diff
            planes, (h, w, ho, wo) = dx.shape[0] * dx.shape[1], self._window[:4]
            live = None       # items whose dy is all zero are only zeroed
            if cpu_kernels.skip_inactive(top[0].active, dx.shape[0]):
                live = np.zeros(dx.shape[0], np.uint8)
                live[top[0].active] = 1
            if self.method == _P.MAX:
                cpu_kernels.call("max_pool_backward", self.dtype, dy, self._argmax, planes,
                                 h, w, ho, wo, live, dx.shape[1], dx)
            else:
                cpu_kernels.call("ave_pool_backward", self.dtype, dy, planes, *self._window,
                                 live, dx.shape[1], dx)
            return
        if self.use_kernels:  # kernels/pooling.cu
            dy, dx = top[0].diff, bottom[0].diff
            if self.method == _P.MAX:
                self.launch("max_pool_backward", dx.size, dy, self._argmax, *self._window, dx,
                            n=dx.size)
            else:
                self.launch("ave_pool_backward", dx.size, dy, *self._window, dx, n=dx.size)
            return
        xp = self.xp
        (kh, kw), (sh, sw), (ho, wo) = self.kernel, self.stride, self.out_size
        if self._drows is None:
            self._drows = xp.empty_like(self._rows)
        if self._needs_buffer:
            if self._dxpad is None:
                self._dxpad = xp.empty_like(self._xpad)
            dx = self._dxpad
        else:
            dx = bottom[0].diff
        drows = self._drows
        row_views = [drows[:, :, i:i + sh * (ho - 1) + 1:sh] for i in range(kh)]
        col_views = [dx[..., j:j + sw * (wo - 1) + 1:sw] for j in range(kw)]
        tile_w, tile_h = self._tiles
        dy = top[0].diff
        if self.method == _P.MAX:
            self._route(dy, self._row_idx, row_views, tile_h, drows)
            self._route(drows, self._col_idx, col_views, tile_w, dx)
        else:
            dy = dy * self._inv_size
            self._spread(dy, row_views, tile_h, drows)
            self._spread(drows, col_views, tile_w, dx)
        if dx is not bottom[0].diff:
            xp.copyto(bottom[0].diff, dx[self._interior])

    def _route(self, grad, idx, views, tiles, target):
        """views[k] (+)= grad where idx == k."""
        xp = self.xp
        hit = xp.empty(idx.shape, dtype=bool)
        if tiles:
            for k, v in enumerate(views):
                xp.equal(idx, k, out=hit)
                xp.multiply(grad, hit, out=v)
            return
        target.fill(0)
        routed = xp.empty_like(grad)
        for k, v in enumerate(views):
            xp.equal(idx, k, out=hit)
            xp.multiply(grad, hit, out=routed)
            v += routed

    def _spread(self, grad, views, tiles, target):
        """views[k] (+)= grad for every k."""
        if tiles:
            for v in views:
                self.xp.copyto(v, grad)
            return
        target.fill(0)
        for v in views:
            v += grad
