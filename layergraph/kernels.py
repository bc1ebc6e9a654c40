"""The one place that loads the CUDA kernels of ``kernels/*.cu``.

Every kernel is plain CUDA C, ``extern "C" __global__ void name(...)``, in
the file named after its layer.  This module indexes the kernels by name
(parsing their signatures), and launches them on one of two engines:

- :class:`CupyKernels` -- on the GPU.  Each ``.cu`` file is compiled once per
  process with ``cupy.RawModule`` (CuPy caches the binary on disk).
- :class:`EmulatedKernels` -- on the CPU, for tests.  Each ``.cu`` file is
  compiled by the host C++ compiler under ``kernels/cuda_emu.h`` into a
  shared library (cached under ``~/.cache/layergraph/emu``) and called
  through ctypes.

Both check the arguments against the kernel's signature before launching:
an array must be C-contiguous with the pointer's element type, a scalar is
converted to the parameter's C type.  :func:`nvrtc_compile` compiles a
source to PTX with NVRTC and no driver (the CI check that every kernel
compiles for the GPU).
"""
import ctypes
import ctypes.util
import glob
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import threading

import numpy as np

from .errors import GPUError, KernelCompileError

#: C parameter types -> NumPy dtypes (pointers: element types)
C_TYPES = {
    "float": np.float32, "double": np.float64,
    "int": np.int32, "unsigned int": np.uint32, "uint32_t": np.uint32,
    "long long": np.int64, "long long int": np.int64, "int64_t": np.int64,
    "unsigned long long": np.uint64, "uint64_t": np.uint64,
    "signed char": np.int8, "int8_t": np.int8, "char": np.int8,
    "unsigned char": np.uint8, "uint8_t": np.uint8, "bool": np.bool_,
}
_CTYPES = {np.float32: ctypes.c_float, np.float64: ctypes.c_double,
           np.int32: ctypes.c_int32, np.uint32: ctypes.c_uint32,
           np.int64: ctypes.c_int64, np.uint64: ctypes.c_uint64,
           np.int8: ctypes.c_int8, np.uint8: ctypes.c_uint8, np.bool_: ctypes.c_bool}

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?'
                        r'void\s+(\w+)\s*\(([^)]*)\)\s*\{', re.S)


def kernel_dir():
    """The folder holding the .cu sources: the repository's ``kernels/`` in
    a source checkout, else the copy installed as package data
    (``layergraph/cuda_kernels/``, setup.py's package_dir mapping)."""
    from importlib import resources
    package = resources.files("layergraph")
    for candidate in (os.path.join(os.path.dirname(str(package)), "kernels"),
                      package / "cuda_kernels"):
        # a wheel installs into a directory, so the Traversable is a real path
        if isinstance(candidate, (str, os.PathLike)) and \
                os.path.isfile(os.path.join(candidate, "common.cuh")):
            return os.fspath(candidate)
    raise GPUError("the CUDA kernel sources (kernels/*.cu) are not installed with layergraph")


class Param:
    """One kernel parameter: ``const float* __restrict__ x`` -> (float, ptr)."""

    def __init__(self, text):
        self.text = " ".join(text.split())
        words = self.text.replace("*", " * ").split()
        self.name = words[-1]
        self.pointer = "*" in words
        base = [w for w in words[:-1] if w not in ("const", "*", "__restrict__", "volatile")]
        ctype = " ".join(base)
        if ctype not in C_TYPES:
            raise GPUError(f"kernel parameter '{self.text}': type '{ctype}' is not supported "
                           f"(use one of {', '.join(sorted(C_TYPES))})")
        self.dtype = np.dtype(C_TYPES[ctype])
        self.const = "const" in words


class Signature:
    def __init__(self, name, params, source_file, body_start, source, barrier_functions=()):
        self.name = name
        self.params = [Param(p) for p in params.split(",") if p.strip()]
        self.file = source_file
        body = _function_body(source, body_start)
        #: the kernel synchronises its block (directly or through a helper):
        #: the emulation must then run the block's threads concurrently
        self.uses_barrier = any(re.search(rf"\b{re.escape(f)}\b", body)
                                for f in ("__syncthreads",) + tuple(barrier_functions))

    def check(self, args, is_array):
        """Validate and convert ``args``; returns the converted list."""
        if len(args) != len(self.params):
            raise GPUError(f"kernel {self.name}: {len(args)} arguments given, "
                           f"its signature has {len(self.params)}")
        out = []
        for p, a in zip(self.params, args):
            if p.pointer:
                if not is_array(a):
                    raise GPUError(f"kernel {self.name}: argument '{p.name}' must be an array, "
                                   f"got {type(a).__name__}")
                if a.dtype != p.dtype:
                    raise GPUError(f"kernel {self.name}: argument '{p.name}' must be "
                                   f"{p.dtype}, got {a.dtype}")
                if not a.flags.c_contiguous:
                    raise GPUError(f"kernel {self.name}: argument '{p.name}' must be "
                                   f"C-contiguous")
                out.append(a)
            else:
                out.append(p.dtype.type(a))
        return out


