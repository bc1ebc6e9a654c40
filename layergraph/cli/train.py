"""``layergraph train``: a solver to max_iter, with a progress bar, snapshots,
resume, the collapse guard, and TensorBoard event files (--tensorboard).

Data-parallel (:mod:`layergraph.distributed`): ``mpiexec -n N layergraph
train ...`` trains with N MPI workers (rank 0 prints, logs and snapshots;
only it reads --weights and --snapshot); ``--gpu all`` or ``--gpu 0,1``
starts one worker per GPU over NCCL (under mpiexec: each rank takes the GPU
at its rank on its host).  An error on any worker ends the job with one
message (:func:`layergraph.distributed.launch.fail_together`)."""
import os
import sys
import time

from ..errors import LayergraphError
from .common import _backend, _set_db, add_device_arguments


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Progress:
    """tqdm progress bar: iteration, loss, lr and images/s.  When stderr is
    not a terminal (a log file, a CI job: tqdm is off then), a line instead
    every ``every`` seconds: iteration, smoothed loss, images/s (the mean of
    the iterations since the last line) and the ETA (the wall time per
    iteration so far, tests and snapshots included, times the iterations
    left)."""

    def __init__(self, total, initial, quiet, every=30.0):
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True,
                                file=sys.stderr, disable=None)
            except ImportError:  # pragma: no cover
                self.bar = None
        self.lines = not quiet and (self.bar is None or self.bar.disable)
        self.every = float(every)
        self._start = None      # (time, iteration) of the first iteration seen
        self._last = None
        self._rates = []

    def on_start(self, solver):
        if self._start is None:
            self._start = self._last = (time.monotonic(), solver.iter)

    def _line(self, solver, record):
        now = time.monotonic()
        self._rates.append((record["images_per_s"], record.get("tower_images_per_s")))
        if now - self._last[0] < self.every:
            return
        t0, it0 = self._start
        done = solver.iter - it0
        left = max(solver.param.max_iter - solver.iter, 0)
        eta = (now - t0) / max(done, 1) * left
        rate = sum(r for r, _ in self._rates) / len(self._rates)
        towers = [t for _, t in self._rates if t]
        speed = f"{rate:.0f} images/s from the data layer"
        if towers:
            speed += f" ({sum(towers) / len(towers):.0f} through the weight-shared towers)"
        print(f"iteration {solver.iter}/{solver.param.max_iter}, loss "
              f"{solver.smoothed_loss:.4g}, {speed}, ETA {_duration(eta)}",
              file=sys.stderr, flush=True)
        self._last, self._rates = (now, solver.iter), []

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def on_iteration(self, solver, record):
        if self.lines:
            self._line(solver, record)
        elif self.bar is not None:
            self.bar.update(1)
            speed = {"data_img_s": f"{record['images_per_s']:.0f}"}
            if record.get("tower_images_per_s"):   # the towers' images (3 per triplet)
                speed["tower_img_s"] = f"{record['tower_images_per_s']:.0f}"
            self.bar.set_postfix(loss=f"{solver.smoothed_loss:.4g}", lr=f"{record['lr']:.3g}",
                                 **speed, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def cmd_train(args):
    from ..distributed import launched_size, world
    from ..distributed.launch import fail_together, gpu_devices, launch_gpu_workers
    _set_db(args)
    devices = gpu_devices(args.gpu)
    if devices is not None and len(devices) > 1 and launched_size()[0] is None:
        if args.backend is not None:
            raise LayergraphError("give either --gpu or --backend, not both")
        return launch_gpu_workers(args, devices)  # one process per GPU, NCCL
    comm = world()
    if comm.size == 1:
        if devices is not None:
            args.gpu = str(devices[0])
        return _train(args, comm)
    with fail_together(comm):
        if devices is not None:
            args.gpu = str(_worker_device(comm, devices))
        return _train(args, comm)


def _worker_device(comm, devices):
    """The GPU of this worker: a --gpu launcher worker's one device, or
    under MPI the device at this rank's place among the ranks of its host."""
    if len(devices) == 1 and comm.name == "nccl":
        return devices[0]
    local = comm.local_rank
    if local >= len(devices):
        raise LayergraphError(f"--gpu names {len(devices)} GPU(s) for more workers on this host "
                              f"(local rank {local}); one worker per GPU")
    return devices[local]


def _train(args, comm):
    from ..solver import Solver
    root = comm.rank == 0
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
    if args.tensorboard:
        overrides["tensorboard_dir"] = os.path.abspath(args.tensorboard)
    if args.tensorboard_histograms:
        overrides["tensorboard_histograms"] = True
    if args.tensorboard_embedding:
        overrides["tensorboard_embedding"] = args.tensorboard_embedding
    if args.progress_seconds < 0:
        raise LayergraphError("--progress-seconds must be >= 0")
    progress = _Progress(0, 0, args.quiet or not root, every=args.progress_seconds)
    solver = Solver(args.solver, log=progress.write, overrides=overrides,
                    backend=_backend(args, default=None), comm=comm)
    try:
        if (args.tensorboard_histograms or args.tensorboard_embedding) and \
                not solver.param.tensorboard_dir:
            raise LayergraphError("--tensorboard-histograms and --tensorboard-embedding need "
                                  "--tensorboard DIR (or tensorboard_dir in the solver file)")
        weights = (args.weights.split(",") if args.weights else []) + [
            solver.resolve(path) for path in solver.param.weights]
        for path in weights if root else []:  # solve() hands them to the other workers
            copied = solver.net.copy_from(path, allow_missing=args.allow_missing)
            missing = solver.net.last_missing
            progress.write(f"copied weights of {len(copied)} layer(s) from {path}"
                           + (f"; kept initial values for {', '.join(missing)}"
                              if missing else ""))
        solver.check_snapshot_dir()
        if args.snapshot == "latest" and root:
            from ..solver import latest_snapshot
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
        if root:
            from ..guards import CollapseGuard
            solver.add_callback(CollapseGuard())  # one warning if the embedding collapses
        solver.install_sigint_handler()
        solver.solve()
    finally:
        progress.close()
        solver.close()
    if solver.log_path and root:
        print(f"training log: {solver.log_path}")
    if solver.tensorboard is not None:
        print(f"TensorBoard: tensorboard --logdir {solver.tensorboard.logdir}")
    return 130 if solver.requested_stop else 0


def add_commands(sub):
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
    p.add_argument("--progress-seconds", type=float, default=30.0, metavar="S",
                   help="when stderr is not a terminal: a progress line (iteration, loss, "
                        "images/s, ETA) every S seconds (default 30)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="write TensorBoard event files to DIR: losses, test outputs, lr, "
                        "images/s, and the TEST net's embedding for the projector "
                        "(needs tensorboardX: pip install -e '.[tensorboard]'); the solver "
                        "field tensorboard_dir does the same")
    p.add_argument("--tensorboard-histograms", action="store_true",
                   help="with --tensorboard: weight histograms too")
    p.add_argument("--tensorboard-embedding", metavar="BLOB",
                   help="with --tensorboard: the TEST net blob shown in the projector "
                        "(default: the Decode layer's bottom)")
    add_device_arguments(p)
    for action in p._actions:
        if action.dest == "gpu":
            action.metavar = "N|LIST|all"
            action.help = ("train on CUDA device N; a list (0,1) or 'all': one worker per GPU, "
                           "data-parallel over NCCL (default: the CPU; CPU workers: mpiexec -n N "
                           "layergraph train ...)")
    p.set_defaults(func=cmd_train)
