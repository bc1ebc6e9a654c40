"""The ``layergraph`` command line (in the spirit of the ``caffe`` tool).

    layergraph train --solver S [--weights W | --snapshot S]
    layergraph test --model M --weights W --iterations N
    layergraph time --model M [--iterations N]
    layergraph draw --model M --out net.png
    layergraph plot --log PREFIX_log.jsonl --out curves.png
    layergraph data mnist|copy|images|list|show|delete ...
    layergraph new --template TripletNet_28x28 --dataset MNIST.30 --out DIR
    layergraph test-many --model M --weights W --dataset D
    layergraph inspect --model M --weights W --layer L --dataset D --out tsne.png
    layergraph device

``--gpu N`` (train, test, time, test-many, inspect) runs the whole net on CUDA
device N through CuPy and the kernels of ``kernels/``; ``solver_mode: GPU``
in a solver file does the same for ``train``.

A user mistake prints one line, ``layergraph: error: ...``, and exits with
status 2; Ctrl-C during training writes a snapshot first.
"""
import argparse
import os
import sys
import time

import numpy as np

from .errors import LayergraphError


def _phase(name):
    from .proto import pb
    try:
        return pb.Phase.Value(name.upper())
    except ValueError:
        raise LayergraphError(f"unknown phase '{name}'; use TRAIN, TEST or RUN") from None


def _set_db(args):
    if getattr(args, "db", None):
        os.environ["LAYERGRAPH_DB"] = os.path.abspath(args.db)


def _backend(args, default="cpu"):
    """The backend named by --gpu / --backend (None: the caller's default)."""
    from .backend import get_backend
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


# ---------------------------------------------------------------- train ----

class _Progress:
    """tqdm progress bar: iteration, loss, lr and images/s."""

    def __init__(self, total, initial, quiet):
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True,
                                file=sys.stderr, disable=None)
            except ImportError:  # pragma: no cover
                self.bar = None

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_iteration(self, solver, record):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{solver.smoothed_loss:.4g}", lr=f"{record['lr']:.3g}",
                                 img_s=f"{record['images_per_s']:.0f}", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def cmd_train(args):
    from .solver import Solver
    _set_db(args)
    if args.weights and args.snapshot:
        raise LayergraphError("give either --weights or --snapshot, not both")
    overrides = {}
    if args.iterations is not None:
        overrides["max_iter"] = args.iterations
    if args.seed is not None:
        overrides["random_seed"] = args.seed
    if args.snapshot_prefix:
        overrides["snapshot_prefix"] = os.path.abspath(args.snapshot_prefix)
    if args.model:
        if not os.path.exists(args.model):
            raise LayergraphError(f"{args.model}: no such file")
        overrides["net"] = os.path.abspath(args.model)
    progress = _Progress(0, 0, args.quiet)
    solver = Solver(args.solver, log=progress.write, overrides=overrides,
                    backend=_backend(args, default=None))
    try:
        weights = (args.weights.split(",") if args.weights else []) + [
            solver.resolve(path) for path in solver.param.weights]
        for path in weights:
            copied = solver.net.copy_from(path, allow_missing=args.allow_missing)
            missing = solver.net.last_missing
            progress.write(f"copied weights of {len(copied)} layer(s) from {path}"
                           + (f"; kept initial values for {', '.join(missing)}"
                              if missing else ""))
        solver.check_snapshot_dir()
        if args.snapshot == "latest":
            from .solver import latest_snapshot
            found = latest_snapshot(solver.snapshot_prefix())
            if found is None:
                raise LayergraphError(f"--snapshot latest: no complete snapshot under "
                                      f"{solver.snapshot_prefix()}_iter_*")
            args.snapshot = found
        if args.snapshot:
            solver.restore(args.snapshot)
        if progress.bar is not None:
            progress.bar.reset(total=solver.param.max_iter)
            progress.bar.update(solver.iter)
        solver.add_callback(progress)
        from .guards import CollapseGuard
        solver.add_callback(CollapseGuard())  # one warning if the embedding collapses
        solver.install_sigint_handler()
        solver.solve()
    finally:
        progress.close()
        solver.close()
    if solver.log_path:
        print(f"training log: {solver.log_path}")
    return 130 if solver.requested_stop else 0


