"""The CUDA sources themselves: every kernels/*.cu compiles with NVRTC (no GPU
needed), the loader indexes and checks kernel signatures, and the CPU
emulation runs a kernel that synchronises a block."""
import glob
import os

import numpy as np
import pytest

from layergraph import kernels
from layergraph.backend import get_backend
from layergraph.errors import GPUError, KernelCompileError

CU_FILES = sorted(glob.glob(os.path.join(kernels.kernel_dir(), "*.cu")))


def _nvrtc_or_skip():
    try:
        kernels._load_nvrtc()
    except GPUError as exc:
        if os.environ.get("CI"):
            raise  # CI installs it: a missing NVRTC there is a failure
        pytest.skip(str(exc))


def test_there_are_kernels():
    assert len(CU_FILES) >= 5
    assert "relu_forward" in kernels.kernel_index()


@pytest.mark.parametrize("arch", ["compute_70", "compute_90"])
@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_kernel_compiles_with_nvrtc(path, arch):
    _nvrtc_or_skip()
    with open(path, encoding="utf-8") as f:
        ptx = kernels.nvrtc_compile(f.read(), os.path.basename(path), arch=arch,
                                    include_dirs=[kernels.kernel_dir()])
    names = [s.name for s in kernels.kernel_index().values() if s.file == path]
    assert names, f"{path} defines no extern \"C\" __global__ kernel"
    for name in names:
        assert f".entry {name}(" in ptx


def test_nvrtc_error_names_the_line():
    _nvrtc_or_skip()
    source = '#include "common.cuh"\nextern "C" __global__ void k(float* x) {\n  x[0] = oops;\n}\n'
    with pytest.raises(KernelCompileError) as info:
        kernels.nvrtc_compile(source, "broken.cu", include_dirs=[kernels.kernel_dir()])
    assert "broken.cu(3)" in str(info.value) and "oops" in str(info.value)


def test_signature_checks_arguments():
    emu = get_backend("emu")
    x = np.zeros(10, np.float32)
    with pytest.raises(GPUError, match="must be float32"):
        emu.launch("relu_forward", (10, x.astype(np.float64), x, 0.0), n=10)
    with pytest.raises(GPUError, match="C-contiguous"):
        emu.launch("relu_forward", (5, x[::2], x[:5], 0.0), n=5)
    with pytest.raises(GPUError, match="3 arguments given"):
        emu.launch("relu_forward", (10, x, x), n=10)
    with pytest.raises(GPUError, match="no kernel named"):
        emu.launch("no_such_kernel", (), n=1)


def test_emulation_runs_block_reductions():
    """prelu_backward_slope reduces in shared memory with __syncthreads:
    the emulation runs its threads concurrently at a barrier."""
    emu = get_backend("emu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 7)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dslope = np.ones(3, np.float32)
    emu.launch("prelu_backward_slope", (5, 3, 7, x, dy, dslope), grid=3, shared=4 * emu.block)
    expected = 1 + (dy * x * (x <= 0)).sum(axis=(0, 2))
    np.testing.assert_allclose(dslope, expected, rtol=1e-5)


def test_grid_stride_covers_any_grid():
    emu = get_backend("emu")
    x = np.arange(-500, 501, dtype=np.float32)
    y = np.empty_like(x)
    emu.launch("relu_forward", (x.size, x, y, 0.0), grid=1, block=3)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_uniform_hash_matches_kernel_formula():
    u = kernels.uniform_hash(12345, np.arange(100000))
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01
    assert np.array_equal(u, kernels.uniform_hash(12345, np.arange(100000)))


def test_barriers_inside_helper_functions_are_detected():
    source = '''
static __device__ __forceinline__ float inner(float* buf) { __syncthreads(); return buf[0]; }
static __device__ float outer(float* buf) { return inner(buf) + 1.f; }
extern "C" __global__ void uses_helper(float* x) { x[0] = outer(x); }
extern "C" __global__ void plain(float* x) { x[0] = 1.f; }
'''
    barriers = kernels._barrier_functions([source])
    assert {"inner", "outer"} <= barriers
    found = {m.group(1): kernels.Signature(m.group(1), m.group(2), "t.cu", m.end(), source,
                                           barriers)
             for m in kernels._KERNEL_RE.finditer(source)}
    assert found["uses_helper"].uses_barrier and not found["plain"].uses_barrier
    assert kernels.signature("softmax_forward").uses_barrier  # block_sum from common.cuh
