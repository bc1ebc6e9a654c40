"""layergraph: a Caffe-style deep-learning engine for metric learning."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithProto(build_py):
    """Regenerate layergraph_pb2.py from protos/ when grpcio-tools is present,
    so a build never ships a stale schema module."""

    def run(self):
        try:
            from layergraph.proto.generate import main as generate  # noqa: F401
            import grpc_tools  # noqa: F401
        except ImportError:
            pass
        else:
            generate([])
        super().run()


HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="layergraph",
    version="0.1.0",
    description="Caffe-style deep-learning engine for metric learning (siamese/triplet nets)",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["layergraph", "layergraph.*"])
    + ["layergraph.cuda_kernels", "layergraph.model_templates"],
    # kernels/ (the CUDA sources) installs as layergraph/cuda_kernels/ and
    # model_templates/ as layergraph/model_templates/ (found by
    # layergraph.kernels.kernel_dir and layergraph.tools.templates)
    package_dir={"layergraph.cuda_kernels": "kernels",
                 "layergraph.model_templates": "model_templates"},
    package_data={
        "layergraph.imagedb": ["mnist_sample/*"],
        "layergraph.cuda_kernels": ["*.cu", "*.cuh", "*.h", "README.md", "cpu/*.cpp", "cpu/*.h"],
        "layergraph.model_templates": ["*/*"],  # every file of each template
    },
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.22",
        "protobuf>=7.35.1,<8",
        "lmdb>=1.4",
        "pillow>=9.0",
        "matplotlib>=3.5",
        "scikit-learn>=1.1",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",
    ],
    extras_require={
        # CuPy runs the kernels of kernels/ on an NVIDIA GPU (CUDA 12)
        "gpu": ["cupy-cuda12x>=13"],
        # HDF5Data / HDF5Output layers (Caffe's HDF5 data files)
        "hdf5": ["h5py>=3"],
        # layergraph export: the RUN net as an ONNX model, run by onnxruntime
        "onnx": ["onnx>=1.12", "onnxruntime>=1.12"],
        # train --tensorboard / inspect --projector: event files (tensorboardX,
        # no TensorFlow) and the tensorboard viewer (whose reader the tests use)
        "tensorboard": ["tensorboardX>=2.5", "tensorboard>=2.10"],
        # data-parallel training on CPU workers: mpiexec -n N layergraph train
        # (the mpich wheel brings MPICH and its mpiexec; mpi4py also works
        # with Open MPI or a system MPI)
        "mpi": ["mpi4py>=4", "mpich"],
        # NVRTC compiles every kernel in the tests, with no GPU or driver;
        # mpi4py + mpich run the 2-worker tests (tests/test_distributed.py)
        "test": ["pytest>=7", "grpcio-tools==1.85.1", "nvidia-cuda-nvrtc-cu12", "h5py>=3",
                 "mpi4py>=4", "mpich"],
    },
    entry_points={"console_scripts": ["layergraph=layergraph.cli:main"]},
    cmdclass={"build_py": BuildPyWithProto},
)
