"""AbsVal: element-wise absolute value (Caffe's AbsValLayer)."""
from ..layer import Layer, register_layer


@register_layer("AbsVal")
class AbsValLayer(Layer):
    r"""y = |x|,   dE/dx = sign(x) dE/dy   (sign(0) = 0, as Caffe's caffe_sign).

    Shapes: bottom[0] any, top[0] the same.  Not in place: backward reads x,
    and Caffe refuses in-place use of this layer too.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "AbsVal"', [[-2.0, 0.0, 3.0]])[1][0]
    array([2., 0., 3.])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("in-place computation is not supported (backward needs the input)")

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        self.xp.abs(bottom[0].data, out=top[0].data)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.xp.multiply(self.xp.sign(bottom[0].data), top[0].diff, out=bottom[0].diff)
