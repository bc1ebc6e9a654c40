"""The layer contract and the layer registry.

A layer implements, in this order (Caffe's contract):

``setup(bottom, top)``
    read parameters, check bottom/top counts, create parameter blobs in
    ``self.blobs`` (filled with ``self.fill``).  Called once.
``reshape(bottom, top)``
    size the tops from the bottoms.  Called before every forward.
``forward(bottom, top)``
    compute ``top[i].data`` from ``bottom[j].data``.
``backward(top, propagate_down, bottom)``
    compute ``bottom[j].diff`` (overwrite) where ``propagate_down[j]`` and
    *accumulate* (``+=``) parameter gradients into ``self.blobs[k].diff``.

``bottom`` and ``top`` are lists of :class:`~layergraph.blob.Blob`.  The Net
knows nothing about specific layers: it builds them through the registry,
keyed by the prototxt ``type`` string.  A new layer type is one module with a
class decorated by :func:`register_layer`; nothing in the engine changes.

Stochastic layers draw from :meth:`Layer.rng`, a generator derived from the
net's ``random_seed``, the layer name and a per-layer counter; the counter is
part of :meth:`state_dict`, so a run resumed from a snapshot continues with
exactly the same random draws.
"""
import difflib
import zlib

import numpy as np

from .backend import DEFAULT_DTYPE
from .blob import Blob
from .errors import LayerError, ShapeError, UnknownLayerTypeError

_REGISTRY = {}


def register_layer(type_name=None):
    """Class decorator: register a Layer subclass under its type string.

    >>> @register_layer("Scale2")
    ... class Scale2(Layer):
    ...     ...
    """
    def wrap(cls):
        name = type_name or cls.__name__
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(f"register_layer: {cls!r} is not a Layer subclass")
        cls.type = name
        _REGISTRY[name] = cls
        return cls
    if isinstance(type_name, type):  # used bare: @register_layer
        cls, type_name = type_name, None
        return wrap(cls)
    return wrap


