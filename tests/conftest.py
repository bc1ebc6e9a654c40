"""Shared fixtures.

``kernel_backend`` runs a test on each backend that takes the layers'
kernel path: ``emu`` (kernels/*.cu compiled for the CPU under
kernels/cuda_emu.h; needs g++) always, ``gpu`` (CuPy) only where a CUDA
device is usable -- elsewhere that half is skipped, never failed.
"""
import shutil

import pytest

from layergraph.backend import gpu_status


def _gpu_param():
    ok, why = gpu_status()
    return pytest.param("gpu", marks=[pytest.mark.gpu] + (
        [] if ok else [pytest.mark.skip(reason=f"no GPU: {why}")]))


def _emu_param():
    marks = [] if shutil.which("g++") else [pytest.mark.skip(reason="no host C++ compiler")]
    return pytest.param("emu", marks=marks)


@pytest.fixture(params=[_emu_param(), _gpu_param()])
def kernel_backend(request):
    """'emu' or 'gpu': the backend name to hand to Net/compare_backends."""
    return request.param


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
