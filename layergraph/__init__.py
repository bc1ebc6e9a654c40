"""layergraph: a Caffe-style deep-learning engine for metric learning.

Models and solvers are prototxt files; layers run on NumPy (CPU) and CuPy
(GPU).  The Python API follows pycaffe::

    import layergraph as lg
    net = lg.Net("deploy.prototxt", lg.TEST, weights="model.caffemodel")
    solver = lg.Solver("solver.prototxt"); solver.solve()

New layer types: subclass :class:`Layer` and decorate with
:func:`register_layer` (or use the ``Python`` layer type from a prototxt).
"""
from .backend import Backend, get_backend
from .blob import Blob
from .errors import (DataError, DatasetNotFoundError, DivergedError, GPUError, KernelCompileError, LayerError,
                     LayergraphError, NetError, PrototxtError, ShapeError, SnapshotError,
                     SolverError, UnknownLayerTypeError)
from .layer import Layer, known_layer_types, register_layer
from .net import Net
from .proto import pb
from .solver import Solver

TRAIN, TEST, RUN = pb.TRAIN, pb.TEST, pb.RUN

__version__ = "0.1.0"

__all__ = [
    "Backend", "get_backend", "GPUError", "DivergedError", "KernelCompileError",
    "Blob", "Layer", "Net", "Solver", "register_layer", "known_layer_types", "pb",
    "TRAIN", "TEST", "RUN", "LayergraphError", "PrototxtError", "UnknownLayerTypeError",
    "NetError", "LayerError", "ShapeError", "SolverError", "DataError",
    "DatasetNotFoundError", "SnapshotError",
]
