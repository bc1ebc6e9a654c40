"""Swish: y = x * sigmoid(beta * x) (Caffe's SwishLayer; Ramachandran et al. 2017)."""
from ..layer import Layer, register_layer


@register_layer("Swish")
class SwishLayer(Layer):
    r"""Element-wise x \sigma(\beta x) with ``swish_param { beta }`` (default 1):

        s = \sigma(\beta x) = 1 / (1 + e^{-\beta x}),   y = x s
        dE/dx = dE/dy * (\beta y + s (1 - \beta y))

    \sigma is evaluated as (1 + tanh(z/2)) / 2, which never overflows.
    Shapes: bottom[0] any, top[0] the same.  In place capable: forward keeps
    s, and backward reads only s and y.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Swish"', [[0.0, 2.0]])[1][0].round(6)
    array([0.      , 1.761594])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.beta = float(self.param.swish_param.beta)
        self._sigmoid = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        s = xp.tanh(x * (0.5 * self.beta))
        s += 1
        s *= 0.5
        self._sigmoid = s
        xp.multiply(x, s, out=top[0].data)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        s = self._sigmoid
        beta_y = top[0].data * self.beta
        bottom[0].diff[...] = top[0].diff * (beta_y + s * (1 - beta_y))
