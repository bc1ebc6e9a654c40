"""EuclideanLoss: half the mean squared L2 distance between two bottoms."""
from ..layer import Layer, register_layer


@register_layer("EuclideanLoss")
class EuclideanLossLayer(Layer):
    r"""Sum of squared differences over the batch, Caffe's regression loss.

        loss  = 1/(2N) \sum_n ||a_n - b_n||^2
        dE/da = +w/N (a - b)
        dE/db = -w/N (a - b)

    (w is the loss weight, top[0].diff.)  Both bottoms take gradients.
    Shapes: bottom[0] a and bottom[1] b with the same first dimension N and
    the same number of values per item (e.g. (N, C) and (N, C, 1, 1));
    top[0] the loss, shape ().

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "EuclideanLoss"', [[[1.0, 2.0], [0.0, 0.0]],
    ...                                     [[1.0, 0.0], [3.0, 0.0]]])[1][0]
    array(3.25)
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        a, b = bottom[0], bottom[1]
        if (a.num_axes < 1 or b.num_axes < 1 or a.shape[0] != b.shape[0]
                or a.count_range(1) != b.count_range(1)):
            raise self.shape_error(
                f"bottoms must have the same first dimension and item size, got "
                f"{a.shape} and {b.shape}")
        top[0].reshape(())

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        a = bottom[0].data
        self._difference = a - bottom[1].data.reshape(a.shape)
        self._num = max(a.shape[0], 1)  # an empty batch gives loss 0, not NaN
        top[0].data[...] = (self._difference * self._difference).sum() / (2 * self._num)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        scale = top[0].diff / self._num
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                grad = (sign * scale) * self._difference
                bottom[i].diff[...] = grad.reshape(bottom[i].shape)
