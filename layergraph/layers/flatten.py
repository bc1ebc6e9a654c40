"""Flatten: merge axes ``axis`` .. ``end_axis`` (inclusive; default 1 .. -1)
into one.

    top shape = shape[:axis] + (prod(shape[axis:end_axis + 1]),) + shape[end_axis + 1:]

(N, C, H, W) -> (N, C*H*W) by default.  The top's data is a view of the
bottom's (no copy, as Caffe's ShareData); backward copies the top diff into
the bottom diff, reshaped.  In-place use is rejected (the shapes differ).
"""
import math

from ..layer import Layer, register_layer
from ._shared import alias_data, canonical_axis


@register_layer("Flatten")
class Flatten(Layer):
    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("in-place computation is not supported (top and bottom shapes differ)")

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        p = self.param.flatten_param
        shape = bottom[0].shape
        start = canonical_axis(self, bottom[0], p.axis)
        end = canonical_axis(self, bottom[0], p.end_axis, "end_axis")
        if end < start:
            raise self.shape_error(
                f"end_axis {p.end_axis} comes before axis {p.axis} for bottom shape {shape}")
        top[0].reshape(shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        alias_data(top[0], bottom[0].data.reshape(top[0].shape))

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)
