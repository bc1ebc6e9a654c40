"""Communicators: the few collectives data-parallel training needs, on MPI
(mpi4py) or NCCL (CuPy), and a single-process one that does nothing.

Every communicator has ``rank`` (0 .. size - 1) and ``size`` and offers

``allreduce_sum(a)``      a <- sum over the workers of a (in place)
``iallreduce_sum(a)``     the same, started now; ``.wait()`` on the result
                          finishes it (MPI_Iallreduce; NCCL runs on the
                          current CUDA stream, ordered with what follows)
``broadcast(a, root)``    a <- root's a (in place)
``allgather(a)``          the workers' arrays (n, ...) stacked in rank order,
                          (size * n, ...)
``broadcast_object(o)``   root's Python object (pickled)
``abort(code)``           end every worker now (MPI_Abort; NCCL: the
                          communicator is aborted and this process exits,
                          the launcher ends the others)

Arrays are the backend's: NumPy for MPI (a CuPy array is staged through the
host when the GPU path has no NCCL), CuPy device arrays for NCCL.  Arrays
reduced or broadcast in place must be C-contiguous.

Collectives are matched by order: every worker must make the same calls in
the same order (MPI's and NCCL's rule); the Solver and the layers that use a
communicator do so by construction (the same net, the same iterations).
"""
import os
import pickle
import sys
import time

import numpy as np

from ..errors import LayergraphError


class _Done:
    """A finished request (``wait`` returns at once)."""

    def wait(self):
        return None


DONE = _Done()


class _MPIRequest:
    def __init__(self, request):
        self.request = request

    def wait(self):
        self.request.Wait()


class Communicator:
    """Single process: rank 0 of 1; every collective is the identity."""

    name = "single"
    rank = 0
    size = 1

    @property
    def is_root(self):
        return self.rank == 0

    def for_backend(self, backend):
        """The communicator for arrays on ``backend`` (MPI under a GPU
        backend hands over to NCCL when CuPy has it)."""
        return self

    def allreduce_sum(self, array):
        return array

    def iallreduce_sum(self, array):
        return DONE

    def broadcast(self, array, root=0):
        return array

    def allgather(self, array):
        return array

    def broadcast_object(self, obj, root=0):
        return obj

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.stderr.flush()
        os._exit(code)

    def describe(self):
        return "1 worker"

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"


def _contiguous(array, what):
    if not array.flags.c_contiguous:
        raise ValueError(f"{what} needs a C-contiguous array")


def _is_cupy(array):
    return type(array).__module__.startswith("cupy")


class MPIComm(Communicator):
    """MPI through mpi4py (``mpiexec -n N ...``).  CuPy arrays are copied
    through the host (use NCCL for GPUs: :meth:`for_backend`)."""

    name = "mpi"

    def __init__(self, comm=None):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._nccl = None

    @property
    def local_rank(self):
        """This worker's rank among the workers on its host (MPI's shared-memory split)."""
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return local.Get_rank()
        finally:
            local.Free()

    def for_backend(self, backend):
        if not backend.is_gpu:
            return self
        if self._nccl is None:
            try:
                _nccl_module()
            except LayergraphError:
                self._nccl = self  # no NCCL: arrays go through the host
            else:
                self._nccl = NCCLComm.bootstrap_mpi(self)
        return self._nccl

    def allreduce_sum(self, array):
        if _is_cupy(array):
            host = array.get()
            self.comm.Allreduce(self.MPI.IN_PLACE, host)
            array.set(host)
            return array
        _contiguous(array, "allreduce")
        self.comm.Allreduce(self.MPI.IN_PLACE, array)
        return array

    def iallreduce_sum(self, array):
        if _is_cupy(array):
            self.allreduce_sum(array)
            return DONE
        _contiguous(array, "allreduce")
        return _MPIRequest(self.comm.Iallreduce(self.MPI.IN_PLACE, array))

    def broadcast(self, array, root=0):
        if _is_cupy(array):
            host = array.get()
            self.comm.Bcast(host, root=root)
            array.set(host)
            return array
        _contiguous(array, "broadcast")
        self.comm.Bcast(array, root=root)
        return array

    def allgather(self, array):
        if _is_cupy(array):
            import cupy
            return cupy.asarray(self.allgather(array.get()))
        array = np.ascontiguousarray(array)
        out = np.empty((self.size,) + array.shape, array.dtype)
        self.comm.Allgather(array, out)
        return out.reshape((self.size * array.shape[0],) + array.shape[1:])

    def broadcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(1.0)  # mpiexec forwards output asynchronously: let the message out first
        self.comm.Abort(code)

    def describe(self):
        library = " ".join(self.MPI.Get_library_version().split()[:3])
        return f"{self.size} workers (MPI: {library})"


# ------------------------------------------------------------------- NCCL --

def _nccl_module():
    """cupy.cuda.nccl, or a one-line GPUError saying what is missing."""
    import warnings
    from ..errors import GPUError
    try:
        with warnings.catch_warnings():  # CuPy warns at import when NCCL is missing
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl
    except Exception as e:  # no CuPy, or a broken CUDA install
        raise GPUError(f"several GPUs need CuPy with NCCL ({type(e).__name__}: {e})") from None
    if not getattr(nccl, "available", False):
        raise GPUError("several GPUs need NCCL, which CuPy cannot load (libnccl.so.2); "
                       "install it: pip install nvidia-nccl-cu12")
    return nccl


