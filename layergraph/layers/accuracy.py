"""Accuracy: top-k classification accuracy (no gradient)."""
from ..layer import Layer, register_layer
from ._shared import canonical_axis


@register_layer("Accuracy")
class AccuracyLayer(Layer):
    r"""Fraction of positions whose true class is among the top k scores.

        correct_{o,i} = [ #{c : x_{o,c,i} > x_{o,l_{o,i},i}} < k ]     (k = accuracy_param.top_k)
        accuracy      = \sum_{valid} correct / #valid     (0 when nothing is valid)

    As in Caffe, only strictly larger scores count against the true class,
    so ties are resolved in its favour.  A position whose label equals
    ``accuracy_param.ignore_label`` (when set) is not counted.

    Shapes: bottom[0] (outer..., C, inner...) scores, C along
    ``accuracy_param.axis`` (default 1); bottom[1] labels (outer*inner of
    them, integer values in [0, C)); top[0] the accuracy, shape (); optional
    top[1] the per-class accuracy, shape (C,) (0 for a class absent from the
    batch).  No backward pass.

    Kernel path (GPU and its emulation): one launch of ``accuracy_forward``
    (kernels/accuracy.cu) computes both tops on the device; a label out of
    range is not checked there (it would need a host sync) and counts as wrong.
    """

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    label_bottoms = (1,)
    has_backward = False

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        if self.top_k < 1:
            raise self.error(f"accuracy_param.top_k must be >= 1, got {self.top_k}")
        self.axis_param = int(p.axis)
        self.has_ignore_label = p.HasField("ignore_label")
        self.ignore_label = int(p.ignore_label)
        self._tally = None  # kernel path: int32 counters

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        scores, labels = bottom[0], bottom[1]
        self.axis = canonical_axis(self, scores, self.axis_param, "accuracy_param.axis")
        self.outer = scores.count_range(0, self.axis)
        self.channels = scores.shape[self.axis]
        self.inner = scores.count_range(self.axis + 1)
        if self.top_k > self.channels:
            raise self.error(
                f"top_k {self.top_k} exceeds the number of classes {self.channels} "
                f"(bottom[0] shape {scores.shape}, axis {self.axis})")
        if labels.count != self.outer * self.inner:
            raise self.shape_error(
                f"label shape {labels.shape} does not fit prediction shape {scores.shape}: "
                f"classes along axis {self.axis} need {self.outer * self.inner} labels")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.channels,))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        if self.use_kernels:  # kernels/accuracy.cu
            size = 2 + 2 * self.channels
            if self._tally is None or self._tally.size != size:
                self._tally = xp.empty((size,), dtype=xp.int32)
            per_class = len(top) > 1
            self.launch("accuracy_forward", self.outer, self.channels, self.inner,
                        bottom[0].data, xp.ascontiguousarray(bottom[1].data, dtype=xp.float32),
                        self.top_k, self.has_ignore_label, self.ignore_label, self._tally,
                        top[0].data, per_class, top[1].data if per_class else top[0].data,
                        grid=1)
            return
        x = bottom[0].data.reshape(self.outer, self.channels, self.inner)
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
        safe = xp.where(valid, labels, 0)
        true_score = xp.take_along_axis(x, safe[:, None, :], axis=1)
        better = (x > true_score).sum(axis=1)
        # NaN compares false, which would rank it last: an item with a NaN
        # score is wrong, whatever its label
        correct = valid & (better < self.top_k) & ~xp.isnan(x).any(axis=1)
        count = valid.sum()
        top[0].data[...] = xp.where(count > 0, correct.sum() / xp.maximum(count, 1), 0)
        if len(top) > 1:
            flat = safe.ravel()
            per_class = xp.bincount(flat, weights=valid.ravel().astype(self.dtype),
                                    minlength=self.channels)
            hits = xp.bincount(flat, weights=correct.ravel().astype(self.dtype),
                               minlength=self.channels)
            top[1].data[...] = xp.where(per_class > 0, hits / xp.maximum(per_class, 1), 0)
