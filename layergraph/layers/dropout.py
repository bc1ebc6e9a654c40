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

    Kernel path (kernels/dropout.cu): one 63-bit seed per TRAIN forward from
    :meth:`Layer.rng`; the mask is ``uniform_hash(seed, i) >= p``
    (:func:`layergraph.kernels.uniform_hash`), drawn, kept (uint8) and
    applied in one launch; backward is one launch.  Its masks differ from the
    NumPy path's (a different generator) but are as reproducible.
    """

    exact_bottoms = 1
    exact_tops = 1
    tracks_active_items = True   # a zero top gradient gives a zero bottom one

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self._mask = None  # the scaled mask m / (1 - p) of the last TRAIN forward
        self._keep = None  # kernel path: the uint8 mask m of the last TRAIN forward
        self.mask_seed = None  # kernel path: the seed of that mask

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data
        if self.use_kernels and self.phase == pb.TRAIN:  # kernels/dropout.cu
            self.mask_seed = int(self.rng().integers(2**63))
            if self._keep is None or self._keep.shape != x.shape:
                self._keep = self.xp.empty(x.shape, self.xp.uint8)
            self.launch("dropout_forward", x.size, x, top[0].data, self._keep, self.mask_seed,
                        self.ratio, self.scale, n=x.size)
            return
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
        bottom[0].active = top[0].active
        if self.phase != pb.TRAIN:
            if top[0] is not bottom[0]:
                bottom[0].diff[...] = top[0].diff
            return
        if self.use_kernels:
            dx = bottom[0].diff
            self.launch("dropout_backward", dx.size, top[0].diff, self._keep, dx, self.scale,
                        n=dx.size)
            return
        bottom[0].diff[...] = top[0].diff * self._mask
