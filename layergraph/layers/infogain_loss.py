"""InfogainLoss: a softmax loss weighted by an information-gain matrix H."""
from ..errors import LayergraphError
from ..layer import Layer, register_layer
from ..proto import pb
from ._loss import int_labels, normalization_mode, normalizer
from ._shared import canonical_axis
from .softmax import log_softmax

#: Caffe's kLOG_THRESHOLD: log p is taken of max(p, 1e-20)
LOG_THRESHOLD = 1e-20


@register_layer("InfogainLoss")
class InfogainLossLayer(Layer):
    r"""Caffe's InfogainLoss (the softmax is applied inside, as in BVLC
    Caffe since 2017): a generalisation of SoftmaxWithLoss where the
    "value" of predicting class k for true class l is H_{l,k}.

        p_{o,:,i} = softmax(x_{o,:,i})    along infogain_loss_param.axis (default 1)
        E = -1/Z \sum_{(o,i) valid} \sum_k H_{l_{o,i}, k} \log \max(p_{o,k,i}, 10^{-20})
        dE/dx_{o,k,i} = w/Z ( p_{o,k,i} \sum_j H_{l,j} - H_{l,k} )   (l = l_{o,i})

    With H the identity this is SoftmaxWithLoss.  A position is ignored when
    its label equals ``loss_param.ignore_label``.  Z follows
    ``loss_param.normalization`` (default VALID); the legacy ``normalize``
    is refused, as by Caffe.  H (C x C) is bottom[2] when given, else read
    from ``infogain_loss_param.source`` (a .binaryproto BlobProto with C*C
    values).

    Shapes: bottom[0] (outer..., C, inner...) scores; bottom[1] outer*inner
    integer labels in [0, C); optional bottom[2] H; top[0] the loss, shape
    (); optional top[1] the probabilities p.  Labels and H take no gradient.
    """

    min_bottoms = 2
    max_bottoms = 3
    min_tops = 1
    max_tops = 2
    is_loss = True
    label_bottoms = (1, 2)

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        ip = self.param.infogain_loss_param
        lp = self.param.loss_param
        self.axis_param = int(ip.axis)
        self.has_ignore_label = lp.HasField("ignore_label")
        self.ignore_label = int(lp.ignore_label)
        self.normalization = normalization_mode(self, pb.LossParameter.VALID,
                                                allow_normalize=False)
        self.infogain = None
        if len(bottom) < 3:
            if not ip.source:
                raise self.error("the infogain matrix is needed: give infogain_loss_param.source "
                                 "(a .binaryproto) or a third bottom")
            from ..imagedb.store import read_mean_file
            try:
                matrix = read_mean_file(ip.source)
            except LayergraphError as e:
                raise self.error(f"infogain_loss_param.source: {e}") from None
            self.infogain = self.xp.asarray(matrix.reshape(-1), dtype=self.dtype)
        self._prob = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        scores = bottom[0]
        self.axis = canonical_axis(self, scores, self.axis_param, "infogain_loss_param.axis")
        self.outer = scores.count_range(0, self.axis)
        self.channels = scores.shape[self.axis]
        self.inner = scores.count_range(self.axis + 1)
        if bottom[1].count != self.outer * self.inner:
            raise self.shape_error(
                f"label shape {bottom[1].shape} does not fit prediction shape {scores.shape}: "
                f"{self.outer * self.inner} labels are needed (one per position)")
        h_count = bottom[2].count if len(bottom) > 2 else self.infogain.size
        if h_count != self.channels * self.channels:
            raise self.shape_error(f"the infogain matrix has {h_count} values; "
                                   f"{self.channels} classes need {self.channels}x{self.channels}")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape_like(scores)

    def _matrix(self, bottom):
        h = bottom[2].data if len(bottom) > 2 else self.infogain
        return h.reshape(self.channels, self.channels)

    def _labels(self, bottom):
        """(valid mask (outer, inner), labels with ignored ones set to 0)."""
        xp = self.xp
        raw = bottom[1].data.reshape(self.outer, self.inner)
        valid = (raw.astype(xp.int64) != self.ignore_label) if self.has_ignore_label else \
            xp.ones(raw.shape, dtype=bool)
        labels = int_labels(self, raw, self.channels, valid)
        return valid, xp.where(valid, labels, 0)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.outer, self.channels, self.inner)
        valid, labels = self._labels(bottom)
        log_prob = log_softmax(xp, x, axis=1)
        self._prob = xp.exp(log_prob)
        log_prob = xp.maximum(log_prob, xp.log(xp.asarray(LOG_THRESHOLD, dtype=x.dtype)))
        rows = self._matrix(bottom)[labels]                      # (outer, inner, C)
        per_position = (rows * xp.moveaxis(log_prob, 1, 2)).sum(axis=2)
        loss = -(per_position * valid).sum()
        self._z = normalizer(xp, self, self.normalization, self.outer, self.inner,
                             valid.sum(), self.dtype)
        top[0].data[...] = loss / self._z
        if len(top) > 1:
            top[1].data[...] = self._prob.reshape(bottom[0].shape)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        valid, labels = self._labels(bottom)
        h = self._matrix(bottom)
        rows = xp.moveaxis(h[labels], 2, 1)                      # (outer, C, inner)
        row_sums = h.sum(axis=1)[labels][:, None, :]             # (outer, 1, inner)
        grad = (self._prob * row_sums - rows) * valid[:, None, :]
        bottom[0].diff[...] = (grad * (top[0].diff / self._z)).reshape(bottom[0].shape)
