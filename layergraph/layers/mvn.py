"""MVN: mean-variance normalization of each sample (Caffe's MVNLayer)."""
from ..layer import Layer, register_layer


@register_layer("MVN")
class MVNLayer(Layer):
    r"""Subtract the mean (and divide by the standard deviation) of each
    group of values.  A bottom x (N, C, ...) is split into groups of
    ``dim`` values: one per (n, c) -- the rest of the axes --, or one per n
    with ``across_channels``.  Per group, with means over its values:

        \mu = mean x,   \sigma = \sqrt{mean (x - \mu)^2}
        y = (x - \mu) / (\sigma + eps)        (normalize_variance, default)
        y = x - \mu                           (normalize_variance: false)

    (Caffe adds ``eps`` (1e-9) to the standard deviation, not the
    variance.)  Backward, g = dE/dy, means per group, z = (x - \mu)/\sigma
    (0 where \sigma = 0):

        dE/dx = (g - mean g - z mean(g y)) / (\sigma + eps)
        dE/dx = g - mean g                    (normalize_variance: false)

    -- the exact gradient.  Caffe uses y in place of z, which differs by the
    factor (\sigma + eps)/\sigma (1 + 1e-9/\sigma with the default eps).
    In place capable (backward reads only what forward keeps).
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)
        self._y = self._z = self._std = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2 and not self.across_channels:
            raise self.shape_error(f"needs a bottom with a channel axis (N, C, ...), got shape "
                                   f"{shape}; use mvn_param {{ across_channels: true }}")
        if len(shape) < 1:
            raise self.shape_error("needs a bottom with a batch axis, got a scalar")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])
        groups = shape[0] if self.across_channels else shape[0] * shape[1]
        self.groups = groups
        self.dim = bottom[0].count // groups if groups else 0

    def _view(self, a):
        return a.reshape(self.groups, self.dim)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = self._view(bottom[0].data)
        centered = x - x.mean(axis=1, keepdims=True)
        if not self.normalize_variance:
            self._view(top[0].data)[...] = centered
            return
        sigma = xp.sqrt((centered * centered).mean(axis=1, keepdims=True))
        self._std = sigma + self.eps
        self._y = centered / self._std
        self._z = centered / xp.where(sigma > 0, sigma, 1)
        self._view(top[0].data)[...] = self._y

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        g = self._view(top[0].diff)
        dx = self._view(bottom[0].diff)
        if not self.normalize_variance:
            dx[...] = g - g.mean(axis=1, keepdims=True)
            return
        mean_gy = (g * self._y).mean(axis=1, keepdims=True)
        dx[...] = (g - g.mean(axis=1, keepdims=True) - self._z * mean_gy) / self._std
