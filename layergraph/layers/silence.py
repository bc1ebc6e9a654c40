"""Silence: consume blobs that nothing else uses (so the net reports no
unused outputs).  Any number of bottoms, no tops, no computation; backward
writes zeros into the bottom diffs (their gradient from here is 0).
"""
from ..layer import Layer, register_layer


@register_layer("Silence")
class Silence(Layer):
    min_bottoms = 1
    exact_tops = 0

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        """No tops to shape."""

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        """Nothing to compute."""

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        for b, propagate in zip(bottom, propagate_down):
            if propagate:
                b.diff.fill(0)
