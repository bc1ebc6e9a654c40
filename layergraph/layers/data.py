"""Data: batches of images and labels from the image database or a Caffe LMDB.

Tops: ``data`` (N, C', H', W') and, optionally, ``label``.  Caffe's Data layer
with MyCaffe's extensions:

* source / backend: ``backend: IMAGEDB`` reads dataset source
  ``<DATASET>.training`` / ``<DATASET>.testing`` from the image database
  (the Net's ``db``, else $LAYERGRAPH_DB, else ~/.layergraph/imagedb);
  ``backend: LMDB`` reads an LMDB folder written by BVLC Caffe's tools (a
  dataset source name works too); ``LEVELDB`` is refused with a hint to
  convert.  Backend unset: whichever of the two the source is.
* order: database order (wrapping around, optional ``rand_skip``), or with
  ``enable_random_selection`` a fresh random permutation each epoch;
  ``labels_per_batch`` P x ``images_per_label`` K gives label-balanced
  batches (P labels, K images each, contiguous per label) visiting every
  image once per epoch as far as the label counts allow.
* pairs (MyCaffe): ``images_per_blob: 2`` stacks a second image along the
  channels (C' = 2C).  ``balance_matches`` makes the pairs alternate exactly
  same-label / different-label (item p of the stream, p = k * N + i, is a
  match iff p is even); otherwise the partner is uniform.  The label top is
  (N, 2) (both labels) with ``output_all_labels``, else the similarity (N,)
  = 1 if the labels agree, 0 if not.
* transform_param, in Caffe's order per image x (uint8 C x H x W)::

      y = scale * (mirror(crop(convert(x) - mean)))

  convert: force_color (1 -> 3 channels) / force_gray (3 -> 1, ITU-R 601
  luma), then color_order BGR swaps the channels of colour images (the image
  database stores RGB; LMDB sources as stored, Caffe's tools write BGR).
  mean: mean_file (.binaryproto), mean_value (1 or C values) or
  use_imagedb_mean (the dataset's training mean).  crop_size: a random
  window in TRAIN, the centre otherwise.  mirror: a random horizontal flip
  with probability 1/2 (in every phase, as in Caffe).  MyCaffe's
  distortion_param / mask_param / label_mapping are accepted while inactive
  (an active distortion whose probabilities are all 0 is a no-op); an
  active one is an error.
* augmentation (TRAIN only; a no-op costing nothing while its fields
  are at their defaults): per image a random affine warp A -- a rotation of
  U[-max_rotation, max_rotation] degrees and a scaling of U[min_scale,
  max_scale] about the image centre, then a shift of U{-max_shift..max_shift}
  whole pixels per axis -- and, with elastic_alpha > 0, an elastic
  distortion (every pixel displaced by elastic_alpha times U[-1, 1] noise
  blurred by a Gaussian of elastic_sigma pixels), resampled bilinearly with
  zero outside (math and timing in :mod:`layergraph.layers._augment`).  With it the order is::

      y = scale * (A(mirror(crop(convert(x)))) - mirror(crop(mean)))

  i.e. Caffe's crop -> mirror -> mean -> scale with the warp between mirror
  and mean: it moves raw pixels, so the fill is black (the background of the
  test images), and the mean is subtracted at the output pixel.  Without a
  warp this equals the formula above exactly.  Bad values (max_rotation
  outside [0, 180], min_scale <= 0, max_scale < min_scale) are layer errors
  in every phase.

Determinism and resume: batch k is a pure function of (seed, layer name, k)
and the source, where seed = the net's random seed + data_param.seed.  Its
random draws come from ``default_rng(SeedSequence([seed, crc32(name), k]))``
and epoch permutations from ``SeedSequence([seed, crc32(name), EPOCH, e])``;
the augmentation draws of batch k from a stream of their own,
``SeedSequence([seed, crc32(name), AUGU, k])``, so turning augmentation on
changes neither the images chosen nor their crops, flips and partners.
All draws of batch k are made while batch k is made -- by the prefetch thread
or in forward, on the host before a GPU copy -- from generators keyed on k
alone, so prefetch timing never changes them.
The batch counter is in :meth:`state_dict`, so a resumed run gets the same
next batches.  LOAD_ALL (whole source in memory at set-up) and
LOAD_ON_DEMAND (records read from LMDB on first use, then cached) give
identical batches.

Data-parallel training (:mod:`layergraph.distributed`, :meth:`DataLayer.data_parallel`):
with N workers ``batch_size`` B is per worker and batch k is the global
batch of N B rows that one worker with batch_size N B would make -- the same
record indices, the same generators keyed on k -- of which worker r keeps
rows [r B, (r + 1) B).  Every per-item draw (crop offsets, flips, the
augmentation's angles, scales and shifts, the pair partners' uniforms) is
made for all N B rows and sliced (:class:`_RowDraws`), so worker r's images
equal rows r B.. of the single-worker batch exactly, while it reads and
transforms only its own B images.  P x K batches are (N P) x K globally:
each worker gets P whole labels, which needs N P <= the number of labels.

A daemon thread prepares the next ``prefetch`` batches (data_param.prefetch;
0: no thread, each batch made in forward).  :meth:`close` stops it; it is
also stopped when the layer is garbage-collected and at interpreter exit.
The label top has the net's dtype (float), like Caffe's.

On the ``gpu`` backend batches reach the device from pinned host memory on a
copy stream of their own, overlapped with compute (:class:`_PinnedFeed`);
on ``cpu`` and ``emu`` the tops are filled from the batch arrays directly.
"""
import queue
import threading
import weakref
import zlib

