"""DummyData: tops filled by weight fillers (synthetic data for tests and timing)."""
from ..fillers import fill
from ..errors import LayerError
from ..layer import Layer, register_layer
from ..proto import pb


@register_layer("DummyData")
class DummyDataLayer(Layer):
    r"""Tops of given shapes filled by FillerParameters (Caffe semantics).

    ``dummy_data_param``:

    * ``shape`` (BlobShape): once (every top) or once per top; or the legacy
      4-D form ``num`` / ``channels`` / ``height`` / ``width``, each given
      once or once per top (not both forms).
    * ``data_filler``: none (every top constant 0), one (every top), or one
      per top.

    A top whose filler is ``constant`` is filled once at set up and never
    again (Caffe's refill rule); the others are filled anew on every
    forward, from :meth:`Layer.rng` (reproducible; resumable through the
    counter in the layer state).  No bottoms, no backward.

    >>> from layergraph.testing import run_layer
    >>> spec = ('type: "DummyData" top: "a" dummy_data_param { shape { dim: 2 dim: 1 } '
    ...         'data_filler { type: "constant" value: 3 } }')
    >>> run_layer(spec, [])[1][0]
    array([[3.],
           [3.]])
    """

    exact_bottoms = 0
    min_tops = 1
    has_backward = False

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, n):
            raise self.error(f"give data_filler not at all, once or once per top ({n}); "
                             f"got {len(fillers)}")
        if not fillers:
            fillers = [pb.FillerParameter(type="constant", value=0)]
        self.fillers = [fillers[i] if len(fillers) > 1 else fillers[0] for i in range(n)]
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if any(legacy):
            if len(p.shape):
                raise self.error("give either shape or num/channels/height/width, not both")
            for name, values in zip(("num", "channels", "height", "width"), legacy):
                if len(values) not in (1, n):
                    raise self.error(f"{name} must be given once or once per top ({n}); "
                                     f"got {len(values)}")
            self.shapes = [tuple(int(v[i] if len(v) > 1 else v[0]) for v in legacy)
                           for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.error(f"shape must be given once or once per top ({n}); "
                                 f"got {len(p.shape)}")
            self.shapes = [tuple(int(d) for d in p.shape[i if len(p.shape) > 1 else 0].dim)
                           for i in range(n)]
        for shape in self.shapes:
            if any(d < 0 for d in shape):
                raise self.shape_error(f"shape {shape} has a negative dimension")
        self.refill = [f.type != "constant" for f in self.fillers]
        for i, t in enumerate(top):
            t.reshape(self.shapes[i])
            if not self.refill[i]:
                self._fill(i, t)

    def _fill(self, i, blob):
        try:
            values = fill(self.fillers[i], self.shapes[i], self.rng())
        except LayerError as e:
            raise self.error(str(e)) from None
        blob.data[...] = self.xp.asarray(values, dtype=self.dtype)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        """Nothing: the tops keep the shapes given at set up."""

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        for i, t in enumerate(top):
            if self.refill[i]:
                if t.shape != self.shapes[i]:
                    t.reshape(self.shapes[i])
                self._fill(i, t)
