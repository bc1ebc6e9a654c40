"""BatchReindex: select, repeat or permute the samples of a batch."""
from ..layer import Layer, register_layer


@register_layer("BatchReindex")
class BatchReindexLayer(Layer):
    r"""Rows of bottom[0] picked by the indices in bottom[1].

        y_m = x_{r_m}          dE/dx_n = \sum_{m : r_m = n} dE/dy_m

    Shapes: bottom[0] (N, ...); bottom[1] the indices r, shape (M,), integer
    values in [0, N) (an index bottom: no gradient); top (M, ...).  An index
    may repeat (its gradients add up) or be left out (gradient 0).
    """

    exact_bottoms = 2
    exact_tops = 1
    label_bottoms = (1,)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise self.shape_error(f"the index bottom must have one axis, got shape "
                                   f"{bottom[1].shape}")
        if bottom[0].num_axes < 1:
            raise self.shape_error("bottom[0] needs a first (batch) axis")
        top[0].reshape((bottom[1].shape[0],) + bottom[0].shape[1:])

    def _indices(self, bottom):
        xp = self.xp
        index = bottom[1].data.astype(xp.int64)
        n = bottom[0].shape[0]
        bad = (index < 0) | (index >= n)
        if bool(bad.any()):
            first = int(index[bad][0])
            raise self.error(f"index {first} out of range [0, {n}) for a batch of {n}")
        return index

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self._indices(bottom)]

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        index = self._indices(bottom)
        dx = xp.zeros(bottom[0].shape, dtype=bottom[0].diff.dtype)
        dy = top[0].diff
        if xp.__name__ == "numpy":
            xp.add.at(dx, index, dy)
        else:  # CuPy: scatter_add is its unbuffered add.at
            import cupyx
            cupyx.scatter_add(dx, index, dy)
        bottom[0].diff[...] = dx
