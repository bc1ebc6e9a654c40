"""ELU: exponential linear unit (Clevert et al. 2015)."""
from ..layer import Layer, register_layer


@register_layer("ELU")
class ELULayer(Layer):
    r"""Exponential linear unit.

        y = x                     if x > 0
            \alpha (exp(x) - 1)   otherwise        (\alpha = elu_param.alpha)
        dE/dx = dE/dy             if x > 0
                dE/dy \alpha exp(x) = dE/dy (y + \alpha)   otherwise

    Shapes: bottom[0] any, top[0] the same.  In-place capable: forward keeps
    what backward needs (the mask x > 0 and the slope \alpha exp(x)) when
    top is bottom, so a later in-place layer rewriting the top data cannot
    corrupt the gradient.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "ELU" elu_param { alpha: 2 }', [[-1.0, 0.0, 3.0]])[1][0].round(4)
    array([-1.2642,  0.    ,  3.    ])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.alpha = float(self.param.elu_param.alpha)
        self._slope = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if self.use_kernels:  # kernels/elu.cu: the slope is kept for backward
            if self._slope is None or self._slope.shape != x.shape:
                self._slope = xp.empty_like(x)
            self.launch("elu_forward", x.size, x, top[0].data, self._slope, self.alpha, n=x.size)
            return
        positive = x > 0
        # exp of the negative part only: no overflow for large positive x
        negative_branch = self.alpha * xp.expm1(xp.minimum(x, 0))
        if top[0] is bottom[0]:
            self._slope = xp.where(positive, 1, negative_branch + self.alpha).astype(x.dtype)
        else:
            self._slope = None
        top[0].data[...] = xp.where(positive, x, negative_branch)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.use_kernels:
            dx = bottom[0].diff
            self.launch("elu_backward", dx.size, self._slope, top[0].diff, dx, n=dx.size)
            return
        if self._slope is not None:
            slope = self._slope
        else:
            xp = self.xp
            x = bottom[0].data
            slope = xp.where(x > 0, 1, self.alpha * xp.exp(xp.minimum(x, 0)))
        bottom[0].diff[...] = top[0].diff * slope
