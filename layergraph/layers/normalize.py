"""Normalize: L2 normalisation of every item (MyCaffe's Normalize layer)."""
from ..layer import Layer, register_layer


@register_layer("Normalize")
class NormalizeLayer(Layer):
    r"""Scale each item (all axes after the first) to unit L2 norm.

        r_n   = sqrt(\sum_i x_{n,i}^2 + \epsilon)      (\epsilon = normalize_param.eps)
        y_n   = x_n / r_n
        dE/dx_n = (dE/dy_n - y_n \sum_i dE/dy_{n,i} y_{n,i}) / r_n

    Shapes: bottom[0] (N, ...), top[0] the same.  Forward keeps r (N values);
    backward otherwise reads only the top data, so in-place use is correct.
    Kernel path (kernels/normalize.cu): one launch forward, one backward, a
    block per item.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Normalize"', [[[3.0, 4.0], [0.0, 2.0]]])[1][0]
    array([[0.6, 0.8],
           [0. , 1. ]])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.eps = float(self.param.normalize_param.eps)
        if self.eps < 0:
            raise self.error(f"normalize_param.eps must be >= 0, got {self.eps:g}")
        self._norm = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if bottom[0].num_axes < 1:
            raise self.shape_error(
                f"needs a bottom with a batch axis (N, ...), got shape {bottom[0].shape}")
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def _norm_shape(self, blob):
        return (blob.shape[0],) + (1,) * (blob.num_axes - 1)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data
        if self.use_kernels:  # kernels/normalize.cu
            n = x.shape[0]
            if self._norm is None or self._norm.shape != self._norm_shape(bottom[0]):
                self._norm = xp.empty(self._norm_shape(bottom[0]), dtype=xp.float32)
            self.launch("normalize_forward", n, x.size // max(n, 1), self.eps, x, self._norm,
                        top[0].data, grid=n, shared=4 * self.backend.block)
            return
        flat = x.reshape(x.shape[0], -1)
        norm = xp.sqrt((flat * flat).sum(axis=1) + self.eps)
        self._norm = norm.reshape(self._norm_shape(bottom[0]))
        top[0].data[...] = x / self._norm

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data
        dy = top[0].diff
        n = y.shape[0]
        if self.use_kernels:
            self.launch("normalize_backward", n, y.size // max(n, 1), y, dy, self._norm,
                        bottom[0].diff, grid=n, shared=4 * self.backend.block)
            return
        dot = (dy * y).reshape(n, -1).sum(axis=1).reshape(self._norm_shape(top[0]))
        bottom[0].diff[...] = (dy - y * dot) / self._norm
