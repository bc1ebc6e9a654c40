"""Clip: clamp to [min, max] (Caffe's ClipLayer)."""
from ..layer import Layer, register_layer


@register_layer("Clip")
class ClipLayer(Layer):
    r"""y = max(min, min(x, max)) with ``clip_param { min max }`` (both
    required, min <= max):

        dE/dx = dE/dy  if min <= x <= max  else 0

    (the closed interval, as Caffe).  Shapes: bottom[0] any, top[0] the
    same.  In place: forward keeps a copy of x for backward.

    >>> from layergraph.testing import run_layer
    >>> run_layer('type: "Clip" clip_param { min: -1 max: 2 }',
    ...           [[-3.0, 0.5, 5.0]])[1][0]
    array([-1. ,  0.5,  2. ])
    """

    exact_bottoms = 1
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.clip_param
        missing = [f for f in ("min", "max") if not p.HasField(f)]
        if missing:
            raise self.error(f"clip_param needs {' and '.join(missing)} "
                             f"(both bounds are required)")
        self.min, self.max = float(p.min), float(p.max)
        if self.min > self.max:
            raise self.error(f"clip_param.min ({self.min:g}) must be <= max ({self.max:g})")
        self._bottom_memory = None

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data
        self._bottom_memory = x.copy() if top[0] is bottom[0] else None
        self.xp.clip(x, self.min, self.max, out=top[0].data)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = self._bottom_memory if self._bottom_memory is not None else bottom[0].data
        inside = (x >= self.min) & (x <= self.max)
        self.xp.multiply(top[0].diff, inside, out=bottom[0].diff)