import numpy as np

from ..errors import DataError, LayergraphError
from ..imagedb.store import open_source, read_mean_file
from ..layer import Layer, register_layer
from ..proto import pb
from . import _augment

EPOCH_TAG = 0x45504F43   # "EPOC": the stream of epoch permutations
SKIP_TAG = 0x534B4950    # "SKIP": the rand_skip draw
AUGMENT_TAG = 0x41554755  # "AUGU": the augmentation draws of each batch
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # R, G, B weights


def _active(msg):
    """MyCaffe writes 'option { active: ... }' and, for distortions, 'active: ...'."""
    on = msg.HasField("option") and msg.option.active
    if "active" in msg.DESCRIPTOR.fields_by_name:
        on = on or msg.active
    return on


# ---------------------------------------------------------------- transform --

class _Transform:
    """Caffe's DataTransformer for uint8 batches (n, C, H, W) -> float."""

    def __init__(self, layer, tp, dp, source):
        c, h, w = source.shape
        scale = tp.scale if tp.HasField("scale") or not dp.HasField("scale") else dp.scale
        self.scale = float(scale)
        self.mirror = bool(tp.mirror or dp.mirror)
        self.crop = int(tp.crop_size or dp.crop_size)
        self.random_crop = layer.phase == pb.TRAIN
        mean_file = tp.mean_file or dp.mean_file
        if tp.force_color and tp.force_gray:
            raise layer.error("transform_param: force_color and force_gray are exclusive")
        self.to_color = bool(tp.force_color or dp.force_encoded_color) and c == 1
        self.to_gray = bool(tp.force_gray) and c == 3
        self.stored_order = source.color_order
        cc = 3 if self.to_color else 1 if self.to_gray else c
        self.swap = tp.color_order == pb.TransformationParameter.BGR and cc == 3
        self._check_extensions(layer, tp)
        fields = _augment.check(layer, tp)
        self.augment = (_augment.Augment(*fields) if layer.phase == pb.TRAIN
                        and not _augment.is_identity(*fields) else None)
        if self.crop and (self.crop > h or self.crop > w):
            raise layer.shape_error(f"crop_size {self.crop} exceeds the image size {h}x{w} "
                                    f"of source '{source.name}'")

        sources = [bool(mean_file), len(tp.mean_value) > 0, tp.use_imagedb_mean]
        if sum(sources) > 1:
            raise layer.error("transform_param: give only one of mean_file, mean_value and "
                              "use_imagedb_mean")
        self.mean = None
        if mean_file:
            mean = read_mean_file(mean_file)
            if mean.ndim == 2:
                mean = mean[None]
            if mean.shape != (cc, h, w):
                raise layer.shape_error(f"mean_file {mean_file} has shape {mean.shape}; the "
                                        f"images are {(cc, h, w)}")
            self.mean = mean.astype(np.float32)
        elif len(tp.mean_value):
            values = np.asarray(tp.mean_value, np.float32)
            if len(values) not in (1, cc):
                raise layer.error(f"transform_param: {len(values)} mean_value(s) for {cc} "
                                  "channels (give 1 or one per channel)")
            self.mean = np.broadcast_to(values, (cc,)).reshape(cc, 1, 1).copy()
        elif tp.use_imagedb_mean:
            mean = source.mean()
            if mean is None:
                raise layer.error(f"use_imagedb_mean: source '{source.name}' is not in the image "
                                  "database (it has no stored mean); use mean_file instead")
            self.mean = self._convert(mean[None].astype(np.float32))[0]
        side = self.crop or None
        self.out_shape = (cc, side or h, side or w)

    @staticmethod
    def _check_extensions(layer, tp):
        d = tp.distortion_param
        if tp.HasField("distortion_param") and _active(d):
            probs = (d.brightness_prob, d.contrast_prob, d.hue_prob, d.saturation_prob,
                     d.random_order_prob)
            if any(p > 0 for p in probs):
                raise layer.error("transform_param.distortion_param is active with non-zero "
                                       "probabilities; image distortion is not supported "
                                       "(set option { active: False })")
        m = tp.mask_param
        if tp.HasField("mask_param") and _active(m) and any(
                (m.boundary_left, m.boundary_right, m.boundary_top, m.boundary_bottom)):
            raise layer.error("transform_param.mask_param is active; masking is not "
                                   "supported (set option { active: False })")
        lm = tp.label_mapping
        if tp.HasField("label_mapping") and _active(lm) and len(lm.mapping):
            raise layer.error("transform_param.label_mapping is active; label mapping is "
                                   "not supported (set option { active: False })")

    def _convert(self, x):
        if self.to_color:
            x = np.repeat(x, 3, axis=1)
        elif self.to_gray:
            weights = _LUMA if self.stored_order == "RGB" else _LUMA[::-1]
            x = np.tensordot(x, weights, axes=([1], [0]))[:, None]
        if self.swap:
            x = x[:, ::-1]
        return x

    def __call__(self, images, rng, dtype, augment_rng=None):
        """Draws (in order): crop offsets (TRAIN, crop_size), mirror flips;
        the augmentation draws come from ``augment_rng``."""
        x = self._convert(images.astype(np.float32))
        if self.augment is not None:
            return self._augmented(x, rng, dtype, augment_rng)
        if self.mean is not None:
            x = x - self.mean
        n, _, h, w = x.shape
        if self.crop:
            cs = self.crop
            if self.random_crop:
                h_off = rng.integers(0, h - cs + 1, size=n)
                w_off = rng.integers(0, w - cs + 1, size=n)
                x = self._window(x, h_off, w_off)
            else:
                top, left = (h - cs) // 2, (w - cs) // 2
                x = x[:, :, top:top + cs, left:left + cs]
        if self.mirror:
            flip = rng.random(n) < 0.5
            x[flip] = x[flip][..., ::-1]
        if self.scale != 1:
            x = x * np.float32(self.scale)
        return np.ascontiguousarray(x, dtype=dtype)

    def _window(self, x, h_off, w_off):
        """Per-image crop_size windows at (h_off, w_off)."""
        n, cs = len(h_off), self.crop
        span = np.arange(cs)
        rows = (h_off[:, None] + span)[:, None, :, None]
        cols = (w_off[:, None] + span)[:, None, None, :]
        return x[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                 rows, cols]

    def _augmented(self, x, rng, dtype, augment_rng):
        """TRAIN with augmentation: crop -> mirror -> warp -> mean -> scale.

        The same draws as without augmentation (random crop offsets, then
        flips), so toggling augmentation changes nothing else.  The warp acts
        on the raw pixel values, so its zero fill is black -- the background
        the net sees at test time -- and the mean is subtracted afterwards at
        each output pixel, cropped and flipped with its image (Caffe
        subtracts it at the source pixel of the crop window, which is the
        same thing without a warp)."""
        n, _, h, w = x.shape
        mean = self.mean
        per_pixel = mean is not None and mean.shape[1:] != (1, 1)
        if self.crop:
            h_off = rng.integers(0, h - self.crop + 1, size=n)
            w_off = rng.integers(0, w - self.crop + 1, size=n)
            x = self._window(x, h_off, w_off)
            if per_pixel:
                mean = self._window(np.broadcast_to(mean, (n,) + mean.shape), h_off, w_off)
        if self.mirror:
            flip = rng.random(n) < 0.5
            x[flip] = x[flip][..., ::-1]
            if per_pixel:
                mean = np.array(np.broadcast_to(mean, x.shape))
                mean[flip] = mean[flip][..., ::-1]
        x = self.augment(x, augment_rng)
        if mean is not None:
            x -= mean
        if self.scale != 1:
            x *= np.float32(self.scale)
        return np.ascontiguousarray(x, dtype=dtype)


