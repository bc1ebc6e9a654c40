"""DataSequence (MyCaffe): anchor / positive / negative tuples from a labelled batch.

Bottoms: ``data`` (N, ...) and ``label`` (N,) (a label bottom).  Tops, with
k = data_sequence_param.k:

* k >= 1 (triplets): anchor, positive, negative_1 .. negative_k, then the
  labels top if ``output_labels``: 2 + k (+1) tops.
* k = 0 (pairs): anchor, other, then the labels top.  With
  ``balance_matches`` the other is alternately a positive (stream position
  p = step * N + i even) and a negative (p odd); without, always a negative.

The anchor is the bottom item itself.  Every other image is drawn from
per-label caches of recent images: each forward first appends the batch to
the cache of its label (a ring of ``cache_size`` images per label, so the
current batch is included), then for each anchor i of label y_i

* positive: uniform over the cached images of label y_i whose content
  differs from the anchor's (compared by a content hash).  A label seen for
  the first time with a single image (the cache holds just the anchor) uses
  the anchor itself this once -- random batches often hold a lone image of
  some label early on; a label whose cache holds several copies of one
  image only (a label with a single image in the dataset) is an error
  naming the label;
* negative: a label uniform over the other labels with a non-empty cache,
  then an image uniform over that label's cache (each of the k negatives
  drawn independently).

Uniform choices replace MyCaffe's rounding, which under-weights the first and
last label/item.  The labels top is (N, 2 + k): column 0 the anchor's label,
column 1 the positive's (k = 0: the other's), then the negatives' labels.
``label_count`` > 0 restricts labels to [label_start, label_start +
label_count) (others are an error); 0 discovers labels as they come.

Random draws come from :meth:`Layer.rng` (one generator per forward), so
batches are reproducible from the seed.  The caches are part of
:meth:`state_dict` (compressed) while they hold at most 64 MB; larger ones
are not saved, and a resumed run rebuilds them from the batches that follow
(draws then differ from an uninterrupted run until the caches refill).
No backward: the tops are data.

Data-parallel training (:mod:`layergraph.distributed`): each worker's bottoms
are its shard of the global batch.  The layer gathers the N shards (one
allgather of the data and one of the labels, in rank order: the global
batch), updates its caches and makes its draws for the whole global batch --
every worker the same, as one worker with the whole batch does -- and
outputs its own rows of each top.  The caches therefore stay identical on
every worker and a snapshot from any of them resumes any other.

Host path: the labels' cache rows, the content hashes and the random draws
are made in Python (the draws in a fixed order, whatever the data); with
float32 images and the compiled CPU loops, the rest -- the rings, the picks
and the tops -- is one call (kernels/cpu/data_sequence.cpp), which makes
the NumPy code's choices bit for bit (``native_step = False`` runs that
code; tests compare the two).

Kernel path (kernels/data_sequence.cu): the caches live on the device.  Per
forward: one launch hashes the batch's items (a 64-bit content hash, see
:func:`_row_hash`) and rounds the labels, and those 16 bytes per item are the
only device-to-host copy -- the host needs the labels and hashes to choose
the (row, slot) picks with exactly the NumPy path's draws.  The picks, the
cache slots of the new items and the labels top then travel to the device in
one int64 array; one launch stores the batch in the caches, one gathers every
image top (and the labels top).  Hashing on the device, rather than reading
the Data layer's host batch, keeps the layer independent of what feeds it.
"""
import base64
import hashlib
import zlib

import numpy as np

from .. import cpu_kernels
from ..backend import to_numpy
from ..layer import Layer, register_layer
from ._pointer_table import PointerTable, address

STATE_LIMIT = 64 << 20
#: labels below this find their cache rows through an array (see _index_rows)
LOOKUP_LABELS = 1 << 16


def _content_hash(items):
    """A 64-bit content hash per item (row of a 2-D array): float32 items
    take the kernel path's hash (:func:`_row_hash`; compiled on the CPU,
    see layergraph.cpu_kernels.row_hash), other types BLAKE2b of the bytes.
    Only equality matters (is the positive another image than the anchor?),
    and a snapshot's cache hashes are recomputed on load."""
    if items.dtype == np.float32 and items.ndim == 2:
        hashes = cpu_kernels.row_hash(items)
        return hashes if hashes is not None else _row_hash(items)
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(),
                                    "little") for row in items], dtype=np.uint64)


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _row_hash(items):
    """NumPy twin of the kernel path's content hash (``data_sequence_hash``):
    per row of a float32 2-D array, sum_e mix((e << 32 | bits_e) + golden)
    mod 2^64 over the elements' bit patterns."""
    bits = np.ascontiguousarray(items, np.float32).view(np.uint32).astype(np.uint64)
    words = (np.arange(bits.shape[1], dtype=np.uint64) << np.uint64(32)) | bits
    with np.errstate(over="ignore"):
        return _mix(words + np.uint64(0x9E3779B97F4A7C15)).sum(axis=1, dtype=np.uint64)