# ----------------------------------------------------------------- test ----

def cmd_test(args):
    from .backend import to_numpy
    from .net import Net
    _set_db(args)
    net = Net(args.model, phase=_phase(args.phase), weights=args.weights,
              backend=_backend(args))
    sums = {}
    try:
        for i in range(args.iterations):
            net.forward()
            for name in net.outputs:
                value = to_numpy(net.blobs[name].data).astype(np.float64)
                if args.verbose:
                    print(f"Batch {i}, {name} = {np.array2string(value, precision=4)}")
                sums[name] = sums.get(name, 0.0) + value
    finally:
        net.close()
    for name, total in sums.items():
        mean = total / args.iterations
        shown = f"{float(mean):.6g}" if np.ndim(mean) == 0 else np.array2string(mean, precision=4)
        print(f"{name} = {shown}")
    return 0


# ----------------------------------------------------------------- time ----

def cmd_time(args):
    """Caffe's `caffe time`: per-layer forward and backward time, each layer's
    share, images/s of the whole step, and the execution plan."""
    import contextlib
    from .net import Net
    _set_db(args)
    net = Net(args.model, phase=_phase(args.phase), backend=_backend(args))
    rng = np.random.default_rng(0)
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data[...] = net.xp.asarray(rng.standard_normal(blob.shape), dtype=blob.dtype)
    sync = _synchronizer(net.backend)
    n = len(net.layers)
    fwd, bwd = np.zeros(n), np.zeros(n)
    current = fwd

    @contextlib.contextmanager
    def clock(i):
        sync()
        t = time.perf_counter()
        yield
        sync()
        current[i] += time.perf_counter() - t
    try:
        net.forward_backward()  # warm-up
        sync()
        t_all = time.perf_counter()
        for _ in range(args.iterations):
            current = fwd
            net.forward_prefilled(clock=clock)
            current = bwd
            net.backward(clock=clock)
        sync()
        wall = (time.perf_counter() - t_all) / args.iterations
    finally:
        net.close()
    fwd, bwd = fwd / args.iterations * 1e3, bwd / args.iterations * 1e3
    total = max(fwd.sum() + bwd.sum(), 1e-12)
    in_chain = {j: chain for chain in net.chains for j in chain.layer_indices}
    width = max(len(x) for x in net.layer_names)
    print(f"{'layer':<{width}}  {'type':<16} {'forward ms':>11} {'backward ms':>12} {'share':>6}")
    for i, layer in enumerate(net.layers):
        chain = in_chain.get(i)
        if chain is not None and i not in [stage[0] for stage in chain.stages]:
            lead = next(stage[0] for stage in chain.stages if i in stage)
            print(f"{layer.name:<{width}}  {layer.type:<16} (batched into "
                  f"{net.layer_names[lead]})")
            continue
        share = (fwd[i] + bwd[i]) / total
        print(f"{layer.name:<{width}}  {layer.type:<16} {fwd[i]:>11.3f} {bwd[i]:>12.3f} "
              f"{share:>6.1%}")
    batch = _batch_size(net)
    print(f"Average forward pass: {fwd.sum():.3f} ms")
    print(f"Average backward pass: {bwd.sum():.3f} ms")
    print(f"Average forward-backward: {fwd.sum() + bwd.sum():.3f} ms "
          f"(wall clock {wall * 1e3:.3f} ms)")
    if batch:
        line = f"Images/s: {batch / wall:,.0f} (batch {batch})"
        for chain in net.chains:
            line += (f"; {chain.k * batch / wall:,.0f} through the {chain.k} weight-shared "
                     f"branches")
        print(line)
    for line in net.describe_plan():
        print(line)
    if net.backend.kernels is not None:
        print(f"backend {net.backend.name}: {net.backend.launches} kernel launches so far")
    return 0


def _batch_size(net):
    for layer, top in zip(net.layers, net.top_vecs):
        if top and not layer.param.bottom and top[0].shape:
            return top[0].shape[0]
    return 0