# -------------------------------------------------------------------- plan --

class _RowDraws:
    """One worker's rows of the draws of a global batch: each draw whose
    first axis is the worker's ``rows`` is made for the ``total`` rows of
    the global batch (the same values, in the same order, as one worker
    with the whole batch draws) and the worker's slice ``part`` is returned.
    Used for every per-item draw of the transform and the augmentation."""

    def __init__(self, rng, part, total):
        self.rng, self.part, self.total = rng, part, total
        self.rows = part.stop - part.start

    def _size(self, size):
        shape = (size,) if np.ndim(size) == 0 else tuple(size)
        if shape[0] != self.rows:  # pragma: no cover - a draw that is not per item
            raise DataError(f"a draw of shape {shape} is not one per item ({self.rows} rows)")
        return (self.total,) + shape[1:]

    def integers(self, low, high=None, size=None):
        return self.rng.integers(low, high, size=self._size(size))[self.part]

    def random(self, size=None):
        return self.rng.random(self._size(size))[self.part]

    def uniform(self, low=0.0, high=1.0, size=None):
        return self.rng.uniform(low, high, size=self._size(size))[self.part]


class _BatchPlan:
    """Everything that defines batch k; used by the prefetch thread only
    (or by forward when prefetch is 0).  Holds no reference to the layer."""

    def __init__(self, layer, source, transform):
        dp = layer.param.data_param
        self.source = source
        self.transform = transform
        self.dtype = layer.dtype
        self.seed = (layer.seed + dp.seed) & 0xFFFFFFFF
        self.crc = zlib.crc32(layer.name.encode())
        self.batch_size = int(dp.batch_size)
        self.n = source.count
        self.random = bool(dp.enable_random_selection)
        self.pair = dp.images_per_blob == 2
        self.balance = self.pair and dp.balance_matches
        self.all_labels = self.pair and dp.output_all_labels
        self.P, self.K = int(dp.labels_per_batch), int(dp.images_per_label)
        self.pxk = self.P > 0 or self.K > 0
        # data-parallel: this is worker ``worker`` of ``workers`` (see shard);
        # P and total are then the global batch's labels and rows
        self.worker, self.workers = 0, 1
        self.total, self.labels_per_worker = self.batch_size, self.P
        skip_rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.crc, SKIP_TAG]))
        self.skip = int(skip_rng.integers(dp.rand_skip + 1)) if dp.rand_skip else 0
        self._epochs = {}
        # images: LOAD_ALL reads everything now; LOAD_ON_DEMAND fills the cache lazily
        self.on_demand = dp.load_method == pb.DataParameter.LOAD_ON_DEMAND
        if self.on_demand:
            self.images = np.empty((self.n,) + source.shape, source.dtype)
            self.labels = np.empty(self.n, np.int64)
            self.loaded = np.zeros(self.n, bool)
        else:
            self.images, self.labels = source.read_all()
            self.loaded = None
        if self.balance or self.pxk:
            self.labels = source.labels().copy() if self.on_demand else self.labels
            self._index_labels(layer)

    def _index_labels(self, layer):
        values, inverse, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        self.label_values, self.label_of = values, inverse          # label id per image
        self.by_label = np.argsort(inverse, kind="stable")           # images grouped by label
        self.label_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.label_size = counts
        self.rank = np.empty(self.n, np.int64)                        # position within its label
        self.rank[self.by_label] = np.arange(self.n) - np.repeat(self.label_start, counts)
        if self.balance and len(values) < 2:
            raise layer.error(f"balance_matches needs at least two labels; source "
                              f"'{self.source.name}' has only label {values[0]}")
        if self.pxk:
            if self.P < 1 or self.K < 1:
                raise layer.error("labels_per_batch and images_per_label must both be set "
                                  f"(got {self.P} and {self.K})")
            if self.P * self.K != self.batch_size:
                raise layer.error(f"batch_size {self.batch_size} must equal labels_per_batch x "
                                  f"images_per_label = {self.P} x {self.K}")
            if self.P > len(values):
                raise layer.error(f"labels_per_batch {self.P} exceeds the {len(values)} labels "
                                  f"of source '{self.source.name}'")
            self.batches_per_epoch = self._count_pxk_batches()

    def shard(self, layer, rank, workers):
        """Make worker ``rank`` of ``workers``'s part of each global batch of
        ``workers`` x batch_size rows (P x K: ``workers`` x P labels)."""
        self.worker, self.workers = int(rank), int(workers)
        self.total = self.batch_size * self.workers
        self._epochs = {}
        if self.pxk:
            self.P = self.labels_per_worker * self.workers
            labels = len(self.label_values)
            if self.P > labels:
                raise layer.error(f"labels_per_batch {self.labels_per_worker} x {self.workers} "
                                  f"workers = {self.P} labels per global batch exceeds the "
                                  f"{labels} labels of source '{self.source.name}'")
            self.batches_per_epoch = self._count_pxk_batches()

    # -------------------------------------------------------- selection --
    def _rng(self, *key):
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.crc, *key]))

    def _epoch(self, e, make):
        cached = self._epochs.get(e)
        if cached is None:
            if len(self._epochs) >= 3:
                self._epochs.pop(min(self._epochs))
            cached = self._epochs[e] = make(e)
        return cached

    def _stream(self, k):
        """Record indices of the first images of (global) batch k (sequential
        or random)."""
        p = k * self.total + self.skip + np.arange(self.total, dtype=np.int64)
        if not self.random:
            return p % self.n
        epochs, pos = np.divmod(p, self.n)
        out = np.empty_like(p)
        for e in np.unique(epochs).tolist():
            perm = self._epoch(e, lambda e: self._rng(EPOCH_TAG, e).permutation(self.n))
            sel = epochs == e
            out[sel] = perm[pos[sel]]
        return out

    def _partners(self, k, first, rng):
        """The second image of each pair (draws: one uniform per item)."""
        u = rng.random(len(first))
        if not self.balance:
            return np.minimum((u * self.n).astype(np.int64), self.n - 1)
        p = k * self.total + np.arange(len(first))
        lab = self.label_of[first]
        size = self.label_size[lab]
        start = self.label_start[lab]
        # same label, another image: uniform over the label's other members
        r = np.minimum((u * (size - 1)).astype(np.int64), np.maximum(size - 2, 0))
        r = r + (r >= self.rank[first])
        same = np.where(size > 1, self.by_label[start + np.minimum(r, size - 1)], first)
        # different label: uniform over all images outside the label
        r = np.minimum((u * (self.n - size)).astype(np.int64), self.n - size - 1)
        r = r + (r >= start) * size
        diff = self.by_label[r]
        return np.where(p % 2 == 0, same, diff)

    def _members(self, lab):
        start = self.label_start[lab]
        return self.by_label[start:start + self.label_size[lab]]

    def _count_pxk_batches(self):
        counts = -(-self.label_size // self.K)  # chunks of K per label
        batches = 0
        while (counts > 0).sum() >= self.P:
            top = np.argsort(-counts, kind="stable")[:self.P]
            counts[top] -= 1
            batches += 1
        return batches + int(counts.sum() > 0)

    def _pxk_epoch(self, e):
        """Batches (M, P*K) of epoch e: each label's images in chunks of K (the
        last chunk padded with other images of that label), P chunks of
        distinct labels per batch, most-remaining labels first, batch order
        shuffled."""
        rng = self._rng(EPOCH_TAG, e)
        P, K = self.P, self.K
        chunks = []
        for lab in range(len(self.label_values)):
            order = rng.permutation(self._members(lab))
            need = (-len(order)) % K
            if need:
                pool = order[:len(order) - len(order) % K] if len(order) >= K else order
                order = np.concatenate([order, rng.choice(pool, need, replace=len(pool) < need)])
            chunks.append(list(order.reshape(-1, K)))
        remaining = np.array([len(c) for c in chunks])
        batches = []
        while (remaining > 0).sum() >= P:
            top = np.lexsort((rng.random(len(remaining)), -remaining))[:P]
            batches.append(np.concatenate([chunks[lab][remaining[lab] - 1] for lab in top]))
            remaining[top] -= 1
        left = np.flatnonzero(remaining > 0)
        if len(left):  # fewer than P labels left: complete with random chunks of others
            others = np.setdiff1d(np.arange(len(remaining)), left)
            fill = rng.choice(others, P - len(left), replace=False)
            parts = [chunks[lab][remaining[lab] - 1] for lab in left]
            for lab in fill:
                members = self._members(lab)
                parts.append(rng.choice(members, K, replace=len(members) < K))
            batches.append(np.concatenate(parts))
        batches = np.stack(batches)
        return batches[rng.permutation(len(batches))]

    # ------------------------------------------------------------ images --
    def _fetch(self, idx):
        if self.on_demand:
            missing = np.unique(idx[~self.loaded[idx]])
            if len(missing):
                images, labels = self.source.read(missing)
                self.images[missing] = images
                self.labels[missing] = labels
                self.loaded[missing] = True
        return self.images[idx], self.labels[idx]

    def batch(self, k):
        """(data, label) of batch k, both in the net's dtype: this worker's
        rows of the global batch k (all of it with one worker)."""
        rng = self._rng(k)
        if self.pxk:
            e, i = divmod(k, self.batches_per_epoch)
            every = self._epoch(e, self._pxk_epoch)[i]
        else:
            every = self._stream(k)
        augment_rng = self._rng(AUGMENT_TAG, k) if self.transform.augment is not None else None
        draws, augment_draws = rng, augment_rng
        part = slice(self.worker * self.batch_size, (self.worker + 1) * self.batch_size)
        if self.workers > 1:
            draws = _RowDraws(rng, part, self.total)
            if augment_rng is not None:
                augment_draws = _RowDraws(augment_rng, part, self.total)
        images, labels = self._fetch(every[part])
        data = self.transform(images, draws, self.dtype, augment_draws)
        if not self.pair:
            return data, labels.astype(self.dtype)
        second = self._partners(k, every, rng)[part]
        images2, labels2 = self._fetch(second)
        data = np.concatenate([data, self.transform(images2, draws, self.dtype, augment_draws)],
                              axis=1)
        if self.all_labels:
            return data, np.stack([labels, labels2], axis=1).astype(self.dtype)
        return data, (labels == labels2).astype(self.dtype)


# ----------------------------------------------------------------- prefetch --

class _Prefetcher:
    """A daemon thread that puts (k, make(k)) for k = start, start+1, ... into
    a bounded queue (``make`` is the plan's ``batch``, or on the GPU a
    function staging it in pinned memory)."""

    def __init__(self, make, start, depth, name):
        self.queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(make, start, self.queue, self.stop),
                                       name=f"layergraph-data-{name}", daemon=True)
        self.thread.start()

    @staticmethod
    def _run(make, k, q, stop):
        while not stop.is_set():
            try:
                item = (k, make(k))
            except BaseException as e:  # handed to forward, which re-raises it
                item = (k, e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if isinstance(item[1], BaseException):
                return
            k += 1

    def get(self):
        while True:
            try:
                k, item = self.queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise DataError("the data prefetch thread stopped unexpectedly") from None
        if isinstance(item, BaseException):
            raise item
        return k, item

    def poll(self):
        """(k, item) when the next batch is ready, else None (never waits)."""
        try:
            k, item = self.queue.get_nowait()
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return k, item

    def close(self):
        self.stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=30)