class _Arrays:
    """A blob's view for the data-parallel path: just ``data``."""
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


@register_layer("DataSequence")
class DataSequenceLayer(Layer):
    exact_bottoms = 2
    label_bottoms = (1,)
    has_backward = False
    #: False: the host path always runs its NumPy code (the reference the
    #: compiled step is tested against)
    native_step = True

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.data_sequence_param
        self.k = int(p.k)
        self.cache_size = int(p.cache_size)
        self.output_labels = bool(p.output_labels)
        self.label_count = int(p.label_count)
        self.label_start = int(p.label_start)
        self.balance = bool(p.balance_matches)
        if self.k < 0:
            raise self.error(f"k must be >= 0, got {self.k}")
        if self.cache_size < 1:
            raise self.error(f"cache_size must be >= 1, got {self.cache_size}")
        if self.label_count < 0:
            raise self.error(f"label_count must be >= 0, got {self.label_count}")
        want = 2 + self.k + int(self.output_labels)
        if len(top) != want:
            names = ["anchor", "positive" if self.k else "other"] + \
                [f"negative{i + 1}" for i in range(self.k)] + (["labels"] if self.output_labels
                                                                else [])
            raise self.error(f"needs {want} tops ({', '.join(names)}) for k={self.k}, "
                             f"output_labels={self.output_labels}; got {len(top)}")
        self._reset_cache()
        self._top_table = PointerTable(self.xp)  # kernel path: the image tops
        self._compiled = False    # the host step as one compiled call (see reshape)
        self._comm = None         # data-parallel: the workers' communicator
        self._global_tops = []    # data-parallel: the tops of the global batch

    def _reset_cache(self):
        self._rows = {}          # label -> cache row
        self._row_of = np.zeros(0, np.int64)   # the same for small labels (_index_rows)
        self._row_labels = []    # row -> label
        self._cache = None       # (rows, cache_size, D)
        self._hash = None        # (rows, cache_size) uint64
        self._count = np.zeros(0, np.int64)
        self._cursor = np.zeros(0, np.int64)
        self._item_shape = None

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        data, label = bottom
        if data.num_axes < 1 or data.shape[0] < 1:
            raise self.shape_error(f"data bottom {data.shape} needs a batch axis")
        if label.count != data.shape[0]:
            raise self.shape_error(f"label bottom {label.shape} must hold one label per item "
                                   f"of data {data.shape}")
        # (decided here like the other layers' compiled loops, so that
        # cpu_kernels.disabled() around set-up gives the NumPy reference)
        self._compiled = self.native_step and cpu_kernels.available(np.float32)
        for t in top[:2 + self.k]:
            t.reshape(data.shape)
        if self.output_labels:
            top[2 + self.k].reshape((data.shape[0], 2 + self.k))

    # ---------------------------------------------------------- forward --
    def _rows_for(self, labels):
        """The cache row of each label (new labels get new rows)."""
        if self.label_count:
            outside = (labels < self.label_start) | (labels >= self.label_start + self.label_count)
            if outside.any():
                raise self.error(f"label {labels[np.argmax(outside)]} is outside label_start "
                                 f"{self.label_start} .. {self.label_start + self.label_count - 1}")
        lookup = self._row_of
        if len(labels) and len(lookup) and labels.min() >= 0 and labels.max() < len(lookup):
            rows = lookup[labels]
            if rows.min() >= 0:    # every label has its row already
                return rows
        rows = np.empty(len(labels), np.int64)
        for i, y in enumerate(labels.tolist()):
            row = self._rows.get(y)
            if row is None:
                row = self._rows[y] = len(self._row_labels)
                self._row_labels.append(y)
            rows[i] = row
        grow = len(self._row_labels) - len(self._count)
        if grow > 0:
            self._index_rows()
            xp = self.xp
            self._cache = xp.concatenate(
                [self._cache, xp.zeros((grow,) + self._cache.shape[1:], self._cache.dtype)])
            self._hash = np.concatenate([self._hash, np.zeros((grow, self.cache_size),
                                                              np.uint64)])
            self._count = np.concatenate([self._count, np.zeros(grow, np.int64)])
            self._cursor = np.concatenate([self._cursor, np.zeros(grow, np.int64)])
        return rows

    def _index_rows(self):
        """The row of each label as an array (-1: none yet) for labels 0 ..
        LOOKUP_LABELS - 1, so a batch of known labels finds its rows in one
        indexing; other labels take the dict."""
        known = [y for y in self._rows if 0 <= y < LOOKUP_LABELS]
        lookup = np.full(max(known) + 1 if known else 0, -1, np.int64)
        for y in known:
            lookup[y] = self._rows[y]
        self._row_of = lookup

    def _ensure_cache(self, data):
        shape = tuple(data.shape[1:])
        if self._cache is None:
            self._item_shape = shape
            d = int(np.prod(shape, dtype=np.int64))
            self._cache = self.xp.zeros((0, self.cache_size, d), data.dtype)
            self._hash = np.zeros((0, self.cache_size), np.uint64)
        elif shape != self._item_shape:
            raise self.shape_error(f"item shape changed from {self._item_shape} to {shape} "
                                   "between batches")

    def _add(self, hashes, rows):
        """Place the batch in the ring caches, in batch order: updates the
        hashes, counts and cursors and returns (rows, slots, batch items) of
        the items to store (the caller copies the images)."""
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        first = np.searchsorted(sorted_rows, sorted_rows, side="left")
        nth = np.arange(len(rows)) - first                   # n-th item of its label in batch
        slot = (self._cursor[sorted_rows] + nth) % self.cache_size
        keep = nth >= np.bincount(sorted_rows, minlength=len(self._count))[sorted_rows] \
            - self.cache_size                                # only the last cache_size survive
        stored = sorted_rows[keep], slot[keep], order[keep]
        self._hash[stored[0], stored[1]] = hashes[stored[2]]
        added = np.bincount(sorted_rows, minlength=len(self._count))
        self._cursor = (self._cursor + added) % self.cache_size
        self._count = np.minimum(self._count + added, self.cache_size)
        return stored

    def _pick_positive(self, rows, hashes, rng):
        slots = np.arange(self.cache_size)
        ok = (slots[None, :] < self._count[rows][:, None]) & (self._hash[rows] != hashes[:, None])
        keys = rng.random(ok.shape)
        return rows, np.argmax(np.where(ok, keys, -1.0), axis=1), ok.any(axis=1)

    def _pick_negative(self, rows, rng):
        ok = (self._count[None, :] > 0) & (np.arange(len(self._count))[None, :] != rows[:, None])
        keys = rng.random(ok.shape)
        neg_rows = np.argmax(np.where(ok, keys, -1.0), axis=1)
        slot = np.minimum((rng.random(len(rows)) * self._count[neg_rows]).astype(np.int64),
                          np.maximum(self._count[neg_rows] - 1, 0))
        return neg_rows, slot, ok.any(axis=1)

    def data_parallel(self, comm):
        """Data-parallel training on ``comm``: work on the gathered global
        batch, output this worker's rows (see the module docstring)."""
        self._comm = comm if comm.size > 1 else None

    def forward(self, bottom, top):
        if self._comm is not None:
            self._forward_global(bottom, top)
        elif self.use_kernels:
            self._forward_kernels(bottom, top)
        else:
            self._forward_host(bottom, top)

    def _forward_global(self, bottom, top):
        """The global batch's tuples (every worker the same); this worker's rows."""
        comm, xp = self._comm, self.xp
        n = bottom[0].shape[0]
        data = comm.allgather(xp.ascontiguousarray(bottom[0].data))
        labels = comm.allgather(xp.ascontiguousarray(bottom[1].data).reshape(n))
        shapes = [(comm.size * n,) + tuple(t.shape[1:]) for t in top]
        if [a.shape for a in self._global_tops] != shapes:
            self._global_tops = [xp.empty(shape, self.dtype) for shape in shapes]
        bottoms = [_Arrays(data), _Arrays(labels)]
        tops = [_Arrays(a) for a in self._global_tops]
        if self.use_kernels:
            self._forward_kernels(bottoms, tops)
        else:
            self._forward_host(bottoms, tops)
        rows = slice(comm.rank * n, (comm.rank + 1) * n)
        for t, full in zip(top, self._global_tops):
            t.data[...] = full[rows]

    def _forward_host(self, bottom, top):
        data = to_numpy(bottom[0].data)
        labels_f = to_numpy(bottom[1].data).ravel()
        labels = np.rint(labels_f).astype(np.int64)
        n = data.shape[0]
        items = data.reshape(n, -1)
        step = self._rng_step
        rng = self.rng()
        hashes = _content_hash(items)
        self._ensure_cache(data)
        rows = self._rows_for(labels)
        if self._native_step(items, hashes, rows, labels, step, rng, top):
            return
        stored_rows, stored_slots, stored_items = self._add(hashes, rows)
        self._cache[stored_rows, stored_slots] = items[stored_items]
        picks = self._draw(labels, rows, hashes, step, rng)

        xp = self.xp
        top[0].data[...] = bottom[0].data
        row_labels = np.asarray(self._row_labels, np.int64)
        out_labels = [labels]
        for t, (r, s) in zip(top[1:], picks):
            t.data[...] = xp.asarray(self._cache[r, s].reshape(data.shape))
            out_labels.append(row_labels[r])
        if self.output_labels:
            top[2 + self.k].data[...] = xp.asarray(np.stack(out_labels, axis=1))

    def _native_step(self, items, hashes, rows, labels, step, rng, top):
        """The rest of the host step in one compiled call
        (cpu_kernels.data_sequence_step; kernels/cpu/data_sequence.cpp):
        the same draws, drawn here in _draw's order, the same choices and
        tops as the NumPy code below it.  False (nothing done, nothing
        drawn) when it cannot serve: no compiled loops (or native_step
        False), not float32, or a top that is not a plain C-contiguous
        array."""
        if (not self._compiled or self.xp is not np or items.dtype != np.float32
                or not items.flags.c_contiguous or self._cache.dtype != np.float32):
            return False
        n = len(labels)
        image_tops = [t.data for t in top[:2 + self.k]]
        labels_top = top[2 + self.k].data if self.output_labels else None
        if any(not isinstance(a, np.ndarray) or a.dtype != np.float32
               or not a.flags.c_contiguous for a in image_tops + (
                   [labels_top] if labels_top is not None else [])):
            return False
        pos_keys = rng.random((n, self.cache_size))
        negatives = [(rng.random((n, len(self._count))), rng.random(n))
                     for _ in range(max(self.k, 1))]
        code = cpu_kernels.data_sequence_step(
            items, np.ascontiguousarray(hashes, np.uint64), np.ascontiguousarray(rows, np.int64),
            self._cache, self._hash, self._count, self._cursor, self.k, self.balance, step,
            pos_keys, negatives, image_tops, labels_top, np.ascontiguousarray(labels, np.int64),
            np.asarray(self._row_labels, np.int64))
        if code:   # the first item without a positive (> 0) or a negative (< 0)
            no_positive, no_negative = np.zeros(n, bool), np.zeros(n, bool)
            (no_positive if code > 0 else no_negative)[abs(code) - 1] = True
            self._check(labels, no_positive, no_negative)
        return True

    def _draw(self, labels, rows, hashes, step, rng):
        """The (cache rows, slots) of the positive/other and the negatives."""
        n = len(labels)
        # draw everything in a fixed order so the stream does not depend on the data
        pos_rows, pos_slot, pos_ok = self._pick_positive(rows, hashes, rng)
        # A label met for the first time with a single image (count 1) has no
        # other image yet: the anchor is its own positive for this batch.  Only
        # a label whose cache holds several copies of one image is an error.
        first_seen = ~pos_ok & (self._count[rows] == 1)
        pos_slot = np.where(first_seen, (self._cursor[rows] - 1) % self.cache_size, pos_slot)
        pos_ok = pos_ok | first_seen
        negatives = [self._pick_negative(rows, rng) for _ in range(max(self.k, 1))]
        if self.k == 0:
            if self.balance:
                want_pos = (step * n + np.arange(n)) % 2 == 0
            else:
                want_pos = np.zeros(n, bool)
            neg_rows, neg_slot, neg_ok = negatives[0]
            second_rows = np.where(want_pos, pos_rows, neg_rows)
            second_slot = np.where(want_pos, pos_slot, neg_slot)
            self._check(labels, want_pos & ~pos_ok, ~want_pos & ~neg_ok)
            return [(second_rows, second_slot)]
        self._check(labels, ~pos_ok, ~np.all([ok for _, _, ok in negatives], axis=0))
        return [(pos_rows, pos_slot)] + [(r, s) for r, s, _ in negatives]

    def _forward_kernels(self, bottom, top):  # kernels/data_sequence.cu
        xp, data = self.xp, bottom[0].data
        if data.dtype != np.float32:
            raise self.error(f"the kernel path needs float32 data, got {data.dtype}")
        n = data.shape[0]
        d = data.size // n
        summary = xp.empty(2 * n, xp.int64)
        self.launch("data_sequence_hash", n, d, data.view(xp.uint32), bottom[1].data, summary,
                    grid=n, shared=8 * self.backend.block)
        summary = to_numpy(summary)  # the step's one device-to-host copy: hashes, labels
        hashes, labels = summary[:n].view(np.uint64), summary[n:]
        step = self._rng_step
        rng = self.rng()
        self._ensure_cache(data)
        rows = self._rows_for(labels)
        stored_rows, stored_slots, stored_items = self._add(hashes, rows)
        slot_of = np.full(n, -1, np.int64)
        slot_of[stored_items] = stored_rows * self.cache_size + stored_slots
        picks = self._draw(labels, rows, hashes, step, rng)

        index = [slot_of] + [r * self.cache_size + s for r, s in picks]
        if self.output_labels:
            row_labels = np.asarray(self._row_labels, np.int64)
            index.append(np.stack([labels] + [row_labels[r] for r, _ in picks], axis=1).ravel())
        index = xp.asarray(np.concatenate(index))  # the step's one host-to-device copy
        self.launch("data_sequence_insert", n, d, data, index[:n], self._cache, n=n * d)
        tops = 2 + self.k  # image tops: anchor, positive or other, negatives
        table = self._top_table([address(t.data) for t in top[:tops]])
        label_cols = tops if self.output_labels else 0
        labels_top = top[tops].data if self.output_labels else top[0].data  # unused when 0
        self.launch("data_sequence_gather", n, d, tops, label_cols, data, self._cache,
                    index[n:], table, labels_top, n=tops * n * d + n * label_cols)

    def _check(self, labels, no_positive, no_negative):
        if no_positive.any():
            y = int(labels[np.argmax(no_positive)])
            row = self._rows[y]
            raise self.error(
                f"label {y} has a single distinct image ({self._count[row]} cached copies): no "
                f"positive different from the anchor; a triplet needs two images of every label "
                f"(check the dataset's counts per label, or use label-balanced batches: "
                f"data_param labels_per_batch / images_per_label)")
        if no_negative.any():
            y = int(labels[np.argmax(no_negative)])
            raise self.error(f"no image of a label other than {y} has been seen yet: negatives "
                             f"need at least two labels in the cache")

    # ------------------------------------------------------------ state --
    def state_dict(self):
        state = super().state_dict()
        if self._cache is not None and self._cache.nbytes <= STATE_LIMIT:
            state["cache"] = {
                "cache_size": self.cache_size,
                "labels": list(self._row_labels),
                "count": self._count.tolist(),
                "cursor": self._cursor.tolist(),
                "item_shape": list(self._item_shape),
                "dtype": self._cache.dtype.str,
                "data": base64.b64encode(zlib.compress(to_numpy(self._cache).tobytes(),
                                                       1)).decode(),
            }
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._reset_cache()
        cache = state.get("cache")
        if not cache or cache.get("cache_size") != self.cache_size:
            return  # not saved (too large) or cache_size changed: rebuilt from new batches
        rows, d = len(cache["labels"]), int(np.prod(cache["item_shape"]))
        raw = zlib.decompress(base64.b64decode(cache["data"]))
        host = np.frombuffer(raw, np.dtype(cache["dtype"])).reshape(rows, self.cache_size, d)
        if self.use_kernels:
            host = host.astype(np.float32)
        self._cache = self.xp.asarray(host.copy())
        self._row_labels = [int(y) for y in cache["labels"]]
        self._rows = {y: i for i, y in enumerate(self._row_labels)}
        self._index_rows()
        self._count = np.asarray(cache["count"], np.int64)
        self._cursor = np.asarray(cache["cursor"], np.int64)
        self._item_shape = tuple(cache["item_shape"])
        hash_rows = _row_hash if self.use_kernels else _content_hash
        self._hash = hash_rows(host.reshape(rows * self.cache_size, d)).reshape(
            rows, self.cache_size)
