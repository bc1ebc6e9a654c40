"""Parameter: a learnable blob exposed as a top."""
from ..layer import Layer, register_layer


@register_layer("Parameter")
class ParameterLayer(Layer):
    r"""A parameter blob of ``parameter_param.shape``, output as top[0].

        y = w        dE/dw += dE/dy

    No bottoms.  As in Caffe the blob is not filled (zeros): its values come
    from trained weights (``.caffemodel``) or are set from Python
    (``layer.blobs[0].data``).  The top is a copy of the blob, so a
    consumer working in place cannot change the parameter.
    """

    exact_bottoms = 0
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise self.shape_error(f"parameter_param.shape {shape} has a negative dimension")
        self.blobs = [self.make_blob(shape)]

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += top[0].diff
