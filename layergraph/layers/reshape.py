"""Reshape: change the shape, not the data (Caffe semantics).

``reshape_param { shape { dim: ... } axis: a num_axes: k }`` replaces the
bottom axes a .. a+k-1 (default: all axes; k = -1 means "to the end"; a
negative a counts from the end, -1 being *after* the last axis) by the given
dims, where

    0   copies the bottom dim at the same position (bottom axis a + i),
    -1  is inferred so that the element count is unchanged (at most one).

Examples: (N, C, H, W) with shape {dim: 0 dim: -1} -> (N, C*H*W);
(N, 8) with axis: 1 shape {dim: 2 dim: 4} -> (N, 2, 4).
The top's data is a view of the bottom's (no copy); backward copies the top
diff into the bottom diff.  In-place use is rejected.
"""
import math

from ..layer import Layer, register_layer
from ._shared import alias_data


@register_layer("Reshape")
class Reshape(Layer):
    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("in-place computation is not supported")
        p = self.param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        self.copy_axes = [i for i, d in enumerate(self.dims) if d == 0]
        inferred = [i for i, d in enumerate(self.dims) if d == -1]
        if len(inferred) > 1:
            raise self.error(f"shape {self.dims} contains more than one -1 (inferred) dim")
        if any(d < -1 for d in self.dims):
            raise self.error(f"shape {self.dims} has a dim below -1")
        self.inferred_axis = inferred[0] if inferred else None
        self.constant_count = math.prod(d for d in self.dims if d > 0)
        if p.num_axes < -1:
            raise self.error(f"num_axes must be >= 0, or -1 for all; got {p.num_axes}")

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        p = self.param.reshape_param
        shape = bottom[0].shape
        nd = len(shape)
        start = p.axis if p.axis >= 0 else nd + p.axis + 1
        if not 0 <= start <= nd:
            raise self.shape_error(f"axis {p.axis} is out of range for bottom shape {shape}")
        end = nd if p.num_axes == -1 else start + p.num_axes
        if end > nd:
            raise self.shape_error(
                f"axis {p.axis} + num_axes {p.num_axes} is out of range for bottom shape {shape}")
        new = list(shape[:start]) + self.dims + list(shape[end:])
        for i in self.copy_axes:
            if start + i >= nd:
                raise self.shape_error(
                    f"shape {self.dims} has a 0 at position {i} but bottom shape {shape} has "
                    f"no axis {start + i} to copy")
            new[start + i] = shape[start + i]
        count = math.prod(shape)
        if self.inferred_axis is not None:
            explicit = (self.constant_count * math.prod(shape[:start]) * math.prod(shape[end:])
                        * math.prod(new[start + i] for i in self.copy_axes))
            if explicit == 0 or count % explicit:
                raise self.shape_error(
                    f"bottom shape {shape} ({count} elements) cannot be reshaped to "
                    f"{self._show(new, start)}: {count} is not divisible by {explicit}")
            new[start + self.inferred_axis] = count // explicit
        if math.prod(new) != count:
            raise self.shape_error(
                f"bottom shape {shape} ({count} elements) cannot be reshaped to "
                f"{tuple(new)} ({math.prod(new)} elements)")
        top[0].reshape(tuple(new))

    def _show(self, new, start):
        shown = list(new)
        shown[start + self.inferred_axis] = -1
        return tuple(shown)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        alias_data(top[0], bottom[0].data.reshape(top[0].shape))

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)
