"""Deconvolution: the transpose of Convolution (Caffe's DeconvolutionLayer)."""
from ..layer import Layer, register_layer
from ._im2col import col2im, im2col, matmul_accumulate
from .convolution import read_convolution_param


@register_layer("Deconvolution")
class DeconvolutionLayer(Layer):
    r"""Transposed (fractionally strided) convolution: forward is
    Convolution's backward-data pass, so a Deconvolution with the weights of
    a Convolution maps that Convolution's output shape back to its input
    shape.  ``convolution_param`` as for Convolution (num_output O,
    kernel, stride, pad, dilation, group g, bias_term, fillers).

    Bottom x (N, C, H, W); weight w (C, O/g, kh, kw) -- Caffe's order, input
    channels first; bias b (O,); top y (N, O, Ho, Wo) with

        Ho = sh (H - 1) + dh (kh - 1) + 1 - 2 ph

    and, for o in the group of c (both split into g equal blocks),

        y[n, o, h, w] = b[o] + \sum_{c, i, j, r, s : r sh - ph + i dh = h,  s sw - pw + j dw = w}
                        w[c, o mod (O/g), i, j] x[n, c, r, s]

    i.e. y = col2im(w^T x) per group.  Backward, with col = im2col(dE/dy)
    (over the H x W output positions):

        dE/dx = w col,   dE/dw += x col^T,   dE/db += \sum_{n, h, w} dE/dy

    Kernel path (GPU and its emulation): kernels/im2col.cu's
    ``conv_nchw_to_rows``, ``col2im_nchw``, ``im2col_nchw`` and
    ``conv_bias_to_nchw`` around cuBLAS GEMMs, and kernels/deconvolution.cu
    for the bias (forward add, backward block reduction).
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = read_convolution_param(self, bottom, top)
        kh, kw = self.kernel
        self.blobs = [self.make_blob(
            (self.channels, self.num_output // self.group, kh, kw), p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.make_blob((self.num_output,), p.bias_filler))
        self._geometry = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4 or shape[1] != self.channels:
            raise self.shape_error(
                f"bottom shape {shape} does not fit the weights {self.blobs[0].shape}: "
                f"expected (N, {self.channels}, H, W)")
        n, c, h, w = shape
        out = [s * (size - 1) + d * (k - 1) + 1 - 2 * p for size, k, p, s, d in
               zip((h, w), self.kernel, self.pad, self.stride, self.dilation)]
        if min(out) <= 0:
            raise self.shape_error(
                f"the output would be {out[0]}x{out[1]}: pad {self.pad[0]}x{self.pad[1]} is "
                f"too large for bottom shape {shape}")
        ho, wo = out
        top[0].reshape((n, self.num_output, ho, wo))
        if (shape, bottom[0].dtype) != self._geometry:
            xp, dt = self.xp, self.dtype
            k = self.kernel[0] * self.kernel[1]
            self._xrows = xp.empty((c, n * h * w), dtype=dt)      # x as (C, N*H*W)
            self._col = xp.empty((self.num_output * k, n * h * w), dtype=dt)
            self._dxrows = None
            (kh, kw), (ph, pw), (sh, sw), (dh, dw) = (self.kernel, self.pad, self.stride,
                                                      self.dilation)
            # im2col.cu's geometry, the *top* being the image
            self._window = (n, self.num_output, ho, wo, kh, kw, ph, pw, sh, sw, dh, dw, h, w)
            self._geometry = (shape, bottom[0].dtype)

    def _weight_groups(self, array):
        """A weight-shaped array as (g, C/g, O/g*kh*kw)."""
        return array.reshape(self.group, self.channels // self.group, -1)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp, g = self.xp, self.group
        x, y = bottom[0].data, top[0].data
        n, c, h, w = x.shape
        cols = n * h * w
        if self.use_kernels:  # kernels/im2col.cu + kernels/deconvolution.cu
            self.launch("conv_nchw_to_rows", x.size, x, n, c, h * w, self._xrows, n=x.size)
            w_g = self._weight_groups(self.blobs[0].data)
            xp.matmul(w_g.transpose(0, 2, 1), self._xrows.reshape(g, c // g, cols),
                      out=self._col.reshape(g, -1, cols))       # rows (o, i, j)
            self.launch("col2im_nchw", y.size, self._col, *self._window, y, n=y.size)
            if self.bias_term:
                self.launch("deconv_add_bias", y.size, self.num_output,
                            y.shape[2] * y.shape[3], self.blobs[1].data, y, n=y.size)
            return
        xp.copyto(self._xrows.reshape(c, n, h, w), x.transpose(1, 0, 2, 3))
        # col2im of _im2col reads rows tap-major: (g, kh, kw, O/g)
        kh, kw = self.kernel
        o_g = self.num_output // g
        w_taps = self.blobs[0].data.reshape(g, c // g, o_g, kh, kw).transpose(0, 3, 4, 2, 1)
        xp.matmul(w_taps.reshape(g, kh * kw * o_g, c // g), self._xrows.reshape(g, c // g, cols),
                  out=self._col.reshape(g, -1, cols))
        (ph, pw), (ho, wo) = self.pad, y.shape[2:]
        ypad = xp.zeros((n, self.num_output, ho + 2 * ph, wo + 2 * pw), dtype=self.dtype)
        col2im(self._col, ypad, self.kernel, self.stride, self.dilation, (h, w), False, g)
        y[...] = ypad[:, :, ph:ph + ho, pw:pw + wo]
        if self.bias_term:
            y += self.blobs[1].data[None, :, None, None]

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        xp, g = self.xp, self.group
        dy = top[0].diff
        n, c, h, w = bottom[0].shape
        cols = n * h * w
        dcol = self._col                   # the forward column buffer is free now
        if self.use_kernels:  # kernels/im2col.cu + kernels/deconvolution.cu
            if self.bias_term:
                self.launch("deconv_bias_backward", n, self.num_output, dy.shape[2] * dy.shape[3],
                            dy, self.blobs[1].diff, grid=self.num_output,
                            shared=4 * self.backend.block)
            windows = self.num_output * cols
            self.launch("im2col_nchw", windows, dy, *self._window, dcol, n=windows)
        else:
            if self.bias_term:
                self.blobs[1].diff += dy.sum(axis=(0, 2, 3))
            ph, pw = self.pad
            dypad = xp.pad(dy, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else dy
            im2col(dypad, dcol, self.kernel, self.stride, self.dilation, (h, w))
        dcol_g = dcol.reshape(g, -1, cols)                      # rows (o, i, j)
        x_g = self._xrows.reshape(g, c // g, cols)
        dw_g = self._weight_groups(self.blobs[0].diff)
        for k in range(g):
            matmul_accumulate(x_g[k], dcol_g[k].T, dw_g[k])
        if not propagate_down[0]:
            return
        if self._dxrows is None:
            self._dxrows = xp.empty_like(self._xrows)
        w_g = self._weight_groups(self.blobs[0].data)
        xp.matmul(w_g, dcol_g, out=self._dxrows.reshape(g, c // g, cols))
        dx = bottom[0].diff
        if self.use_kernels:
            self.launch("conv_bias_to_nchw", dx.size, self._dxrows, self._dxrows, 0, n, c,
                        h * w, dx, n=dx.size)
            return
        xp.copyto(dx, self._dxrows.reshape(c, n, h, w).transpose(1, 0, 2, 3))
