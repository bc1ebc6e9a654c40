"""Convolution: 2-D cross-correlation with learned filters (Caffe semantics).

Bottom x (N, C, H, W); weight w (O, C/g, kh, kw); bias b (O,); top y
(N, O, Ho, Wo), with g groups (input and output channels split into g equal
blocks, block k of y seeing only block k of x):

    y[n, o, r, s] = b[o] + sum_{c in group(o), i, j}
                    w[o, c, i, j] * x[n, c, r*sh - ph + i*dh, s*sw - pw + j*dw]

(x is zero outside the image), and

    Ho = (H + 2*ph - (dh*(kh - 1) + 1)) / sh + 1    (integer division).

Computed as im2col + one matrix product per group:
y = w (O, C*kh*kw) @ col (C*kh*kw, N*Ho*Wo).  Backward:

    dw += dy @ col^T,   db += sum over n, r, s of dy,   dx = col2im(w^T @ dy)

(w^T @ dy is computed with its rows reordered tap-major, as col2im wants).

Compiled CPU path (the cpu backend when layergraph.cpu_kernels can build
kernels/cpu/window_ops.cpp): the same NCHW columns and products as the
kernel path below, with im2col, col2im and the two layout changes as
OpenMP loops over the cores -- one pass each where NumPy needs several.

Kernel path (GPU and its emulation, kernels/im2col.cu): the same products
on NCHW columns -- im2col kernel, GEMM per group (cuBLAS), one kernel adding
the bias while transposing (O, N, Ho*Wo) to the top's (N, O, Ho, Wo);
backward transposes dy back (summing the bias gradient in the same kernel),
accumulates dw with a GEMM and gathers dx from w^T @ dy with col2im.
"""
import numpy as np

from .. import cpu_kernels
from ..layer import Layer, register_layer
from ._im2col import col2im, conv_out_size, im2col, matmul_accumulate

#: Columns made at a time by the one-call split pass (cpu_kernels.native_parts)
#: when a part's would not fit the core's cache: the forward pass keeps none,
#: backward makes them again chunk by chunk.  conv2 of LeNet (64 images, 2
#: threads; in-process A/B, 10-step blocks alternating): LeNet step 1.03x
#: faster at 2 threads, 1.06x at 1; TripletNet_28x28 step 1.14x at 2.
COLUMN_CHUNK_BYTES = 512 << 10
#: Use batch-last columns when output rows are shorter than this (see _im2col).
BATCH_LAST_BELOW = 16


def spatial_pair(param, name, name_h, name_w, default):
    """(h, w) from Caffe's repeated ``name`` or the ``name_h``/``name_w`` pair.
    Returns a message string instead when the fields are inconsistent."""
    values = list(getattr(param, name))
    if param.HasField(name_h) or param.HasField(name_w):
        if values:
            return f"either {name} or {name_h}/{name_w} should be specified; not both"
        return getattr(param, name_h), getattr(param, name_w)
    if not values:
        if default is None:
            return f"{name} (or {name_h} and {name_w}) is required"
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    return f"{name} must be given once or once per spatial axis (2), got {len(values)} values"


def window_geometry(layer, p):
    """The (kernel, stride, pad, dilation) pairs, each (h, w), of a
    ConvolutionParameter -- Convolution, Deconvolution and Im2col read it the
    same way; a one-line error of ``layer`` for inconsistent or
    non-positive values."""
    dilation = list(p.dilation)
    if len(dilation) > 2:
        raise layer.error(f"dilation must be given once or once per spatial axis (2), "
                          f"got {len(dilation)} values")
    pairs = {
        "kernel": spatial_pair(p, "kernel_size", "kernel_h", "kernel_w", None),
        "stride": spatial_pair(p, "stride", "stride_h", "stride_w", 1),
        "pad": spatial_pair(p, "pad", "pad_h", "pad_w", 0),
        "dilation": (tuple(dilation * 2)[:2] if dilation else (1, 1)),
    }
    for what, value in pairs.items():
        if isinstance(value, str):
            raise layer.error(value)
        if what != "pad" and min(value) <= 0:
            raise layer.error(f"{what} must be > 0, got {value[0]}x{value[1]}")
    return tuple(tuple(int(v) for v in pairs[what])
                 for what in ("kernel", "stride", "pad", "dilation"))


