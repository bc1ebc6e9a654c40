"""Log: y = log_base(shift + scale * x) (Caffe's LogLayer)."""
import math

from ..layer import Layer, register_layer


@register_layer("Log")
class LogLayer(Layer):
    r"""Element-wise logarithm with ``log_param { base scale shift }``
    (defaults: base -1 meaning e, scale 1, shift 0):

        y = log_base(shift + scale x) = ln(shift + scale x) / ln(base)
        dE/dx = dE/dy * (scale / ln(base)) / (shift + scale x)

    ``base`` must be > 0 and not 1 (or -1 for e).  Inputs with
    shift + scale x <= 0 give -inf/NaN, as in Caffe.  Shapes: bottom[0] any,
    top[0] the same.  In place: forward keeps a copy of x for backward.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Log" log_param { base: 2 scale: 2 shift: 4 }',
    ...           [[0.0, 2.0]])[1][0]
    array([2., 3.])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.log_param
        base = float(p.base)
        if base != -1 and not (base > 0 and base != 1):
            raise self.error(f"log_param.base must be > 0 and != 1 (or -1 for e), got {base:g}")
        self.base_scale = 1.0 if base == -1 else 1.0 / math.log(base)
        self.input_scale = float(p.scale)
        self.input_shift = float(p.shift)
        self.backward_num_scale = self.input_scale * self.base_scale
        self._bottom_memory = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _argument(self, x):
        """shift + scale * x (x itself when they are the identity)."""
        if self.input_scale == 1 and self.input_shift == 0:
            return x
        return x * self.input_scale + self.input_shift

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data
        self._bottom_memory = x.copy() if top[0] is bottom[0] else None
        y = top[0].data
        self.xp.log(self._argument(x), out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self._bottom_memory if self._bottom_memory is not None else bottom[0].data
        bottom[0].diff[...] = top[0].diff * self.backward_num_scale / self._argument(x)
