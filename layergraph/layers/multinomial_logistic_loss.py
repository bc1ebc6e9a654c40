"""MultinomialLogisticLoss: the negative log-likelihood of given probabilities."""
from ..layer import Layer, register_layer
from ._loss import check_label_count, int_labels

#: Caffe's kLOG_THRESHOLD: probabilities are clamped to at least this before log
LOG_THRESHOLD = 1e-20


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(Layer):
    r"""Negative log-likelihood of the labelled class, from probabilities.

        E = -1/N \sum_n \log \max(p_{n, l_n}, 10^{-20})
        dE/dp_{n,k} = -w/N / \max(p_{n,l_n}, 10^{-20})   for k = l_n, else 0

    (w: the loss weight).  bottom[0] holds probabilities (e.g. a Softmax
    top; SoftmaxWithLoss fuses both and is more stable); bottom[1] the N
    integer labels in [0, K) (a label bottom); top[0] the loss, shape ().
    As in Caffe the loss is divided by the batch size N
    (``loss_param.normalization`` does not apply to it) and the clamp's
    gradient is Caffe's (1 / 1e-20 below the threshold).
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    label_bottoms = (1,)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        check_label_count(self, bottom[0], bottom[1])
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.num, 1)
        top[0].reshape(())

    def _picked(self, bottom):
        """(labels (N,), clamped probability of each sample's label (N,))."""
        xp = self.xp
        labels = int_labels(self, bottom[1].data.reshape(self.num), self.dim)
        p = bottom[0].data.reshape(self.num, self.dim)
        picked = xp.take_along_axis(p, labels[:, None], axis=1)[:, 0]
        return labels, xp.maximum(picked, LOG_THRESHOLD)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        _, picked = self._picked(bottom)
        top[0].data[...] = -self.xp.log(picked).sum() / max(self.num, 1)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        labels, picked = self._picked(bottom)
        scale = -top[0].diff / max(self.num, 1)
        one_hot = xp.arange(self.dim)[None, :] == labels[:, None]
        grad = xp.where(one_hot, (scale / picked)[:, None], 0)
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)