def layer_class(type_name):
    _load_builtin_layers()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(type_name, known, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UnknownLayerTypeError(
            f"unknown layer type '{type_name}'{hint}; known types: {', '.join(known)}") from None


def known_layer_types():
    _load_builtin_layers()
    return sorted(_REGISTRY)


_LOADED = False


def _load_builtin_layers():
    """Import every module of layergraph.layers, and plugins registered under
    the ``layergraph.layers`` entry-point group."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib
    import pkgutil

    from . import layers
    for mod in pkgutil.iter_modules(layers.__path__):
        importlib.import_module(f"{layers.__name__}.{mod.name}")
    try:
        from importlib.metadata import entry_points
        for ep in entry_points(group="layergraph.layers"):
            ep.load()
    except Exception:  # pragma: no cover - broken third-party plugin
        pass


class Layer:
    """Base class of all layers.  See the module docstring for the contract."""

    type = None
    #: bottom/top counts accepted (None: no constraint)
    exact_bottoms = None
    min_bottoms = None
    max_bottoms = None
    exact_tops = None
    min_tops = None
    max_tops = None
    #: loss layers put weight 1 on their first top unless loss_weight says otherwise
    is_loss = False
    #: bottoms that never receive gradients (labels): Caffe's AllowForceBackward
    label_bottoms = ()
    #: bottoms a layer can run without in the RUN (deploy) phase (e.g. labels)
    optional_bottoms = ()
    #: True when the layer has a backward pass (False: never asked for one)
    has_backward = True
    #: True when backward sets ``bottom[i].active`` on every bottom it writes
    #: (the batch items whose gradient may be nonzero, None if not known);
    #: for the other layers the Net clears it.  A batch-independent layer
    #: whose bottom gradient is zero wherever its top gradient is can pass
    #: ``top[0].active`` through; Convolution and InnerProduct skip the
    #: inactive items' products (layergraph.cpu_kernels.skip_inactive).
    tracks_active_items = False

    def forget_untracked_hints(self, propagate_down, bottom):
        """After this layer's backward: clear ``active`` on the bottoms it
        wrote unless it tracks it (the Net and its batched chains call it)."""
        if not self.tracks_active_items:
            for need, blob in zip(propagate_down, bottom):
                if need:
                    blob.active = None

    def __init__(self, param, phase=0, seed=0, dtype=DEFAULT_DTYPE, xp=np, backend=None):
        from .backend import CPU, get_backend
        self.param = param
        self.name = param.name
        self.phase = phase
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        if backend is None:
            backend = CPU if xp is np else get_backend("gpu")
        #: where the layer's arrays live; ``backend.kernels`` is not None when
        #: the layer should take its kernel path (``kernels/<layer>.cu``)
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.blobs = []
        self._rng_step = 0
        self.net = None  # set by the Net (read-only use: e.g. iteration)
        #: indices of this layer's tops that only Silence layers read (and so
        #: no net output): a layer may leave them uncomputed (set by the Net)
        self.unread_tops = frozenset()

    # ------------------------------------------------------- the contract --
    def setup(self, bottom, top):
        """Read parameters and create parameter blobs."""

    def reshape(self, bottom, top):
        """Size the tops (every layer must define it)."""
        raise TypeError(f"layer class {type(self).__name__} must define reshape()")

    def forward(self, bottom, top):
        """Compute the tops (every layer must define it)."""
        raise TypeError(f"layer class {type(self).__name__} must define forward()")

    def backward(self, top, propagate_down, bottom):
        """Default: no gradient (layers with ``has_backward = False``)."""

    # ---------------------------------------------------------- helpers --
    @property
    def use_kernels(self):
        """True on the GPU (and its CPU emulation): take the kernel path."""
        return self.backend.kernels is not None

    def launch(self, kernel, *args, n=None, grid=None, block=None, shared=0):
        """Launch ``kernel`` (a name from kernels/*.cu) over ``n`` work items
        (grid-stride) or on an explicit ``grid`` of blocks."""
        self.backend.launch(kernel, args, n=n, grid=grid, block=block, shared=shared)

    def error(self, message, cls=LayerError):
        return cls(f"layer '{self.name}' ({self.type}): {message}")

    def shape_error(self, message):
        return self.error(message, ShapeError)

    def check_blob_counts(self, bottom, top):
        for what, blobs, exact, lo, hi in (
                ("bottom", bottom, self.exact_bottoms, self.min_bottoms, self.max_bottoms),
                ("top", top, self.exact_tops, self.min_tops, self.max_tops)):
            n = len(blobs)
            if exact is not None and n != exact:
                raise self.error(f"needs exactly {exact} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise self.error(f"needs at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise self.error(f"accepts at most {hi} {what} blob(s), got {n}")

    def make_blob(self, shape, filler=None, name=""):
        """A new parameter blob, filled by a FillerParameter (or zeros)."""
        from .fillers import fill
        blob = Blob(shape, dtype=self.dtype, xp=self.xp,
                    name=name or f"{self.name}[{len(self.blobs)}]")
        if filler is not None:
            try:
                values = fill(filler, blob.shape, self.rng())
            except LayerError as e:
                raise self.error(str(e)) from None
            blob.data[...] = self.xp.asarray(values)
        return blob

    def rng(self):
        """A fresh, reproducible generator: (seed, layer name, counter)."""
        self._rng_step += 1
        key = [self.seed & 0xFFFFFFFF, zlib.crc32(self.name.encode()), self._rng_step]
        return np.random.default_rng(np.random.SeedSequence(key))

    def state_dict(self):
        """JSON-able state beyond parameter blobs (counters, caches' cursors).
        Subclasses extend it; it travels in the .solverstate."""
        return {"rng_step": self._rng_step}

    def load_state_dict(self, state):
        self._rng_step = int(state.get("rng_step", 0))

    @property
    def phase_name(self):
        from .proto import pb
        return pb.Phase.Name(self.phase)

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"