def read_convolution_param(layer, bottom, top):
    """Read a ConvolutionParameter into ``layer`` -- num_output, kernel,
    stride, pad, dilation, group, channels, bias_term -- with Caffe's checks
    (Convolution and Deconvolution read it alike); returns the parameter."""
    p = layer.param.convolution_param
    if p.axis != 1:
        raise layer.error(f"axis {p.axis} is not supported: the channel axis must be 1")
    if bottom[0].num_axes != 4:
        raise layer.shape_error(
            f"needs a 4-D bottom (N, C, H, W) (2-D spatial convolution only), "
            f"got shape {bottom[0].shape}")
    if top[0] is bottom[0]:
        raise layer.error("in-place computation is not supported")
    layer.num_output = int(p.num_output)
    if layer.num_output <= 0:
        raise layer.error("num_output must be > 0")
    layer.kernel, layer.stride, layer.pad, layer.dilation = window_geometry(layer, p)
    layer.group = int(p.group)
    layer.channels = bottom[0].shape[1]
    if layer.group <= 0 or layer.channels % layer.group or layer.num_output % layer.group:
        raise layer.error(
            f"group {layer.group} must divide both the input channels ({layer.channels}) "
            f"and num_output ({layer.num_output})")
    layer.bias_term = bool(p.bias_term)
    return p


def _leading(buffer, shape):
    """The first elements of a C-contiguous buffer as a C-contiguous array of
    ``shape`` (a smaller batch in a buffer sized for a larger one)."""
    size = int(np.prod(shape))
    if size > buffer.size:
        raise ValueError(f"a buffer of {buffer.size} elements cannot hold {shape}")
    return buffer.reshape(-1)[:size].reshape(shape)


class _Part:
    """One part of the batch on the compiled CPU path: images [lo, hi), the
    im2col geometry for them, and their buffers (reused across iterations)."""
    __slots__ = ("lo", "hi", "window", "col", "out", "dw_t", "dcol", "dbias", "wide", "dgrad")

    def __init__(self, lo, hi, window, col, out, dw_t):
        self.lo, self.hi, self.window = lo, hi, window
        self.col, self.out, self.dw_t = col, out, dw_t
        self.dcol = self.dbias = None   # backward only
        self.wide = self.dgrad = None   # direct forward / weight gradient

    def columns(self, out_ch, dtype):
        """(col, out), allocated on first use: a direct convolution's
        forward pass needs neither, nor its backward without a bottom
        gradient."""
        if self.col is None:
            n, c, _, _, kh, kw = self.window[:6]
            plane = self.window[-2] * self.window[-1]
            self.col = np.empty((c * kh * kw, n * plane), dtype=dtype)
            self.out = np.empty((out_ch, n * plane), dtype=dtype)
        return self.col, self.out


