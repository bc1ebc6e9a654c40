"""Split: hand one bottom to several consumers (the Net inserts it for blobs
used by more than one layer).

    top_t = bottom   for every t,     d bottom = sum_t d top_t

The tops' data *is* the bottom's data array (no copy, as Caffe's ShareData),
so a consumer must not modify a split top in place -- that would change what
the other consumers see.  Each top keeps its own diff.

Kernel path (kernels/split.cu): backward is one launch summing every top diff.
"""
from ..layer import Layer, register_layer
from ._pointer_table import PointerTable, address
from ._shared import alias_data


@register_layer("Split")
class Split(Layer):
    exact_bottoms = 1
    min_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        if any(t is bottom[0] for t in top):
            raise self.error("in-place computation is not supported")
        self._diff_table = PointerTable(self.xp)  # kernel path: the top diffs

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        for t in top:
            alias_data(t, bottom[0].data)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, dx = self.xp, bottom[0].diff
        if self.use_kernels:  # kernels/split.cu
            table = self._diff_table([address(t.diff) for t in top])
            self.launch("split_backward", dx.size, len(top), table, dx, n=dx.size)
            return
        if len(top) == 1:
            xp.copyto(dx, top[0].diff)
            return
        xp.add(top[0].diff, top[1].diff, out=dx)
        for t in top[2:]:
            dx += t.diff
