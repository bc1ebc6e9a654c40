"""What the Solver does with a communicator of several workers: tell the
layers (:func:`attach`), start every worker from rank 0's state
(:func:`broadcast_solver_state`) and average test outputs
(:func:`average_results`).  See the package docstring for the design."""
import numpy as np

from ..errors import SolverError

#: data layers that read their source on their own: every worker would read
#: the same records, so they are refused in a data-parallel TRAIN net
UNSHARDED_DATA = ("ImageData", "HDF5Data", "WindowData")

#: layers whose TRAIN-time result depends on the batch they see: with N
#: workers they see a shard, not the global batch (logged once, not refused)
PER_WORKER = {
    "BatchNorm": "normalises with each worker's batch statistics",
    "OnlineTripletLoss": "mines triplets within each worker's batch",
    "OnlineContrastiveLoss": "mines pairs within each worker's batch",
    "AccuracyEncoding": "updates its centroids from each worker's batch (rank 0's are saved)",
    "Dropout": "draws the same masks on every worker",
}


def attach(net, comm, train=True):
    """Hand ``comm`` to the layers of ``net`` that take part in data-parallel
    training (``layer.data_parallel(comm)``: Data, DataSequence, Decode).
    Returns notes on the layers that act per worker (:data:`PER_WORKER`).
    Raises SolverError for a TRAIN net with a data layer that cannot shard."""
    notes = []
    for layer in net.layers:
        hook = getattr(layer, "data_parallel", None)
        if hook is not None:
            hook(comm)
        elif train and layer.type in UNSHARDED_DATA:
            raise SolverError(f"layer '{layer.name}' ({layer.type}) cannot split its data "
                              f"between {comm.size} workers; data-parallel training reads "
                              f"through Data layers (convert the source: layergraph data)")
        if train and layer.type in PER_WORKER:
            notes.append(f"{layer.name} ({layer.type}) {PER_WORKER[layer.type]}")
    return notes


def _unique_blobs(nets):
    seen, blobs = set(), []
    for net in nets:
        for layer in net.layers:
            for blob in layer.blobs:
                if id(blob) not in seen:
                    seen.add(id(blob))
                    blobs.append(blob)
    return blobs


def broadcast_solver_state(solver):
    """Every worker takes rank 0's state: all parameter blobs of the TRAIN and
    TEST nets (learnable or not, each shared blob once), the solver history,
    the iteration, the lr schedule step, the smoothed-loss window and the
    layers' state dicts (batch counters, DataSequence caches, rng steps)."""
    comm = solver.comm
    for blob in _unique_blobs([solver.net] + solver.test_nets):
        comm.broadcast(blob.data)
    for history in solver.history:
        comm.broadcast(history)
    state = None
    if comm.rank == 0:
        state = {"iter": solver.iter, "current_step": solver.current_step,
                 "losses": list(solver.losses),
                 "train": solver.net.state_dict(),
                 "test": [net.state_dict() for net in solver.test_nets]}
    state = comm.broadcast_object(state)
    if comm.rank != 0:
        solver.iter = int(state["iter"])
        solver.current_step = int(state["current_step"])
        solver.losses = list(state["losses"])
        if solver.losses:
            solver.smoothed_loss = sum(solver.losses) / len(solver.losses)
        solver.net.load_state_dict(state["train"])
        for net, layer_state in zip(solver.test_nets, state["test"]):
            net.load_state_dict(layer_state)


def average_results(comm, results):
    """The workers' mean of each value of ``results`` (name -> float or
    array; every worker has the same names in the same order): one
    float64 allreduce."""
    names = list(results)
    shapes = [np.shape(results[k]) for k in names]
    flat = np.concatenate([np.ravel(np.asarray(results[k], np.float64)) for k in names]
                          ) if names else np.zeros(0)
    xp = getattr(comm, "cupy", None)
    buffer = xp.asarray(flat) if xp is not None else flat
    comm.allreduce_sum(buffer)
    flat = (buffer.get() if xp is not None else buffer) / comm.size
    out, start = {}, 0
    for name, shape in zip(names, shapes):
        count = int(np.prod(shape, dtype=np.int64))
        value = flat[start:start + count]
        out[name] = float(value[0]) if shape == () else value.reshape(shape)
        start += count
    return out


def raise_together(comm, error):
    """Rank 0's error (a LayergraphError or None) raised on every worker, so
    that a failure of a step only rank 0 takes (reading a snapshot) does not
    leave the others waiting in the next collective."""
    shared = comm.broadcast_object(None if error is None else (type(error), str(error)))
    if shared is None:
        return
    if comm.rank == 0:
        raise error
    cls, message = shared
    raise cls(message)
