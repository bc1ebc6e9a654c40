"""Solvers: the SGD family with Caffe's exact update rules.

Each iteration (Caffe's Solver::Step + ApplyUpdate):

1. clear parameter diffs; run ``iter_size`` forward/backward passes (the
   diffs accumulate);
2. ``rate = learning_rate(iter)`` from the lr policy;
3. clip gradients: if clip_gradients >= 0 and ||g||_2 > clip, g *= clip/||g||;
4. per parameter: normalise g /= iter_size; regularise g += decay * w (L2) or
   g += decay * sign(w) (L1) with decay = weight_decay * decay_mult; compute
   the update value u from the rule below with local_rate = rate * lr_mult;
5. w -= u; iter += 1.

Update rules (h, h2: per-parameter history; m = momentum, eps = delta):

- SGD:       h = m h + lr g;  u = h          (the rate sits inside the history)
- Nesterov:  h' = m h + lr g; u = (1 + m) h' - m h
- AdaGrad:   h += g^2;        u = lr g / (sqrt(h) + eps)
- RMSProp:   h = d h + (1 - d) g^2;  u = lr g / (sqrt(h) + eps)   (d = rms_decay)
- AdaDelta:  h = m h + (1 - m) g^2;  v = g sqrt(h2 + eps) / sqrt(h + eps);
             h2 = m h2 + (1 - m) v^2;  u = lr v
- Adam:      h = b1 h + (1 - b1) g;  h2 = b2 h2 + (1 - b2) g^2;
             u = lr sqrt(1 - b2^t) / (1 - b1^t) * h / (sqrt(h2) + eps),
             t = iter + 1, b1 = momentum, b2 = momentum2

Learning-rate policies: fixed, step, exp, inv, multistep, poly, sigmoid
(formulas in :func:`learning_rate`).

Data-parallel training (:mod:`layergraph.distributed`): under ``mpiexec -n N``
(or the ``train --gpu LIST`` launcher) the Solver's communicator has N
workers.  Rank 0's seed is used everywhere; the Data, DataSequence and Decode
layers work on the global batch of N x batch_size (see their modules); after
backward the gradients are averaged (:class:`~layergraph.distributed.GradientReducer`,
with the loss and the stop flag) before step 2, so every worker applies the
same update.  :meth:`Solver.synchronize` (at the start of ``solve``, after
``restore``) gives every worker rank 0's state; only rank 0 reads snapshots,
writes them, the log and TensorBoard, and logs lines; test outputs are the
workers' mean.

Backends: the nets, the parameters and the history live on the solver's
backend (``solver_mode: GPU`` + ``device_id``, or the ``backend`` argument).
On a kernel backend (gpu, emu) steps 3-5 are one fused kernel per parameter
blob (``kernels/solver_update.cu``), which rounds exactly as the NumPy path
does and leaves the same clipped, normalised, regularised g in the diff.
"""
import json
import math
import os
import signal
import time

import numpy as np

from .backend import backend_of_solver, get_backend, to_numpy
from .errors import DivergedError, LayergraphError, SnapshotError, SolverError
from .net import DATA_LAYER_TYPES, Net
from .proto import pb
from .prototxt import atomic_write, read_binary, read_net, read_solver
from .refit import refit_for_solver

SOLVER_TYPES = {
    "sgd": "SGD", "nesterov": "Nesterov", "adagrad": "AdaGrad",
    "rmsprop": "RMSProp", "adadelta": "AdaDelta", "adam": "Adam",
}
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

#: the fused update kernel of each solver type (kernels/solver_update.cu)
UPDATE_KERNELS = {
    "SGD": "solver_sgd_update", "Nesterov": "solver_nesterov_update",
    "AdaGrad": "solver_adagrad_update", "RMSProp": "solver_rmsprop_update",
    "AdaDelta": "solver_adadelta_update", "Adam": "solver_adam_update",
}
#: the kernels' ``reg`` argument (LG_REG_* in solver_update.cu)
REG_NONE, REG_L2, REG_L1 = 0, 1, 2


# ------------------------------------------------------------ lr policy ----

