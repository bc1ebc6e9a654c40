"""Filter: keep the samples whose selector is non-zero."""
from ..layer import Layer, register_layer


@register_layer("Filter")
class FilterLayer(Layer):
    r"""Forward only the samples n whose selector s_n is non-zero.

    Bottoms: K blobs to filter (each (N, ...)), then the selector (N,) or
    (N, 1, ...) (singleton axes after the first; it takes no gradient).
    Tops: K blobs, top k = the rows of bottom k at the selected indices
    S = {n : s_n != 0}, in order:

        y^k_m = x^k_{S_m}       dE/dx^k_n = dE/dy^k_m if n = S_m, else 0

    Top shapes depend on the selector's values, read when the layer is
    reshaped (before each forward).  As in Caffe, the first reshape (at set
    up, before any data) gives the tops all N rows.  No selected sample
    gives tops with 0 rows.
    """

    min_bottoms = 2
    min_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error(f"needs one top per filtered bottom: {len(bottom) - 1} top(s) "
                             f"for {len(bottom)} bottoms (the last is the selector), "
                             f"got {len(top)}")
        self._first_reshape = True
        self._indices = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        selector = bottom[-1]
        if selector.num_axes < 1 or any(d != 1 for d in selector.shape[1:]):
            raise self.shape_error(f"selector shape {selector.shape}: its axes after the first "
                                   "must be singletons (1)")
        n = selector.shape[0]
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes < 1 or b.shape[0] != n:
                raise self.shape_error(f"bottom[{i}] shape {b.shape} must have the selector's "
                                       f"first dimension {n}")
        self._indices = self.xp.flatnonzero(selector.data.reshape(n) != 0)
        rows = n if self._first_reshape else int(self._indices.size)
        self._first_reshape = False
        for t, b in zip(top, bottom[:-1]):
            t.reshape((rows,) + b.shape[1:])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        for t, b in zip(top, bottom[:-1]):
            if t.shape[0] != self._indices.size:   # forward without a reshape
                self.reshape(bottom, top)
            t.data[...] = b.data[self._indices]

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            bottom[-1].diff[...] = 0  # the selector takes no gradient
        for i, (t, b) in enumerate(zip(top, bottom[:-1])):
            if not propagate_down[i]:
                continue
            dx = self.xp.zeros(b.shape, dtype=b.diff.dtype)
            dx[self._indices] = t.diff
            b.diff[...] = dx
