"""Gradient averaging over flat, bucketed buffers.

After backward each worker r holds g_r, the gradient of its loss L_r on its
shard of B items.  The losses are means over the batch (TripletLoss and
ContrastiveLoss divide by 2N; see their modules), so with equal shards

    g = (1/N) sum_r g_r = (1/N) sum_r (1/B) sum_{i in shard r} dl_i
      = (1/(N B)) sum_{i in the global batch} dl_i,

the gradient one worker computes on the whole N*B batch: the workers then
apply the same update (same weights, same history) and stay identical.  A
loss normalised otherwise (``normalization: NONE`` sums over the batch,
VALID divides by a per-worker count) gives the workers' mean of that instead.

Buckets
-------
The learnable parameters (``net.learnable_params``: a weight shared by the
triplet towers is one blob there, so it is reduced once) are laid end to end,
last layer first -- the order backward finishes them -- in buckets of about
``bucket_bytes``: consecutive blobs go into one bucket until it would exceed
the size; a blob larger than that is a bucket of its own.  Each bucket is one
preallocated flat buffer (the parameters' dtype, on their backend) and one
allreduce: pack the diffs, start the allreduce (MPI_Iallreduce; NCCL on the
stream), pack the next bucket while it runs, then wait, scale by 1/N and
unpack.  Parameters with ``lr_mult: 0`` are left out unless
``clip_gradients`` is on (their diffs count in the clipping norm).

The loss and the stop flag (Ctrl-C on any worker) travel in a float64 pair of
their own, reduced with the buckets: every worker gets the mean loss (for the
log and the divergence check) and the same decision to stop.

Not overlapped with backward: the Net has no per-layer hook to start a bucket
as soon as its last gradient is final, and MPI on the CPU makes little
progress on a nonblocking collective while both cores compute (no progress
thread).  :attr:`seconds` holds the time spent here (packing, the reductions,
waiting for the slowest worker, unpacking) for the benchmark.
"""
import time

import numpy as np

#: the default bucket size (bytes): a few buckets for the 28x28 templates
BUCKET_BYTES = 1 << 20


def plan_buckets(counts, itemsize, bucket_bytes=BUCKET_BYTES):
    """Buckets for blobs of ``counts`` elements: a list of buckets, each a
    list of (blob index, offset, count) with offsets into the bucket's flat
    buffer.  Blobs are taken last first; a bucket takes consecutive blobs
    while its size stays within ``bucket_bytes`` (a larger blob alone).

    >>> plan_buckets([10, 300, 5], itemsize=4, bucket_bytes=1024)
    [[(2, 0, 5)], [(1, 0, 300)], [(0, 0, 10)]]
    >>> plan_buckets([10, 20, 5], itemsize=4, bucket_bytes=1024)
    [[(2, 0, 5), (1, 5, 20), (0, 25, 10)]]
    """
    limit = max(int(bucket_bytes) // int(itemsize), 1)
    buckets, current, filled = [], [], 0
    for index in reversed(range(len(counts))):
        count = int(counts[index])
        if current and filled + count > limit:
            buckets.append(current)
            current, filled = [], 0
        current.append((index, filled, count))
        filled += count
    if current:
        buckets.append(current)
    return buckets


class GradientReducer:
    """Averages the diffs of ``blobs`` over the workers of ``comm`` (see the
    module docstring); ``reduce(loss, stop)`` returns (mean loss, whether
    any worker asked to stop)."""

    def __init__(self, comm, blobs, bucket_bytes=BUCKET_BYTES):
        self.comm = comm
        self.blobs = list(blobs)
        self.seconds = 0.0      # total time in reduce()
        self.last_seconds = 0.0
        self.calls = 0
        if not self.blobs:
            self.buckets, self.buffers = [], []
        else:
            xp = self.blobs[0].xp
            dtype = self.blobs[0].diff.dtype
            for blob in self.blobs:
                if blob.diff.dtype != dtype or not blob.diff.flags.c_contiguous:
                    raise ValueError(f"parameter '{blob.name}': gradients must share one dtype "
                                     f"and be C-contiguous")
            self.buckets = plan_buckets([b.count for b in self.blobs], dtype.itemsize,
                                        bucket_bytes)
            self.buffers = [xp.zeros(sum(c for _, _, c in bucket), dtype)
                            for bucket in self.buckets]
        xp = self.blobs[0].xp if self.blobs else np
        self.scalars = xp.zeros(2, np.float64)

    @property
    def bytes(self):
        """Bytes of gradient each worker contributes per iteration."""
        return sum(int(b.nbytes) for b in self.buffers)

    def reduce(self, loss, stop=False):
        t0 = time.perf_counter()
        comm = self.comm
        self.scalars[0] = loss
        self.scalars[1] = 1.0 if stop else 0.0
        pending = [comm.iallreduce_sum(self.scalars)]
        for bucket, buffer in zip(self.buckets, self.buffers):
            for index, offset, count in bucket:
                buffer[offset:offset + count] = self.blobs[index].diff.reshape(-1)
            pending.append(comm.iallreduce_sum(buffer))
        scale = 1.0 / comm.size
        for request, bucket, buffer in zip(pending[1:], self.buckets, self.buffers):
            request.wait()
            buffer *= buffer.dtype.type(scale)
            for index, offset, count in bucket:
                self.blobs[index].diff.reshape(-1)[...] = buffer[offset:offset + count]
        pending[0].wait()
        scalars = self.scalars.get() if hasattr(self.scalars, "get") else self.scalars
        mean_loss, stop_votes = float(scalars[0]) * scale, float(scalars[1])
        self.last_seconds = time.perf_counter() - t0
        self.seconds += self.last_seconds
        self.calls += 1
        return mean_loss, stop_votes > 0