@register_layer("Convolution")
class Convolution(Layer):
    exact_bottoms = 1
    exact_tops = 1
    tracks_active_items = True

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = read_convolution_param(self, bottom, top)
        kh, kw = self.kernel
        self.blobs = [self.make_blob(
            (self.num_output, self.channels // self.group, kh, kw), p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.make_blob((self.num_output,), p.bias_filler))
        self._geometry = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4 or shape[1] != self.channels:
            raise self.shape_error(
                f"bottom shape {shape} does not fit the weights "
                f"{self.blobs[0].shape}: expected (N, {self.channels}, H, W)")
        n, c, h, w = shape
        ho = conv_out_size(h, self.kernel[0], self.pad[0], self.stride[0], self.dilation[0])
        wo = conv_out_size(w, self.kernel[1], self.pad[1], self.stride[1], self.dilation[1])
        if ho is None or wo is None:
            extent = [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation)]
            raise self.shape_error(
                f"kernel extent {extent[0]}x{extent[1]} is larger than the padded input "
                f"{h + 2 * self.pad[0]}x{w + 2 * self.pad[1]} (bottom shape {shape})")
        top[0].reshape((n, self.num_output, ho, wo))
        geometry = (shape, bottom[0].dtype)
        if geometry != self._geometry:
            self._allocate(n, c, h, w, ho, wo)
            self._geometry = geometry

    def _allocate(self, n, c, h, w, ho, wo):
        """Buffers reused across iterations (large arrays cost page faults
        when allocated afresh)."""
        xp, dt = self.xp, self.dtype
        (ph, pw), (kh, kw) = self.pad, self.kernel
        self.out_size = (ho, wo)
        self.cpu_loops = (not self.use_kernels and xp is np
                          and cpu_kernels.available(dt))
        if self.cpu_loops:    # NCHW columns, as the kernel path, per part of the batch
            (sh, sw), (dh, dw) = self.stride, self.dilation
            g, o = self.group, self.num_output
            # few values per window: forward without columns (direct_conv)
            self._direct = (dt == np.float32 and (sh, sw, ph, pw, dh, dw, g) == (1, 1, 0, 0, 1, 1, 1)
                            and c * kh * kw <= cpu_kernels.DIRECT_CONV_TAPS
                            and cpu_kernels.direct_conv_available())
            self._parts = []
            for lo, hi in cpu_kernels.batch_parts(n):
                p = _Part(lo, hi, (hi - lo, c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo),
                          col=None, out=None,
                          dw_t=xp.empty((g, c // g * kh * kw, o // g), dtype=dt))  # dw^T per group
                if self._direct:
                    p.wide = cpu_kernels.direct_conv_scratch(o, ho, w)
                else:
                    p.columns(o, dt)
                self._parts.append(p)
            self._gathered = None   # backward of the active images only
            # dcol -> col2im in chunks of about 1 MB of columns: written and
            # read back from the core's cache, not memory, and 1 MB of
            # buffer per part instead of all the columns (conv2 of the
            # templates, 2 parts of 64 images: 8.9 -> 8.4 ms backward alone;
            # within noise in a Siamese step)
            per_image = c * kh * kw * ho * wo * dt.itemsize
            self._dcol_images = max(1, (1 << 20) // per_image)
            # the whole split pass in one call (cpu_kernels.native_parts),
            # its columns made COLUMN_CHUNK_BYTES at a time when a part's
            # would not fit the core's cache (recomputed in backward)
            self._native = cpu_kernels.native_parts(dt)
            self._native_geometry = np.array(
                (c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo, o, g), dtype=np.int32)
            self._native_forward = None   # its per-part arrays, made on first use
            self._native_backward_args = {}   # (those of backward without gathering)
            chunk = min(max(1, COLUMN_CHUNK_BYTES // per_image), self._dcol_images)
            self._chunk = (chunk if self._native and not self._direct
                           and chunk < max(p.hi - p.lo for p in self._parts) else 0)
            return
        if self.use_kernels:  # NCHW columns (C*kh*kw, N*Ho*Wo), rows (c, i, j)
            (sh, sw), (dh, dw) = self.stride, self.dilation
            self._window = (n, c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo)
            self._col = xp.empty((c * kh * kw, n * ho * wo), dtype=dt)
            self._out = xp.empty((self.num_output, n * ho * wo), dtype=dt)
            self._dcol = None                              # backward only
            return
        self.batch_last = wo < BATCH_LAST_BELOW
        rows, cols = c * kh * kw, n * ho * wo
        self._col = xp.empty((rows, cols), dtype=dt)
        self._dcol = None                                  # backward only
        self._out = xp.empty((self.num_output, cols), dtype=dt)
        if self.batch_last:  # logical (N, O, Ho, Wo) view of (O, Ho, Wo, N)
            self._out_nchw = self._out.reshape(self.num_output, ho, wo, n).transpose(3, 0, 1, 2)
        else:                # logical (N, O, Ho, Wo) view of (O, N, Ho, Wo)
            self._out_nchw = self._out.reshape(self.num_output, n, ho, wo).transpose(1, 0, 2, 3)
        # Padded input / input gradient; None when x itself can be used.
        self._needs_buffer = self.batch_last or ph > 0 or pw > 0
        self._xpad = self._make_image((n, c, h + 2 * ph, w + 2 * pw)) if self._needs_buffer else None
        self._dxpad = None
        self._interior = (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + w))
        self._ones = None

    def _make_image(self, shape):
        """A zeroed buffer with logical axes (N, C, H, W) in the memory order
        the columns want (C, H, W, N when batch-last)."""
        n, c, h, w = shape
        if self.batch_last:
            return self.xp.zeros((c, h, w, n), dtype=self.dtype).transpose(3, 0, 1, 2)
        return self.xp.zeros(shape, dtype=self.dtype)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if self.use_kernels:  # kernels/im2col.cu
            self._forward_kernels(x, top[0].data)
            return
        if self.cpu_loops:    # kernels/cpu/window_ops.cpp
            self._forward_cpu_loops(x, top[0].data)
            return
        if self._needs_buffer:
            xp.copyto(self._xpad[self._interior], x)
            x = self._xpad
        im2col(x, self._col, self.kernel, self.stride, self.dilation, self.out_size,
               self.batch_last)
        self._matmul(self.blobs[0].data, self._col, self._out)
        if self.bias_term:
            xp.add(self._out_nchw, self.blobs[1].data[None, :, None, None], out=top[0].data)
        else:
            xp.copyto(top[0].data, self._out_nchw)

    def _forward_cpu_loops(self, x, y):
        """im2col -> GEMM per group -> bias + transpose to NCHW, each part of
        the batch on a thread of its own (cpu_kernels.run_parts)."""
        dt, o = self.dtype, self.num_output
        weight = self.blobs[0].data
        bias = self.blobs[1].data if self.bias_term else None
        plane = self.out_size[0] * self.out_size[1]

        if self._native:
            if self._native_forward is None:
                parts = self._parts
                self._native_forward = (
                    np.array([p.lo for p in parts], np.int64),
                    np.array([p.hi - p.lo for p in parts], np.int64),
                    cpu_kernels.addresses([p.wide for p in parts]),
                    cpu_kernels.addresses([p.col for p in parts]),
                    cpu_kernels.addresses([p.out for p in parts]))
            first, count, wide, col, out = self._native_forward
            cpu_kernels.conv_forward_parts(x, self._native_geometry, weight, bias, first, count,
                                           self._direct, wide, col, out, self._chunk, y)
            return

        def part(i):
            p = self._parts[i]
            if self._direct:
                cpu_kernels.direct_conv(x[p.lo:p.hi], weight, bias, y[p.lo:p.hi], p.wide)
                return
            cpu_kernels.call("im2col", dt, x[p.lo:p.hi], *p.window, p.col)
            self._matmul(weight, p.col, p.out)
            cpu_kernels.call("rows_to_nchw", dt, p.out, bias, p.hi - p.lo, o, plane,
                             y[p.lo:p.hi])
        cpu_kernels.run_parts(part, len(self._parts))

    def _forward_kernels(self, x, y):
        """im2col -> GEMM per group -> bias + transpose to NCHW: 3 launches."""
        n, c = self._window[:2]
        ho, wo = self.out_size
        windows = c * n * ho * wo      # one thread per (c, n, r, s), looping over taps
        self.launch("im2col_nchw", windows, x, *self._window, self._col, n=windows)
        self._matmul(self.blobs[0].data, self._col, self._out)
        bias = self.blobs[1].data if self.bias_term else self._out  # not read without bias
        self.launch("conv_bias_to_nchw", y.size, self._out, bias, int(self.bias_term), n,
                    self.num_output, ho * wo, y, n=y.size)

    def _matmul(self, weight, col, out):
        """out (O, P) = weight (O, C/g*kh*kw) @ col (C*kh*kw, P), group by group."""
        g = self.group
        w2 = weight.reshape(self.num_output, -1)
        if g == 1:
            self.xp.dot(w2, col, out=out)
        else:
            self.xp.matmul(w2.reshape(g, self.num_output // g, -1),
                           col.reshape(g, -1, col.shape[1]),
                           out=out.reshape(g, self.num_output // g, -1))

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        # a zero top gradient gives a zero bottom gradient: pass the hint on
        # (only with a bottom gradient to describe)
        propagate = propagate_down[0]
        if propagate:
            bottom[0].active = top[0].active
        if self.use_kernels:  # kernels/im2col.cu
            self._backward_kernels(top[0].diff, propagate_down[0], bottom[0].diff)
            return
        if self.cpu_loops:    # kernels/cpu/window_ops.cpp
            active = cpu_kernels.top_active(top[0], top[0].diff)
            if propagate:
                bottom[0].active = active
            self._backward_cpu_loops(bottom[0].data, top[0].diff, propagate_down[0],
                                     bottom[0].diff, active)
            return
        xp, g, o = self.xp, self.group, self.num_output
        dy = self._out                 # the forward output buffer is free now
        xp.copyto(self._out_nchw, top[0].diff)
        if self.bias_term:
            if self._ones is None:
                self._ones = xp.ones(dy.shape[1], dtype=self.dtype)
            self.blobs[1].diff[...] += xp.dot(dy, self._ones)
        weight = self.blobs[0]
        col = self._col
        if g == 1:
            weight.diff[...] += xp.dot(dy, col.T).reshape(weight.shape)
        else:
            dy_g = dy.reshape(g, o // g, -1)
            col_g = col.reshape(g, -1, col.shape[1])
            weight.diff[...] += xp.matmul(dy_g, col_g.transpose(0, 2, 1)).reshape(weight.shape)
        if not propagate_down[0]:
            return
        if self._dcol is None:
            self._dcol = xp.empty_like(col)
        # col2im wants tap-major rows (g, kh, kw, C/g): reorder the weight's
        # columns (small) rather than the big column buffer.
        w_taps = weight.data.reshape(g, o // g, self.channels // g, -1).transpose(0, 1, 3, 2)
        w_taps = w_taps.reshape(g, o // g, -1)
        if g == 1:
            xp.dot(w_taps[0].T, dy, out=self._dcol)
        else:
            xp.matmul(w_taps.transpose(0, 2, 1), dy.reshape(g, o // g, -1),
                      out=self._dcol.reshape(g, -1, col.shape[1]))
        if self._needs_buffer:
            if self._dxpad is None:
                self._dxpad = self._make_image(self._xpad.shape)
            dx = self._dxpad
        else:
            dx = bottom[0].diff
        dx.fill(0)
        col2im(self._dcol, dx, self.kernel, self.stride, self.dilation, self.out_size,
               self.batch_last, g)
        if dx is not bottom[0].diff:
            xp.copyto(bottom[0].diff, dx[self._interior])


    def _backward_cpu_loops(self, x, dy, propagate, dx, active=None):
        """dy to GEMM rows (+ bias gradient, same pass) -> dw^T = col @ rows^T
        per group -> dcol = w^T @ dy -> col2im, each part of the batch on a
        thread of its own; then the parts' dw (and db) are added.

        Images whose dy is all zero (a triplet that meets its margin) add
        nothing to dw and db and get dx = 0: when few enough images are
        ``active`` (cpu_kernels.skip_inactive), they are gathered and only
        they run the products, their columns recomputed from x."""
        xp, g, o, dt = self.xp, self.group, self.num_output, self.dtype
        plane = self.out_size[0] * self.out_size[1]
        weight = self.blobs[0]
        w_g = weight.data.reshape(g, o // g, -1)
        b_diff = self.blobs[1].diff if self.bias_term else None  # allocated here, once
        if self._direct and not propagate:   # no columns at all
            self._backward_direct(x, dy, active)
            return
        if not cpu_kernels.skip_inactive(active, dy.shape[0]):
            cached = self._native and self._native_backward_args.get((self._direct, propagate))
            if cached:           # the one-call pass over every image, set up before
                cpu_kernels.conv_backward_parts(x, dy, dx if propagate else None,
                                                self._native_geometry, weight.data, *cached,
                                                weight.diff, b_diff)
                return
            active = None        # every image: the forward pass's columns
            # (the direct forward pass left no columns: im2col them here)
            jobs = [(p, p.window, *p.columns(o, dt), dy[p.lo:p.hi], dx[p.lo:p.hi],
                     (None, x[p.lo:p.hi]) if self._direct else None) for p in self._parts]
        else:
            if propagate and (not self._native or len(active) == 0):
                dx.fill(0)   # (the one-call pass zeroes the idle images' rows itself)
            if len(active) == 0:
                return
            jobs = self._active_jobs(x, dy, dx if propagate else None, active)
        split = len(jobs) > 1
        if self.bias_term and (split or self._native):   # (the native call zeroes them)
            for p, *_ in jobs:
                if p.dbias is None:
                    p.dbias = xp.empty(o, dtype=dt)
                if not self._native:
                    p.dbias.fill(0)
        for p, *_ in jobs:
            if propagate and p.dcol is None:
                p.dcol = xp.empty_like(p.col if g > 1 else p.col[:, :self._dcol_images * plane])

        if self._native:
            self._native_backward(x, dy, dx if propagate else None, jobs)
            return

        def part(i):
            p, window, col, rows, dy_part, dx_part, gather = jobs[i]
            n = window[0]
            if gather is not None:   # the columns afresh (of the active images)
                index, x_part = gather
                if index is not None:
                    xp.take(x, index, axis=0, out=x_part, mode="clip")  # (valid indices;
                    xp.take(dy, index, axis=0, out=dy_part, mode="clip")  # 3x "raise")
                cpu_kernels.call("im2col", dt, x_part, *window, col)
            dbias = (p.dbias if split else b_diff) if self.bias_term else None
            cpu_kernels.call("nchw_to_rows", dt, dy_part, n, o, plane, rows, dbias)
            cols = rows.shape[1]
            rows_g = rows.reshape(g, o // g, cols)
            # dw^T = col @ rows^T: OpenBLAS splits this orientation better
            # over the cores (conv2 of the templates: 5.1 vs 6.9 ms, 2 threads)
            if g == 1:
                xp.dot(col, rows.T, out=p.dw_t[0])
            else:
                xp.matmul(col.reshape(g, -1, cols), rows_g.transpose(0, 2, 1), out=p.dw_t)
            if not propagate:
                return
            if g == 1:   # dcol and col2im by chunks of images that stay in cache
                step = self._dcol_images
                for s in range(0, n, step):
                    e = min(n, s + step)
                    dcol = _leading(p.dcol, (col.shape[0], (e - s) * plane))
                    xp.dot(w_g[0].T, rows[:, s * plane:e * plane], out=dcol)
                    cpu_kernels.call("col2im", dt, dcol, e - s, *window[1:], dx_part[s:e])
            else:
                dcol = _leading(p.dcol, col.shape)
                xp.matmul(w_g.transpose(0, 2, 1), rows_g, out=dcol.reshape(g, -1, cols))
                cpu_kernels.call("col2im", dt, dcol, *window, dx_part)
            if gather is not None and gather[0] is not None:
                dx[gather[0]] = dx_part
        cpu_kernels.run_parts(part, len(jobs))
        dw = weight.diff.reshape(g, o // g, -1)
        for p, *_ in jobs:
            dw += p.dw_t.transpose(0, 2, 1)
            if self.bias_term and split:
                b_diff += p.dbias

    def _native_backward(self, x, dy, dx, jobs):
        """The backward ``jobs`` (see _backward_cpu_loops) as one call
        (cpu_kernels.conv_backward_parts): it also scatters gathered dx
        rows and adds the parts' dw and db into the parameter diffs."""
        gathers = [job[6] is not None and job[6][0] is not None for job in jobs]
        recompute = jobs[0][6] is not None
        bias = self.blobs[1].diff if self.bias_term else None
        first = np.array([0 if g else job[0].lo for g, job in zip(gathers, jobs)], np.int64)
        count = np.array([job[1][0] for job in jobs], np.int64)
        idle = None
        if any(gathers):
            # (the index arrays stay referenced here until the call returns)
            indices = [np.ascontiguousarray(job[6][0], np.int64) if g else None
                       for g, job in zip(gathers, jobs)]
            index = cpu_kernels.addresses(indices)
            xa = cpu_kernels.addresses([job[6][1] for job in jobs])
            dya = cpu_kernels.addresses([job[4] for job in jobs])
            dxa = cpu_kernels.addresses([job[5] for job in jobs]) if dx is not None else None
            if dx is not None:   # the images no part gathers: dx = 0 in the call
                still = np.ones(x.shape[0], bool)
                for i in indices:
                    if i is not None:
                        still[i] = False
                idle = np.ascontiguousarray(np.flatnonzero(still), np.int64)
        else:
            index = xa = dya = dxa = None
        addresses = cpu_kernels.addresses
        args = (first, count, index, xa, dya, dxa, idle, recompute,
                addresses([job[2] for job in jobs]), addresses([job[3] for job in jobs]),
                addresses([job[0].dw_t for job in jobs]),
                addresses([job[0].dbias for job in jobs]),
                addresses([job[0].dcol for job in jobs]), self._dcol_images, self._chunk)
        if not any(gathers):   # every image: the same arguments next time (recompute
            self._native_backward_args[(self._direct, dx is not None)] = args  # is _direct)
        cpu_kernels.conv_backward_parts(x, dy, dx, self._native_geometry, self.blobs[0].data,
                                        *args, self.blobs[0].diff, bias)

    def _backward_direct(self, x, dy, active):
        """The weight and bias gradients of a direct convolution with no
        bottom gradient to compute (a first layer): no columns, each part
        of the (active) images on a thread of its own
        (cpu_kernels.DirectConvGradient), the parts' sums added after."""
        n = x.shape[0]
        if cpu_kernels.skip_inactive(active, n):
            parts = len(self._parts)
            jobs = [(p, active[len(active) * i // parts:len(active) * (i + 1) // parts])
                    for i, p in enumerate(self._parts)]
        else:
            jobs = [(p, None) for p in self._parts]
        weight = self.blobs[0]
        b_diff = self.blobs[1].diff if self.bias_term else None  # allocated here, once
        for p, _ in jobs:
            if p.dgrad is None:
                p.dgrad = cpu_kernels.DirectConvGradient(
                    self.channels, *x.shape[2:], self.num_output, *self.kernel, *self.out_size)

        if self._native:
            index = ([np.ascontiguousarray(i, np.int64) if i is not None else None
                      for _, i in jobs])   # (referenced until the call returns)
            cpu_kernels.direct_conv_dw_parts(
                x, dy, np.array([p.lo for p, _ in jobs], np.int64),
                np.array([p.hi - p.lo if i is None else len(i) for p, i in jobs], np.int64),
                cpu_kernels.addresses(index) if jobs[0][1] is not None else None,
                [p.dgrad for p, _ in jobs], weight.diff, b_diff)
            return

        def part(i):
            p, index = jobs[i]
            if index is None:
                p.dgrad.add(x[p.lo:p.hi], dy[p.lo:p.hi])
            elif len(index):
                p.dgrad.add(x, dy, index)
        cpu_kernels.run_parts(part, len(jobs))
        for p, _ in jobs:
            dw, db = p.dgrad.result()
            weight.diff.reshape(self.num_output, -1)[...] += dw
            if b_diff is not None:
                b_diff += db

    def _active_jobs(self, x, dy, dx, active):
        """The backward jobs of the active images only, cut into parts
        again: each part gathers its images' x and dy into buffers (reused),
        uses the first columns of a forward part's buffers, and scatters its
        dx back (``dx`` None: no bottom gradient)."""
        xp, m = self.xp, len(active)
        if self._gathered is None or self._gathered[0].shape[0] < x.shape[0]:
            self._gathered = (xp.empty_like(x), xp.empty_like(dy), None)
        if dx is not None and self._gathered[2] is None:
            self._gathered = self._gathered[:2] + (xp.empty_like(x),)
        xa, dya, dxa = (None if a is None else a[:m] for a in self._gathered)
        plane = self.out_size[0] * self.out_size[1]
        jobs, parts = [], len(self._parts)
        for i, p in enumerate(self._parts):   # m <= n images in as many parts
            lo, hi = m * i // parts, m * (i + 1) // parts
            k = hi - lo
            if k == 0:
                continue
            window = (k,) + p.window[1:]
            p.columns(self.num_output, self.dtype)
            if k > p.hi - p.lo:   # cannot happen with the even cut; kept safe
                p = _Part(p.lo, p.hi, window, xp.empty((p.col.shape[0], k * plane), self.dtype),
                          xp.empty((p.out.shape[0], k * plane), self.dtype),
                          xp.empty_like(p.dw_t))
            col = _leading(p.col, (p.col.shape[0], k * plane))
            rows = _leading(p.out, (p.out.shape[0], k * plane))
            jobs.append((p, window, col, rows, dya[lo:hi],
                         dxa[lo:hi] if dx is not None else None, (active[lo:hi], xa[lo:hi])))
        return jobs

    def _backward_kernels(self, dy, propagate, dx):
        """dy to GEMM order (+ bias gradient, same kernel) -> dw += GEMM per
        group -> dcol = w^T @ dy -> col2im gather: 4 launches with one group."""
        xp, g, o = self.xp, self.group, self.num_output
        n, plane = self._window[0], self.out_size[0] * self.out_size[1]
        rows = self._out               # the forward output buffer is free now
        if self.bias_term:             # one block per output channel
            self.launch("conv_nchw_to_rows_bias", n, o, plane, dy, rows, self.blobs[1].diff,
                        grid=o, shared=4 * self.backend.block)
        else:
            self.launch("conv_nchw_to_rows", rows.size, dy, n, o, plane, rows, n=rows.size)
        weight = self.blobs[0]
        cols = rows.shape[1]
        rows_g = rows.reshape(g, o // g, cols)
        col_g = self._col.reshape(g, -1, cols)
        dw_g = weight.diff.reshape(g, o // g, -1)
        for k in range(g):
            matmul_accumulate(rows_g[k], col_g[k].T, dw_g[k])
        if not propagate:
            return
        if self._dcol is None:
            self._dcol = xp.empty_like(self._col)
        w_g = weight.data.reshape(g, o // g, -1)
        if g == 1:
            xp.dot(w_g[0].T, rows, out=self._dcol)
        else:
            xp.matmul(w_g.transpose(0, 2, 1), rows_g, out=self._dcol.reshape(g, -1, cols))
        self.launch("col2im_nchw", dx.size, self._dcol, *self._window, dx, n=dx.size)
