"""AccuracyEncoding: nearest-centroid accuracy of embeddings.

Bottoms
    embedding  (N, D)  (any (N, ...) shape; flattened to (N, D))
    label      (N,), (N, 1) or (N, C): column 0 is the item's class (MyCaffe's
               pair labels from ``output_all_labels``: the first image's).
               A label bottom.
Tops
    accuracy   ()    mean over the counted items of [argmin_l ||x_i - c_l||_2 == y_i]
    per_label  (L,)  optional: the accuracy restricted to each class

The layer keeps its own class centroids c_l (L = decode_param.pregen_label_count,
default 10) in non-learnable blobs: blobs[0] centroids (L, D), blobs[1] counts
(L,).  In TRAIN they follow the update rule of
:mod:`layergraph.layers._centroids` (the one Decode uses; M =
decode_param.cache_size * N), applied after the batch was scored against the
centroids of the earlier batches.  The TEST net shares them by layer name, so
TEST scores against the centroids learnt in TRAIN.

Centroids never trained (every count 0, e.g. the layer exists only in the TEST
net, as in MyCaffe's siamese example): each batch is scored against centroids
computed from the batch itself, leave-one-out -- item i's own class centroid is
the mean of the *other* items of its class in the batch (a class with no other
item is not ready, so the item counts as wrong); other classes use the mean of
all their items in the batch.

A class without a centroid counts as NOT_READY (never predicted; an item of that
class is wrong).  Items whose label equals ``accuracy_param.ignore_label`` are
neither counted nor used for centroids.  ``accuracy_param.top_k`` must be 1.
No backward.

Kernel path (GPU and its emulation): one launch of ``accuracy_encoding_forward``
(kernels/accuracy.cu: distances on the fly, the leave-one-out choice made on
the device, both tops), plus in TRAIN one of Decode's ``decode_update_centroids``
(kernels/decode.cu).  Labels outside [0, L) are not checked there: such items
count as wrong and update nothing.
"""
from ..layer import Layer, register_layer
from ..proto import pb
from . import _centroids as C


@register_layer("AccuracyEncoding")
class AccuracyEncoding(Layer):
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
        self.ignore_labels = [int(p.ignore_label)] if p.HasField("ignore_label") else []
        d = self.param.decode_param
        self.num_labels = int(d.pregen_label_count)
        self.cache_size = int(d.cache_size)
        if self.num_labels < 1:
            raise self.error(f"decode_param.pregen_label_count must be >= 1, got {self.num_labels}")
        if self.cache_size < 1:
            raise self.error(f"decode_param.cache_size must be >= 1, got {self.cache_size}")
        if bottom[0].num_axes < 1:
            raise self.shape_error(f"embedding must be (N, ...), got {bottom[0].shape}")
        self.dim = bottom[0].count_range(1)
        for name, shape in (("centroids", (self.num_labels, self.dim)),
                            ("counts", (self.num_labels,))):
            blob = self.make_blob(shape, name=f"{self.name} {name}")
            blob.learnable = False
            self.blobs.append(blob)
        if self.use_kernels:
            L, D = self.num_labels, self.dim
            xp = self.xp
            self._ignored = C.ignored_mask_array(xp, L, self.ignore_labels)
            self._tally = xp.empty((2 + 2 * L,), dtype=xp.int32)
            self._batch_sums = xp.empty((L * D,), dtype=xp.float32)   # leave-one-out
            self._batch_sizes = xp.empty((L,), dtype=xp.float32)

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        x = bottom[0]
        C.check_embedding(self, x, self.dim)
        C.label_rows(self, bottom[1], x.shape)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.num_labels,))

    # ---------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        n = bottom[0].shape[0]
        if self.use_kernels:  # kernels/accuracy.cu, kernels/decode.cu
            self._forward_kernels(bottom, top, n)
            return
        x = bottom[0].data.reshape(n, self.dim)
        labels = C.item_labels(self, bottom[1], bottom[0].shape)
        valid = C.ignore_mask(xp, labels, self.ignore_labels)
        C.check_label_range(self, labels, self.num_labels, valid)
        centroids, counts = self.blobs[0].data, self.blobs[1].data

        if self.phase != pb.TRAIN and not bool(xp.any(counts > 0)):
            dist = self._leave_one_out_distances(x, labels, valid)
        else:
            dist = C.centroid_distances(xp, x, centroids, counts > 0)
        accuracy, per_label = C.nearest_label_accuracy(xp, dist, labels, valid, self.num_labels)
        top[0].data[...] = accuracy
        if len(top) > 1:
            top[1].data[...] = per_label

        if self.phase == pb.TRAIN:
            C.update_centroids(xp, centroids, counts, x, labels, valid, self.cache_size * n)

    def _forward_kernels(self, bottom, top, n):
        L, D = self.num_labels, self.dim
        x = bottom[0].data
        labels, cols = C.label_columns(self.xp, bottom[1], n)
        centroids, counts = self.blobs[0].data, self.blobs[1].data
        per_label = len(top) > 1
        ignore = self.ignore_labels[0] if self.ignore_labels else 0
        self.launch("accuracy_encoding_forward", n, L, D, x, labels, cols,
                    bool(self.ignore_labels), ignore, centroids, counts,
                    self.phase != pb.TRAIN, self._batch_sums, self._batch_sizes, self._tally,
                    top[0].data, per_label, top[1].data if per_label else top[0].data, grid=1)
        if self.phase == pb.TRAIN:
            self.launch("decode_update_centroids", n, L, D, x, labels, cols, self._ignored,
                        float(self.cache_size * n), centroids, counts, False, counts, grid=L)

    def _leave_one_out_distances(self, x, labels, valid):
        xp = self.xp
        sums, m = C.batch_label_sums(xp, x, labels, valid, self.num_labels)
        means = sums / xp.maximum(m, 1)[:, None]
        dist = C.centroid_distances(xp, x, means, m > 0)
        # own class: the mean of the other items of that class
        own = xp.clip(labels, 0, self.num_labels - 1)
        others = m[own] - 1
        loo = (sums[own] - x) / xp.maximum(others, 1)[:, None]
        diff = x - loo
        own_dist = xp.sqrt(xp.sum(diff * diff, axis=1))
        own_dist = xp.where(others > 0, own_dist, C.NOT_READY)
        rows = xp.nonzero(valid)[0]
        dist[rows, own[rows]] = own_dist[rows]
        return dist
