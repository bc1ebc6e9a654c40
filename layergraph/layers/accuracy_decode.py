"""AccuracyDecode: nearest-class accuracy of Decode's distances.

Bottoms
    distances  (N, L)  from Decode: distance of each item to each class
    label      (N,), (N, 1) or (N, C): column 0 is the item's class (the
               layouts of :mod:`layergraph.layers.decode`).  A label bottom.
Tops
    accuracy   ()    mean over the counted items of [argmin_l distances[i, l] == y_i]
    per_label  (L,)  optional: the same accuracy restricted to each class
                     (0 for a class with no item in the batch)

An item counts as wrong when its class is not ready (distance >= NOT_READY / 2,
Decode's marker for "no centroid yet"), even if every class is equally far.
Items whose label equals ``accuracy_param.ignore_label`` (when set) are not
counted; with no counted item the accuracy is 0.  Labels must lie in [0, L).
``accuracy_param.top_k`` must be 1.  No backward.

Kernel path (GPU and its emulation): one launch of ``accuracy_decode_forward``
(kernels/accuracy.cu) computes both tops on the device; labels outside [0, L)
are not checked there and count as wrong.
"""
from ..layer import Layer, register_layer
from . import _centroids as C


@register_layer("AccuracyDecode")
class AccuracyDecode(Layer):
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    label_bottoms = (1,)
    has_backward = False

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.accuracy_param
        if p.top_k != 1:
            raise self.error(f"accuracy_param.top_k must be 1, got {p.top_k}")
        if p.axis != 1:
            raise self.error(f"accuracy_param.axis must be 1, got {p.axis}")
        self.ignore_labels = [int(p.ignore_label)] if p.HasField("ignore_label") else []
        self._tally = None  # kernel path: int32 counters

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        dist = bottom[0]
        if dist.num_axes != 2:
            raise self.shape_error(f"distances must be (N, L), got {dist.shape}")
        C.label_rows(self, bottom[1], dist.shape)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((dist.shape[1],))

    # ---------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        dist = bottom[0].data
        num_labels = dist.shape[1]
        if self.use_kernels:  # kernels/accuracy.cu
            n = dist.shape[0]
            size = 2 + 2 * num_labels
            if self._tally is None or self._tally.size != size:
                self._tally = xp.empty((size,), dtype=xp.int32)
            labels, cols = C.label_columns(xp, bottom[1], n)
            per_label = len(top) > 1
            ignore = self.ignore_labels[0] if self.ignore_labels else 0
            self.launch("accuracy_decode_forward", n, num_labels, dist, labels, cols,
                        bool(self.ignore_labels), ignore, self._tally, top[0].data, per_label,
                        top[1].data if per_label else top[0].data, grid=1)
            return
        labels = C.item_labels(self, bottom[1], bottom[0].shape)
        valid = C.ignore_mask(xp, labels, self.ignore_labels)
        C.check_label_range(self, labels, num_labels, valid)
        accuracy, per_label = C.nearest_label_accuracy(xp, dist, labels, valid, num_labels)
        top[0].data[...] = accuracy
        if len(top) > 1:
            top[1].data[...] = per_label