class _PinnedFeed:
    """GPU only: batches go to the device from pinned host memory, copied on a
    stream of their own so that the copy overlaps compute.

    * Pinned slots: batch k is staged in slot k % slots (by the prefetch
      thread, or by forward with prefetch 0) after waiting for the event of
      that slot's previous host-to-device copy, so a buffer being copied is
      never overwritten.  With ``depth`` batches queued, the thread fills
      batch k only once forward has taken batch k - depth - 1 (the queue had
      room), so every batch up to k - depth - 2 has had its copy started and
      its event recorded: depth + 2 slots suffice; there are depth + 3.
    * Device staging pairs (two, batch k in pair k % 2): the copy of batch k
      waits (on the copy stream) until the compute stream has finished
      reading that pair for batch k - 2; the compute stream waits for the
      copy's event, then copies the pair into the tops.
    * After filling the tops of batch k, forward starts the copy of batch
      k + 1 if the prefetch thread already has it ready: that copy runs
      during batch k's compute.
    """

    def __init__(self, cupy, shapes, dtype, depth):
        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.pinned = [tuple(self._pinned(shape, dtype) for shape in shapes)
                       for _ in range(max(depth, 0) + 3)]
        self.copied = [None] * len(self.pinned)  # event of each slot's last copy
        self.staging = [tuple(cupy.empty(shape, dtype) for shape in shapes) for _ in range(2)]
        self.read = [None, None]  # event: the compute stream is done reading a pair
        self.pending = None       # (k, pair, event) of the copy started last

    def _pinned(self, shape, dtype):
        count = int(np.prod(shape, dtype=np.int64))
        memory = self.cupy.cuda.alloc_pinned_memory(max(count, 1) * np.dtype(dtype).itemsize)
        return np.frombuffer(memory, dtype, count).reshape(shape)

    def stage(self, k, batch):
        """Copy batch k = (data, labels) into its pinned slot; returns the slot."""
        slot = k % len(self.pinned)
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()
        for buffer, array in zip(self.pinned[slot], batch):
            buffer[...] = array
        return slot

    def start_copy(self, k, slot):
        """Start the host-to-device copy of batch k (staged in ``slot``)."""
        pair = k % 2
        if self.read[pair] is not None:
            self.stream.wait_event(self.read[pair])
        for device, host in zip(self.staging[pair], self.pinned[slot]):
            device.set(host, stream=self.stream)
        event = self.copied[slot] = self.stream.record()
        self.pending = (k, pair, event)

    def finish(self, k, top):
        """Fill the tops with batch k once its copy is done (device-side wait)."""
        got, pair, event = self.pending
        if got != k:  # pragma: no cover - the counter and the feed disagree
            raise DataError(f"the device copy holds batch {got}, expected {k}")
        compute = self.cupy.cuda.get_current_stream()
        compute.wait_event(event)
        for t, device in zip(top, self.staging[pair]):
            t.data[...] = device
        self.read[pair] = compute.record()
        self.pending = None


