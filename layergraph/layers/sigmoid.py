"""Sigmoid: the logistic function."""
from ..layer import Layer, register_layer


@register_layer("Sigmoid")
class SigmoidLayer(Layer):
    r"""Element-wise logistic function.

        y = 1 / (1 + exp(-x)) = (1 + tanh(x / 2)) / 2
        dE/dx = dE/dy y (1 - y)

    Shapes: bottom[0] any, top[0] the same.  Backward reads only the top
    data, so in-place use is correct.
    """

    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def forward(self, bottom, top):
        if self.use_kernels:  # kernels/sigmoid.cu
            x = bottom[0].data
            self.launch("sigmoid_forward", x.size, x, top[0].data, n=x.size)
            return
        # the tanh form never overflows, unlike exp(-x) for very negative x
        top[0].data[...] = 0.5 * self.xp.tanh(0.5 * bottom[0].data) + 0.5

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and self.use_kernels:
            dx = bottom[0].diff
            self.launch("sigmoid_backward", dx.size, top[0].data, top[0].diff, dx, n=dx.size)
        elif propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * y * (1 - y)
