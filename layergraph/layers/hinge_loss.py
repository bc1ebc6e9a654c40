"""HingeLoss: the one-vs-all hinge loss of Caffe (for linear SVM tops)."""
from ..layer import Layer, register_layer
from ..proto import pb
from ._loss import check_label_count, int_labels


@register_layer("HingeLoss")
class HingeLossLayer(Layer):
    r"""One-vs-all hinge loss over K scores per sample.

    With :math:`\delta_{nk} = +1` when k is the label :math:`l_n` and -1
    otherwise, and :math:`t_{nk} = \max(0, 1 - \delta_{nk} x_{nk})`:

        L1 (default):  E = 1/N \sum_n \sum_k t_{nk}
        L2:            E = 1/N \sum_n \sum_k t_{nk}^2

        dE/dx_{nk} = -w/N \delta_{nk} [t_{nk} > 0]      (L1)
                   = -w/N \delta_{nk} 2 t_{nk}          (L2)

    (w: the loss weight, top[0].diff).  ``hinge_loss_param.norm``: L1 or L2.
    As in Caffe the loss is always divided by the batch size N
    (``loss_param.normalization`` does not apply to it).

    Shapes: bottom[0] (N, ...) scores, K = count / N per sample; bottom[1]
    the N integer labels in [0, K) (a label bottom: no gradient); top[0]
    the loss, shape ().
    """

    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    label_bottoms = (1,)

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.norm = self.param.hinge_loss_param.norm
        if self.norm not in (pb.HingeLossParameter.L1, pb.HingeLossParameter.L2):
            raise self.error(f"unknown hinge_loss_param.norm {self.norm}")
        self._margins = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        check_label_count(self, bottom[0], bottom[1])
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.num, 1)
        top[0].reshape(())

    # ------------------------------------------------------------- forward --
    def _signs(self, bottom):
        """delta (N, K): +1 at each sample's label, -1 elsewhere."""
        xp = self.xp
        labels = int_labels(self, bottom[1].data.reshape(self.num), self.dim)
        return xp.where(xp.arange(self.dim)[None, :] == labels[:, None], 1.0, -1.0
                        ).astype(self.dtype)

    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.num, self.dim)
        signs = self._signs(bottom)
        self._signs_cache = signs
        self._margins = xp.maximum(0, 1 - signs * x)
        if self.norm == pb.HingeLossParameter.L1:
            loss = self._margins.sum()
        else:
            loss = (self._margins * self._margins).sum()
        top[0].data[...] = loss / max(self.num, 1)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        scale = top[0].diff / max(self.num, 1)
        if self.norm == pb.HingeLossParameter.L1:
            grad = (self._margins > 0).astype(self.dtype)
        else:
            grad = 2 * self._margins
        bottom[0].diff[...] = (-self._signs_cache * grad * scale).reshape(bottom[0].shape)
