"""layergraph: a Caffe-style deep-learning engine for metric learning.

Models and solvers are prototxt files; layers run on NumPy (CPU) and CuPy
(GPU).  The Python API follows pycaffe::

    import layergraph as lg
    net = lg.Net("deploy.prototxt", lg.TEST, weights="model.caffemodel")
    solver = lg.Solver("solver.prototxt"); solver.solve()

New layer types: subclass :class:`Layer` and decorate with
:func:`register_layer` (or use the ``Python`` layer type from a prototxt).
"""
import os as _os

# Thread pools on the CPU (set before NumPy loads OpenBLAS; a program that
# imported NumPy first keeps OpenBLAS's defaults).  After each matrix product
# OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) by default, holding
# the cores that the compiled loops (layergraph.cpu_kernels, OpenMP) and NumPy
# need between two products; 2^4 puts them to sleep at once.  Measured on the
# TripletNet_28x28 step, 2 cores: 65 -> 54 ms (benchmarks/bench_triplet.py).
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .backend import Backend, get_backend  # noqa: E402
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
