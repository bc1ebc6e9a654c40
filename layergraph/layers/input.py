"""Input: tops whose data is set from outside the net (deploy nets, tests).

No bottoms.  ``input_param { shape { dim: ... } }`` gives the top shapes: not
at all, once (every top gets it) or once per top.  Like Caffe, the tops are
shaped once in setup and never reshaped by the layer afterwards, so a caller
may reshape them (e.g. to another batch size) and feed data.  Forward does
nothing; there is no backward.
"""
from ..layer import Layer, register_layer


@register_layer("Input")
class Input(Layer):
    exact_bottoms = 0
    min_tops = 1
    has_backward = False

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        if len(shapes) not in (0, 1, len(top)):
            raise self.error(
                f"input_param needs its shape once, once per top ({len(top)}) or not at all, "
                f"got {len(shapes)} shapes")
        for i, t in enumerate(top):
            if not shapes:
                break
            shape = shapes[i] if len(shapes) > 1 else shapes[0]
            if any(d < 0 for d in shape):
                raise self.shape_error(f"input_param shape {shape} has a negative dimension")
            t.reshape(shape)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        """Nothing: the tops keep the shape they were given."""

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        """Nothing: the data is written into the tops from outside."""
