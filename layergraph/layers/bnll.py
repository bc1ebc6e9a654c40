"""BNLL: binomial normal log likelihood, a smooth rectifier (Caffe's BNLLLayer)."""
from ..layer import Layer, register_layer

#: Caffe's kBNLL_THRESHOLD: exp() is clamped there in backward (no overflow)
BNLL_THRESHOLD = 50.0


@register_layer("BNLL")
class BNLLLayer(Layer):
    r"""The softplus, written so that it never overflows:

        y = log(1 + e^x) = max(x, 0) + log(1 + e^{-|x|})
        dE/dx = dE/dy * e^t / (e^t + 1),   t = min(x, 50)

    (the derivative is the logistic sigmoid; Caffe clamps the exponent at
    ``kBNLL_THRESHOLD`` = 50).  Shapes: bottom[0] any, top[0] the same.  In
    place: forward keeps a copy of x, which backward reads.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "BNLL"', [[0.0]])[1][0]
    array([0.69314718])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self._bottom_memory = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        self._bottom_memory = x.copy() if top[0] is bottom[0] else None
        top[0].data[...] = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x = self._bottom_memory if self._bottom_memory is not None else bottom[0].data
        e = xp.exp(xp.minimum(x, BNLL_THRESHOLD))
        bottom[0].diff[...] = top[0].diff * e / (e + 1)