def _function_body(source, start):
    depth, i = 1, start
    while depth and i < len(source):
        c = source[i]
        depth += (c == "{") - (c == "}")
        i += 1
    return source[start:i]


def _strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: " " * len(m.group()), text, flags=re.S)
    return re.sub(r"//[^\n]*", lambda m: " " * len(m.group()), text)


_index_lock = threading.Lock()
_index = None


_FUNCTION_RE = re.compile(r"__device__[^;{()]*?\b(\w+)\s*\([^)]*\)\s*\{", re.S)


def _barrier_functions(sources):
    """Names of the __device__ functions that call __syncthreads, directly
    or through one another (to a fixed point)."""
    bodies = {}
    for source in sources:
        for m in _FUNCTION_RE.finditer(source):
            bodies[m.group(1)] = _function_body(source, m.end())
    found = {"__syncthreads"}
    changed = True
    while changed:
        changed = False
        for name, body in bodies.items():
            if name not in found and any(re.search(rf"\b{re.escape(f)}\b", body)
                                         for f in found):
                found.add(name)
                changed = True
    return found - {"__syncthreads"}


def kernel_index():
    """{kernel name: Signature} over every ``kernels/*.cu`` file."""
    global _index
    with _index_lock:
        if _index is None:
            index = {}
            with open(os.path.join(kernel_dir(), "common.cuh"), encoding="utf-8") as f:
                common = _strip_comments(f.read())
            for path in sorted(glob.glob(os.path.join(kernel_dir(), "*.cu"))):
                with open(path, encoding="utf-8") as f:
                    source = _strip_comments(f.read())
                barriers = _barrier_functions([common, source])
                for m in _KERNEL_RE.finditer(source):
                    name = m.group(1)
                    if name in index:
                        raise GPUError(f"kernel {name} is defined in both "
                                       f"{os.path.basename(index[name].file)} and "
                                       f"{os.path.basename(path)}")
                    index[name] = Signature(name, m.group(2), path, m.end(), source, barriers)
            _index = index
        return _index


def signature(name):
    index = kernel_index()
    if name not in index:
        raise GPUError(f"no kernel named '{name}' in {kernel_dir()}/*.cu")
    return index[name]


# ------------------------------------------------------------------ GPU ----

class CupyKernels:
    """Kernels compiled by cupy.RawModule, one module per .cu file, memoized
    for the process."""

    _modules = {}
    _lock = threading.Lock()

    def __init__(self, device_id=0):
        import cupy
        self.cupy = cupy
        self.device_id = device_id
        self._functions = {}

    def function(self, name):
        fn = self._functions.get(name)
        if fn is None:
            sig = signature(name)
            key = (sig.file, self.device_id)
            with self._lock:
                module = self._modules.get(key)
                if module is None:
                    with open(sig.file, encoding="utf-8") as f:
                        source = f.read()
                    module = self.cupy.RawModule(
                        code=source, options=("--std=c++14", f"-I{kernel_dir()}"))
                    self._modules[key] = module
            try:
                fn = module.get_function(name)
            except Exception as exc:  # CompileException carries NVRTC's log
                raise KernelCompileError(
                    f"kernel {os.path.basename(sig.file)} failed to compile: "
                    f"{_first_error(str(exc))}") from None
            self._functions[name] = (fn, sig)
            fn = self._functions[name]
        return fn

    def launch(self, name, grid, block, shared, args):
        fn, sig = self.function(name)
        args = sig.check(args, lambda a: isinstance(a, self.cupy.ndarray))
        fn((grid,), (block,), tuple(args), shared_mem=shared)


def _first_error(log):
    for line in log.splitlines():
        if "error" in line:
            return line.strip()
    return " ".join(log.split())[:300]


# -------------------------------------------------------- CPU emulation ----

def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "layergraph", "emu")


