"""Power: y = (shift + scale * x)^power (Caffe's PowerLayer)."""
from ..layer import Layer, register_layer


@register_layer("Power")
class PowerLayer(Layer):
    r"""Element-wise power with ``power_param { power scale shift }``
    (defaults 1, 1, 0: the identity):

        y = (shift + scale x)^p
        dE/dx = dE/dy * p scale (shift + scale x)^{p - 1}

    When p scale = 0 the output is the constant (p == 0 ? 1 : shift^p) and
    the gradient 0; when p == 1 the gradient is the constant scale, as in
    Caffe.  (Caffe computes the p != 2, shift == 0 case as p y / x, which is
    0/0 at x == 0; the closed form above is the same elsewhere and finite
    there.)  Non-integer powers of negative numbers give NaN, as C's pow.
    Shapes: bottom[0] any, top[0] the same.  In place: forward keeps a copy
    of x for backward.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Power" power_param { power: 2 scale: 3 shift: 1 }',
    ...           [[0.0, 1.0]])[1][0]
    array([ 1., 16.])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.power_param
        self.power = float(p.power)
        self.scale = float(p.scale)
        self.shift = float(p.shift)
        self.diff_scale = self.power * self.scale
        self._bottom_memory = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _base(self, x):
        """shift + scale * x, skipping the identity parts."""
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        return x

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data
        y = top[0].data
        if self.diff_scale == 0:
            y.fill(1.0 if self.power == 0 else self.shift ** self.power)
            self._bottom_memory = None
            return
        self._bottom_memory = x.copy() if top[0] is bottom[0] else None
        base = self._base(x)
        if self.power == 1:
            y[...] = base
        else:
            self.xp.power(base, self.power, out=y)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx, dy = bottom[0].diff, top[0].diff
        if self.diff_scale == 0:
            dx.fill(0)
            return
        if self.power == 1:
            self.xp.multiply(dy, self.diff_scale, out=dx)
            return
        x = self._bottom_memory if self._bottom_memory is not None else bottom[0].data
        base = self._base(x)
        slope = base if self.power == 2 else self.xp.power(base, self.power - 1)
        dx[...] = dy * slope * self.diff_scale