def learning_rate(param, it, current_step=0):
    """The learning rate at iteration ``it``; returns (rate, current_step).

    fixed: base_lr;  step: base_lr gamma^floor(it/stepsize);
    exp: base_lr gamma^it;  inv: base_lr (1 + gamma it)^-power;
    multistep: base_lr gamma^k, k = number of stepvalues passed;
    poly: base_lr (1 - it/max_iter)^power;
    sigmoid: base_lr / (1 + exp(-gamma (it - stepsize))).
    """
    policy = param.lr_policy or "fixed"
    base = param.base_lr
    if policy == "fixed":
        rate = base
    elif policy == "step":
        rate = base * param.gamma ** (it // param.stepsize)
    elif policy == "exp":
        rate = base * param.gamma ** it
    elif policy == "inv":
        rate = base * (1.0 + param.gamma * it) ** (-param.power)
    elif policy == "multistep":
        while current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
        rate = base * param.gamma ** current_step
    elif policy == "poly":
        rate = base * (1.0 - it / float(param.max_iter)) ** param.power
    elif policy == "sigmoid":
        z = -param.gamma * (it - param.stepsize)
        # 1 / (1 + e^z) without overflow: e^z may exceed a double's range
        rate = base * (math.exp(-z) / (1.0 + math.exp(-z)) if z > 0 else 1.0 / (1.0 + math.exp(z)))
    else:
        raise SolverError(f"unknown lr_policy '{policy}'; known: {', '.join(LR_POLICIES)}")
    return rate, current_step


def solver_type_of(param):
    if param.HasField("type") or not param.HasField("solver_type"):
        name = param.type
    else:
        name = pb.SolverParameter.SolverType.Name(param.solver_type)
    key = name.replace("_", "").lower()
    if key not in SOLVER_TYPES:
        raise SolverError(f"unknown solver type '{name}'; known: "
                          f"{', '.join(SOLVER_TYPES.values())}")
    return SOLVER_TYPES[key]


def validate(param, source="solver"):
    """Reject invalid solver values with a one-line message."""
    def bad(msg):
        return SolverError(f"{source}: {msg}")
    solver_type_of(param)
    policy = param.lr_policy or "fixed"
    if policy not in LR_POLICIES:
        raise bad(f"unknown lr_policy '{policy}'; known: {', '.join(LR_POLICIES)}")
    if not param.HasField("base_lr"):
        raise bad("base_lr must be set")
    if param.base_lr < 0 or not math.isfinite(param.base_lr):
        raise bad(f"base_lr must be a non-negative number, got {param.base_lr:g}")
    if param.max_iter < 0:
        raise bad(f"max_iter must be >= 0, got {param.max_iter}")
    if param.iter_size < 1:
        raise bad(f"iter_size must be >= 1, got {param.iter_size}")
    if policy in ("step", "sigmoid") and param.stepsize <= 0 and policy == "step":
        raise bad("lr_policy 'step' needs stepsize > 0")
    if policy == "multistep" and not param.stepvalue:
        raise bad("lr_policy 'multistep' needs at least one stepvalue")
    if policy == "multistep" and list(param.stepvalue) != sorted(param.stepvalue):
        raise bad("stepvalue must be increasing")
    if policy == "poly" and param.max_iter <= 0:
        raise bad("lr_policy 'poly' needs max_iter > 0")
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and not param.HasField("gamma"):
        raise bad(f"lr_policy '{policy}' needs gamma")
    if policy in ("inv", "poly") and not param.HasField("power"):
        raise bad(f"lr_policy '{policy}' needs power")
    if not 0.0 <= param.momentum < 1.0:
        raise bad(f"momentum must be in [0, 1), got {param.momentum:g}")
    if not 0.0 <= param.momentum2 < 1.0:
        raise bad(f"momentum2 must be in [0, 1), got {param.momentum2:g}")
    if param.weight_decay < 0:
        raise bad(f"weight_decay must be >= 0, got {param.weight_decay:g}")
    if param.regularization_type not in ("L1", "L2"):
        raise bad(f"regularization_type must be L1 or L2, got '{param.regularization_type}'")
    if param.snapshot < 0:
        raise bad(f"snapshot must be >= 0, got {param.snapshot}")
    if param.test_interval < 0:
        raise bad(f"test_interval must be >= 0, got {param.test_interval}")
    if param.average_loss < 1:
        raise bad(f"average_loss must be >= 1, got {param.average_loss}")
    if any(t < 0 for t in param.test_iter):
        raise bad("test_iter must be >= 0")
    if param.snapshot_format == pb.SolverParameter.HDF5:
        raise bad("snapshot_format HDF5 is not supported; use BINARYPROTO")
    if param.clip_gradients >= 0 and not math.isfinite(param.clip_gradients):
        raise bad(f"clip_gradients must be a finite number, got {param.clip_gradients:g}")
    for field in ("gamma", "power", "momentum", "momentum2", "delta", "weight_decay"):
        if not math.isfinite(getattr(param, field)):
            raise bad(f"{field} must be a finite number, got {getattr(param, field)}")
    if policy in ("step", "exp", "multistep") and param.gamma < 0:
        raise bad(f"lr_policy '{policy}' needs gamma >= 0, got {param.gamma:g}")
    if policy == "sigmoid" and param.stepsize <= 0:
        raise bad("lr_policy 'sigmoid' needs stepsize > 0")
    _check_schedule(param, bad)
    if solver_type_of(param) == "RMSProp" and not 0 <= param.rms_decay < 1:
        raise bad(f"rms_decay must be in [0, 1), got {param.rms_decay:g}")
    if param.delta <= 0 and solver_type_of(param) != "SGD" and solver_type_of(param) != "Nesterov":
        raise bad(f"delta must be > 0, got {param.delta:g}")


def _finite_json(value):
    """``value`` with non-finite floats as strings ("nan", "inf"): the log
    stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def latest_snapshot(prefix):
    """The newest complete snapshot pair under ``prefix``: the path of the
    highest-iteration ``<prefix>_iter_N.solverstate`` that parses and whose
    .caffemodel exists, or None."""
    import glob
    import re
    found = []
    for path in glob.glob(glob.escape(prefix) + "_iter_*.solverstate"):
        m = re.search(r"_iter_(\d+)\.solverstate$", path)
        if m:
            found.append((int(m.group(1)), path))
    for _, path in sorted(found, reverse=True):
        try:
            state = read_binary(path, pb.SolverState(), "solver state (.solverstate)")
        except Exception:
            continue
        model = os.path.join(os.path.dirname(path), os.path.basename(state.learned_net))
        if state.learned_net and os.path.isfile(model):
            return path
    return None


def remove_stale_temporaries(prefix):
    """Delete the temporary files of snapshots whose writer died (kill -9,
    power loss): ``<prefix>_iter_N.{caffemodel,solverstate}.tmpPID`` whose
    process is gone.  Returns the paths removed."""
    import glob
    import re
    removed = []
    for path in glob.glob(glob.escape(prefix) + "_*.tmp*"):
        m = re.search(r"\.tmp(\d+)$", path)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _process_alive(pid):
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_schedule(param, bad):
    """The learning rate must be a finite, non-negative real number at every
    iteration: sample the schedule (its ends, its steps, 200 points between)."""
    last = max(param.max_iter, 1)
    points = {0, 1, last - 1, last, max(param.stepsize, 0)} | set(param.stepvalue)
    points |= {round(last * k / 200) for k in range(201)}
    for it in sorted(p for p in points if p >= 0):
        try:
            rate, _ = learning_rate(param, it, 0)
        except (OverflowError, ZeroDivisionError, ValueError) as e:
            raise bad(f"lr_policy '{param.lr_policy}' gives no learning rate at iteration "
                      f"{it} ({e}); check gamma, power and stepsize") from None
        if isinstance(rate, complex) or not math.isfinite(rate) or rate < 0:
            raise bad(f"lr_policy '{param.lr_policy}' gives the learning rate {rate} at "
                      f"iteration {it}; check gamma, power and stepsize")


# --------------------------------------------------------------- solver ----

class Solver:
    """Trains the net a SolverParameter describes.

    >>> solver = Solver("model_templates/TripletNet_28x28/solver.prototxt")
    >>> solver.step(100)        # 100 iterations
    >>> solver.solve()          # up to max_iter, with tests and snapshots
    >>> solver.net, solver.test_nets, solver.iter

    Relative paths inside the solver file (``net``, ``snapshot_prefix``) are
    taken relative to the solver file's directory when they do not exist
    relative to the working directory.

    ``backend`` (a Backend or a name: ``cpu``, ``gpu:0``, ``emu``) overrides
    the solver file's ``solver_mode``/``device_id``; it is ``self.backend``.
    ``solver_mode: GPU`` on a machine without one trains on the CPU (a
    one-line warning goes to ``log``); a ``backend`` naming a GPU that cannot
    be used raises GPUError.

    ``db``: the image database root the nets' Data layers read (default:
    $LAYERGRAPH_DB, else ~/.layergraph/imagedb).

    ``tensorboard_dir`` in the solver file (relative to it) writes TensorBoard
    event files through :class:`layergraph.tensorboard.TensorBoardCallback`
    (``self.tensorboard``; needs tensorboardX).

    ``comm``: the data-parallel communicator (default
    :func:`layergraph.distributed.world`: MPI under ``mpiexec -n N``, N > 1,
    else a single process); ``self.comm``.  With several workers ``log``
    is used on rank 0 only.
    """

    def __init__(self, solver, log=print, overrides=None, backend=None, db=None, comm=None):
        if isinstance(solver, pb.SolverParameter):
            self.param, self.source, self.base_dir = solver, "<SolverParameter>", os.getcwd()
        else:
            self.source = os.fspath(solver)
            self.param = read_solver(self.source)
            self.base_dir = os.path.dirname(os.path.abspath(self.source))
        from .upgrade import upgrade_solver  # old solver files (solver_type enum, V1 nets)
        self.param = upgrade_solver(self.param, self.source)
        for key, value in (overrides or {}).items():
            if key == "net":
                for field in ("net_param", "train_net", "train_net_param"):
                    self.param.ClearField(field)
            if isinstance(value, (list, tuple)):
                self.param.ClearField(key)
                getattr(self.param, key).extend(value)
            else:
                setattr(self.param, key, value)
        validate(self.param, self.source)
        self.type = solver_type_of(self.param)
        from .distributed import world
        comm = world() if comm is None else comm
        self.log = (log if comm.rank == 0 else None) or (lambda *a, **k: None)
        self.backend = (backend_of_solver(self.param, warn=self.log) if backend is None
                        else get_backend(backend))
        self.comm = comm.for_backend(self.backend)  # a GPU under MPI: NCCL
        seed = self.param.random_seed
        if seed < 0:
            seed = int.from_bytes(os.urandom(4), "little")
        self.seed = int(self.comm.broadcast_object(int(seed)))  # rank 0's everywhere
        self.iter = 0
        self.current_step = 0
        self.callbacks = []
        self.losses = []
        self.smoothed_loss = 0.0
        self.requested_stop = False
        self.last_snapshot_iter = None
        self.log_path = None
        self.history = []
        self._work_buffers = {}  # param index -> scratch arrays of the update
        self._groups = None      # the update split over threads (_update_groups)
        self._fused = None       # SGD/Adam through the compiled one-pass loops
        self._fused_sets = None  # (their arrays' addresses for the one-call update)
        self.db = None if db is None else os.path.abspath(os.path.expanduser(os.fspath(db)))
        self.tensorboard = None
        self.reducer = None        # data-parallel: averages the gradients
        self._stop_signal = False  # data-parallel: this worker was asked to stop
        if self.param.tensorboard_dir and self.comm.rank == 0:
            # before the nets: a missing tensorboardX fails fast
            from .tensorboard import TensorBoardCallback
            self.tensorboard = TensorBoardCallback(
                self.output_path(self.param.tensorboard_dir),
                histograms=self.param.tensorboard_histograms,
                embedding=self.param.tensorboard_embedding or None)
            self.add_callback(self.tensorboard)
        self._build_nets()
        self._init_history()
        if self.comm.size > 1:
            self._join_workers()

    def _join_workers(self):
        """Data-parallel set-up: the layers learn the communicator, the
        gradient reducer is made (lr_mult 0 blobs only when clipping needs
        their diffs), and rank 0 logs the set-up and the layers that act per
        worker."""
        from .distributed import GradientReducer
        from .distributed.workers import attach
        notes = attach(self.net, self.comm, train=True)
        for net in self.test_nets:
            attach(net, self.comm, train=False)
        clip = self.param.clip_gradients >= 0
        blobs = [b for b, lr in zip(self.net.learnable_params, self.net.params_lr)
                 if lr != 0 or clip]
        self.reducer = GradientReducer(self.comm, blobs)
        self.log(f"Data-parallel: {self.comm.describe()}, global batch {self.comm.size} x "
                 f"{self.batch_size()}, gradients in {len(self.reducer.buckets)} bucket(s), "
                 f"{self.reducer.bytes / 2**20:.2f} MiB")
        if notes:
            self.log("Data-parallel: per worker, not over the global batch: " + "; ".join(notes))

    # ------------------------------------------------------------- nets --
    def resolve(self, path):
        if not path or os.path.isabs(path) or os.path.exists(path):
            return path
        return os.path.join(self.base_dir, path)

    def output_path(self, path):
        """An output path of the solver file (snapshot_prefix, tensorboard_dir):
        relative paths are relative to the solver file's directory."""
        return path if os.path.isabs(path) else os.path.join(self.base_dir, path)

    def _net_source(self, path):
        resolved = self.resolve(path)
        if not os.path.exists(resolved):
            raise SolverError(f"{self.source}: net file '{path}' not found")
        return read_net(resolved)

    def _build_nets(self):
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            raise SolverError(f"{self.source}: give exactly one train net (net, net_param, "
                              f"train_net or train_net_param); found {len(given) or 'none'}")
        field = given[0]
        train_param = (getattr(p, field) if field.endswith("param")
                       else self._net_source(getattr(p, field)))
        state = p.train_state
        self.net = Net(train_param, phase=pb.TRAIN, level=state.level,
                       stages=tuple(state.stage), seed=self.seed, backend=self.backend,
                       db=self.db)
        if self.net.source == "<NetParameter>" and field in ("net", "train_net"):
            self.net.source = self.resolve(getattr(p, field))
        # test nets: test_net_param, test_net, then net/net_param for the rest
        test_params = list(p.test_net_param) + [self._net_source(f) for f in p.test_net]
        n_general = len(p.test_iter) - len(test_params)
        if field in ("net", "net_param") and n_general > 0:
            general = p.net_param if field == "net_param" else train_param
            test_params += [general] * n_general
        if len(p.test_iter) != len(test_params):
            raise SolverError(f"{self.source}: test_iter must be given once per test net "
                              f"({len(test_params)} test net(s), {len(p.test_iter)} test_iter)")
        if p.test_state and len(p.test_state) != len(test_params):
            raise SolverError(f"{self.source}: test_state must be given once per test net")
        self.test_nets = []
        for i, tp in enumerate(test_params):
            st = p.test_state[i] if p.test_state else pb.NetState(phase=pb.TEST)
            net = Net(tp, phase=pb.TEST, level=st.level, stages=tuple(st.stage),
                      seed=self.seed + 7919 * (i + 1), backend=self.backend, db=self.db)
            net.share_weights_from(self.net)
            self.test_nets.append(net)

    def add_callback(self, callback):
        """An object with any of: on_start(solver), on_gradients_ready(solver),
        on_iteration(solver, record), on_test_batch(solver, test_id, net) (after
        each forward pass of a test), on_test(solver, test_id, results),
        on_snapshot(solver, paths), close() (called by Solver.close)."""
        self.callbacks.append(callback)

    def _emit(self, event, *args):
        for cb in self.callbacks:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(self, *args)

    # ------------------------------------------------------------ update --
    def _init_history(self):
        xp = self.backend.xp
        n_hist = 2 if self.type in ("AdaDelta", "Adam") else 1
        self.history = [xp.zeros_like(b.data) for _ in range(n_hist)
                        for b in self.net.learnable_params]

    def learning_rate(self):
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return rate

    def clip_scale(self):
        """clip / ||g||_2 when clip_gradients >= 0 and the norm of all the
        parameter diffs exceeds it, else None.  The float64 sum of squares
        stays on the backend; one number comes to the host."""
        clip = self.param.clip_gradients
        if clip < 0:
            return None
        xp = self.backend.xp
        sumsq = float(sum((b.diff.astype(xp.float64) ** 2).sum()
                          for b in self.net.learnable_params))
        norm = math.sqrt(sumsq)
        return clip / norm if norm > clip else None

    def clip_gradients(self):
        scale = self.clip_scale()
        if scale is not None:
            for b in self.net.learnable_params:
                b.diff[...] *= scale

    def apply_update(self):
        rate = self.learning_rate()
        self.rate = rate
        if self.backend.kernels is not None:
            self.apply_update_kernels(rate)
            self.iter += 1
            return
        self.clip_gradients()
        if self._fused_update(rate):
            self.iter += 1
            return
        groups = self._update_groups()
        if len(groups) == 1:
            for i, lo, hi in groups[0]:
                self._update_param(i, rate, lo, hi)
        else:  # elementwise rules: any cut of the arrays gives the same bits
            from . import cpu_kernels
            cpu_kernels.run_parts(
                lambda k: [self._update_param(i, rate, lo, hi) for i, lo, hi in groups[k]],
                len(groups))
        self.iter += 1

    def _fused_update(self, rate):
        """SGD and Adam on the CPU through the compiled one-pass loops
        (kernels/cpu/solver_ops.cpp: the same float32 operations in the same
        order as compute_update, so the same bits); False where they do not
        apply (another solver type or backend, parameters of more than one
        dtype, no compiler, LAYERGRAPH_CPU_KERNELS=0) -- the NumPy path then
        runs.  Every parameter is updated in one call."""
        params = self.net.learnable_params
        if self._fused is None:
            from . import cpu_kernels
            self._fused = (self.type in ("SGD", "Adam") and self.net.xp is np and bool(params)
                           and len({b.dtype for b in params}) == 1
                           and cpu_kernels.available(params[0].dtype))
        if not self._fused:
            return False
        from . import cpu_kernels
        p, n = self.param, len(params)
        todo = [i for i in range(n) if self.net.params_lr[i] != 0]
        if not todo:
            return True
        # every parameter in one call: its scalars and flags side by side
        scalars, flags = [], []
        for i in todo:
            reg, decay = self._regularization(i)
            scalars += [1.0 / p.iter_size, decay, *self._rule(i, rate)]
            flags += [int(p.iter_size > 1), reg]
        if self._fused_sets is None:
            self._fused_sets = [cpu_kernels.ArraySet() for _ in range(4)]
        columns = [[params[i].data for i in todo], [params[i].diff for i in todo],
                   [self.history[i] for i in todo]]
        if self.type == "Adam":
            columns.append([self.history[i + n] for i in todo])
        cpu_kernels.update_many(self.type.lower(), columns, self._fused_sets,
                                np.array(scalars, dtype=params[todo[0]].dtype),
                                np.array(flags, dtype=np.intc))
        return True

    def _update_groups(self):
        """The learnable parameters (lr_mult != 0) as (index, begin, end)
        ranges of their flattened arrays, one group per thread of equal
        size, when the update is worth splitting (CPU, several threads,
        100,000+ values); else one group of whole arrays."""
        if self._groups is None:
            params = self.net.learnable_params
            todo = [i for i in range(len(params)) if self.net.params_lr[i] != 0]
            total = sum(params[i].count for i in todo)
            threads = 1
            if self.net.xp is np and total >= 100_000 and todo:
                from . import cpu_kernels
                if cpu_kernels.available(params[todo[0]].dtype):
                    threads = cpu_kernels.batch_threads()
            groups = [[] for _ in range(threads)]
            k, room = 0, -(-total // threads)      # values left for group k
            for i in todo:
                lo, count = 0, params[i].count
                while lo < count:
                    take = count - lo if k == threads - 1 else min(count - lo, room)
                    groups[k].append((i, lo, lo + take))
                    lo += take
                    room -= take
                    if room == 0 and k < threads - 1:
                        k, room = k + 1, -(-total // threads)
            self._groups = [g for g in groups if g] or [[]]
        return self._groups

    def _update_param(self, i, rate, lo=0, hi=None):
        """Weight decay into the gradient, then data -= the rule's update, on
        values [lo, hi) of parameter ``i`` (flattened)."""
        p = self.param
        blob = self.net.learnable_params[i]
        sl = slice(lo, hi)
        g = blob.diff.reshape(-1)[sl]
        data = blob.data.reshape(-1)[sl]
        if p.iter_size > 1:
            g *= 1.0 / p.iter_size
        local_decay = p.weight_decay * self.net.params_weight_decay[i]
        if local_decay:
            decay = self._work(i)[0].reshape(-1)[sl]
            if p.regularization_type == "L2":
                blob.xp.multiply(data, local_decay, out=decay)
            else:
                blob.xp.sign(data, out=decay)
                decay *= local_decay
            g += decay
        data -= self.compute_update(i, len(self.net.learnable_params), g,
                                    rate * self.net.params_lr[i], sl)

    def apply_update_kernels(self, rate):
        """Steps 3-5 on a kernel backend: one fused launch per learnable blob
        (lr_mult != 0).  The scalars are rounded to float32 from the same
        double expressions the NumPy path uses, so both round alike."""
        p = self.param
        params = self.net.learnable_params
        n = len(params)
        clip_scale = self.clip_scale()
        if clip_scale is not None:
            # frozen blobs get no launch but are clipped like on the CPU
            for i, blob in enumerate(params):
                if self.net.params_lr[i] == 0:
                    blob.diff[...] *= clip_scale
        clip_scale = 1.0 if clip_scale is None else clip_scale
        iter_scale = 1.0 / p.iter_size
        kernel = UPDATE_KERNELS[self.type]
        for i, blob in enumerate(params):
            if self.net.params_lr[i] == 0:
                continue
            arrays = [blob.data, blob.diff, self.history[i]]
            if self.type in ("AdaDelta", "Adam"):
                arrays.append(self.history[i + n])
            self.backend.launch(kernel, (blob.count, *arrays, clip_scale, iter_scale,
                                         *self._regularization(i), *self._rule(i, rate)),
                                n=blob.count)

    def _regularization(self, i):
        """(REG_NONE / REG_L2 / REG_L1, weight decay) of learnable parameter
        ``i``: the fused updates' (GPU kernels, compiled CPU loops) arguments."""
        p = self.param
        decay = p.weight_decay * self.net.params_weight_decay[i]
        if not decay:
            return REG_NONE, decay
        return (REG_L2 if p.regularization_type == "L2" else REG_L1), decay

    def _rule(self, i, rate):
        """The scalars of the update rule for learnable parameter ``i``, in
        the order the fused updates take them (kernels/solver_update.cu,
        kernels/cpu/solver_ops.cpp)."""
        p, lr = self.param, rate * self.net.params_lr[i]
        if self.type == "SGD":
            return lr, p.momentum
        if self.type == "Nesterov":
            return lr, p.momentum, 1.0 + p.momentum
        if self.type == "AdaGrad":
            return lr, p.delta
        if self.type == "RMSProp":
            return lr, p.rms_decay, 1.0 - p.rms_decay, p.delta
        if self.type == "AdaDelta":
            return lr, p.momentum, 1.0 - p.momentum, p.delta
        b1, b2, t = p.momentum, p.momentum2, self.iter + 1   # Adam
        correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        return lr * correction, b1, 1.0 - b1, b2, 1.0 - b2, p.delta

    def _work(self, i):
        """Two scratch arrays shaped like learnable parameter ``i``, allocated
        once: the update runs in place, with no per-step temporaries."""
        work = self._work_buffers.get(i)
        if work is None:
            blob = self.net.learnable_params[i]
            work = self._work_buffers[i] = (blob.xp.empty_like(blob.data),
                                            blob.xp.empty_like(blob.data))
        return work

    def compute_update(self, i, n, g, lr, sl=slice(None)):
        """The update value for learnable parameter ``i`` (see module doc),
        returned in a scratch array (valid until the next call).  Written
        with ``out=`` operations in the order of the formulas, so each step
        rounds exactly as the plain expressions would (python scalars are
        rounded to float32 first, NumPy's rule)."""
        p, xp = self.param, self.net.xp
        h = self.history[i].reshape(-1)[sl]       # values sl of the flattened arrays
        s1, s2 = (w.reshape(-1)[sl] for w in self._work(i))
        if self.type == "SGD":            # h = m h + lr g
            h *= p.momentum
            h += xp.multiply(g, lr, out=s1)
            return h
        if self.type == "Nesterov":       # u = (1 + m) h_new - m h_old
            xp.copyto(s2, h)
            h *= p.momentum
            h += xp.multiply(g, lr, out=s1)
            xp.multiply(h, 1.0 + p.momentum, out=s1)
            s1 -= xp.multiply(s2, p.momentum, out=s2)
            return s1
        if self.type in ("AdaGrad", "RMSProp"):
            if self.type == "AdaGrad":    # h += g^2
                h += xp.multiply(g, g, out=s1)
            else:                         # h = d h + (1 - d) g^2
                h *= p.rms_decay
                xp.multiply(g, 1.0 - p.rms_decay, out=s1)
                h += xp.multiply(s1, g, out=s1)
            xp.multiply(g, lr, out=s1)    # u = lr g / (sqrt(h) + delta)
            xp.sqrt(h, out=s2)
            s2 += p.delta
            s1 /= s2
            return s1
        h2 = self.history[i + n].reshape(-1)[sl]
        if self.type == "AdaDelta":
            h *= p.momentum               # h = m h + (1 - m) g^2
            xp.multiply(g, 1.0 - p.momentum, out=s1)
            h += xp.multiply(s1, g, out=s1)
            xp.add(h2, p.delta, out=s1)   # v = g sqrt(h2 + delta) / sqrt(h + delta)
            xp.sqrt(s1, out=s1)
            xp.multiply(g, s1, out=s1)
            xp.add(h, p.delta, out=s2)
            s1 /= xp.sqrt(s2, out=s2)
            h2 *= p.momentum              # h2 = m h2 + (1 - m) v^2
            xp.multiply(s1, 1.0 - p.momentum, out=s2)
            h2 += xp.multiply(s2, s1, out=s2)
            s1 *= lr                      # u = lr v
            return s1
        if self.type == "Adam":
            b1, b2, t = p.momentum, p.momentum2, self.iter + 1
            h *= b1                       # h = b1 h + (1 - b1) g
            h += xp.multiply(g, 1.0 - b1, out=s1)
            h2 *= b2                      # h2 = b2 h2 + (1 - b2) g^2
            xp.multiply(g, 1.0 - b2, out=s1)
            h2 += xp.multiply(s1, g, out=s1)
            correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
            xp.multiply(h, lr * correction, out=s1)   # u = lr c h / (sqrt(h2) + delta)
            xp.sqrt(h2, out=s2)
            s2 += p.delta
            s1 /= s2
            return s1
        raise SolverError(f"unknown solver type {self.type}")  # pragma: no cover

    # ---------------------------------------------------------- training --
    def batch_size(self):
        for layer, top in zip(self.net.layers, self.net.top_vecs):
            if top and not layer.param.bottom:
                return top[0].shape[0] if top[0].shape else 1
        return 1

    def images_per_forward(self):
        """(data images, tower images) of one forward pass of the TRAIN net.

        Data images: the rows the data layers deliver (a Data layer with
        images_per_blob 2 delivers two images per row); a net without data
        layers counts its first input's rows (:meth:`batch_size`).  Tower
        images: the rows through the weight-shared branches (net.chains),
        k branches x N rows -- a triplet net on a Data batch of 64 runs 192
        images through its towers; None without such branches."""
        data = 0
        for layer, top in zip(self.net.layers, self.net.top_vecs):
            if layer.type in DATA_LAYER_TYPES and top and top[0].shape:
                per_row = (max(1, layer.param.data_param.images_per_blob)
                           if layer.type == "Data" else 1)
                data += top[0].shape[0] * per_row
        towers = max((sum(b.shape[0] for b in chain.inputs if b.shape)
                      for chain in self.net.chains), default=0)
        return data or self.batch_size(), towers or None

    def step(self, iters):
        """Run ``iters`` iterations (tests, display and snapshots included).

        A non-finite loss stops training at once with a DivergedError (the
        last finite snapshot is kept; nothing non-finite is ever written)."""
        if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)):
            raise SolverError(f"step() takes a whole number of iterations, got {iters!r}")
        if iters < 0:
            raise SolverError(f"step() takes a number of iterations >= 0, got {iters}")
        p = self.param
        stop_iter = self.iter + iters
        self._emit("on_start")
        while self.iter < stop_iter and not self.requested_stop:
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
            t0 = time.perf_counter()
            self.net.clear_param_diffs()
            loss = 0.0
            with np.errstate(all="ignore"):  # a non-finite loss is reported below
                for _ in range(p.iter_size):
                    loss += self.net.forward_backward()
            loss /= p.iter_size
            if self.reducer is not None:  # the workers' mean gradient and loss
                loss, self.requested_stop = self.reducer.reduce(loss, self._stop_signal)
            if not math.isfinite(loss):
                self._diverged(f"the loss is {loss} at iteration {self.iter}")
            self._update_smoothed_loss(loss)
            self._emit("on_gradients_ready")
            it = self.iter
            with np.errstate(all="ignore"):
                self.apply_update()
            dt = time.perf_counter() - t0
            data_images, tower_images = self.images_per_forward()
            workers = self.comm.size  # images/s of the global batch
            record = {"iter": it, "loss": loss, "smoothed_loss": self.smoothed_loss,
                      "lr": self.rate,
                      "images_per_s": workers * data_images * p.iter_size / max(dt, 1e-9)}
            if tower_images:
                record["tower_images_per_s"] = (workers * tower_images * p.iter_size
                                                / max(dt, 1e-9))
            if self.reducer is not None:
                record["allreduce_s"] = self.reducer.last_seconds
            if p.display and it % p.display == 0:
                self.log(f"Iteration {it}, loss = {self.smoothed_loss:.6g}, "
                         f"lr = {self.rate:.6g}")
                self._write_log(dict(record, kind="train"))
            self._emit("on_iteration", record)
            if p.snapshot and self.iter % p.snapshot == 0:
                self.snapshot()
        if self.requested_stop and self.last_snapshot_iter != self.iter:
            self.snapshot()

    def _diverged(self, what):
        last = (f"the last snapshot, {self.snapshot_prefix()}_iter_{self.last_snapshot_iter}"
                f".solverstate, is intact" if self.last_snapshot_iter is not None
                else "no snapshot had been written")
        self._write_log({"kind": "diverged", "iter": self.iter, "message": what})
        raise DivergedError(f"training diverged: {what}; stopped without a snapshot "
                            f"({last}); lower base_lr or set clip_gradients")

    def check_snapshot_dir(self):
        """Fail before training, not at the first snapshot, when snapshots
        and the log cannot be written; clear stale temporaries (rank 0
        only: it alone writes them)."""
        if self.comm.rank != 0:
            return
        prefix = self.snapshot_prefix()
        directory = os.path.dirname(prefix) or "."
        try:
            os.makedirs(directory, exist_ok=True)
            probe = os.path.join(directory, f".layergraph-probe-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"")
            os.remove(probe)
        except OSError as e:
            raise SnapshotError(f"snapshot_prefix {prefix}: cannot write in {directory} "
                                f"({e.strerror or e})") from None
        for path in remove_stale_temporaries(prefix):
            self.log(f"removed {path}, left by an interrupted snapshot")

    def solve(self, resume=None):
        """Train to max_iter (resuming from a .solverstate if given)."""
        self.check_snapshot_dir()
        if resume:
            self.restore(resume)
        self.synchronize()
        self.log(f"Solving {self.net.name or 'net'} ({self.type}, seed {self.seed}) "
                 f"from iteration {self.iter} to {self.param.max_iter}")
        self.step(self.param.max_iter - self.iter)
        if self.requested_stop:
            self.log(f"Stopped at iteration {self.iter}; snapshot written")
            return
        refit_for_solver(self, after_training=True)  # Decode refit_centroids only
        p = self.param
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self.log("Optimization done.")

    def request_stop(self, *_):
        """Stop after the current iteration and snapshot (the SIGINT handler).
        With several workers the request travels with the next gradients, so
        that all stop after the same iteration."""
        if self.reducer is None:
            self.requested_stop = True
        else:
            self._stop_signal = True

    def synchronize(self):
        """Data-parallel: every worker takes rank 0's parameters, history,
        iteration and layer state (a no-op with one worker)."""
        if self.comm.size > 1:
            from .distributed.workers import broadcast_solver_state
            broadcast_solver_state(self)

    def install_sigint_handler(self):
        signal.signal(signal.SIGINT, self.request_stop)

    def _update_smoothed_loss(self, loss):
        window = self.param.average_loss
        self.losses.append(loss)
        if len(self.losses) > window:
            self.losses.pop(0)
        self.smoothed_loss = sum(self.losses) / len(self.losses)

    # ------------------------------------------------------------- tests --
    def test_all(self):
        refit_for_solver(self)  # Decode refit_centroids only
        return [self.test(i) for i in range(len(self.test_nets))]

    def test(self, test_id=0):
        if (isinstance(test_id, bool) or not isinstance(test_id, (int, np.integer))
                or not 0 <= test_id < len(self.test_nets)):
            raise SolverError(f"no test net #{test_id!r}: this solver has "
                              f"{len(self.test_nets)} (test_iter gives one per test net)")
        return self._test(test_id)

    def _test(self, test_id):
        """Run test_iter batches of test net ``test_id``; returns a dict of
        output name -> mean value (arrays for vector outputs)."""
        net = self.test_nets[test_id]
        iters = self.param.test_iter[test_id]
        sums = {}
        loss = 0.0
        for _ in range(iters):
            loss += net.forward_prefilled()
            self._emit("on_test_batch", test_id, net)
            for name in net.outputs:
                value = np.asarray(to_numpy(net.blobs[name].data), dtype=np.float64)
                sums[name] = sums.get(name, 0.0) + value
        results = {k: (float(v) / iters if np.ndim(v) == 0 else v / iters)
                   for k, v in sums.items()}
        if self.param.test_compute_loss:
            results["loss"] = loss / max(iters, 1)
        if self.comm.size > 1:  # the mean over the workers' shards
            from .distributed.workers import average_results
            results = average_results(self.comm, results)
        for name, value in results.items():
            shown = (f"{value:.6g}" if np.ndim(value) == 0
                     else "[" + ", ".join(f"{v:.4g}" for v in np.ravel(value)) + "]")
            self.log(f"Iteration {self.iter}, Testing net (#{test_id}): {name} = {shown}")
        self._write_log({"kind": "test", "iter": self.iter, "test_net": test_id,
                         "outputs": {k: (v if np.ndim(v) == 0 else np.ravel(v).tolist())
                                     for k, v in results.items()}})
        self._emit("on_test", test_id, results)
        return results

    # --------------------------------------------------------- snapshots --
    def snapshot_prefix(self):
        prefix = self.param.snapshot_prefix
        if not prefix:
            base = (os.path.splitext(os.path.basename(self.source))[0]
                    if self.source != "<SolverParameter>" else (self.net.name or "net"))
            prefix = os.path.join(self.base_dir, base)
        elif not os.path.isabs(prefix):
            prefix = os.path.join(self.base_dir, prefix)
        return prefix

    def _write_log(self, record):
        if self.comm.rank != 0:
            return
        if self.log_path is None:
            self.log_path = self.snapshot_prefix() + "_log.jsonl"
            os.makedirs(os.path.dirname(self.log_path) or ".", exist_ok=True)
        record = dict(record, time=time.time())
        with open(self.log_path, "a") as f:
            f.write(json.dumps(_finite_json(record), allow_nan=False) + "\n")

    def snapshot(self):
        """Write <prefix>_iter_N.caffemodel and .solverstate (atomically).

        The .caffemodel is written first and the .solverstate, which names
        it, last: a .solverstate on disk always has its weights beside it
        (what :func:`latest_snapshot` relies on).  Non-finite weights are
        never written (DivergedError).  With several workers rank 0 writes
        (the others return the same paths)."""
        for blob in self.net.learnable_params:
            if not bool(self.backend.xp.isfinite(blob.data).all()):
                self._diverged(f"parameter '{blob.name}' holds non-finite values at "
                               f"iteration {self.iter}")
        prefix = self.snapshot_prefix()
        model_path = f"{prefix}_iter_{self.iter}.caffemodel"
        state_path = f"{prefix}_iter_{self.iter}.solverstate"
        if self.comm.rank != 0:
            self.last_snapshot_iter = self.iter
            return model_path, state_path
        self.net.save(model_path, write_diff=self.param.snapshot_diff)
        state = pb.SolverState(iter=self.iter, learned_net=os.path.basename(model_path),
                               current_step=self.current_step, solver_type=self.type)
        for h in self.history:
            blob = state.history.add()
            blob.shape.dim.extend(h.shape)
            blob.data.extend(to_numpy(h).astype(np.float32, copy=False).ravel().tolist())
        layer_state = {"train": self.net.state_dict(),
                       "test": [n.state_dict() for n in self.test_nets]}
        state.layer_state = json.dumps(layer_state)
        state.smoothed_loss_window.extend(self.losses)
        atomic_write(state_path, state.SerializeToString())
        self.last_snapshot_iter = self.iter
        self.log(f"Snapshotting to {model_path} and {state_path}")
        self._emit("on_snapshot", (model_path, state_path))
        return model_path, state_path

    def restore(self, state_path):
        """Continue from a .solverstate (and the .caffemodel it names).  With
        several workers rank 0 reads it and :meth:`synchronize` hands its
        state to the others (the files need to exist on rank 0's host only);
        rank 0's error, if any, is raised on every worker."""
        if self.comm.size == 1:
            self._restore(state_path)
            return
        from .distributed.workers import raise_together
        error = None
        if self.comm.rank == 0:
            try:
                self._restore(state_path)
            except LayergraphError as e:
                error = e
        raise_together(self.comm, error)
        self.synchronize()

    def _restore(self, state_path):
        state_path = os.fspath(state_path)
        if state_path.endswith(".caffemodel"):
            raise SnapshotError(f"{state_path}: is a weights file; resume from its "
                                f".solverstate (or start from these weights with --weights)")
        state = read_binary(state_path, pb.SolverState(), "solver state (.solverstate)")
        if not state.learned_net and not state.history and not state.iter:
            raise SnapshotError(f"{state_path}: is not a solver state (.solverstate) written "
                                f"by `train`")
        if state.solver_type and state.solver_type != self.type:
            raise SnapshotError(f"{state_path}: written by a {state.solver_type} solver, "
                                f"this solver is {self.type}")
        model = state.learned_net
        if model and not os.path.isabs(model) and not os.path.exists(model):
            model = os.path.join(os.path.dirname(os.path.abspath(state_path)), model)
        if not model or not os.path.exists(model):
            raise SnapshotError(f"{state_path}: its weights file '{state.learned_net}' "
                                f"is missing")
        self.net.copy_from(model)
        if len(state.history) != len(self.history):
            raise SnapshotError(f"{state_path}: holds {len(state.history)} history blobs, "
                                f"this net needs {len(self.history)}")
        for k, proto in enumerate(state.history):
            values = np.asarray(proto.data, dtype=np.float32)
            if values.size != self.history[k].size:
                raise SnapshotError(f"{state_path}: history blob {k} has {values.size} "
                                    f"values, expected {self.history[k].size}")
            self.history[k][...] = self.backend.xp.asarray(
                values.reshape(self.history[k].shape))
        self.iter = int(state.iter)
        self.current_step = int(state.current_step)
        self.losses = list(state.smoothed_loss_window)
        if self.losses:
            self.smoothed_loss = sum(self.losses) / len(self.losses)
        if state.layer_state:
            layer_state = json.loads(state.layer_state)
            self.net.load_state_dict(layer_state.get("train", {}))
            for net, st in zip(self.test_nets, layer_state.get("test", [])):
                net.load_state_dict(st)
        self._truncate_log(self.iter)
        self.log(f"Restored solver state from {state_path} at iteration {self.iter}")

    def _truncate_log(self, iteration):
        """Drop the log records of iterations a resumed run will redo (and a
        torn last line), so the log reads as if the run never stopped."""
        path = self.snapshot_prefix() + "_log.jsonl"
        if not os.path.isfile(path):
            return
        kept = []
        with open(path, "rb") as f:
            for line in f.read().split(b"\n"):
                try:
                    record = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(record, dict) and record.get("iter", 0) < iteration:
                    kept.append(json.dumps(record))
        atomic_write(path, ("\n".join(kept) + "\n" if kept else "").encode())
        self.log_path = path

    def close(self):
        """Release the nets' resources and close the callbacks that have a
        close() (the TensorBoard writer)."""
        for cb in self.callbacks:
            close = getattr(cb, "close", None)
            if callable(close):
                close()
        self.net.close()
        for net in self.test_nets:
            net.close()