class EmulatedKernels:
    """The .cu files compiled for the host under ``cuda_emu.h``; arrays are
    NumPy arrays, passed by pointer."""

    _libraries = {}
    _lock = threading.Lock()
    compiler = os.environ.get("CXX", "g++")

    def __init__(self):
        self._functions = {}

    def _library(self, path):
        with self._lock:
            lib = self._libraries.get(path)
            if lib is None:
                lib = self._build(path)
                self._libraries[path] = lib
            return lib

    def _build(self, path):
        kdir = kernel_dir()
        with open(path, encoding="utf-8") as f:
            source = f.read()
        with open(os.path.join(kdir, "cuda_emu.h"), encoding="utf-8") as f:
            header = f.read()
        with open(os.path.join(kdir, "common.cuh"), encoding="utf-8") as f:
            common = f.read()
        wrappers = ['#include "cuda_emu.h"', f'#include "{path}"']
        for sig in kernel_index().values():
            if sig.file != path:
                continue
            params = ", ".join(p.text for p in sig.params)
            names = ", ".join(p.name for p in sig.params)
            wrappers.append(
                f'extern "C" void lg_launch_{sig.name}(unsigned grid, unsigned block, '
                f'unsigned long shared{", " if params else ""}{params}) {{\n'
                f'  lg_emu::launch(grid, block, shared, {str(sig.uses_barrier).lower()}, '
                f'[&] {{ {sig.name}({names}); }});\n}}')
        unit = "\n".join(wrappers) + "\n"
        flags = ["-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-w", f"-I{kdir}"]
        key = hashlib.sha256("\0".join([unit, source, header, common, self.compiler]
                                       + flags).encode()).hexdigest()[:20]
        out_dir = _cache_dir()
        os.makedirs(out_dir, exist_ok=True)
        lib_path = os.path.join(out_dir, f"{os.path.basename(path)[:-3]}-{key}.so")
        if not os.path.exists(lib_path):
            with tempfile.TemporaryDirectory() as tmp:
                cpp = os.path.join(tmp, "unit.cpp")
                with open(cpp, "w", encoding="utf-8") as f:
                    f.write(unit)
                tmp_lib = os.path.join(tmp, "k.so")
                try:
                    proc = subprocess.run([self.compiler, *flags, cpp, "-o", tmp_lib],
                                          capture_output=True, text=True)
                except FileNotFoundError:
                    raise KernelCompileError(f"the host C++ compiler '{self.compiler}' is "
                                             f"not installed (needed to emulate kernels)")
                if proc.returncode != 0:
                    raise KernelCompileError(
                        f"{os.path.basename(path)} failed to compile for the CPU emulation: "
                        f"{_first_error(proc.stderr)}")
                os.replace(tmp_lib, lib_path + f".{os.getpid()}")
                os.replace(lib_path + f".{os.getpid()}", lib_path)
        return ctypes.CDLL(lib_path)

    def function(self, name):
        entry = self._functions.get(name)
        if entry is None:
            sig = signature(name)
            fn = getattr(self._library(sig.file), f"lg_launch_{name}")
            fn.restype = None
            fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong] + [
                ctypes.c_void_p if p.pointer else _CTYPES[p.dtype.type] for p in sig.params]
            entry = self._functions[name] = (fn, sig)
        return entry

    def launch(self, name, grid, block, shared, args):
        fn, sig = self.function(name)
        args = sig.check(args, lambda a: isinstance(a, np.ndarray))
        c_args = [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]
        fn(grid, block, shared, *c_args)


# ----------------------------------------------------------------- NVRTC ----

_nvrtc = None


def _load_nvrtc():
    """libnvrtc from the nvidia-cuda-nvrtc-cu12 wheel or the system."""
    global _nvrtc
    if _nvrtc is not None:
        return _nvrtc
    candidates = []
    try:
        import nvidia.cuda_nvrtc as pkg
        for d in pkg.__path__:
            candidates += sorted(glob.glob(os.path.join(d, "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(found)
    for path in candidates:
        if "builtins" in path or ".alt." in path:
            continue
        try:
            _nvrtc = ctypes.CDLL(path)
            return _nvrtc
        except OSError:
            continue
    raise GPUError("NVRTC is not installed (pip install nvidia-cuda-nvrtc-cu12)")


def nvrtc_compile(source, name="kernel.cu", arch="compute_80", include_dirs=()):
    """Compile CUDA C ``source`` to PTX with NVRTC (no GPU or driver needed).
    Returns the PTX text; raises KernelCompileError with NVRTC's
    line-numbered log."""
    lib = _load_nvrtc()
    prog = ctypes.c_void_p()
    check = _nvrtc_check(lib)
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(),
                                 0, None, None), "nvrtcCreateProgram")
    opts = [f"--gpu-architecture={arch}", "--std=c++14"] + [f"-I{d}" for d in include_dirs]
    c_opts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    try:
        status = lib.nvrtcCompileProgram(prog, len(opts), c_opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        if status != 0:
            raise KernelCompileError(f"{name} failed to compile with NVRTC:\n"
                                     f"{log.value.decode(errors='replace')}")
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        return ptx.value.decode()
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _nvrtc_check(lib):
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(status, what):
        if status != 0:
            raise KernelCompileError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")
    return check


def uniform_hash(seed, index):
    """NumPy twin of ``lg_uniform`` in common.cuh: a counter-based uniform in
    [0, 1) for each ``index`` (uint64 array) -- the same numbers the kernels
    draw, so the CPU path can reproduce a GPU dropout mask exactly."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.asarray(index, dtype=np.uint64) + np.uint64(1)) \
            * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


if __name__ == "__main__":  # pragma: no cover - `python -m layergraph.kernels`
    for sig in kernel_index().values():
        print(f"{os.path.basename(sig.file)}: {sig.name}({', '.join(p.text for p in sig.params)})",
              file=sys.stdout)
