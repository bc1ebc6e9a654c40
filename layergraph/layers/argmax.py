"""ArgMax: the indices (and optionally values) of the top-k entries."""
from ..layer import Layer, register_layer
from ._shared import canonical_axis


@register_layer("ArgMax")
class ArgMaxLayer(Layer):
    r"""Top-k indices per sample, or along one axis (Caffe semantics).

    ``argmax_param``: ``top_k`` (default 1), ``out_max_val`` (default
    false), ``axis`` (unset: per sample).

    * axis unset: each sample n of bottom (N, ...) is flattened to its
      count(1) values; top has max(num_axes, 3) axes, (N, 1, k, 1, ...)
      holding the indices of the k largest values, largest first; with
      out_max_val, (N, 2, k, ...) holding the indices then the values.
    * axis set: top is the bottom shape with that axis replaced by k,
      holding the indices of the k largest values along it; with
      out_max_val the values themselves instead.

    Ties are ordered as Caffe's sort of (value, index) pairs in descending
    order: among equal values the larger index comes first.  Indices are
    stored as floats in the net's dtype.  There is no backward (Caffe has
    none).

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "ArgMax" argmax_param { top_k: 2 }', [[[1.0, 3.0, 2.0]]])[1][0]
    array([[[1., 2.]]])
    """

    exact_bottoms = 1
    exact_tops = 1
    has_backward = False

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField("axis")
        self.axis_param = int(p.axis)
        if self.top_k < 1:
            raise self.error("argmax_param.top_k must be at least 1")

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if self.has_axis:
            self.axis = canonical_axis(self, bottom[0], self.axis_param, "argmax_param.axis")
            dim = shape[self.axis]
            out = list(shape)
            out[self.axis] = self.top_k
        else:
            if bottom[0].num_axes < 1:
                raise self.shape_error("the bottom needs a first (sample) axis")
            dim = bottom[0].count_range(1)
            out = [1] * max(len(shape), 3)
            out[0] = shape[0]
            out[2] = self.top_k
            if self.out_max_val:
                out[1] = 2
        if self.top_k > dim:
            what = f"axis {self.axis} ({dim})" if self.has_axis else \
                f"the flattened sample ({dim} values)"
            raise self.shape_error(f"top_k {self.top_k} exceeds the size of {what}")
        top[0].reshape(tuple(out))

    # ------------------------------------------------------------- forward --
    def _top_k(self, values):
        """Indices and values of the k largest entries along the last axis,
        larger index first among ties."""
        xp = self.xp
        dim = values.shape[-1]
        reversed_values = values[..., ::-1]
        order = xp.argsort(-reversed_values, axis=-1, kind="stable")[..., :self.top_k]
        picked = xp.take_along_axis(reversed_values, order, axis=-1)
        return (dim - 1 - order).astype(self.dtype), picked

    def forward(self, bottom, top):
        x = bottom[0].data
        if self.has_axis:
            moved = self.xp.moveaxis(x, self.axis, -1)
            index, value = self._top_k(moved)
            out = value if self.out_max_val else index
            top[0].data[...] = self.xp.moveaxis(out, -1, self.axis)
            return
        n = x.shape[0]
        index, value = self._top_k(x.reshape(n, -1))
        if self.out_max_val:
            out = self.xp.stack([index, value], axis=1)
        else:
            out = index[:, None, :]
        top[0].data[...] = out.reshape(top[0].shape)
