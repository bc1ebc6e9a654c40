"""Array backends: where a net's blobs live and how its layers compute.

The same layer code runs on NumPy and CuPy (Chainer's idiom: ``xp`` is the
array module, ``get_array_module(x)`` finds it from an array).  A layer that
needs a hand-written CUDA kernel (``kernels/<name>.cu``) asks its backend:
``backend.kernels`` is None on the CPU, so the layer takes its NumPy path.

Three backends:

``cpu``   NumPy.  The reference every other path is tested against.
``gpu``   CuPy on one CUDA device; kernels compiled by ``cupy.RawModule``.
``emu``   NumPy arrays, but the layers take their *kernel* path, with the same
          ``.cu`` sources compiled for the host under ``kernels/cuda_emu.h``.
          It exists to test the GPU code path (kernels and the Python that
          launches them) on machines with no GPU; it is slow.

>>> from layergraph.backend import get_backend
>>> get_backend("cpu").name
'cpu'
"""
import numpy as np

from .errors import GPUError

DEFAULT_DTYPE = np.float32

_cupy = None
_cupy_error = None


def _import_cupy():
    """The cupy module, or None (the reason is kept for error messages).
    Imported lazily: CPU users never pay for it."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy  # type: ignore
            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy_error = exc
    return _cupy


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            return _import_cupy()
    return np


def to_numpy(array):
    """A NumPy copy/view of a NumPy or CuPy array."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


class Backend:
    """Where arrays live (``xp``) and, for the kernel backends, the kernels.

    ``launch(name, args, n=..., grid=..., block=..., shared=...)`` runs the
    kernel ``name`` from ``kernels/*.cu`` (see :mod:`layergraph.kernels`):
    with ``n`` work items the grid is ceil(n / block), capped at
    ``max_grid`` (kernels are grid-stride loops, so any grid is correct).
    """

    def __init__(self, name, xp, kernels=None, device_id=None, block=256, max_grid=4096):
        self.name = name
        self.xp = xp
        self.kernels = kernels
        self.device_id = device_id
        self.block = block
        self.max_grid = max_grid
        self.launches = 0          # kernel launches so far (for benchmarks)

    @property
    def is_gpu(self):
        return self.name == "gpu"

    def launch(self, name, args, n=None, grid=None, block=None, shared=0):
        block = block or self.block
        if grid is None:
            grid = max(1, -(-int(n) // block))
        grid = max(1, min(int(grid), self.max_grid))
        self.launches += 1
        self.kernels.launch(name, grid, block, shared, args)

    def asarray(self, array, dtype=None):
        return self.xp.asarray(array, dtype=dtype)

    def __repr__(self):
        where = f":{self.device_id}" if self.device_id is not None else ""
        return f"<Backend {self.name}{where}>"


CPU = Backend("cpu", np)
_backends = {"cpu": CPU}


def gpu_status():
    """(ok, text): a description of the CUDA device(s), or why there is none."""
    cupy = _import_cupy()
    if cupy is None:
        return False, (f"CuPy is not installed ({type(_cupy_error).__name__}: "
                       f"{str(_cupy_error).splitlines()[0] if str(_cupy_error) else ''}); "
                       f"install the GPU extra (pip install 'layergraph[gpu]', or -e '.[gpu]' in a "
                       f"checkout)")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return False, f"no CUDA device is usable ({first})"
    if count == 0:
        return False, "no CUDA device found"
    return True, f"{count} CUDA device(s)"


def gpu_available():
    return gpu_status()[0]


def get_backend(spec="cpu"):
    """A Backend from a name: ``cpu``, ``gpu`` (device 0), ``gpu:N`` or
    ``emu``; a Backend is returned as it is.  Raises GPUError (one line)
    when the GPU cannot be used."""
    if isinstance(spec, Backend):
        return spec
    if spec is None:
        return CPU
    key = str(spec).strip().lower()
    if key in _backends:
        return _backends[key]
    if key == "emu":
        from .kernels import EmulatedKernels
        backend = Backend("emu", np, EmulatedKernels(), block=32, max_grid=4)
    elif key == "gpu" or key.startswith("gpu:"):
        device = 0 if key == "gpu" else key[4:]
        try:
            device = int(device)
        except ValueError:
            raise GPUError(f"bad GPU id '{device}': use a number, e.g. gpu:0") from None
        ok, why = gpu_status()
        if not ok:
            raise GPUError(f"cannot use GPU {device}: {why}")
        cupy = _import_cupy()
        count = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= device < count:
            raise GPUError(f"cannot use GPU {device}: there are {count} CUDA device(s) "
                           f"(ids 0..{count - 1})")
        cupy.cuda.Device(device).use()
        from .kernels import CupyKernels
        backend = Backend("gpu", cupy, CupyKernels(device), device_id=device)
        key = f"gpu:{device}"
    else:
        raise GPUError(f"unknown backend '{spec}': use cpu, gpu, gpu:N or emu")
    _backends[key] = backend
    if key == "gpu:0":
        _backends["gpu"] = backend
    return backend


def backend_of_solver(param, gpu=None, warn=None):
    """The backend a solver runs on: ``--gpu`` wins, then ``solver_mode``
    and ``device_id`` (Caffe's fields).

    An explicit ``gpu`` that cannot be used is an error.  ``solver_mode:
    GPU`` in the file is a preference: BVLC's and MyCaffe's own solver files
    say GPU, and they must keep training on machines without one, so there
    it falls back to the CPU with a one-line warning."""
    from .proto import pb
    if gpu is not None:
        return get_backend(gpu if str(gpu).startswith(("gpu", "cpu", "emu")) else f"gpu:{gpu}")
    # Caffe's default solver_mode is GPU; only a file that asks for it says so
    if param.HasField("solver_mode") and param.solver_mode == pb.SolverParameter.GPU:
        ok, why = gpu_status()
        if ok:
            return get_backend(f"gpu:{param.device_id}")
        message = f"the solver asks for solver_mode: GPU but {why}; training on the CPU"
        if warn is None:
            import sys
            print(f"layergraph: warning: {message}", file=sys.stderr)
        else:
            warn(message)
    return CPU


def describe_devices():
    """Lines for ``layergraph device`` (Caffe's device_query)."""
    ok, why = gpu_status()
    if not ok:
        return False, [f"no GPU: {why}"]
    cupy = _import_cupy()
    rt = cupy.cuda.runtime
    lines = [f"CuPy {cupy.__version__}, CUDA runtime {_version(rt.runtimeGetVersion())}, "
             f"driver {_version(rt.driverGetVersion())}"]
    for i in range(rt.getDeviceCount()):
        props = rt.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        with cupy.cuda.Device(i):
            free, total = rt.memGetInfo()
        lines.append(f"GPU {i}: {name}, compute capability {props['major']}.{props['minor']}, "
                     f"{props['multiProcessorCount']} SMs, memory {total / 2**30:.1f} GiB "
                     f"({free / 2**30:.1f} GiB free)")
    return True, lines


def _version(v):
    return f"{v // 1000}.{(v % 1000) // 10}"
