"""ReLU: rectified linear unit, optionally leaky."""
from ..layer import Layer, register_layer


@register_layer("ReLU")
class ReLULayer(Layer):
    r"""Element-wise rectifier (leaky when ``negative_slope`` is not 0).

        y = max(x, 0) + \nu \min(x, 0)            (\nu = relu_param.negative_slope)
        dE/dx = dE/dy  if x > 0  else  \nu dE/dy

    Shapes: bottom[0] any, top[0] the same.  In-place capable: for
    \nu >= 0 the sign of y is the sign of x, so backward reads the top data
    (which is also what is left when top is bottom).  For \nu < 0 the sign
    flips, so forward keeps the mask x > 0.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "ReLU" relu_param { negative_slope: 0.5 }',
    ...           [[-2.0, 0.0, 3.0]])[1][0]
    array([-1.,  0.,  3.])
    """

    exact_bottoms = 1
    exact_tops = 1
    tracks_active_items = True   # a zero top gradient gives a zero bottom one

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.negative_slope = float(self.param.relu_param.negative_slope)
        self._positive = None  # only used when negative_slope < 0

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if self.use_kernels:  # kernels/relu.cu
            if self.negative_slope < 0:
                self._positive = x.copy()  # the sign source for backward
            self.launch("relu_forward", x.size, x, top[0].data, self.negative_slope, n=x.size)
            return
        if self.negative_slope == 0:   # one pass, in place when top is bottom
            xp.maximum(x, 0, out=top[0].data)
            return
        positive = x > 0
        if self.negative_slope < 0:
            self._positive = positive
        top[0].data[...] = xp.where(positive, x, self.negative_slope * x)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        bottom[0].active = top[0].active
        if self.use_kernels:
            source = self._positive if self.negative_slope < 0 else top[0].data
            dx = bottom[0].diff
            self.launch("relu_backward", dx.size, source, top[0].diff, dx,
                        self.negative_slope, n=dx.size)
            return
        positive = self._positive if self.negative_slope < 0 else top[0].data > 0
        dy = top[0].diff
        if self.negative_slope == 0:   # dx = dy * [y > 0], in place when top is bottom
            self.xp.multiply(dy, positive, out=bottom[0].diff)
            return
        bottom[0].diff[...] = self.xp.where(positive, dy, self.negative_slope * dy)
