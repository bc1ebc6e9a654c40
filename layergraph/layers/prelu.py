"""PReLU: leaky rectifier with learned slopes (He et al. 2015)."""
from ..layer import Layer, register_layer
from ..proto import pb


@register_layer("PReLU")
class PReLULayer(Layer):
    r"""Parametric ReLU: one learned slope per channel (or one for all).

        y_{n,c,s} = max(x_{n,c,s}, 0) + a_c \min(x_{n,c,s}, 0)
        dE/dx     = dE/dy  if x > 0  else  a_c dE/dy
        dE/da_c  += \sum_{n,s} dE/dy_{n,c,s} x_{n,c,s} [x_{n,c,s} <= 0]

    Shapes: bottom[0] (N, C, ...), top[0] the same; the slope blob is (C,),
    or (1,) with ``prelu_param.channel_shared`` (then any bottom shape is
    accepted).  ``prelu_param.filler`` defaults to constant 0.25.
    In-place capable: forward keeps a copy of x when top is bottom, as
    Caffe's ``bottom_memory_`` does.
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.prelu_param
        self.channel_shared = bool(p.channel_shared)
        if self.channel_shared:
            channels = 1
        else:
            if bottom[0].num_axes < 2:
                raise self.shape_error(
                    f"needs a bottom with a channel axis (N, C, ...), got shape "
                    f"{bottom[0].shape}; use prelu_param {{ channel_shared: true }}")
            channels = bottom[0].shape[1]
        if p.HasField("filler"):
            filler = p.filler
        else:
            filler = pb.FillerParameter(type="constant", value=0.25)
        self.blobs.append(self.make_blob((channels,), filler, name=f"{self.name}.slope"))
        self._bottom_memory = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if not self.channel_shared:
            shape = bottom[0].shape
            if len(shape) < 2 or shape[1] != self.blobs[0].shape[0]:
                raise self.shape_error(
                    f"bottom shape {shape} does not fit the slope blob "
                    f"{self.blobs[0].shape} (one slope per channel, axis 1)")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _slope(self, ndim):
        """The slopes shaped to broadcast against a bottom of ``ndim`` axes."""
        slope = self.blobs[0].data
        if self.channel_shared:
            return slope.reshape(())
        return slope.reshape((1, -1) + (1,) * (ndim - 2))

    # ------------------------------------------------------------- forward --
    def _geometry(self, x):
        """(outer, channels, inner) of the kernels' view of x."""
        if self.channel_shared:
            return 1, 1, x.size
        return x.shape[0], x.shape[1], x.size // max(x.shape[0] * x.shape[1], 1)

    def forward(self, bottom, top):
        x = bottom[0].data
        # in-place: top overwrites x, which backward still needs
        self._bottom_memory = x.copy() if top[0] is bottom[0] else None
        if self.use_kernels:  # kernels/prelu.cu
            _, channels, inner = self._geometry(x)
            self.launch("prelu_forward", x.size, channels, inner, x, self.blobs[0].data,
                        top[0].data, n=x.size)
            return
        top[0].data[...] = self.xp.where(x > 0, x, x * self._slope(x.ndim))

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        x = self._bottom_memory if self._bottom_memory is not None else bottom[0].data
        dy = top[0].diff
        if self.use_kernels:
            outer, channels, inner = self._geometry(x)
            block = self.backend.block
            self.launch("prelu_backward_slope", outer, channels, inner, x, dy,
                        self.blobs[0].diff, grid=channels, shared=4 * block)
            if propagate_down[0]:
                self.launch("prelu_backward_data", x.size, channels, inner, x,
                            self.blobs[0].data, dy, bottom[0].diff, n=x.size)
            return
        negative = x <= 0
        slope_grad = dy * x * negative
        if self.channel_shared:
            self.blobs[0].diff += slope_grad.sum()
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            self.blobs[0].diff += slope_grad.sum(axis=axes)
        if propagate_down[0]:
            bottom[0].diff[...] = self.xp.where(negative, dy * self._slope(x.ndim), dy)
