"""Decode: distances of each embedding to every class (nearest class wins).

Bottoms
    embedding  (N, D)  (any (N, ...) shape; flattened to (N, D))
    label      (N,), (N, 1) or (N, C): column 0 is the label of the embedding's
               item (MyCaffe's DataSequence ``lbl`` and pair-data labels both put
               the anchor / first image there).  A label bottom; optional in the
               RUN phase, required in TRAIN when centroids are updated.
Tops
    distances  (N, L)  Euclidean distance (not squared) of each embedding to
                       each class, L = ``decode_param.pregen_label_count``
                       (default 10, fixed at setup; labels must lie in [0, L)).
                       A class without a centroid/cached item yet, and every
                       label in ``ignore_labels``, gets NOT_READY = 1e30.
                       Not computed when only Silence layers read it (the
                       templates' TRAIN nets: the Net's ``unread_tops``),
                       so a training step pays only for the update.
    centroids  (L, D)  optional (``output_centroids`` or simply a second top):
                       the class centroids (KNN: the mean of each class cache);
                       rows of classes not ready are 0, and all of it is 0
                       until ``centroid_output_iteration`` TRAIN updates ran.

target CENTROID (default)
    per-class centroids of the TRAIN embeddings, updated with the rule of
    :mod:`layergraph.layers._centroids`: the exact running mean until
    M = cache_size * N items of the class were averaged, then an exponential
    moving average c <- (1 - m/M) c + (m/M) x̄ over each batch as a whole (m
    items of the class in the batch, mean x̄).
    distance[i, l] = ||x_i - c_l||_2.
target KNN
    per-class ring buffers of the ``cache_size`` most recent TRAIN embeddings;
    distance[i, l] = mean distance of x_i to its min(k, cached_l) nearest cached
    embeddings of class l (usable as soon as a class has one cached item).
target PREGEN is not implemented (an error).

Updates happen only in the TRAIN phase with ``enable_centroid_update``, never
for ``ignore_labels``, and after the distances of the batch were computed: a
batch is decoded with the state built from earlier batches, so an item is
never compared with a centroid or cache it belongs to.

State (all non-learnable blobs, so they are saved in .caffemodel snapshots and
shared by layer name with the TEST net; a resumed run continues exactly):
    CENTROID: blobs[0] centroids (L, D), blobs[1] counts (L,) (items averaged,
              saturating at M), blobs[2] updates (1,) (TRAIN batches applied)
    KNN:      blobs[0] cache (L, cache_size, D), blobs[1] fill (L,),
              blobs[2] updates (1,), blobs[3] ring cursor (L,)
No backward: an evaluation layer (the triplet/contrastive losses train the net).

Refit (``refit_centroids: true``, target CENTROID only)
    the running average lags the embedding, which moves while it averages.
    With refit_centroids the Solver, at each test and after training,
    recomputes the centroids in one pass over a source (``refit_source``,
    default: the Data layer feeding this layer in the TRAIN net): c_l = the
    mean of the embeddings of every image of label l under the current
    weights, counts_l = min(n_l, cache_size * N)
    (:func:`layergraph.layers._centroids.refit_centroids`; the pass is
    :func:`layergraph.refit.refit_centroids`).  The TEST net shares these
    blobs, so it classifies with the refit centroids; TRAIN updates continue
    from them.

Data-parallel training (:mod:`layergraph.distributed`): the TRAIN update
uses the global batch -- the workers' embeddings and labels gathered in rank
order (two allgathers of N x D and N x C numbers), with M = cache_size * the
global batch -- so the state stays the same on every worker and equals that
of one worker with the whole batch; the distances are each worker's own
rows.

Kernel path (GPU and its emulation): kernels/decode.cu, one launch for the
distances, one for the TRAIN update (centroids and counts, or the ring
buffers, and the update counter) and one for the centroids top; the state stays
in the blobs on the device, nothing is read back on the host.  Labels outside
[0, L) are not checked there (see :mod:`layergraph.layers._centroids`).
"""
from ..layer import Layer, register_layer
from ..proto import pb
from . import _centroids as C


