"""TanH: the hyperbolic tangent."""
from ..layer import Layer, register_layer


@register_layer("TanH")
class TanHLayer(Layer):
    r"""Element-wise hyperbolic tangent.

        y = tanh(x)
        dE/dx = dE/dy (1 - y^2)

    Shapes: bottom[0] any, top[0] the same.  Backward reads only the top
    data, so in-place use is correct.
    """

    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def forward(self, bottom, top):
        if self.use_kernels:  # kernels/tanh.cu
            x = bottom[0].data
            self.launch("tanh_forward", x.size, x, top[0].data, n=x.size)
            return
        top[0].data[...] = self.xp.tanh(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and self.use_kernels:
            dx = bottom[0].diff
            self.launch("tanh_backward", dx.size, top[0].data, top[0].diff, dx, n=dx.size)
        elif propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * (1 - y * y)
