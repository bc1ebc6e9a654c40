"""Crop: cut bottom[0] to the shape of bottom[1] (Caffe's CropLayer)."""
import numpy as np

from ..layer import Layer, register_layer
from ._shared import canonical_axis


@register_layer("Crop")
class CropLayer(Layer):
    r"""Take the window of bottom[0] that has bottom[1]'s size on the axes
    from ``crop_param.axis`` (default 2: the spatial axes of NCHW) on,
    starting at ``offset``; the axes before it are kept whole:

        top.shape[i] = bottom0.shape[i]   (i < axis),   bottom1.shape[i]   (i >= axis)
        top[..., j_i, ...] = bottom0[..., j_i + o_i, ...]

    ``offset``: none (all 0), one value (the same for every cropped axis) or
    one per cropped axis; bottom0.shape[i] - o_i >= bottom1.shape[i] must
    hold.  bottom[1] only gives a shape: it gets no gradient.  Backward
    scatters dE/dy into the window of a zeroed dE/dx.

    Kernel path (kernels/crop.cu): a gather forward (one thread per top
    element) and a gather backward (one thread per bottom element: the
    top's gradient inside the window, 0 outside), for any number of axes.
    """

    exact_bottoms = 2
    exact_tops = 1
    label_bottoms = (1,)

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        if top[0] is bottom[0] or top[0] is bottom[1]:
            raise self.error("in-place computation is not supported")
        self._geometry_key = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        p = self.param.crop_param
        big, ref = bottom[0].shape, bottom[1].shape
        if len(big) != len(ref):
            raise self.shape_error(f"bottom[0] shape {big} and bottom[1] shape {ref} must have "
                                   f"the same number of axes")
        axis = canonical_axis(self, bottom[0], p.axis)
        cropped = len(big) - axis
        offsets = list(p.offset)
        if len(offsets) > 1 and len(offsets) != cropped:
            raise self.error(f"crop_param gives {len(offsets)} offsets for the {cropped} axes "
                             f"from axis {axis} on (give one value, or one per axis)")
        if len(offsets) <= 1:
            offsets = offsets * cropped or [0] * cropped
        self.offsets = [0] * axis + [int(o) for o in offsets]
        new_shape = list(big[:axis]) + list(ref[axis:])
        for i in range(axis, len(big)):
            if big[i] - self.offsets[i] < ref[i]:
                raise self.shape_error(
                    f"cannot crop axis {i}: bottom[0] has {big[i]}, offset {self.offsets[i]} "
                    f"leaves {big[i] - self.offsets[i]}, bottom[1] asks for {ref[i]} "
                    f"(bottom shapes {big} and {ref})")
        top[0].reshape(new_shape)
        self.window = tuple(slice(o, o + s) for o, s in zip(self.offsets, new_shape))
        key = (big, tuple(new_shape), tuple(self.offsets))
        if self.use_kernels and key != self._geometry_key:
            # [top shape, bottom shape, offsets] for the kernels
            table = np.array(list(new_shape) + list(big) + self.offsets, dtype=np.int64)
            self._table = self.xp.asarray(table)
            self._geometry_key = key

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.use_kernels:  # kernels/crop.cu
            if y.size:
                self.launch("crop_forward", y.size, y.ndim, self._table, x, y, n=y.size)
            return
        y[...] = x[self.window]

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.use_kernels:  # kernels/crop.cu
            if dx.size:
                self.launch("crop_backward", dx.size, dx.ndim, self._table, dy, dx, n=dx.size)
            return
        dx.fill(0)
        dx[self.window] = dy
