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
"""
import base64
import hashlib
import zlib

import numpy as np

from ..backend import to_numpy
from ..layer import Layer, register_layer

STATE_LIMIT = 64 << 20


def _content_hash(items):
    """A 64-bit content hash per item (row of a 2-D array)."""
    return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(),
                                    "little") for row in items], dtype=np.uint64)


@register_layer("DataSequence")
class DataSequenceLayer(Layer):
    exact_bottoms = 2
    label_bottoms = (1,)
    has_backward = False

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

    def _reset_cache(self):
        self._rows = {}          # label -> cache row
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
        rows = np.empty(len(labels), np.int64)
        for i, y in enumerate(labels.tolist()):
            row = self._rows.get(y)
            if row is None:
                row = self._rows[y] = len(self._row_labels)
                self._row_labels.append(y)
            rows[i] = row
        grow = len(self._row_labels) - len(self._count)
        if grow > 0:
            self._cache = np.concatenate(
                [self._cache, np.zeros((grow,) + self._cache.shape[1:], self._cache.dtype)])
            self._hash = np.concatenate([self._hash, np.zeros((grow, self.cache_size),
                                                              np.uint64)])
            self._count = np.concatenate([self._count, np.zeros(grow, np.int64)])
            self._cursor = np.concatenate([self._cursor, np.zeros(grow, np.int64)])
        return rows

    def _ensure_cache(self, data):
        shape = tuple(data.shape[1:])
        if self._cache is None:
            self._item_shape = shape
            d = int(np.prod(shape, dtype=np.int64))
            self._cache = np.zeros((0, self.cache_size, d), data.dtype)
            self._hash = np.zeros((0, self.cache_size), np.uint64)
        elif shape != self._item_shape:
            raise self.shape_error(f"item shape changed from {self._item_shape} to {shape} "
                                   "between batches")

    def _add(self, items, hashes, rows):
        """Append the batch to the ring caches, in batch order."""
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        first = np.searchsorted(sorted_rows, sorted_rows, side="left")
        nth = np.arange(len(rows)) - first                   # n-th item of its label in batch
        slot = (self._cursor[sorted_rows] + nth) % self.cache_size
        keep = nth >= np.bincount(sorted_rows, minlength=len(self._count))[sorted_rows] \
            - self.cache_size                                # only the last cache_size survive
        self._cache[sorted_rows[keep], slot[keep]] = items[order[keep]]
        self._hash[sorted_rows[keep], slot[keep]] = hashes[order[keep]]
        added = np.bincount(sorted_rows, minlength=len(self._count))
        self._cursor = (self._cursor + added) % self.cache_size
        self._count = np.minimum(self._count + added, self.cache_size)

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

    def forward(self, bottom, top):
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
        self._add(items, hashes, rows)

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
            picks = [(second_rows, second_slot)]
        else:
            self._check(labels, ~pos_ok, ~np.all([ok for _, _, ok in negatives], axis=0))
            picks = [(pos_rows, pos_slot)] + [(r, s) for r, s, _ in negatives]

        xp = self.xp
        top[0].data[...] = bottom[0].data
        row_labels = np.asarray(self._row_labels, np.int64)
        out_labels = [labels]
        for t, (r, s) in zip(top[1:], picks):
            t.data[...] = xp.asarray(self._cache[r, s].reshape(data.shape))
            out_labels.append(row_labels[r])
        if self.output_labels:
            top[2 + self.k].data[...] = xp.asarray(np.stack(out_labels, axis=1))

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
                "data": base64.b64encode(zlib.compress(self._cache.tobytes(), 1)).decode(),
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
        self._cache = np.frombuffer(raw, np.dtype(cache["dtype"])).reshape(
            rows, self.cache_size, d).copy()
        self._row_labels = [int(y) for y in cache["labels"]]
        self._rows = {y: i for i, y in enumerate(self._row_labels)}
        self._count = np.asarray(cache["count"], np.int64)
        self._cursor = np.asarray(cache["cursor"], np.int64)
        self._item_shape = tuple(cache["item_shape"])
        self._hash = _content_hash(self._cache.reshape(rows * self.cache_size, d)).reshape(
            rows, self.cache_size)
