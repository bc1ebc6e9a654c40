"""Concat: join the bottoms along one axis.

``concat_param { axis: 1 }`` (negative counts from the end) or the legacy
``concat_dim`` (non-negative); both only if equal, as MyCaffe writes them.  All bottoms must agree on every
other axis:

    top = [bottom_0, bottom_1, ...] along axis,  top.shape[axis] = sum_j bottom_j.shape[axis]

Backward gives each bottom its slice of the top diff.

Kernel path (kernels/concat.cu): one launch per pass copies every bottom (the
offsets and the bottoms' addresses travel in one small table).
"""
from ..layer import Layer, register_layer
from ._pointer_table import PointerTable, address
from ._shared import canonical_axis


@register_layer("Concat")
class Concat(Layer):
    min_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.concat_param
        # BVLC Caffe takes one or the other; MyCaffe writes both (equal).
        if p.HasField("axis") and p.HasField("concat_dim") and p.axis != p.concat_dim:
            raise self.error(f"axis ({p.axis}) and concat_dim ({p.concat_dim}) disagree; "
                             f"specify one of them")
        if any(b is top[0] for b in bottom):
            raise self.error("in-place computation is not supported")
        self._data_table = PointerTable(self.xp)   # kernel path: offsets + bottom data
        self._diff_table = PointerTable(self.xp)   # kernel path: offsets + bottom diffs

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        p = self.param.concat_param
        first = bottom[0].shape
        if p.HasField("concat_dim"):
            self.axis = p.concat_dim
            if self.axis >= len(first):
                raise self.shape_error(
                    f"concat_dim {p.concat_dim} is out of range for bottom shape {first}")
        else:
            self.axis = canonical_axis(self, bottom[0], p.axis)
        a = self.axis
        for j, b in enumerate(bottom[1:], 1):
            s = b.shape
            if len(s) != len(first) or s[:a] + s[a + 1:] != first[:a] + first[a + 1:]:
                raise self.shape_error(
                    f"bottom[{j}] shape {s} does not match bottom[0] shape {first} "
                    f"outside the concat axis {a}")
        self.sizes = [b.shape[a] for b in bottom]
        top[0].reshape(first[:a] + (sum(self.sizes),) + first[a + 1:])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        if self.use_kernels:  # kernels/concat.cu
            y = top[0].data
            table = self._data_table(self._offsets() + [address(b.data) for b in bottom])
            self.launch("concat_forward", y.size, y.shape[self.axis],
                        top[0].count_range(self.axis + 1), len(bottom), table, y, n=y.size)
            return
        self.xp.concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if self.use_kernels:
            if not any(propagate_down):
                return
            dy = top[0].diff
            table = self._diff_table(self._offsets() + [
                address(b.diff) if propagate_down[j] else 0 for j, b in enumerate(bottom)])
            self.launch("concat_backward", dy.size, dy.shape[self.axis],
                        top[0].count_range(self.axis + 1), len(bottom), table, dy, n=dy.size)
            return
        lead = (slice(None),) * self.axis
        start = 0
        for j, size in enumerate(self.sizes):
            if propagate_down[j]:
                bottom[j].diff[...] = top[0].diff[lead + (slice(start, start + size),)]
            start += size

    def _offsets(self):
        """Where each bottom starts along the axis, and the axis size."""
        offsets = [0]
        for size in self.sizes:
            offsets.append(offsets[-1] + size)
        return offsets
