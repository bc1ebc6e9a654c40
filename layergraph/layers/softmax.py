"""Softmax: normalised exponentials along one axis."""
from ..layer import Layer, register_layer
from ._shared import canonical_axis


def log_softmax(xp, x, axis):
    """log(softmax(x)) along ``axis``, stable for any magnitude of x."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    r"""Softmax along ``softmax_param.axis`` (default 1, the channels).

        y_{o,c,i} = exp(x_{o,c,i}) / \sum_k exp(x_{o,k,i})
        dE/dx_{o,c,i} = y_{o,c,i} (dE/dy_{o,c,i} - \sum_k dE/dy_{o,k,i} y_{o,k,i})

    (o runs over the axes before ``axis``, i over those after it.)
    Shapes: bottom[0] any with that axis, top[0] the same.  The maximum is
    subtracted first, so large inputs do not overflow.  Backward reads only
    the top data, so in-place use is correct.  Kernel path
    (kernels/softmax.cu): one launch forward, one backward, a block per
    position (o, i).

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Softmax"', [[[0.0, 0.0], [0.0, 1000.0]]])[1][0]
    array([[0.5, 0.5],
           [0. , 1. ]])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.axis_param = int(self.param.softmax_param.axis)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], self.axis_param, "softmax_param.axis")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _geometry(self, blob):
        """(outer, channels, inner): the kernels' view of a bottom-shaped blob."""
        return (blob.count_range(0, self.axis), blob.shape[self.axis],
                blob.count_range(self.axis + 1))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if self.use_kernels:  # kernels/softmax.cu
            outer, channels, inner = self._geometry(bottom[0])
            self.launch("softmax_forward", outer, channels, inner, x, top[0].data,
                        grid=outer * inner, shared=4 * self.backend.block)
            return
        e = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        top[0].data[...] = e / e.sum(axis=self.axis, keepdims=True)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        dy = top[0].diff
        if self.use_kernels:
            outer, channels, inner = self._geometry(top[0])
            self.launch("softmax_backward", outer, channels, inner, y, dy, bottom[0].diff,
                        grid=outer * inner, shared=4 * self.backend.block)
            return
        dot = (dy * y).sum(axis=self.axis, keepdims=True)
        bottom[0].diff[...] = (dy - dot) * y
