"""Tile: repeat the blob ``tiles`` times along one axis."""
from ..layer import Layer, register_layer
from ._shared import canonical_axis


@register_layer("Tile")
class TileLayer(Layer):
    r"""Copies of the bottom laid end to end along ``tile_param.axis``
    (default 1), ``tile_param.tiles`` times (required, > 0).

    With the bottom viewed as (O, I) (O = product of the axes before
    ``axis``, I = count from ``axis`` on), the top is (O, tiles, I):

        y_{o,t,i} = x_{o,i}          dE/dx_{o,i} = \sum_t dE/dy_{o,t,i}

    so shape[axis] grows to shape[axis] * tiles (as numpy.tile with reps
    1 everywhere but the axis).

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Tile" tile_param { tiles: 2 }', [[[1.0, 2.0]]])[1][0]
    array([[1., 2., 1., 2.]])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles (the number of copies) must be given")
        self.tiles = int(p.tiles)
        if self.tiles < 1:
            raise self.error(f"tile_param.tiles must be > 0, got {self.tiles}")
        self.axis_param = int(p.axis)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], self.axis_param, "tile_param.axis")
        self.outer = bottom[0].count_range(0, self.axis)
        self.inner = bottom[0].count_range(self.axis)
        shape = list(bottom[0].shape)
        shape[self.axis] *= self.tiles
        top[0].reshape(tuple(shape))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, 1, self.inner)
        tiled = self.xp.broadcast_to(x, (self.outer, self.tiles, self.inner))
        top[0].data[...] = tiled.reshape(top[0].shape)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(self.outer, self.tiles, self.inner)
        bottom[0].diff[...] = dy.sum(axis=1).reshape(bottom[0].shape)
