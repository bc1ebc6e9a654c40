"""Starting and ending workers: ``train --gpu LIST`` (one process per GPU
over NCCL) and the rule that an error on one worker ends them all.

``layergraph train --solver S --gpu all`` (or ``--gpu 0,1``) with more than
one GPU and no MPI launcher: :func:`launch_gpu_workers` starts one process
per GPU (``python -m layergraph.distributed.launch ARGS``) with
LAYERGRAPH_RANK, LAYERGRAPH_WORLD_SIZE, LAYERGRAPH_GPU and LAYERGRAPH_NCCL_ID
(a file in a private temporary folder where rank 0 publishes the NCCL unique
id) and watches them: a worker that fails gets the others terminated (a
worker waiting in an NCCL collective for a dead peer would wait forever);
workers stopped by Ctrl-C (each gets the terminal's SIGINT; they agree to
stop after the same iteration and rank 0 snapshots) are waited for.  Under
``mpiexec`` the MPI ranks are the workers and ``--gpu LIST`` gives each the
GPU at its rank on its host.

:func:`fail_together`: an exception on any worker prints one line
(``layergraph: error: ...``; a worker other than 0 first gives rank 0 a
moment, so that an error every worker meets is printed once, by rank 0, and
names itself ``worker r of N`` otherwise), then ends the job: MPI_Abort, or
for ``--gpu`` workers ncclCommAbort and exit (the launcher ends the rest).
A worker killed outright (SIGKILL, a crash) is MPI's to handle: mpiexec ends
the job and reports it.
"""
import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from ..errors import GPUError, LayergraphError

#: seconds a worker other than rank 0 waits before reporting its error
GRACE_SECONDS = 3.0


def gpu_devices(spec):
    """The device ids ``--gpu`` names: None without --gpu; 'all' is every
    CUDA device; '0,1' a list; '2' one device."""
    if spec is None:
        return None
    text = str(spec).strip().lower()
    if text == "all":
        from ..backend import _import_cupy, gpu_status
        ok, why = gpu_status()
        if not ok:
            raise GPUError(f"--gpu all: {why}")
        return list(range(_import_cupy().cuda.runtime.getDeviceCount()))
    ids = []
    for part in text.split(","):
        try:
            ids.append(int(part.strip().removeprefix("gpu:")))
        except ValueError:
            raise GPUError(f"bad --gpu '{spec}': give a device id, a comma-separated list "
                           f"(0,1) or 'all'") from None
    if len(set(ids)) != len(ids):
        raise GPUError(f"--gpu {spec}: a GPU is listed twice (one worker per GPU)")
    return ids


def _describe(error):
    """(exit status, one-line message, whether a traceback helps) for an
    exception, as ``layergraph``'s main reports it."""
    from ..cli.common import gpu_error_message
    if isinstance(error, LayergraphError):
        return error.exit_code, str(error), False
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted", False
    if isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else 1
        return code, f"exited with status {code} during training", False
    if isinstance(error, (OSError, MemoryError)):
        return 2, str(error), False
    message = gpu_error_message(error)
    if message is not None:
        return 2, message, False
    return 1, f"{type(error).__name__}: {error}", True


@contextlib.contextmanager
def fail_together(comm, grace=GRACE_SECONDS):
    """Run the block; on any exception print one line and end every worker
    (see the module docstring).  Never returns from an exception."""
    try:
        yield
    except BaseException as error:  # noqa: B902 - every way out must end the job
        code, message, trace = _describe(error)
        if comm.rank != 0:
            time.sleep(grace)  # rank 0, if it met the same error, aborts us meanwhile
        if trace:
            traceback.print_exception(type(error), error, error.__traceback__)
        who = "" if comm.rank == 0 else f"worker {comm.rank} of {comm.size}: "
        print(f"layergraph: error: {who}{message}", file=sys.stderr, flush=True)
        comm.abort(code if code else 1)


# ------------------------------------------------------------ --gpu LIST --

def launch_gpu_workers(args, devices, poll=0.2):
    """Run ``args.func(args)`` in one process per GPU of ``devices``;
    returns the job's exit status."""
    from ..backend import _import_cupy, gpu_status
    from .comm import _nccl_module
    ok, why = gpu_status()  # one message here rather than one per worker
    if not ok:
        raise GPUError(f"--gpu {','.join(map(str, devices))}: {why}")
    count = _import_cupy().cuda.runtime.getDeviceCount()
    missing = [d for d in devices if not 0 <= d < count]
    if missing:
        raise GPUError(f"--gpu: no GPU {missing[0]}; there are {count} CUDA device(s) "
                       f"(ids 0..{count - 1})")
    _nccl_module()
    folder = tempfile.mkdtemp(prefix="layergraph-gpus-")
    try:
        args_path = os.path.join(folder, "args.pickle")
        with open(args_path, "wb") as f:
            pickle.dump(args, f)
        workers = []
        for rank, device in enumerate(devices):
            env = dict(os.environ, LAYERGRAPH_RANK=str(rank),
                       LAYERGRAPH_WORLD_SIZE=str(len(devices)), LAYERGRAPH_GPU=str(device),
                       LAYERGRAPH_NCCL_ID=os.path.join(folder, "nccl.id"))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "layergraph.distributed.launch", args_path], env=env))
        return supervise(workers, poll)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def supervise(workers, poll=0.2):
    """Wait for ``workers`` (Popen objects).  All exit 0: 0.  One fails (it
    printed its message): the others, likely waiting for it in a collective,
    get SIGTERM, then SIGKILL; returns the failed worker's status (128 +
    signal for a killed one).  Exit status 130 (stopped by Ctrl-C, which
    every worker gets) waits for the others."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the workers handle Ctrl-C
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = [c for c in codes if c not in (None, 0, 130)]
            if failed:
                _end(workers)
                code = failed[0]
                return 128 - code if code < 0 else code
            if all(c is not None for c in codes):
                return 130 if 130 in codes else 0
            time.sleep(poll)
    finally:
        signal.signal(signal.SIGINT, previous)


def _end(workers, wait=10.0):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [w for w in workers if w.poll() is None]
        if not alive:
            return
        for w in alive:
            w.send_signal(sig)
        for w in alive:
            try:
                w.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass


def worker_main(argv):
    """A ``--gpu`` worker: the pickled train arguments, this worker's GPU."""
    with open(argv[0], "rb") as f:
        args = pickle.load(f)
    args.gpu = os.environ["LAYERGRAPH_GPU"]
    if int(os.environ["LAYERGRAPH_RANK"]) != 0:
        args.quiet = True
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
