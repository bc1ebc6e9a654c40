"""Slice: cut the bottom into consecutive pieces along one axis.

``slice_param { axis: 1 slice_point: ... }`` (or the legacy ``slice_dim``;
both only if equal, as MyCaffe writes them).  With slice points p_1 < ... < p_{T-1} (one fewer than the tops),
top t gets bottom[p_t : p_{t+1}] along the axis (p_0 = 0, p_T = the axis
size).  Without slice points the axis is split into T equal parts (it must
be divisible by T).  Backward writes each top diff into its slice of the
bottom diff.

Kernel path (kernels/slice.cu): one launch per pass copies every piece (the
bounds and the tops' addresses travel in one small table).
"""
from ..layer import Layer, register_layer
from ._pointer_table import PointerTable, address
from ._shared import canonical_axis


@register_layer("Slice")
class Slice(Layer):
    exact_bottoms = 1
    min_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.slice_param
        # BVLC Caffe takes one or the other; MyCaffe writes both (equal).
        if p.HasField("axis") and p.HasField("slice_dim") and p.axis != p.slice_dim:
            raise self.error(f"axis ({p.axis}) and slice_dim ({p.slice_dim}) disagree; "
                             f"specify one of them")
        if any(t is bottom[0] for t in top):
            raise self.error("in-place computation is not supported")
        self.slice_points = [int(v) for v in p.slice_point]
        if self.slice_points and len(self.slice_points) != len(top) - 1:
            raise self.error(
                f"{len(self.slice_points)} slice_point(s) given for {len(top)} tops; "
                f"need exactly {len(top) - 1}")
        self._data_table = PointerTable(self.xp)   # kernel path: bounds + top data
        self._diff_table = PointerTable(self.xp)   # kernel path: bounds + top diffs

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        p = self.param.slice_param
        shape = bottom[0].shape
        if p.HasField("slice_dim"):
            self.axis = p.slice_dim
            if self.axis >= len(shape):
                raise self.shape_error(
                    f"slice_dim {p.slice_dim} is out of range for bottom shape {shape}")
        else:
            self.axis = canonical_axis(self, bottom[0], p.axis)
        size = shape[self.axis]
        if self.slice_points:
            bounds = [0] + self.slice_points + [size]
            if any(b <= a for a, b in zip(bounds, bounds[1:])):
                raise self.shape_error(
                    f"slice_point {self.slice_points} must increase strictly within "
                    f"(0, {size}) (axis {self.axis} of bottom shape {shape})")
        else:
            if size % len(top):
                raise self.shape_error(
                    f"axis {self.axis} of bottom shape {shape} (size {size}) is not divisible "
                    f"into {len(top)} equal slices")
            step = size // len(top)
            bounds = list(range(0, size + 1, step))
        self.bounds = bounds
        for t, (a, b) in zip(top, zip(bounds, bounds[1:])):
            t.reshape(shape[:self.axis] + (b - a,) + shape[self.axis + 1:])

    def _slices(self):
        lead = (slice(None),) * self.axis
        return [lead + (slice(a, b),) for a, b in zip(self.bounds, self.bounds[1:])]

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data
        if self.use_kernels:  # kernels/slice.cu
            table = self._data_table(self.bounds + [address(t.data) for t in top])
            self.launch("slice_forward", x.size, x.shape[self.axis],
                        bottom[0].count_range(self.axis + 1), len(top), table, x, n=x.size)
            return
        for t, index in zip(top, self._slices()):
            t.data[...] = x[index]

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dx = bottom[0].diff
        if self.use_kernels:
            table = self._diff_table(self.bounds + [address(t.diff) for t in top])
            self.launch("slice_backward", dx.size, dx.shape[self.axis],
                        bottom[0].count_range(self.axis + 1), len(top), table, dx, n=dx.size)
            return
        for t, index in zip(top, self._slices()):
            dx[index] = t.diff
