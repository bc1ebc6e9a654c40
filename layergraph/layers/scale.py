"""Scale: multiply by a broadcast scale, optionally add a bias (Caffe's ScaleLayer)."""
from ..layer import Layer, register_layer
from ..proto import pb
from ._shared import canonical_axis


def broadcast_geometry(layer, bottom, operand_shape, axis_param):
    """Caffe's Scale/Bias broadcasting: the operand's shape must equal
    bottom.shape[axis : axis + operand.ndim]; returns (axis, outer, dim,
    inner), with the bottom viewed as (outer, dim, inner).  A scalar operand
    uses axis 0, whatever ``axis`` says (as Caffe)."""
    shape = bottom.shape
    ndim = len(operand_shape)
    axis = 0 if ndim == 0 else canonical_axis(layer, bottom, axis_param)
    if tuple(shape[axis:axis + ndim]) != tuple(operand_shape):
        raise layer.shape_error(
            f"operand shape {tuple(operand_shape)} does not match bottom shape {shape} "
            f"starting at axis {axis}")
    outer = int(bottom.count_range(0, axis))
    dim = int(bottom.count_range(axis, axis + ndim))
    inner = int(bottom.count_range(axis + ndim))
    return axis, outer, dim, inner


def operand_shape(layer, bottom, axis_param, num_axes):
    """The shape of a learned operand: bottom.shape[axis : axis + num_axes]
    (num_axes -1: to the end)."""
    axis = canonical_axis(layer, bottom, axis_param)
    if num_axes < -1:
        raise layer.error(f"num_axes must be >= 0, or -1 to extend to the end of bottom[0]; "
                          f"got {num_axes}")
    if num_axes >= 0 and axis + num_axes > bottom.num_axes:
        raise layer.shape_error(
            f"axis {axis} + num_axes {num_axes} extends past bottom shape {bottom.shape}")
    end = bottom.num_axes if num_axes == -1 else axis + num_axes
    return bottom.shape[axis:end]


@register_layer("Scale")
class ScaleLayer(Layer):
    r"""Element-wise product with a scale broadcast over the outer and inner
    axes, plus an optional bias.  Viewing bottom[0] x as (outer, dim, inner)
    with the scale s of shape x.shape[axis : axis + k] (dim = its count):

        y[o, d, i] = x[o, d, i] s[d] (+ b[d])
        dE/dx[o, d, i] = dE/dy[o, d, i] s[d]
        dE/ds[d] = \sum_{o, i} dE/dy[o, d, i] x[o, d, i],   dE/db[d] = \sum_{o, i} dE/dy[o, d, i]

    ``scale_param``: ``axis`` (1), ``num_axes`` (1; -1 = to the end, 0 = a
    scalar), ``filler`` (constant 1 when absent), ``bias_term`` (false),
    ``bias_filler`` (constant 0).  With one bottom s is a learned blob
    (blobs[0], the bias blobs[1]); with two bottoms s is bottom[1] (its
    shape gives k, num_axes is ignored; its gradient is *written* to
    bottom[1].diff) and the bias, if any, is blobs[0] of bottom[1]'s shape.
    A scalar scale ignores ``axis``.  In place capable (forward keeps a copy
    of x for the scale gradient, as Caffe).

    Kernel path (kernels/scale.cu): one launch forward (bias fused), one
    block per scale element reducing both parameter gradients, one launch for
    dE/dx.
    """

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.scale_param
        self.bias_term = bool(p.bias_term)
        if len(bottom) == 1:
            shape = operand_shape(self, bottom[0], p.axis, p.num_axes)
            filler = p.filler if p.HasField("filler") else pb.FillerParameter(
                type="constant", value=1.0)
            self.blobs.append(self.make_blob(shape, filler, name=f"{self.name}.scale"))
            bias_shape = shape
        else:
            bias_shape = bottom[1].shape
            if top[0] is bottom[1]:
                raise self.error("the scale bottom cannot be computed in place")
        if self.bias_term:
            self.blobs.append(self.make_blob(bias_shape, p.bias_filler,
                                             name=f"{self.name}.bias"))
        self._bottom_memory = None

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def _bias(self):
        return self.blobs[-1] if self.bias_term else None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        scale = self._scale(bottom)
        _, self.outer, self.dim, self.inner = broadcast_geometry(
            self, bottom[0], scale.shape, self.param.scale_param.axis)
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _view(self, a):
        return a.reshape(self.outer, self.dim, self.inner)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data
        self._bottom_memory = x.copy() if top[0] is bottom[0] else None
        scale = self._scale(bottom).data
        bias = self._bias()
        if self.use_kernels:  # kernels/scale.cu
            b = bias.data if bias is not None else scale  # not read without a bias
            self.launch("scale_forward", x.size, self.dim, self.inner, x, scale, b,
                        int(bias is not None), top[0].data, n=x.size)
            return
        y = self._view(top[0].data)
        self.xp.multiply(self._view(x), scale.reshape(1, -1, 1), out=y)
        if bias is not None:
            y += bias.data.reshape(1, -1, 1)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        scale = self._scale(bottom)
        bias = self._bias()
        scale_is_param = len(bottom) == 1
        want_scale = scale_is_param or propagate_down[1]
        x = self._bottom_memory if self._bottom_memory is not None else bottom[0].data
        dy = top[0].diff
        if self.use_kernels:  # kernels/scale.cu
            if want_scale or bias is not None:
                mode = 0 if not want_scale else (2 if scale_is_param else 1)
                db = bias.diff if bias is not None else scale.diff
                self.launch("scale_backward_params", self.outer, self.dim, self.inner, x, dy,
                            scale.diff, mode, db, int(bias is not None),
                            grid=self.dim, shared=4 * self.backend.block)
            if propagate_down[0]:
                self.launch("scale_forward", dy.size, self.dim, self.inner, dy, scale.data,
                            scale.data, 0, bottom[0].diff, n=dy.size)
            return
        g = self._view(dy)
        if bias is not None:
            bias.diff += g.sum(axis=(0, 2)).reshape(bias.shape)
        if want_scale:
            grad = (g * self._view(x)).sum(axis=(0, 2)).reshape(scale.shape)
            if scale_is_param:
                scale.diff += grad
            else:
                scale.diff[...] = grad
        if propagate_down[0]:
            self.xp.multiply(g, scale.data.reshape(1, -1, 1), out=self._view(bottom[0].diff))
