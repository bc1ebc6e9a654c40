"""Bias: add a broadcast bias (Caffe's BiasLayer)."""
from ..layer import Layer, register_layer
from .scale import broadcast_geometry, operand_shape


@register_layer("Bias")
class BiasLayer(Layer):
    r"""Element-wise sum with a bias broadcast over the outer and inner axes.
    Viewing bottom[0] x as (outer, dim, inner) with the bias b of shape
    x.shape[axis : axis + k]:

        y[o, d, i] = x[o, d, i] + b[d]
        dE/dx = dE/dy,   dE/db[d] = \sum_{o, i} dE/dy[o, d, i]

    ``bias_param``: ``axis`` (1), ``num_axes`` (1; -1 = to the end, 0 = a
    scalar), ``filler`` (constant 0).  With one bottom b is a learned blob;
    with two bottoms b is bottom[1] (num_axes ignored, its gradient written
    to bottom[1].diff).  A scalar bias ignores ``axis``.  The broadcasting
    rules are Scale's.  In place capable.

    Kernel path (kernels/bias.cu): one launch forward, one block per bias
    element reducing its gradient.
    """

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.bias_param
        if len(bottom) == 1:
            shape = operand_shape(self, bottom[0], p.axis, p.num_axes)
            self.blobs.append(self.make_blob(shape, p.filler, name=f"{self.name}.bias"))
        elif top[0] is bottom[1]:
            raise self.error("the bias bottom cannot be computed in place")

    def _bias(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        _, self.outer, self.dim, self.inner = broadcast_geometry(
            self, bottom[0], self._bias(bottom).shape, self.param.bias_param.axis)
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x, b = bottom[0].data, self._bias(bottom).data
        if self.use_kernels:  # kernels/bias.cu
            self.launch("bias_forward", x.size, self.dim, self.inner, x, b, top[0].data,
                        n=x.size)
            return
        self.xp.add(x.reshape(self.outer, self.dim, self.inner), b.reshape(1, -1, 1),
                    out=top[0].data.reshape(self.outer, self.dim, self.inner))

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        if propagate_down[0] and bottom[0] is not top[0]:
            self.xp.copyto(bottom[0].diff, dy)
        bias_is_param = len(bottom) == 1
        if not (bias_is_param or propagate_down[1]):
            return
        bias = self._bias(bottom)
        if self.use_kernels:  # kernels/bias.cu
            self.launch("bias_backward", self.outer, self.dim, self.inner, dy, bias.diff,
                        int(bias_is_param), grid=self.dim, shared=4 * self.backend.block)
            return
        grad = dy.reshape(self.outer, self.dim, self.inner).sum(axis=(0, 2)).reshape(bias.shape)
        if bias_is_param:
            bias.diff += grad
        else:
            bias.diff[...] = grad
