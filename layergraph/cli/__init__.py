"""The ``layergraph`` command line (in the spirit of the ``caffe`` tool), one
module per command family -- a command's code is in the module named after it:

    train       layergraph train --solver S [--weights W | --snapshot S|latest] [--gpu N]
    test        layergraph test --model M --weights W --iterations N
    timing      layergraph time --model M [--iterations N]
    device      layergraph device [--check]
    draw        layergraph draw --model M --out net.png; layergraph plot --log L --out c.png
    data        layergraph data mnist|copy|images|list|show|delete ...
    new         layergraph new --template TripletNet_28x28 --dataset MNIST.30 --out DIR
    evaluate    layergraph test-many | inspect | evaluate --model M --weights W --dataset D
    embed       layergraph embed --model M --weights W --dataset D --out emb.npy|emb.npz
    export      layergraph export --model M --weights W --out net.onnx
    upgrade     layergraph upgrade IN OUT

``--gpu N`` (train, test, time, test-many, inspect, evaluate) runs the whole
net on CUDA device N through CuPy and the kernels of ``kernels/``;
``solver_mode: GPU`` in a solver file does the same for ``train``.  A user
mistake prints one line, ``layergraph: error: ...``, and exits with status 2;
Ctrl-C during training writes a snapshot first.
"""
import sys

from ..errors import LayergraphError
# re-exported: scripts and tests import these from layergraph.cli
from .common import (_Parser, _backend, _phase, _set_db, add_device_arguments,  # noqa: F401
                     gpu_error_message, positive_int)

#: the command modules, in the order `layergraph --help` lists them
COMMAND_MODULES = ("train", "test", "timing", "device", "draw", "data", "new", "evaluate",
                   "embed", "export", "upgrade")


def build_parser():
    import importlib
    parser = _Parser(
        prog="layergraph",
        description="Caffe-style deep-learning engine for metric learning.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_commands(sub)
    return parser


def _version():
    from .. import __version__
    return f"layergraph {__version__}"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LayergraphError as e:
        print(f"layergraph: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("layergraph: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError) as e:
        print(f"layergraph: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # CuPy/CUDA failures: one line, not a traceback
        message = gpu_error_message(e)
        if message is None:
            raise
        print(f"layergraph: error: {message}", file=sys.stderr)
        return 2
