"""WindowData: refused with a pointer to ImageData."""
from ..layer import Layer, register_layer


@register_layer("WindowData")
class WindowDataLayer(Layer):
    """Caffe's WindowData (R-CNN window files) is not supported: it was
    removed from BVLC Caffe's examples and needs OpenCV-specific window
    warping.  Set up raises a one-line LayerError saying what to do
    instead."""

    exact_bottoms = 0
    has_backward = False

    def setup(self, bottom, top):
        raise self.error("WindowData is deprecated and not supported (it was removed from "
                         "BVLC Caffe's examples): convert the windows to an image list for "
                         "ImageData")

    def reshape(self, bottom, top):
        """Never reached: set up refuses the layer."""

    def forward(self, bottom, top):
        """Never reached: set up refuses the layer."""