class NCCLComm(Communicator):
    """NCCL through ``cupy.cuda.nccl``: one process per GPU, the current CUDA
    device, collectives on the current stream.  ``host``: an MPIComm used
    for Python objects and aborting (None: objects travel over NCCL as
    bytes, and :meth:`abort` exits this process; the launcher of
    ``--gpu all`` then ends the others)."""

    name = "nccl"

    def __init__(self, rank, size, unique_id, host=None):
        import cupy
        self.cupy = cupy
        self.nccl = _nccl_module()
        self.rank, self.size, self.host = int(rank), int(size), host
        self.comm = self.nccl.NcclCommunicator(self.size, unique_id, self.rank)
        n = self.nccl
        self._types = {np.dtype(np.float32): n.NCCL_FLOAT32, np.dtype(np.float64): n.NCCL_FLOAT64,
                       np.dtype(np.float16): n.NCCL_FLOAT16, np.dtype(np.int32): n.NCCL_INT32,
                       np.dtype(np.int64): n.NCCL_INT64, np.dtype(np.uint64): n.NCCL_UINT64,
                       np.dtype(np.uint8): n.NCCL_UINT8, np.dtype(np.int8): n.NCCL_INT8}

    @classmethod
    def bootstrap_mpi(cls, host):
        """Rank 0 makes the NCCL unique id, MPI broadcasts it."""
        nccl = _nccl_module()
        uid = nccl.get_unique_id() if host.rank == 0 else None
        return cls(host.rank, host.size, host.broadcast_object(uid), host=host)

    @classmethod
    def bootstrap_file(cls, rank, size, path, timeout=120.0):
        """Rank 0 writes the NCCL unique id to ``path`` (atomically), the
        others wait for it (the ``--gpu all`` launcher's rendezvous)."""
        nccl = _nccl_module()
        if rank == 0:
            uid = nccl.get_unique_id()
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                pickle.dump(uid, f)
            os.replace(tmp, path)
        else:
            deadline = time.monotonic() + timeout
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    raise LayergraphError(f"GPU worker {rank}: worker 0 published no NCCL id "
                                          f"in {timeout:.0f} s ({path})")
                time.sleep(0.05)
            with open(path, "rb") as f:
                uid = pickle.load(f)
        return cls(rank, size, uid)

    def _type(self, array):
        try:
            return self._types[np.dtype(array.dtype)]
        except KeyError:
            raise ValueError(f"NCCL: no type for {array.dtype}") from None

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def allreduce_sum(self, array):
        _contiguous(array, "allreduce")
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, self._type(array),
                            self.nccl.NCCL_SUM, self._stream())
        return array

    def iallreduce_sum(self, array):
        self.allreduce_sum(array)  # queued on the stream: later work waits for it there
        return DONE

    def broadcast(self, array, root=0):
        _contiguous(array, "broadcast")
        self.comm.bcast(array.data.ptr, array.size, self._type(array), root, self._stream())
        return array

    def allgather(self, array):
        array = self.cupy.ascontiguousarray(array)
        out = self.cupy.empty((self.size * array.shape[0],) + array.shape[1:], array.dtype)
        self.comm.allGather(array.data.ptr, out.data.ptr, array.size, self._type(array),
                            self._stream())
        return out

    def broadcast_object(self, obj, root=0):
        if self.host is not None:
            return self.host.broadcast_object(obj, root)
        cp = self.cupy
        payload = pickle.dumps(obj) if self.rank == root else b""
        length = cp.asarray(np.array([len(payload)], np.int64))
        self.broadcast(length, root)
        n = int(length.get()[0])
        buffer = (cp.asarray(np.frombuffer(payload, np.uint8)) if self.rank == root
                  else cp.empty(n, cp.uint8))
        self.broadcast(buffer, root)
        return obj if self.rank == root else pickle.loads(buffer.get().tobytes())

    def barrier(self):
        self.allreduce_sum(self.cupy.zeros(1, self.cupy.float32))
        self.cupy.cuda.get_current_stream().synchronize()

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            if self.host is not None:
                self.host.abort(code)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def describe(self):
        return f"{self.size} GPU workers (NCCL {self.nccl.get_version()})"


class PendingNCCL(Communicator):
    """A worker of the ``--gpu all`` launcher before its GPU is chosen: it
    knows its rank and the world size; :meth:`for_backend` (the GPU
    backend) makes the NCCL communicator through the launcher's id file."""

    name = "nccl"

    def __init__(self, rank, size, id_file):
        self.rank, self.size, self.id_file = int(rank), int(size), id_file
        self._nccl = None

    def for_backend(self, backend):
        if not backend.is_gpu:
            raise LayergraphError("a GPU worker of `train --gpu LIST` got a CPU backend; "
                                  "give GPUs only (or run CPU workers with mpiexec)")
        if self._nccl is None:
            self._nccl = NCCLComm.bootstrap_file(self.rank, self.size, self.id_file)
        return self._nccl

    def _needs_gpu(self, *_args, **_kw):
        raise LayergraphError("a GPU worker used its communicator before choosing its GPU")

    allreduce_sum = iallreduce_sum = broadcast = allgather = broadcast_object = _needs_gpu

    def describe(self):
        return f"{self.size} GPU workers (NCCL)"
