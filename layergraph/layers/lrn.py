"""LRN: local response normalization (Caffe's LRNLayer; Krizhevsky et al. 2012)."""
from ..layer import Layer, register_layer
from ..proto import pb

_P = pb.LRNParameter


@register_layer("LRN")
class LRNLayer(Layer):
    r"""Divide each value of a bottom x (N, C, H, W) by a power of the summed
    squares of its neighbours.  ``lrn_param``: ``local_size`` n (5, odd),
    ``alpha`` (1), ``beta`` (0.75), ``k`` (1), ``norm_region``:

    ACROSS_CHANNELS (default): the window is n channels centred on c
    (clipped at the ends), at the same pixel,

        s = k + \alpha/n \sum_{c' = c - (n-1)/2}^{c + (n-1)/2} x_{c'}^2

    WITHIN_CHANNEL: the window is n x n pixels centred on (h, w) (zero
    padded), in the same channel; Caffe builds this one from AVE pooling
    and a Power layer with shift 1, so ``k`` is not used:

        s = 1 + \alpha/n^2 \sum_{window} x^2

    In both cases y = x s^{-\beta} and, the windows being symmetric,

        dE/dx = dE/dy s^{-\beta} - (2 \alpha \beta / |W|) x \sum_{window} (dE/dy y / s)

    with |W| = n (across) or n^2 (within).  Not in place (backward reads x
    and y).

    Kernel path (kernels/lrn.cu): one thread per element sums its window;
    one launch forward (s and y), one backward.
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size <= 0 or self.size % 2 == 0:
            raise self.error(f"lrn_param.local_size must be odd and > 0, got {self.size}")
        self.pre_pad = (self.size - 1) // 2
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region
        if top[0] is bottom[0]:
            raise self.error("in-place computation is not supported (backward needs x and y)")
        if self.region == _P.WITHIN_CHANNEL:
            self.window = self.size * self.size
            self.shift = 1.0
        else:
            self.window = self.size
            self.shift = self.k
        self._scale = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if bottom[0].num_axes != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got shape "
                                   f"{bottom[0].shape}")
        top[0].reshape_like(bottom[0])
        if self._scale is None or self._scale.shape != bottom[0].shape:
            self._scale = self.xp.empty(bottom[0].shape, dtype=self.dtype)

    def _window_sum(self, a):
        """The sum of ``a`` over each element's window (zero outside)."""
        xp, p, n = self.xp, self.pre_pad, self.size
        if self.region == _P.WITHIN_CHANNEL:
            padded = xp.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
            h, w = a.shape[2:]
            rows = sum(padded[:, :, i:i + h] for i in range(n))
            return sum(rows[:, :, :, j:j + w] for j in range(n))
        padded = xp.pad(a, ((0, 0), (p, p), (0, 0), (0, 0)))
        c = a.shape[1]
        return sum(padded[:, i:i + c] for i in range(n))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x, y, s = bottom[0].data, top[0].data, self._scale
        if self.use_kernels:  # kernels/lrn.cu
            self._launch_forward(x, s, y)
            return
        s[...] = self._window_sum(x * x)
        s *= self.alpha / self.window
        s += self.shift
        y[...] = x * s ** -self.beta

    def _launch_forward(self, x, s, y):
        n, c, h, w = x.shape
        ratio = self.alpha / self.window
        if self.region == _P.WITHIN_CHANNEL:
            self.launch("lrn_within_forward", x.size, x, h, w, self.size, ratio, -self.beta,
                        s, y, n=x.size)
        else:
            self.launch("lrn_across_forward", x.size, x, c, h * w, self.size, ratio, self.k,
                        -self.beta, s, y, n=x.size)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y, s = bottom[0].data, top[0].data, self._scale
        dy, dx = top[0].diff, bottom[0].diff
        cache_ratio = 2 * self.alpha * self.beta / self.window
        if self.use_kernels:  # kernels/lrn.cu
            n, c, h, w = x.shape
            if self.region == _P.WITHIN_CHANNEL:
                self.launch("lrn_within_backward", x.size, x, y, s, dy, h, w, self.size,
                            -self.beta, cache_ratio, dx, n=x.size)
            else:
                self.launch("lrn_across_backward", x.size, x, y, s, dy, c, h * w, self.size,
                            -self.beta, cache_ratio, dx, n=x.size)
            return
        dx[...] = dy * s ** -self.beta - cache_ratio * x * self._window_sum(dy * y / s)
