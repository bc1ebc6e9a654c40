"""Dropout (Srivastava et al. 2014), in Caffe's inverted form."""
from ..layer import Layer, register_layer
from ..proto import pb


@register_layer("Dropout")
class DropoutLayer(Layer):
    r"""Randomly zero units during training, rescaling the survivors.

    TRAIN:      m ~ Bernoulli(1 - p) per element       (p = dropout_param.dropout_ratio)
                y = x m / (1 - p),   dE/dx = dE/dy m / (1 - p)
    TEST, RUN:  y = x,               dE/dx = dE/dy

    The expectation of y equals x in both phases, so nothing is rescaled at
    test time.  Shapes: bottom[0] any, top[0] the same.  The mask is drawn
    from :meth:`Layer.rng` on every TRAIN forward (reproducible and
    resumable) and kept for backward, so in-place use is correct.
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self._mask = None  # the scaled mask m / (1 - p) of the last TRAIN forward

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data
        if self.phase != pb.TRAIN:
            self._mask = None
            if top[0] is not bottom[0]:
                top[0].data[...] = x
            return
        keep = self.rng().random(size=x.shape) >= self.ratio
        self._mask = self.xp.asarray(keep * self.scale, dtype=x.dtype)
        top[0].data[...] = x * self._mask

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.phase != pb.TRAIN:
            if top[0] is not bottom[0]:
                bottom[0].diff[...] = top[0].diff
            return
        bottom[0].diff[...] = top[0].diff * self._mask
