"""Exp: y = base^(shift + scale * x) (Caffe's ExpLayer)."""
import math

from ..layer import Layer, register_layer


@register_layer("Exp")
class ExpLayer(Layer):
    r"""Element-wise exponential with ``exp_param { base scale shift }``
    (defaults: base -1 meaning e, scale 1, shift 0):

        y = base^{shift + scale x} = outer e^{inner x},
        inner = ln(base) * scale,   outer = base^{shift}
        dE/dx = inner * y * dE/dy

    ``base`` must be > 0 or the default -1 (e).  Shapes: bottom[0] any,
    top[0] the same; in place capable (backward reads only y).

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Exp" exp_param { base: 2 scale: 2 shift: 1 }',
    ...           [[0.0, 1.0]])[1][0]
    array([2., 8.])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.exp_param
        base, scale, shift = float(p.base), float(p.scale), float(p.shift)
        if base != -1 and not base > 0:
            raise self.error(f"exp_param.base must be > 0 (or -1 for e), got {base:g}")
        log_base = 1.0 if base == -1 else math.log(base)
        self.inner_scale = log_base * scale
        if shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if base == -1 else base ** shift

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        y = top[0].data
        x = bottom[0].data
        if self.inner_scale == 1:
            self.xp.exp(x, out=y)
        else:
            self.xp.exp(x * self.inner_scale, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        self.xp.multiply(top[0].diff, top[0].data, out=dx)
        if self.inner_scale != 1:
            dx *= self.inner_scale