def _synchronizer(backend):
    """A function that waits for queued GPU work (timings on the GPU)."""
    if backend.is_gpu:
        return backend.xp.cuda.get_current_stream().synchronize
    return lambda: None


# --------------------------------------------------------------- device ----

def cmd_device(args):
    """Caffe's device_query: the GPU(s), memory, CuPy and CUDA versions."""
    from .backend import describe_devices
    ok, lines = describe_devices()
    if not ok:
        raise LayergraphError(lines[0])
    for line in lines:
        print(line)
    if args.check:
        from .backend import get_backend
        from .kernels import kernel_index
        backend = get_backend(f"gpu:{args.check_id}")
        names = sorted(kernel_index())
        for name in names:
            backend.kernels.function(name)
        print(f"compiled {len(names)} kernels from kernels/*.cu on GPU {args.check_id}")
    return 0


# ------------------------------------------------------------ draw/plot ----

def cmd_draw(args):
    from .tools.draw import draw_net
    draw_net(args.model, args.out, phase=_phase(args.phase), rankdir=args.rankdir)
    print(f"wrote {args.out}")
    return 0


def cmd_plot(args):
    from .tools.plot import plot_log
    plot_log(args.log, args.out)
    print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------ the parser ---

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


def build_parser():
    parser = _Parser(
        prog="layergraph",
        description="Caffe-style deep-learning engine for metric learning.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train a net from a solver prototxt")
    p.add_argument("--solver", required=True, help="solver prototxt")
    p.add_argument("--model", help="the train/test net, for solver files that name none "
                                   "(MyCaffe's) or to replace the one they name")
    p.add_argument("--weights", help="initial weights (.caffemodel), comma-separated list")
    p.add_argument("--allow-missing", action="store_true",
                   help="with --weights: layers the weights file lacks keep their initial "
                        "values (fine-tuning) instead of being an error")
    p.add_argument("--snapshot", help="resume from a .solverstate ('latest': the newest "
                                      "complete snapshot under the solver's snapshot_prefix)")
    p.add_argument("--iterations", type=int, help="override max_iter")
    p.add_argument("--snapshot-prefix", help="override snapshot_prefix (where snapshots and "
                                             "the training log go)")
    p.add_argument("--seed", type=int, help="override random_seed")
    p.add_argument("--db", help="image database root (default ~/.layergraph/imagedb)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("test", help="score a trained net (mean of its outputs)")
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--iterations", type=positive_int, default=50)
    p.add_argument("--phase", default="TEST")
    p.add_argument("--db")
    p.add_argument("--verbose", action="store_true")
    add_device_arguments(p)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("time", help="per-layer forward/backward timing")
    p.add_argument("--model", required=True)
    p.add_argument("--iterations", type=positive_int, default=20)
    p.add_argument("--phase", default="TRAIN")
    p.add_argument("--db")
    add_device_arguments(p)
    p.set_defaults(func=cmd_time)

    p = sub.add_parser("device", help="the GPU(s) CuPy sees (Caffe's device_query)")
    p.add_argument("--check", action="store_true",
                   help="also compile every kernel of kernels/ on the GPU")
    p.add_argument("--check-id", type=int, default=0, help="the GPU for --check")
    p.set_defaults(func=cmd_device)

    p = sub.add_parser("draw", help="draw the net as a picture (PNG/SVG/PDF)")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--phase", default="TRAIN")
    p.add_argument("--rankdir", default="TB", choices=["TB", "LR"])
    p.set_defaults(func=cmd_draw)

    p = sub.add_parser("plot", help="training curves (loss, test outputs) to PNG")
    p.add_argument("--log", required=True, help="the <prefix>_log.jsonl a training wrote")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_plot)

    for module in ("cli_data", "tools.cli_tools", "tools.cli_upgrade"):
        try:
            mod = __import__(f"layergraph.{module}", fromlist=["add_commands"])
        except ImportError:
            continue
        for name in ("add_data_commands", "add_commands"):
            fn = getattr(mod, name, None)
            if fn is not None:
                fn(sub)
    return parser


def _version():
    from . import __version__
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
