"""Data-parallel training: N workers, one model, a global batch of N x B.

    mpiexec -n 2 layergraph train --solver S        # CPU workers over MPI (mpi4py)
    layergraph train --solver S --gpu all           # one process per GPU over NCCL

What each worker does (the Solver drives it; nothing else changes in the
command or the files):

1. **Start identical.**  Rank 0 chooses the seed (random_seed < 0 draws one)
   and broadcasts it before the nets are built; at the start of ``solve`` and
   after a resume rank 0 broadcasts every parameter blob (learnable or not:
   Decode's centroids too), the solver history, the iteration and the
   layers' state (batch counters, DataSequence caches).  Only rank 0 reads
   ``--weights`` and ``--snapshot`` files, so they need to exist only there.
2. **Shard every batch.**  ``batch_size`` stays per worker; the global batch
   is N x batch_size.  Every Data layer draws the same global batch k (the
   same generators, keyed on the seed and k, as one worker with batch N x B)
   and worker r keeps rows [r B, (r + 1) B): images, crops, flips,
   augmentation and pair partners are exactly those of the single-worker
   batch.  P x K batches become (N P) x K globally: each worker gets P whole
   labels x K images.  DataSequence gathers the N shards, updates its caches
   and draws positives and negatives for the global batch (every worker the
   same), and keeps its rows; Decode updates its centroids (or KNN caches)
   from the gathered global batch.  So N workers x B follow one worker x
   N B, to float32 rounding (:mod:`.reducer` for the gradient).
3. **Average.**  After backward the gradients are averaged with one
   allreduce per bucket (:class:`.reducer.GradientReducer`), with the loss
   and the stop flag; every worker applies the same update.  Test outputs
   are averaged over the workers' shards of each test batch.
4. **Rank 0 writes.**  Snapshots, the training log, the progress bar and
   TensorBoard come from rank 0 only; the others print nothing.  An error on
   any worker ends the job through MPI_Abort with one message
   (:func:`.launch.fail_together`); ``--gpu`` workers are ended by their
   launcher.

Not equivalent to one worker with the global batch (each worker uses its own
shard): BatchNorm's batch statistics, in-batch mining (OnlineTripletLoss,
OnlineContrastiveLoss), AccuracyEncoding's centroid updates, and Dropout
masks (drawn per worker from the same generator).  The Solver logs one line
naming such layers.  Data layers other than Data (ImageData, HDF5Data,
WindowData) cannot shard and are refused in the TRAIN net.

Which communicator (:func:`world`): MPI when the process was started by an
MPI launcher with more than one process -- seen from its environment
(``PMI_SIZE``: MPICH, Intel MPI, Slurm's PMI; ``OMPI_COMM_WORLD_SIZE``: Open
MPI; ``MV2_COMM_WORLD_SIZE``: MVAPICH), so a plain ``layergraph train``
never imports mpi4py; a worker of the ``--gpu`` launcher
(``LAYERGRAPH_WORLD_SIZE``); else a single process, whose collectives do
nothing.  A GPU backend under MPI uses NCCL (the id broadcast by MPI).
"""
import os

from ..errors import LayergraphError
from .comm import Communicator, MPIComm, NCCLComm, PendingNCCL
from .reducer import BUCKET_BYTES, GradientReducer, plan_buckets

__all__ = ["Communicator", "MPIComm", "NCCLComm", "GradientReducer", "plan_buckets",
           "BUCKET_BYTES", "world", "launched_size", "SINGLE"]

#: environment variables through which MPI launchers announce the world size
MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
#: set by the ``--gpu`` launcher (layergraph.distributed.launch) in each worker
LAUNCHER_VARIABLES = ("LAYERGRAPH_RANK", "LAYERGRAPH_WORLD_SIZE", "LAYERGRAPH_NCCL_ID")

SINGLE = Communicator()
_world = None


def launched_size(environ=None):
    """(launcher, size) from the environment: ("mpi", N) under an MPI
    launcher with N > 1 processes, ("gpu", N) in a worker of the ``--gpu``
    launcher, else (None, 1)."""
    env = os.environ if environ is None else environ
    for name in MPI_SIZE_VARIABLES:
        value = env.get(name)
        if value:
            try:
                size = int(value)
            except ValueError:
                continue
            if size > 1:
                return "mpi", size
    value = env.get("LAYERGRAPH_WORLD_SIZE")
    if value and value.isdigit() and int(value) > 1:
        return "gpu", int(value)
    return None, 1


def world():
    """This process's communicator (made once): MPI, a ``--gpu`` worker's
    NCCL, or the single-process :data:`SINGLE`."""
    global _world
    if _world is None:
        kind, size = launched_size()
        if kind == "mpi":
            try:
                import mpi4py  # noqa: F401
            except ImportError:
                raise LayergraphError(
                    f"started by an MPI launcher with {size} processes, but mpi4py is not "
                    f"installed: pip install 'layergraph[mpi]'") from None
            comm = MPIComm()
            if comm.size != size:
                raise LayergraphError(
                    f"the MPI launcher announced {size} processes but MPI sees {comm.size}: "
                    f"mpi4py uses another MPI than the mpiexec that started this (pip install "
                    f"mpich brings a matching mpiexec)")
            _world = comm
        elif kind == "gpu":
            env = os.environ
            _world = PendingNCCL(int(env["LAYERGRAPH_RANK"]), size, env["LAYERGRAPH_NCCL_ID"])
        else:
            _world = SINGLE
    return _world
