"""SPP: spatial pyramid pooling (Caffe's SPPLayer; He et al. 2014)."""
from ..blob import Blob
from ..errors import LayerError
from ..layer import Layer, layer_class, register_layer
from ..proto import pb
from ._shared import alias_data

_METHODS = {pb.SPPParameter.MAX: pb.PoolingParameter.MAX,
            pb.SPPParameter.AVE: pb.PoolingParameter.AVE,
            pb.SPPParameter.STOCHASTIC: pb.PoolingParameter.STOCHASTIC}


def pyramid_level(level, height, width):
    """Caffe's pooling window for pyramid level ``level`` (2^level bins per
    side) of an H x W input: kernel = stride = ceil(size / bins), pad =
    (kernel * bins - size + 1) // 2.  Returns ((kh, kw), (ph, pw))."""
    bins = 2 ** level
    kernel, pad = [], []
    for size in (height, width):
        k = -(-size // bins)
        kernel.append(k)
        pad.append((k * bins - size + 1) // 2)
    return tuple(kernel), tuple(pad)


@register_layer("SPP")
class SPPLayer(Layer):
    r"""Pool a bottom x (N, C, H, W) on ``spp_param.pyramid_height`` levels
    and concatenate the flattened results: level l pools into about
    2^l x 2^l bins with a Pooling layer (``pool``: MAX (default) or AVE) of

        kernel = stride = ceil(size / 2^l),   pad = (kernel 2^l - size + 1) / 2

    (per axis, integer division), so the top is (N, C \sum_l b_l) with b_l
    the bins of level l (4^l when the windows tile evenly).  With
    pyramid_height 1 the top is level 0's Pooling output itself,
    (N, C, 1, 1), as Caffe.  The Pooling layers are rebuilt when the
    bottom's size changes.  Backward sums the levels' gradients.  Like
    Caffe, a level whose pad reaches its kernel (a small input on a tall
    pyramid) is refused.
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise self.error(f"spp_param.pyramid_height must be >= 1, got {self.height}")
        if p.pool == pb.SPPParameter.STOCHASTIC:
            raise self.error("pool: STOCHASTIC is not implemented (use MAX or AVE)")
        if top[0] is bottom[0]:
            raise self.error("in-place computation is not supported")
        self.method = _METHODS[p.pool]
        self._input_shape = None
        self._proxy = Blob((), dtype=self.dtype, xp=self.xp, name=f"{self.name}.input")

    def _build(self, bottom):
        """One Pooling layer per level for this bottom size (Caffe's
        GetPoolingParam), with its own top blob."""
        h, w = bottom.shape[2:]
        self.pools, self.pool_tops = [], []
        for level in range(self.height):
            (kh, kw), (ph, pw) = pyramid_level(level, h, w)
            param = pb.LayerParameter(name=f"{self.name}/level{level}", type="Pooling")
            pp = param.pooling_param
            pp.pool = self.method
            pp.kernel_h, pp.kernel_w = kh, kw
            pp.stride_h, pp.stride_w = kh, kw
            pp.pad_h, pp.pad_w = ph, pw
            layer = layer_class("Pooling")(param, phase=self.phase, seed=self.seed,
                                           dtype=self.dtype, backend=self.backend)
            pool_top = Blob((), dtype=self.dtype, xp=self.xp, name=f"{param.name}.top")
            try:
                layer.setup([self._proxy], [pool_top])
            except LayerError as e:
                raise self.error(f"pyramid level {level} does not fit the {h}x{w} input "
                                 f"({e})") from None
            self.pools.append(layer)
            self.pool_tops.append(pool_top)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got shape {shape}")
        if min(shape[2:]) <= 0:
            raise self.shape_error(f"input dimensions cannot be zero (bottom shape {shape})")
        self._proxy.reshape(shape)
        alias_data(self._proxy, bottom[0].data)  # pooled in place of bottom, own diff
        if shape != self._input_shape:
            self._build(bottom[0])
            self._input_shape = shape
        for layer, pool_top in zip(self.pools, self.pool_tops):
            layer.reshape([self._proxy], [pool_top])
        if self.height == 1:
            top[0].reshape(self.pool_tops[0].shape)
        else:
            self.sizes = [t.count // shape[0] for t in self.pool_tops]
            top[0].reshape((shape[0], sum(self.sizes)))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        alias_data(self._proxy, bottom[0].data)
        if self.height == 1:
            self.pools[0].forward([self._proxy], top)
            return
        y = top[0].data
        start = 0
        for layer, pool_top, size in zip(self.pools, self.pool_tops, self.sizes):
            layer.forward([self._proxy], [pool_top])
            y[:, start:start + size] = pool_top.data.reshape(y.shape[0], size)
            start += size

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        alias_data(self._proxy, bottom[0].data)
        if self.height == 1:
            self.pools[0].backward(top, [True], [self._proxy])
            self.xp.copyto(bottom[0].diff, self._proxy.diff)
            return
        dy, dx = top[0].diff, bottom[0].diff
        start = 0
        for level, (layer, pool_top, size) in enumerate(
                zip(self.pools, self.pool_tops, self.sizes)):
            pool_top.diff[...] = dy[:, start:start + size].reshape(pool_top.shape)
            start += size
            layer.backward([pool_top], [True], [self._proxy])
            if level == 0:
                self.xp.copyto(dx, self._proxy.diff)
            else:
                dx += self._proxy.diff
