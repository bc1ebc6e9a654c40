"""What the commands share: the argument parser's manners, the database and
device options, and the one-line message for CuPy/CUDA failures."""
import argparse
import os
import sys

from ..errors import LayergraphError


def _phase(name):
    from ..proto import pb
    try:
        return pb.Phase.Value(name.upper())
    except ValueError:
        raise LayergraphError(f"unknown phase '{name}'; use TRAIN, TEST or RUN") from None


def _set_db(args):
    if getattr(args, "db", None):
        os.environ["LAYERGRAPH_DB"] = os.path.abspath(args.db)


def _backend(args, default="cpu"):
    """The backend named by --gpu / --backend (None: the caller's default)."""
    from ..backend import get_backend
    gpu = getattr(args, "gpu", None)
    name = getattr(args, "backend", None)
    if gpu is not None and name is not None:
        raise LayergraphError("give either --gpu or --backend, not both")
    if gpu is not None:
        if str(gpu).lower() == "all":
            raise LayergraphError("--gpu all (several GPUs) is not supported yet; give one id")
        return get_backend(f"gpu:{gpu}")
    if name is not None:
        return get_backend(name)
    return None if default is None else get_backend(default)


def add_device_arguments(p):
    """--gpu N and --backend, shared by the commands that run a net."""
    p.add_argument("--gpu", metavar="N",
                   help="run on CUDA device N (CuPy + kernels/); default: the CPU")
    p.add_argument("--backend", metavar="NAME",
                   help="cpu, gpu:N, or emu (the GPU kernels emulated on the CPU: "
                        "slow, for checking kernels)")


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with Caffe-tool manners: a usage mistake is one line on
    stderr and exit status 2 (argparse prints the whole usage otherwise)."""

    def error(self, message):
        command = self.prog[len("layergraph"):].strip()
        where = f"{command}: " if command else ""
        sys.stderr.write(f"layergraph: error: {where}{message} (see '{self.prog} --help')\n")
        sys.exit(2)


def _synchronizer(backend):
    """A function that waits for queued GPU work (timings on the GPU)."""
    if backend.is_gpu:
        return backend.xp.cuda.get_current_stream().synchronize
    return lambda: None


def _batch_size(net):
    for layer, top in zip(net.layers, net.top_vecs):
        if top and not layer.param.bottom and top[0].shape:
            return top[0].shape[0]
    return 0


def gpu_error_message(exc):
    """A one-line message for an exception raised by CuPy/CUDA, else None."""
    module = type(exc).__module__ or ""
    if not module.startswith(("cupy", "cupy_backends", "cuda")):
        return None
    text = " ".join(str(exc).split()) or type(exc).__name__
    name = type(exc).__name__
    if name == "OutOfMemoryError":
        return (f"out of GPU memory ({text}); reduce the batch size or free the GPU")
    if name == "CompileException":
        return f"a CUDA kernel failed to compile: {text[:300]}"
    return f"CUDA error ({name}): {text[:300]}"