class _Resources:
    """What the layer must release: the prefetch thread and the source.
    Separate from the layer so that a finalizer can close it."""

    def __init__(self):
        self.prefetcher = None
        self.source = None

    def stop_prefetch(self):
        if self.prefetcher is not None:
            self.prefetcher.close()
            self.prefetcher = None

    def close(self):
        self.stop_prefetch()
        if self.source is not None:
            self.source.close()
            self.source = None


# -------------------------------------------------------------------- layer --

@register_layer("Data")
class DataLayer(Layer):
    exact_bottoms = 0
    min_tops = 1
    max_tops = 2
    has_backward = False

    _BACKENDS = {pb.DataParameter.LEVELDB: "LEVELDB", pb.DataParameter.LMDB: "LMDB",
                 pb.DataParameter.IMAGEDB: "IMAGEDB"}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)
        self._batch = 0
        self._feed = None  # gpu backend: the pinned-memory feed (made on first forward)

    def setup(self, bottom, top):
        dp = self.param.data_param
        if not dp.source:
            raise self.error("data_param.source is required")
        if dp.batch_size < 1:
            raise self.error(f"data_param.batch_size must be at least 1, got {dp.batch_size}")
        if dp.images_per_blob not in (1, 2):
            raise self.error(f"images_per_blob must be 1 or 2, got {dp.images_per_blob}")
        if dp.images_per_blob == 2 and (dp.labels_per_batch or dp.images_per_label):
            raise self.error("images_per_blob 2 (pairs) cannot be combined with "
                             "labels_per_batch/images_per_label")
        backend = self._BACKENDS[dp.backend] if dp.HasField("backend") else None
        self._res.close()  # set up again: release the previous source
        try:
            # the image database root: the Net's db= (Python API), else $LAYERGRAPH_DB
            source = self._res.source = open_source(dp.source, backend,
                                                    root=getattr(self.net, "db", None))
        except LayergraphError as e:
            raise type(e)(f"layer '{self.name}' ({self.type}): {e}") from None
        transform = _Transform(self, self.param.transform_param, dp, source)
        self._plan = _BatchPlan(self, source, transform)
        self._depth = int(dp.prefetch)
        n, c = int(dp.batch_size), transform.out_shape[0] * int(dp.images_per_blob)
        self._data_shape = (n, c) + transform.out_shape[1:]
        self._label_shape = (n, 2) if self._plan.all_labels else (n,)

    def reshape(self, bottom, top):
        top[0].reshape(self._data_shape)
        if len(top) > 1:
            top[1].reshape(self._label_shape)

    def forward(self, bottom, top):
        k = self._batch
        if self._res.source is None:
            raise self.error("the layer was closed")
        if self.backend.is_gpu:
            self._forward_gpu(k, top)
            self._batch = k + 1
            return
        if self._depth <= 0:
            data, labels = self._plan.batch(k)
        else:
            if self._res.prefetcher is None:
                self._res.prefetcher = _Prefetcher(self._plan.batch, k, self._depth, self.name)
            got, (data, labels) = self._res.prefetcher.get()
            if got != k:  # pragma: no cover - the counter and the thread disagree
                raise DataError(f"layer '{self.name}': prefetched batch {got}, expected {k}")
        top[0].data[...] = self.xp.asarray(data)
        if len(top) > 1:
            top[1].data[...] = self.xp.asarray(labels)
        self._batch = k + 1

    def _forward_gpu(self, k, top):
        """Batch k into the tops through pinned memory (see :class:`_PinnedFeed`)."""
        if self._feed is None:
            self._feed = _PinnedFeed(self.xp, (self._data_shape, self._label_shape),
                                     self.dtype, self._depth)
        feed, plan = self._feed, self._plan
        if feed.pending is None or feed.pending[0] != k:
            if self._depth <= 0:
                slot = feed.stage(k, plan.batch(k))
            else:
                if self._res.prefetcher is None:
                    self._res.prefetcher = _Prefetcher(lambda j: feed.stage(j, plan.batch(j)),
                                                       k, self._depth, self.name)
                got, slot = self._res.prefetcher.get()
                if got != k:  # pragma: no cover - the counter and the thread disagree
                    raise DataError(f"layer '{self.name}': prefetched batch {got}, expected {k}")
            feed.start_copy(k, slot)
        feed.finish(k, top)
        ready = self._res.prefetcher.poll() if self._res.prefetcher is not None else None
        if ready is not None:  # the next batch is staged already: copy it during compute
            got, slot = ready
            if got != k + 1:  # pragma: no cover - the counter and the thread disagree
                raise DataError(f"layer '{self.name}': prefetched batch {got}, expected {k + 1}")
            feed.start_copy(got, slot)

    def data_parallel(self, comm):
        """Data-parallel training on ``comm``: deliver worker ``comm.rank``'s
        batch_size rows of each global batch of ``comm.size`` x batch_size
        (see the module docstring).  Call before the first forward (a
        prefetch already running restarts at the current batch)."""
        self._res.stop_prefetch()
        if self._feed is not None:
            self._feed.pending = None
        self._plan.shard(self, comm.rank, comm.size)

    # ------------------------------------------------------------ state --
    @property
    def batch_index(self):
        """The number of the next batch forward will output."""
        return self._batch

    @property
    def source_size(self):
        """The number of records of the source (one epoch of sequential batches)."""
        return self._plan.n

    def state_dict(self):
        state = super().state_dict()
        state["batch"] = self._batch
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        batch = int(state.get("batch", 0))
        if batch != self._batch:
            self._res.stop_prefetch()  # restarts at the restored counter on next forward
            self._batch = batch
            if self._feed is not None:
                self._feed.pending = None  # a copy started ahead is for the old stream

    def close(self):
        """Stop the prefetch thread and release the source (idempotent)."""
        self._finalizer()
