"""Im2col: every convolution window as a column of channels (Caffe's Im2colLayer)."""
from ..layer import Layer, register_layer
from ._im2col import conv_out_size
from .convolution import window_geometry


@register_layer("Im2col")
class Im2colLayer(Layer):
    r"""Rearrange the kh x kw windows of a bottom x (N, C, H, W) into the
    channels of the top y (N, C*kh*kw, Ho, Wo), with Caffe's row order
    (c, i, j) -- the input a Convolution's GEMM reads:

        y[n, (c*kh + i)*kw + j, r, s] = x[n, c, r*sh - ph + i*dh, s*sw - pw + j*dw]

    (0 outside the image), Ho = (H + 2 ph - (dh (kh - 1) + 1)) / sh + 1
    (integer division).  The window comes from ``convolution_param``
    (kernel_size or kernel_h/w, stride (1), pad (0), dilation (1));
    num_output, group and the fillers are not used.  Backward sums each
    column entry back into the pixel it was read from (col2im).  2-D
    spatial, channel axis 1; not in place.
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.convolution_param
        if p.axis != 1:
            raise self.error(f"axis {p.axis} is not supported: the channel axis must be 1")
        if top[0] is bottom[0]:
            raise self.error("in-place computation is not supported")
        self.kernel, self.stride, self.pad, self.dilation = window_geometry(self, p)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got shape {shape}")
        n, c, h, w = shape
        ho = conv_out_size(h, self.kernel[0], self.pad[0], self.stride[0], self.dilation[0])
        wo = conv_out_size(w, self.kernel[1], self.pad[1], self.stride[1], self.dilation[1])
        if ho is None or wo is None:
            raise self.shape_error(f"the kernel {self.kernel[0]}x{self.kernel[1]} (dilation "
                                   f"{self.dilation[0]}x{self.dilation[1]}) does not fit the "
                                   f"padded input (bottom shape {shape})")
        self.out_size = (ho, wo)
        top[0].reshape((n, c * self.kernel[0] * self.kernel[1], ho, wo))

    def _taps(self):
        """(i, j, window) for every kernel tap: ``window`` indexes the padded
        image at the pixels tap (i, j) reads for all output positions."""
        (kh, kw), (sh, sw), (dh, dw), (ho, wo) = (self.kernel, self.stride, self.dilation,
                                                  self.out_size)
        for i in range(kh):
            for j in range(kw):
                yield i, j, (Ellipsis, slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
                             slice(j * dw, j * dw + sw * (wo - 1) + 1, sw))

    def _columns(self, a):
        """A (N, C*kh*kw, Ho, Wo) array as (N, C, kh, kw, Ho, Wo)."""
        n, _, ho, wo = a.shape
        return a.reshape(n, -1, self.kernel[0], self.kernel[1], ho, wo)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        (ph, pw) = self.pad
        x = bottom[0].data
        if ph or pw:
            x = self.xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        cols = self._columns(top[0].data)
        for i, j, window in self._taps():
            cols[:, :, i, j] = x[window]

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        (ph, pw) = self.pad
        n, c, h, w = bottom[0].shape
        dx = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=self.dtype) if ph or pw \
            else bottom[0].diff
        if dx is bottom[0].diff:
            dx.fill(0)
        cols = self._columns(top[0].diff)
        for i, j, window in self._taps():
            dx[window] += cols[:, :, i, j]
        if dx is not bottom[0].diff:
            bottom[0].diff[...] = dx[:, :, ph:ph + h, pw:pw + w]
