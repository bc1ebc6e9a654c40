"""SigmoidCrossEntropyLoss: binary cross-entropy of sigmoid outputs, fused."""
from ..layer import Layer, register_layer
from ..proto import pb
from ._loss import normalization_mode, normalizer


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(Layer):
    r"""Cross-entropy between targets t in [0, 1] and p = sigmoid(x).

        E = -1/Z \sum_{i valid} [ t_i \log p_i + (1 - t_i) \log(1 - p_i) ]
          = -1/Z \sum_{i valid} [ x_i (t_i - [x_i \ge 0])
                                  - \log(1 + e^{x_i - 2 x_i [x_i \ge 0]}) ]
        dE/dx_i = w/Z (p_i - t_i)   for a valid i,  0 for an ignored one

    (the second form is Caffe's, finite for every x).  w is the loss weight.
    An element is ignored when int(t_i) equals ``loss_param.ignore_label``
    (when set).  Z follows ``loss_param.normalization`` (FULL: count, VALID:
    valid elements, BATCH_SIZE: N, NONE: 1; at least 1); when neither it nor
    the legacy ``normalize`` is given Caffe's default here is BATCH_SIZE
    (``normalize: true`` means VALID, false BATCH_SIZE).

    Shapes: bottom[0] (N, ...) scores x; bottom[1] targets with the same
    count (a label bottom: no gradient); top[0] the loss, shape ().
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    label_bottoms = (1,)

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.has_ignore_label = lp.HasField("ignore_label")
        self.ignore_label = int(lp.ignore_label)
        self.normalization = normalization_mode(self, pb.LossParameter.BATCH_SIZE)
        self._z = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise self.shape_error(f"targets {bottom[1].shape} must have the count of the "
                                   f"scores {bottom[0].shape}")
        self.outer = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.inner = bottom[0].count // max(self.outer, 1)
        top[0].reshape(())

    def _valid(self, target):
        if not self.has_ignore_label:
            return None
        return target.astype(self.xp.int64) != self.ignore_label

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        positive = (x >= 0).astype(x.dtype)
        terms = x * (t - positive) - xp.log1p(xp.exp(x - 2 * x * positive))
        valid = self._valid(t)
        if valid is None:
            loss, count = -terms.sum(), x.size
        else:
            loss, count = -(terms * valid).sum(), valid.sum()
        self._z = normalizer(xp, self, self.normalization, self.outer, self.inner, count,
                             self.dtype)
        top[0].data[...] = loss / self._z

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        x = bottom[0].data
        t = bottom[1].data.reshape(x.shape)
        p = 0.5 * (1 + xp.tanh(0.5 * x))   # sigmoid, without overflow
        grad = (p - t) * (top[0].diff / self._z)
        valid = self._valid(t)
        if valid is not None:
            grad = grad * valid
        bottom[0].diff[...] = grad
