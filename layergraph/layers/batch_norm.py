"""BatchNorm: normalize each channel by batch (or stored) statistics
(Caffe's BatchNormLayer; Ioffe & Szegedy 2015, without the affine part --
Caffe puts that in a following Scale layer with ``bias_term: true``)."""
from ..layer import Layer, register_layer
from ..proto import pb


@register_layer("BatchNorm")
class BatchNormLayer(Layer):
    r"""Per-channel normalization of a bottom x (N, C, ...) (a 1-D bottom is
    one channel); statistics run over every axis but the channel axis,
    m = count / C values per channel:

        \mu_c = mean x_{., c, .},   \sigma^2_c = mean (x - \mu_c)^2
        y = (x - \mu_c) / \sqrt{\sigma^2_c + eps}

    ``batch_norm_param``: ``use_global_stats`` (unset: false in TRAIN, true
    in TEST, as Caffe), ``moving_average_fraction`` \lambda (0.999), ``eps``
    (1e-5).

    Caffe's three parameter blobs, never learned (``learnable = False``; a
    ``param`` spec with lr_mult != 0 is refused, as Caffe):
    blobs[0] the mean sum S_\mu (C,), blobs[1] the variance sum S_v (C,),
    blobs[2] the scale factor f (1,).  Each forward with batch statistics
    updates them as

        f <- \lambda f + 1,  S_\mu <- \mu + \lambda S_\mu,
        S_v <- m/(m-1) \sigma^2 + \lambda S_v      (m/(m-1) := 1 when m = 1)

    and with global statistics the layer uses \mu = S_\mu / f,
    \sigma^2 = S_v / f (both 0 while f = 0).  Backward, with g = dE/dy and
    means over the same axes:

        batch stats:   dE/dx = (g - mean g - y mean(g y)) / \sqrt{\sigma^2 + eps}
        global stats:  dE/dx = g / \sqrt{\sigma^2 + eps}

    In place capable: forward keeps y (x_norm) for backward, as Caffe.

    Kernel path (kernels/batch_norm.cu): one block per channel computes the
    statistics (double accumulators) and updates the three blobs; one launch
    normalizes; backward is one launch (a block per channel reduces and
    writes dE/dx).
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.moving_average_fraction = float(p.moving_average_fraction)
        self.use_global_stats = self.phase != pb.TRAIN  # TEST and the RUN (deploy) net
        if p.HasField("use_global_stats"):
            self.use_global_stats = bool(p.use_global_stats)
        self.eps = float(p.eps)
        if self.eps < 0:
            raise self.error(f"batch_norm_param.eps must be >= 0, got {self.eps:g}")
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        for i, spec in enumerate(self.param.param[:3]):
            if spec.lr_mult != 0:
                raise self.error(
                    f"param {i} has lr_mult {spec.lr_mult:g}: batch normalization statistics "
                    f"cannot be learned (give lr_mult: 0 or no param spec)")
        names = ("mean", "variance", "scale_factor")
        shapes = ((self.channels,), (self.channels,), (1,))
        self.blobs = [self.make_blob(shape, name=f"{self.name}.{what}")
                      for shape, what in zip(shapes, names)]
        for blob in self.blobs:
            blob.learnable = False
        self._x_norm = self._mean = self._inv_std = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) == 0 or (len(shape) > 1 and shape[1] != self.channels):
            raise self.shape_error(
                f"bottom shape {shape} does not fit the statistics of {self.channels} "
                f"channel(s) (axis 1)")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])
        num = shape[0]
        self.spatial = bottom[0].count // max(num * self.channels, 1)
        self.num = num
        if self._x_norm is None or self._x_norm.shape != shape:
            xp = self.xp
            self._x_norm = xp.empty(shape, dtype=self.dtype)
            self._mean = xp.empty(self.channels, dtype=self.dtype)
            self._inv_std = xp.empty(self.channels, dtype=self.dtype)

    def _view(self, a):
        """``a`` as (N, C, spatial)."""
        return a.reshape(self.num, self.channels, self.spatial)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data
        mean_sum, var_sum, factor = (b.data for b in self.blobs)
        m = x.size // self.channels
        correction = m / (m - 1) if m > 1 else 1.0
        if self.use_kernels:  # kernels/batch_norm.cu
            c = self.channels
            if self.use_global_stats:
                self.launch("batch_norm_global_stats", c, mean_sum, var_sum, factor,
                            self.eps, self._mean, self._inv_std, n=c)
            else:
                self.launch("batch_norm_batch_stats", self.num, c, self.spatial, x,
                            self.moving_average_fraction, correction, self.eps, self._mean,
                            self._inv_std, mean_sum, var_sum, factor,
                            grid=c, shared=8 * self.backend.block)
            self.launch("batch_norm_forward", x.size, c, self.spatial, x, self._mean,
                        self._inv_std, top[0].data, self._x_norm, n=x.size)
            return
        xp = self.xp
        x3 = self._view(x)
        if self.use_global_stats:
            safe = xp.where(factor == 0, 1, factor)
            scale = xp.where(factor == 0, 0, 1 / safe)
            mean = mean_sum * scale
            var = var_sum * scale
            centered = x3 - mean[None, :, None]
        else:
            mean = x3.mean(axis=(0, 2))
            centered = x3 - mean[None, :, None]
            var = (centered * centered).mean(axis=(0, 2))
            lam = self.moving_average_fraction
            factor *= lam
            factor += 1
            mean_sum *= lam
            mean_sum += mean
            var_sum *= lam
            var_sum += correction * var
        self._mean[...] = mean
        self._inv_std[...] = 1 / xp.sqrt(var + self.eps)
        y = self._view(self._x_norm)
        xp.multiply(centered, self._inv_std[None, :, None], out=y)
        top[0].data[...] = self._x_norm

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff  # the same array when in place
        if self.use_kernels:  # kernels/batch_norm.cu
            if self.use_global_stats:
                self.launch("batch_norm_backward_global", dx.size, self.channels,
                            self.spatial, dy, self._inv_std, dx, n=dx.size)
            else:
                self.launch("batch_norm_backward", self.num, self.channels, self.spatial,
                            self._x_norm, dy, self._inv_std, dx,
                            grid=self.channels, shared=8 * self.backend.block)
            return
        inv_std = self._inv_std[None, :, None]
        g = self._view(dy)
        if self.use_global_stats:
            self._view(dx)[...] = g * inv_std
            return
        y = self._view(self._x_norm)
        mean_g = g.mean(axis=(0, 2), keepdims=True)
        mean_gy = (g * y).mean(axis=(0, 2), keepdims=True)
        self._view(dx)[...] = (g - mean_g - y * mean_gy) * inv_std
