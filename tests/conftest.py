"""Shared fixtures.

``db`` is an image database with MNIST and TINY (12 images per label).

``kernel_backend`` runs a test on each backend that takes the layers'
kernel path: ``emu`` (kernels/*.cu compiled for the CPU under
kernels/cuda_emu.h; needs g++) always, ``gpu`` (CuPy) only where a CUDA
device is usable -- elsewhere that half is skipped, never failed.
"""
import os
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


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """An image database holding MNIST (the shipped sample) and TINY, 12
    images per label of it; LAYERGRAPH_DB points at it for the module."""
    from layergraph.imagedb.creators import copy_dataset, create_mnist
    root = tmp_path_factory.mktemp("imagedb")
    old = os.environ.get("LAYERGRAPH_DB")
    os.environ["LAYERGRAPH_DB"] = str(root)
    create_mnist(None, name="MNIST", download=False)
    copy_dataset("MNIST", "TINY", max_per_label=12, seed=0)
    yield root
    if old is None:
        os.environ.pop("LAYERGRAPH_DB", None)
    else:
        os.environ["LAYERGRAPH_DB"] = old


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