@register_layer("Decode")
class Decode(Layer):
    min_bottoms = 1
    max_bottoms = 2
    min_tops = 1
    max_tops = 2
    label_bottoms = (1,)
    optional_bottoms = (1,)
    has_backward = False

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.decode_param
        T = pb.DecodeParameter
        if p.target == T.PREGEN:
            raise self.error("decode_param.target PREGEN is not implemented (use CENTROID or KNN)")
        self.knn = p.target == T.KNN
        self.num_labels = int(p.pregen_label_count)
        self.cache_size = int(p.cache_size)
        self.k = int(p.k)
        if self.num_labels < 1:
            raise self.error(f"decode_param.pregen_label_count must be >= 1, got {self.num_labels}")
        if self.cache_size < 1:
            raise self.error(f"decode_param.cache_size must be >= 1, got {self.cache_size}")
        if self.knn and self.k < 1:
            raise self.error(f"decode_param.k must be >= 1, got {self.k}")
        self.ignore_labels = [int(v) for v in p.ignore_labels]
        self.refit = bool(p.refit_centroids)
        if self.refit and self.knn:
            raise self.error("decode_param.refit_centroids needs target CENTROID (a KNN "
                             "target caches embeddings, it has no centroids to refit)")
        self.update = bool(p.enable_centroid_update) and self.phase == pb.TRAIN
        if self.update and len(bottom) < 2:
            raise self.error("the TRAIN phase needs the label bottom to update the centroids "
                             "(or set decode_param.enable_centroid_update: false)")
        if p.output_centroids and len(top) < 2:
            raise self.error("output_centroids needs a second top (centroids)")
        self.output_iteration = int(p.centroid_output_iteration)
        if bottom[0].num_axes < 1:
            raise self.shape_error(f"embedding must be (N, ...), got {bottom[0].shape}")
        self.dim = bottom[0].count_range(1)
        L, D = self.num_labels, self.dim
        names = (["cache", "fill", "updates", "cursor"] if self.knn
                 else ["centroids", "counts", "updates"])
        shapes = ([(L, self.cache_size, D), (L,), (1,), (L,)] if self.knn
                  else [(L, D), (L,), (1,)])
        for name, shape in zip(names, shapes):
            blob = self.make_blob(shape, name=f"{self.name} {name}")
            blob.learnable = False
            self.blobs.append(blob)
        if self.use_kernels:
            self._ignored = C.ignored_mask_array(self.xp, L, self.ignore_labels)
            self._knn_scratch = None  # per (item, label) distances to the cache slots
        self._comm = None  # data-parallel: the workers' communicator

    def data_parallel(self, comm):
        """Data-parallel training on ``comm``: TRAIN updates from the gathered
        global batch (see the module docstring)."""
        self._comm = comm if comm.size > 1 else None

    def _global(self, *arrays):
        """The arrays of every worker stacked in rank order (data-parallel),
        else as they are; and the factor from this batch to the global one."""
        if self._comm is None:
            return arrays + (1,)
        xp = self.xp
        return tuple(self._comm.allgather(xp.ascontiguousarray(a)) for a in arrays) + (
            self._comm.size,)

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        x = bottom[0]
        C.check_embedding(self, x, self.dim)
        if len(bottom) > 1:
            C.label_rows(self, bottom[1], x.shape)
        top[0].reshape((x.shape[0], self.num_labels))
        if len(top) > 1:
            top[1].reshape((self.num_labels, self.dim))

    # ---------------------------------------------------------- forward --
    def _ready(self):
        ready = self.blobs[1].data > 0
        for value in self.ignore_labels:
            if 0 <= value < self.num_labels:
                ready[value] = False
        return ready

    def forward(self, bottom, top):
        if self.use_kernels:  # kernels/decode.cu
            self._forward_kernels(bottom, top)
            return
        xp = self.xp
        n = bottom[0].shape[0]
        x = bottom[0].data.reshape(n, self.dim)
        if 0 in self.unread_tops:
            pass   # only Silence reads the distances (a TRAIN net): not computed
        elif self.knn:
            fill = self.blobs[1].data.astype(xp.int64)
            dist = C.knn_distances(xp, x, self.blobs[0].data, fill, self.k)
            dist[:, ~self._ready()] = C.NOT_READY
            top[0].data[...] = dist
        else:
            top[0].data[...] = C.centroid_distances(xp, x, self.blobs[0].data, self._ready())

        if self.update:
            labels = C.item_labels(self, bottom[1], bottom[0].shape)
            x, labels, workers = self._global(x, labels)
            valid = C.ignore_mask(xp, labels, self.ignore_labels)
            C.check_label_range(self, labels, self.num_labels, valid)
            if self.knn:
                C.push_ring(xp, self.blobs[0].data, self.blobs[1].data, self.blobs[3].data,
                            x, labels, valid)
            else:
                C.update_centroids(xp, self.blobs[0].data, self.blobs[1].data, x, labels,
                                   valid, self.cache_size * n * workers)
            self.blobs[2].data[...] += 1

        if len(top) > 1:
            top[1].data[...] = self._centroid_output()

    def _centroid_output(self):
        xp = self.xp
        if float(self.blobs[2].data[0]) < self.output_iteration:
            return xp.zeros((self.num_labels, self.dim), dtype=self.dtype)
        if self.knn:
            fill = self.blobs[1].data
            cap = self.blobs[0].shape[1]
            slot = (xp.arange(cap)[None, :] < fill[:, None]).astype(self.dtype)
            total = xp.einsum("lc,lcd->ld", slot, self.blobs[0].data)
            centroids = total / xp.maximum(fill, 1)[:, None]
        else:
            centroids = self.blobs[0].data
        return xp.where(self._ready()[:, None], centroids, 0)

    def set_refit(self, sums, n, batch_size):
        """Install refit centroids: per-label sums (L, D) and counts (L,) of
        the embeddings of a source; ``batch_size`` is this layer's N, which
        sets the count limit M = cache_size * N (see the module docstring)."""
        workers = self._comm.size if self._comm is not None else 1
        C.refit_centroids(self.xp, self.blobs[0].data, self.blobs[1].data, sums, n,
                          self.cache_size * batch_size * workers)

    def _forward_kernels(self, bottom, top):
        """forward on the kernel path: the same results, every step on the device."""
        xp = self.xp
        n, L, D = bottom[0].shape[0], self.num_labels, self.dim
        x = bottom[0].data
        state, counts, updates = (blob.data for blob in self.blobs[:3])
        cap = self.cache_size
        if 0 in self.unread_tops:
            pass   # only Silence reads the distances: not computed
        elif self.knn:
            size = n * L * cap
            if self._knn_scratch is None or self._knn_scratch.size != size:
                self._knn_scratch = xp.empty((size,), dtype=xp.float32)
            self.launch("decode_knn_distances", n, L, cap, D, self.k, x, state, counts,
                        self._ignored, self._knn_scratch, top[0].data, n=n * L)
        else:
            self.launch("decode_centroid_distances", n, L, D, x, state, counts, self._ignored,
                        top[0].data, n=n * L)

        if self.update:
            labels, cols = C.label_columns(xp, bottom[1], n)
            x, labels, workers = self._global(x, labels.reshape(n, cols))
            n *= workers
            if self.knn:
                self.launch("decode_push_ring", n, L, cap, D, x, labels, cols, self._ignored,
                            state, counts, self.blobs[3].data, updates, grid=L)
            else:
                self.launch("decode_update_centroids", n, L, D, x, labels, cols, self._ignored,
                            float(cap * n), state, counts, True, updates, grid=L)

        if len(top) > 1:
            self.launch("decode_centroid_output", L, D, cap, self.knn, state, counts,
                        self._ignored, updates, self.output_iteration, top[1].data, n=L * D)
