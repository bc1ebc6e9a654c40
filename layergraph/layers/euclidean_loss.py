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
    top[0] the loss, shape ().  Kernel path (kernels/euclidean_loss.cu): one
    launch forward (difference and sum of squares), one backward (both
    bottoms).

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "EuclideanLoss"', [[[1.0, 2.0], [0.0, 0.0]],
    ...                                     [[1.0, 0.0], [3.0, 0.0]]])[1][0]
    array(3.25)
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self._difference = None

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
        self._num = max(a.shape[0], 1)  # an empty batch gives loss 0, not NaN
        if self.use_kernels:  # kernels/euclidean_loss.cu
            if self._difference is None or self._difference.shape != a.shape:
                self._difference = self.xp.empty(a.shape, dtype=self.xp.float32)
            self.launch("euclidean_loss_forward", a.size, a, bottom[1].data, self._num,
                        self._difference, top[0].data, grid=1, shared=8 * self.backend.block)
            return
        self._difference = a - bottom[1].data.reshape(a.shape)
        top[0].data[...] = (self._difference * self._difference).sum() / (2 * self._num)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if self.use_kernels:
            self.launch("euclidean_loss_backward", self._difference.size, self._difference,
                        top[0].diff, self._num, int(propagate_down[0]), int(propagate_down[1]),
                        bottom[0].diff, bottom[1].diff, n=self._difference.size)
            return
        scale = top[0].diff / self._num
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                grad = (sign * scale) * self._difference
                bottom[i].diff[...] = grad.reshape(bottom[i].shape)
