"""SoftmaxWithLoss: multinomial logistic loss of a softmax, fused."""
from ..layer import Layer, register_layer
from ..proto import pb
from ._shared import canonical_axis
from .softmax import log_softmax


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(Layer):
    r"""Cross-entropy of the softmax of bottom[0] against integer labels.

        p_{o,c,i} = softmax(x)_{o,c,i}   along softmax_param.axis (default 1)
        loss      = -1/Z \sum_{(o,i) valid} log p_{o, l_{o,i}, i}
        dE/dx_{o,c,i} = w/Z (p_{o,c,i} - [c = l_{o,i}])   for a counted (o, i)
                      = 0                                  for an ignored (o, i)

    w is the loss weight (top[0].diff).  A position is ignored when its label
    equals ``loss_param.ignore_label`` (when set).  The normaliser Z follows
    ``loss_param.normalization`` exactly as Caffe (clamped to at least 1):
    FULL: outer*inner, VALID (default): number of non-ignored positions,
    BATCH_SIZE: outer, NONE: 1.  When only the legacy ``loss_param.normalize``
    is given, true means VALID and false BATCH_SIZE.

    Shapes: bottom[0] (outer..., C, inner...) predictions (scores);
    bottom[1] labels (a label bottom: no gradient), integer values in
    [0, C), outer*inner of them (e.g. (N,) or (N, 1, H, W) for N x C x H x W
    scores); top[0] the loss, shape (); optional top[1] the probabilities p,
    shaped like bottom[0] (it takes no gradient).  log p is computed as a
    log-softmax, so very confident wrong predictions give a large finite
    loss, not inf.

    Kernel path (kernels/softmax.cu): forward is two launches (softmax and
    -log p per position, a block per position; then one block sums and
    normalises on the device), backward one.  Its only read back to the host
    is the count of out-of-range labels, right where the Net reads the loss
    anyway.
    """

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True
    label_bottoms = (1,)

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        lp = self.param.loss_param
        self.axis_param = int(self.param.softmax_param.axis)
        self.has_ignore_label = lp.HasField("ignore_label")
        self.ignore_label = int(lp.ignore_label)
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = pb.LossParameter.VALID if lp.normalize else pb.LossParameter.BATCH_SIZE
        else:
            self.normalization = lp.normalization
        self._prob = None
        self._rows = None    # kernel path: per-position loss and status
        self._stats = None   # kernel path: (normaliser, bad labels) on the device

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        scores, labels = bottom[0], bottom[1]
        self.axis = canonical_axis(self, scores, self.axis_param, "softmax_param.axis")
        self.outer = scores.count_range(0, self.axis)
        self.channels = scores.shape[self.axis]
        self.inner = scores.count_range(self.axis + 1)
        if labels.count != self.outer * self.inner or (
                self.axis > 0 and labels.num_axes > 0 and labels.shape[0] != scores.shape[0]):
            raise self.shape_error(
                f"label shape {labels.shape} does not fit prediction shape {scores.shape}: "
                f"softmax over axis {self.axis} needs {self.outer * self.inner} labels "
                f"(one per position, first dimension {scores.shape[0]})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape_like(scores)

    def _labels(self, bottom):
        """Integer labels (outer, inner), the mask of counted positions, and
        the labels with ignored positions replaced by 0 (safe to index)."""
        xp = self.xp
        labels = bottom[1].data.reshape(self.outer, self.inner).astype(xp.int64)
        if self.has_ignore_label:
            valid = labels != self.ignore_label
        else:
            valid = xp.ones(labels.shape, dtype=bool)
        bad = valid & ((labels < 0) | (labels >= self.channels))
        if bool(bad.any()):
            first = int(labels[bad].ravel()[0])
            raise self.error(
                f"label {first} out of range [0, {self.channels}) for {self.channels} classes "
                f"(bottom[0] shape {bottom[0].shape})")
        return valid, xp.where(valid, labels, 0)

    def _normalizer(self, valid):
        """Caffe's get_normalizer, clamped to at least 1."""
        mode = self.normalization
        if mode == pb.LossParameter.VALID:
            return self.xp.maximum(valid.sum(), 1).astype(self.dtype)
        return self._fixed_normalizer()

    def _fixed_normalizer(self):
        """The normaliser of the modes that do not count valid positions."""
        mode = self.normalization
        if mode == pb.LossParameter.FULL:
            z = self.outer * self.inner
        elif mode == pb.LossParameter.BATCH_SIZE:
            z = self.outer
        elif mode == pb.LossParameter.NONE:
            z = 1
        else:
            raise self.error(f"unknown loss_param.normalization {mode}")
        return float(max(z, 1))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        if self.use_kernels:
            self._forward_kernels(bottom, top)
            return
        x = bottom[0].data.reshape(self.outer, self.channels, self.inner)
        valid, safe = self._labels(bottom)
        log_prob = log_softmax(xp, x, axis=1)
        picked = xp.take_along_axis(log_prob, safe[:, None, :], axis=1)[:, 0, :]
        loss = -(picked * valid).sum()
        top[0].data[...] = loss / self._normalizer(valid)
        self._prob = xp.exp(log_prob)
        if len(top) > 1:
            top[1].data[...] = self._prob.reshape(bottom[0].shape)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return  # labels (bottom[1]) never take a gradient
        xp = self.xp
        if self.use_kernels:
            self.launch("softmax_loss_backward", self._prob.size, self.channels, self.inner,
                        self._prob, self._label_array(bottom), int(self.has_ignore_label),
                        self.ignore_label, top[0].diff, self._stats, bottom[0].diff,
                        n=self._prob.size)
            return
        valid, safe = self._labels(bottom)
        one_hot = xp.arange(self.channels)[None, :, None] == safe[:, None, :]
        scale = top[0].diff / self._normalizer(valid)
        grad = (self._prob - one_hot) * (valid[:, None, :] * scale)
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)

    # --------------------------------------------------------- kernel path --
    def _label_array(self, bottom):
        labels = bottom[1].data
        if labels.dtype != self.xp.float32 or not labels.flags.c_contiguous:
            labels = self.xp.ascontiguousarray(labels, dtype=self.xp.float32)
        return labels

    def _forward_kernels(self, bottom, top):
        """kernels/softmax.cu: probabilities, per-position losses, the total."""
        xp = self.xp
        rows = self.outer * self.inner
        if self._prob is None or self._prob.shape != bottom[0].shape:
            self._prob = xp.empty(bottom[0].shape, dtype=xp.float32)
            self._rows = xp.empty((2, rows), dtype=xp.float32)
            self._stats = xp.empty(2, dtype=xp.float32)
        valid_mode = self.normalization == pb.LossParameter.VALID
        fixed = 1.0 if valid_mode else self._fixed_normalizer()
        block = self.backend.block
        self.launch("softmax_loss_forward", self.outer, self.channels, self.inner,
                    bottom[0].data, self._label_array(bottom), int(self.has_ignore_label),
                    self.ignore_label, self._prob, self._rows[0], self._rows[1],
                    grid=rows, shared=4 * block)
        self.launch("softmax_loss_reduce", rows, self._rows[0], self._rows[1], int(valid_mode),
                    fixed, top[0].data, self._stats, grid=1, shared=8 * block)
        # the one read back: the Net reads the loss right after this forward
        if float(self._stats[1]) > 0:
            self._labels(bottom)  # raises, naming the first bad label
        if len(top) > 1:
            top[1].data[...] = self._prob
