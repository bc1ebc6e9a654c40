"""Debug: pass-through that remembers the most recent embeddings.

Bottoms
    embedding  (N, ...)  passed through unchanged
    label      optional (N,), (N, 1) or (N, C): column 0 is stored with each
               embedding (a label bottom; absent -> NaN labels)
Top
    output     same shape as the embedding (may be the embedding blob itself,
               in place)

Forward copies the embedding to the top and appends its N rows (flattened to
(N, D)) to a ring buffer of the ``debug_param.max_stored`` (default 1000) most
recent items, in every phase the layer runs.  Backward copies the top diff to
the embedding diff (the identity's gradient).

``layer.stored_embeddings()`` returns (embeddings (n, D), labels (n,)) as NumPy
arrays, oldest first.  The buffer is a diagnostic: it is not part of the
snapshot state.  On the GPU it stays on the device (forward copies rows there,
nothing comes back to the host) until stored_embeddings() is called.
"""
import numpy as np

from ..backend import to_numpy
from ..layer import Layer, register_layer
from . import _centroids as C


@register_layer("Debug")
class Debug(Layer):
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1
    label_bottoms = (1,)
    optional_bottoms = (1,)

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.max_stored = int(self.param.debug_param.max_stored)
        if self.max_stored < 1:
            raise self.error(f"debug_param.max_stored must be >= 1, got {self.max_stored}")
        if bottom[0].num_axes < 1:
            raise self.shape_error(f"embedding must be (N, ...), got {bottom[0].shape}")
        self.dim = bottom[0].count_range(1)
        self._embeddings = self.xp.zeros((self.max_stored, self.dim), dtype=self.dtype)
        self._labels = self.xp.full((self.max_stored,), np.nan, dtype=np.float64)
        self._seen = 0  # items ever stored; the next slot is _seen % max_stored

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        x = bottom[0]
        C.check_embedding(self, x, self.dim)
        if len(bottom) > 1:
            C.label_rows(self, bottom[1], x.shape)
        if top[0] is not x:
            top[0].reshape_like(x)

    # ---------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0]
        if top[0] is not x:
            top[0].data[...] = x.data
        n = x.shape[0]
        rows = x.data.reshape(n, self.dim)
        labels = None
        if len(bottom) > 1:
            labels = C.label_rows(self, bottom[1], x.shape)[:, 0]
        # a batch larger than the buffer keeps its tail; the slots it fills
        # are one range, or two when it wraps: slice copies, no index arrays
        keep = min(n, self.max_stored)
        start = (self._seen + n - keep) % self.max_stored
        first = min(keep, self.max_stored - start)
        for dst, src in ((slice(start, start + first), slice(n - keep, n - keep + first)),
                         (slice(0, keep - first), slice(n - keep + first, n))):
            if dst.stop > dst.start:
                self._embeddings[dst] = rows[src]
                self._labels[dst] = np.nan if labels is None else labels[src]
        self._seen += n

    # --------------------------------------------------------- backward --
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff

    # ------------------------------------------------------------ access --
    def stored_embeddings(self):
        """(embeddings (n, D), labels (n,)) of the stored items, oldest first."""
        count = min(self._seen, self.max_stored)
        start = self._seen % self.max_stored if self._seen > self.max_stored else 0
        order = (start + np.arange(count)) % self.max_stored
        emb = to_numpy(self._embeddings)[order]
        lab = to_numpy(self._labels)[order]
        return emb.copy(), lab.copy()
