"""Array backend selection: the same layer code runs on NumPy and CuPy.

Layers call ``get_array_module(x)`` (Chainer's idiom) and write array
expressions once; a hand-written CUDA kernel in ``kernels/`` is used only where
the array form is slow or impossible.
"""
import numpy as np

try:  # the GPU extra
    import cupy  # type: ignore
except Exception:  # pragma: no cover - no cupy on CPU machines
    cupy = None

DEFAULT_DTYPE = np.float32


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return np


def gpu_available():
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover
        return False


def to_numpy(array):
    """A NumPy copy/view of a NumPy or CuPy array."""
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy.asnumpy(array)
    return np.asarray(array)
