"""Threshold: a step function (Caffe's ThresholdLayer)."""
from ..layer import Layer, register_layer


@register_layer("Threshold")
class ThresholdLayer(Layer):
    r"""y = 1 if x > t else 0, with ``threshold_param { threshold: t }``
    (default 0).  The step has no useful gradient and, as in Caffe, no
    backward pass.  Shapes: bottom[0] any, top[0] the same (in place
    capable).

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Threshold" threshold_param { threshold: 0.5 }',
    ...           [[0.2, 0.5, 0.7]])[1][0]
    array([0., 0., 1.])
    """

    exact_bottoms = 1
    exact_tops = 1
    has_backward = False

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.threshold = float(self.param.threshold_param.threshold)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data > self.threshold
