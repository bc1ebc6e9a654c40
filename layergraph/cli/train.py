"""``layergraph train``: a solver to max_iter, with a progress bar, snapshots,
resume, and the collapse guard."""
import os
import sys

from ..errors import LayergraphError
from .common import _backend, _set_db, add_device_arguments


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
    from ..solver import Solver
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
        from ..guards import CollapseGuard
        solver.add_callback(CollapseGuard())  # one warning if the embedding collapses
        solver.install_sigint_handler()
        solver.solve()
    finally:
        progress.close()
        solver.close()
    if solver.log_path:
        print(f"training log: {solver.log_path}")
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
    add_device_arguments(p)
    p.set_defaults(func=cmd_train)
