"""Split: hand one bottom to several consumers (the Net inserts it for blobs
used by more than one layer).

    top_t = bottom   for every t,     d bottom = sum_t d top_t

The tops' data *is* the bottom's data array (no copy, as Caffe's ShareData),
so a consumer must not modify a split top in place -- that would change what
the other consumers see.  Each top keeps its own diff.
"""
from ..layer import Layer, register_layer
from ._shared import alias_data


@register_layer("Split")
class Split(Layer):
    exact_bottoms = 1
    min_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        if any(t is bottom[0] for t in top):
            raise self.error("in-place computation is not supported")

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
        if len(top) == 1:
            xp.copyto(dx, top[0].diff)
            return
        xp.add(top[0].diff, top[1].diff, out=dx)
        for t in top[2:]:
            dx += t.diff
