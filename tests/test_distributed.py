"""Data-parallel training (layergraph.distributed): MPI workers through
mpiexec on this machine, the layers' sharding in-process, the bucketing math.

The 2-worker tests start ``mpiexec -n 2`` (MPICH from ``pip install mpich``,
mpi4py) and are skipped with the reason when either is missing or cannot
start two ranks here.  Every subprocess has a timeout: a hang fails the test.

Equivalence (N = 2 workers x batch B against 1 worker x 2B): the data each
worker sees is exactly its rows of the single worker's batch (compared
bitwise), the averaged gradient at the first iteration equals the global
one to float32 rounding, and the loss curves agree within rtol 1e-3 over 24
iterations.  The runs use a tenth of the templates' learning rate: float32
sums in another order flip the odd ReLU whose input is within rounding of 0
(e.g. 2.9e-7 in a TripletNet run), and at the templates' rates (Adam, whose
early steps are about lr * sign(g)) such a flip grows into percent-level
differences within 20 iterations; at a tenth the curves agree to ~1e-6, and
a summed instead of averaged gradient is still off by 1e-2 .. 3e-1.
"""
import importlib.util
import os
import pickle
import re
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from layergraph.distributed import (SINGLE, BUCKET_BYTES, Communicator, GradientReducer,
                                    launched_size, plan_buckets)
from layergraph.distributed.launch import gpu_devices, supervise
from layergraph.distributed.workers import average_results
from layergraph.errors import GPUError
from layergraph.proto import pb
from layergraph.testing import make_layer, setup_layer

TEMPLATES = ["TripletNet_28x28", "Siamese_28x28"]
DATA_BLOBS = {"TripletNet_28x28": "anchor,positive,negative,labels",
              "Siamese_28x28": "pair_data,pair_labels"}
BATCH = 8          # per worker; the single worker takes 2 x BATCH
ITERATIONS = 24    # snapshots at 12 and 24
TIMEOUT = 120      # seconds for any mpiexec job

WORKER = r'''
"""One worker of a data-parallel run (or the single worker): solve, and
record per iteration the mean loss and this worker's data blobs, the
averaged gradients of iteration 0, the test outputs and the final blobs."""
import pickle
import sys

import numpy as np

import layergraph as lg


def main(solver_path, out, names, resume=None, iterations=None):
    solver = lg.Solver(solver_path, log=None)
    record = {"loss": [], "tests": [], "data": {n: [] for n in names.split(",")}}

    class Record:
        def on_gradients_ready(self, s):
            record["loss"].append(s.losses[-1])
            for name in record["data"]:
                record["data"][name].append(np.array(s.net.blobs[name].data))
            if "grad0" not in record:
                record["grad0"] = [np.array(b.diff) for b in s.net.learnable_params]

        def on_test(self, s, test_id, results):
            record["tests"].append({k: float(v) for k, v in results.items()})

    solver.add_callback(Record())
    if resume:
        solver.restore(resume)
        solver.step(int(iterations))
    else:
        solver.solve()
    record["data"] = {k: np.stack(v) for k, v in record["data"].items()}
    seen, blobs = set(), []
    for layer in solver.net.layers:
        for blob in layer.blobs:
            if id(blob) not in seen:
                seen.add(id(blob))
                blobs.append(np.array(blob.data))
    record["blobs"] = blobs
    record["prefix"] = solver.snapshot_prefix()
    with open(f"{out}.{solver.comm.rank}.pkl", "wb") as f:
        pickle.dump(record, f)
    solver.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
'''


# ------------------------------------------------------------- helpers --

def _mpiexec():
    """mpiexec beside this Python (the mpich wheel's), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def _env():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                 "LAYERGRAPH_WORLD_SIZE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def mpiexec():
    """The mpiexec command, once it has started two mpi4py ranks here."""
    exe = _mpiexec()
    if exe is None:
        pytest.skip("no mpiexec (pip install mpich, or -e '.[mpi]')")
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("no mpi4py (pip install mpi4py, or -e '.[mpi]')")
    probe = ("import os; from mpi4py import MPI; c = MPI.COMM_WORLD; "
             "os.write(1, f'<rank {c.Get_rank()} of {c.Get_size()}>'.encode())")
    try:
        done = subprocess.run([exe, "-n", "2", sys.executable, "-c", probe], env=_env(),
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("mpiexec -n 2 did not start two ranks within 60 s")
    if sorted(re.findall(r"<rank \d of 2>", done.stdout)) != ["<rank 0 of 2>", "<rank 1 of 2>"]:
        pytest.skip(f"mpiexec -n 2 cannot run mpi4py here: {(done.stdout + done.stderr)[-300:]}")
    return exe


def mpirun(mpiexec, *argv, n=2, timeout=TIMEOUT):
    t0 = time.monotonic()
    done = subprocess.run([mpiexec, "-n", str(n), *argv], env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    done.seconds = time.monotonic() - t0
    return done


def make_run(template, out, batch, lr_scale=0.1):
    """A template on MNIST with batch ``batch``, a tenth of its learning
    rate, every iteration logged, tests and snapshots at 12 and 24."""
    from layergraph.tools.templates import new_from_template
    new_from_template(template, "MNIST", str(out))
    net = out / "train_val.prototxt"
    net.write_text(re.sub(r"batch_size: \d+", f"batch_size: {batch}", net.read_text()))
    solver = out / "solver.prototxt"
    text = solver.read_text()
    lr = float(re.search(r"^base_lr: (\S+)", text, re.M).group(1)) * lr_scale
    for field, value in (("base_lr", lr), ("max_iter", ITERATIONS), ("display", 1),
                         ("test_interval", 12), ("test_iter", 2), ("snapshot", 12)):
        text = re.sub(rf"^{field}: .*$", f"{field}: {value}", text, flags=re.M)
    solver.write_text(text)
    return str(solver)


def load(out, rank=0):
    with open(f"{out}.{rank}.pkl", "rb") as f:
        return pickle.load(f)


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("layergraph: error:")]


@pytest.fixture(scope="module")
def worker_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(WORKER)
    return str(path)


@pytest.fixture(scope="module", params=TEMPLATES)
def runs(request, db, mpiexec, worker_script, tmp_path_factory):
    """The same template trained by 2 workers x BATCH (mpiexec) and by one
    worker x 2 BATCH (in this process): their solver files and records."""
    template = request.param
    root = tmp_path_factory.mktemp(template)
    two = make_run(template, root / "two", BATCH)
    one = make_run(template, root / "one", 2 * BATCH)
    done = mpirun(mpiexec, sys.executable, worker_script, two, str(root / "two_rec"),
                  DATA_BLOBS[template])
    assert done.returncode == 0, done.stdout + done.stderr
    runpy.run_path(worker_script)["main"](one, str(root / "one_rec"), DATA_BLOBS[template])
    return {"template": template, "root": root, "two": two, "one": one,
            "workers": [load(root / "two_rec", 0), load(root / "two_rec", 1)],
            "single": load(root / "one_rec", 0), "seconds": done.seconds}


# ------------------------------------------------- 2 workers on MPI --

def test_two_workers_see_exactly_the_single_workers_batches(runs):
    w0, w1 = runs["workers"]
    single = runs["single"]
    for name, full in single["data"].items():
        assert w0["data"][name].shape[1] == BATCH
        np.testing.assert_array_equal(
            np.concatenate([w0["data"][name], w1["data"][name]], axis=1), full,
            err_msg=f"{runs['template']}: blob {name}")


def test_two_workers_average_to_the_global_gradient_and_follow_the_loss_curve(runs):
    w0, w1 = runs["workers"]
    single = runs["single"]
    # the same weights at iteration 0: the mean of the shards' gradients is
    # the gradient of the global batch, to float32 rounding
    # (the last biases' gradients are rounding noise: the losses are
    # translation invariant; so one absolute tolerance from the largest)
    scale = max(float(np.abs(g).max()) for g in single["grad0"])
    for g2, g1 in zip(w0["grad0"], single["grad0"]):
        np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-5 * scale)
    assert w0["loss"] == w1["loss"]  # every worker logs the mean loss
    assert len(w0["loss"]) == ITERATIONS
    np.testing.assert_allclose(w0["loss"], single["loss"], rtol=1e-3)
    # test outputs: the mean over the workers' shards of the global test batches
    assert len(w0["tests"]) == len(single["tests"]) == 2
    for t2, t1 in zip(w0["tests"], single["tests"]):
        assert t2.keys() == t1.keys()
        for key in t1:
            assert t2[key] == pytest.approx(t1[key], rel=1e-3, abs=1e-6), key


def test_workers_stay_identical(runs):
    """Every parameter blob -- weights and Decode's centroids -- is the same
    on both workers after 24 iterations, bit for bit."""
    w0, w1 = runs["workers"]
    assert len(w0["blobs"]) == len(runs["single"]["blobs"])
    for a, b in zip(w0["blobs"], w1["blobs"]):
        np.testing.assert_array_equal(a, b)


def test_resume_under_two_workers_is_exact(runs, mpiexec, tmp_path):
    prefix = runs["workers"][0]["prefix"]
    resumed = str(tmp_path / "resumed" / "run")
    done = mpirun(mpiexec, sys.executable, "-m", "layergraph", "train", "--solver", runs["two"],
                  "--snapshot", f"{prefix}_iter_12.solverstate", "--snapshot-prefix", resumed,
                  "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("training log:") == 1  # rank 0 alone prints
    with open(f"{prefix}_iter_{ITERATIONS}.caffemodel", "rb") as f:
        uninterrupted = f.read()
    with open(f"{resumed}_iter_{ITERATIONS}.caffemodel", "rb") as f:
        assert f.read() == uninterrupted
    state = [pb.SolverState.FromString(open(p, "rb").read()) for p in
             (f"{prefix}_iter_{ITERATIONS}.solverstate",
              f"{resumed}_iter_{ITERATIONS}.solverstate")]
    for s in state:
        s.ClearField("learned_net")
    assert state[0] == state[1]
    import json
    logged = [json.loads(line) for line in open(f"{resumed}_log.jsonl")]
    losses = [r["loss"] for r in logged if r["kind"] == "train"]
    assert losses == runs["workers"][0]["loss"][12:]


def test_a_two_worker_snapshot_continues_in_one_worker(runs, worker_script, tmp_path):
    """The 2-worker snapshot at 12 in the 1 x 2B run: the same next images
    (the batch counter, DataSequence caches, Decode state carry over) and
    the same loss curve as the 2 workers."""
    prefix = runs["workers"][0]["prefix"]
    out = str(tmp_path / "continued")
    runpy.run_path(worker_script)["main"](runs["one"], out, DATA_BLOBS[runs["template"]],
                                          f"{prefix}_iter_12.solverstate", ITERATIONS - 12)
    continued = load(out)
    w0, w1 = runs["workers"]
    for name, full in continued["data"].items():
        np.testing.assert_array_equal(
            np.concatenate([w0["data"][name][12:], w1["data"][name][12:]], axis=1), full)
    np.testing.assert_allclose(continued["loss"], w0["loss"][12:], rtol=1e-3)


# ------------------------------------------------------------ failures --

INJECT = r'''
import os, signal, sys
from layergraph import solver as S
from layergraph.errors import DataError
update = S.Solver.apply_update
def failing(self):
    if self.iter == 3:
        if os.environ.get("LG_TEST_KILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        raise DataError("record 7 of MNIST.training is unreadable (injected)")
    update(self)
S.Solver.apply_update = failing
from layergraph.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture(scope="module")
def small_run(db, tmp_path_factory):
    return make_run("TripletNet_28x28", tmp_path_factory.mktemp("small") / "run", BATCH)


def _mpmd(mpiexec, solver, kill=False):
    """Rank 0: layergraph train; rank 1: the same with a failure at iteration 3."""
    env = _env()
    if kill:
        env["LG_TEST_KILL"] = "1"
    argv = ["train", "--solver", solver, "--quiet"]
    t0 = time.monotonic()
    done = subprocess.run([mpiexec, "-n", "1", sys.executable, "-m", "layergraph", *argv, ":",
                           "-n", "1", sys.executable, "-c", INJECT, *argv], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    done.seconds = time.monotonic() - t0
    return done


def test_an_error_on_one_worker_ends_the_job_with_one_message(mpiexec, small_run):
    done = _mpmd(mpiexec, small_run)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert "worker 1 of 2" in lines[0] and "injected" in lines[0]
    assert "Traceback" not in done.stderr
    assert done.seconds < 60


def test_a_killed_worker_ends_the_job(mpiexec, small_run):
    done = _mpmd(mpiexec, small_run, kill=True)
    assert done.returncode != 0, done.stdout + done.stderr
    assert done.seconds < 60


def test_a_rank_0_error_is_printed_once(mpiexec, small_run, tmp_path):
    done = mpirun(mpiexec, sys.executable, "-m", "layergraph", "train", "--solver", small_run,
                  "--snapshot", str(tmp_path / "missing.solverstate"), "--quiet")
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "missing.solverstate" in lines[0], done.stderr
    assert "worker" not in lines[0]


def test_ctrl_c_stops_every_worker_after_the_same_iteration(mpiexec, small_run, tmp_path):
    """SIGINT to mpiexec reaches every rank; the stop request travels with
    the gradients, so all stop after one iteration and rank 0 snapshots it."""
    import json
    from layergraph.solver import latest_snapshot
    prefix = str(tmp_path / "stopped" / "run")
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, "-m", "layergraph", "train",
                             "--solver", small_run, "--iterations", "100000", "--quiet",
                             "--snapshot-prefix", prefix], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(f"{prefix}_log.jsonl") and \
                    open(f"{prefix}_log.jsonl").read().count('"train"') >= 3:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - a hang: end it, then fail
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    state = latest_snapshot(prefix)
    assert state is not None and out.count("Stopped at iteration") == 1
    logged = [json.loads(line) for line in open(f"{prefix}_log.jsonl")]
    stopped = pb.SolverState.FromString(open(state, "rb").read()).iter
    assert max(r["iter"] for r in logged if r["kind"] == "train") == stopped - 1


# -------------------------------------------- in-process: the layers --

class ThreadComm(Communicator):
    """N workers as threads of this process (for the layers' collectives)."""
    name = "threads"

    def __init__(self, rank, shared):
        self.rank, self.size, self.shared = rank, shared["size"], shared

    def allgather(self, array):
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = np.array(array)
        barrier.wait()
        out = np.concatenate(slots)
        barrier.wait()
        return out


def run_workers(size, work):
    """work(comm) on ``size`` threads; their results in rank order."""
    shared = {"size": size, "slots": [None] * size, "barrier": threading.Barrier(size)}
    results, errors = [None] * size, []

    def run(rank):
        try:
            results[rank] = work(ThreadComm(rank, shared))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            shared["barrier"].abort()
    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


class Rank:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


DATA_SPECS = {
    "augmented": """transform_param {{ scale: 0.00390625 mirror: true crop_size: 24
                     max_rotation: 10 min_scale: 0.9 max_scale: 1.1 max_shift: 2 }}
                   data_param {{ source: "MNIST.training" batch_size: {b} backend: IMAGEDB
                                enable_random_selection: true prefetch: 0 }}""",
    "elastic": """transform_param {{ scale: 0.00390625 max_shift: 1
                   elastic_alpha: 8 elastic_sigma: 3 }}
                 data_param {{ source: "MNIST.training" batch_size: {b} backend: IMAGEDB
                              enable_random_selection: true prefetch: 0 }}""",
    "pairs": """transform_param {{ scale: 0.00390625 }}
               data_param {{ source: "MNIST.training" batch_size: {b} backend: IMAGEDB
                            enable_random_selection: true images_per_blob: 2
                            balance_matches: true output_all_labels: true }}""",
    "pxk": """data_param {{ source: "MNIST.training" batch_size: {b} backend: IMAGEDB
                          labels_per_batch: {p} images_per_label: 3 }}""",
}


@pytest.mark.parametrize("kind", sorted(DATA_SPECS))
def test_data_layer_shards_are_rows_of_the_global_batch(db, kind):
    def layer(b, p, shard=None):
        spec = 'name: "data" type: "Data" top: "data" top: "label" ' + \
            DATA_SPECS[kind].format(b=b, p=p)
        lay = make_layer(spec, phase=pb.TRAIN, seed=3, dtype=np.float32)
        _, top = setup_layer(lay, [], 2)
        if shard is not None:
            lay.data_parallel(shard)
        return lay, top

    size, b, p = 2, 6, 2          # pxk: 2 labels x 3 images per worker
    full, full_top = layer(size * b, size * p)
    parts = [layer(b, p, Rank(r, size)) for r in range(size)]
    for _ in range(4):
        full.forward([], full_top)
        for lay, top in parts:
            lay.forward([], top)
        for t in range(2):
            np.testing.assert_array_equal(
                np.concatenate([top[t].data for _, top in parts]), full_top[t].data)
    for lay in [full] + [lay for lay, _ in parts]:
        lay.close()


def test_pxk_needs_labels_for_every_worker(db):
    spec = '''name: "data" type: "Data" top: "data" top: "label"
              data_param { source: "MNIST.training" batch_size: 18 backend: IMAGEDB
                           labels_per_batch: 6 images_per_label: 3 }'''
    lay = make_layer(spec, phase=pb.TRAIN, dtype=np.float32)
    setup_layer(lay, [], 2)
    with pytest.raises(Exception, match=r"6 x 2 workers = 12 labels"):
        lay.data_parallel(Rank(0, 2))
    lay.close()


def _global_and_shards(spec, bottoms, num_tops, size=2):
    """The layer on the whole batch, and on ``size`` shards as threads."""
    def build():
        lay = make_layer(spec, phase=pb.TRAIN, seed=5, dtype=np.float32)
        return lay

    full = build()
    fb, ft = setup_layer(full, list(bottoms[0]), num_tops)
    outs = []
    for step in bottoms:
        for blob, value in zip(fb, step):
            blob.data[...] = value
        full.forward(fb, ft)
        outs.append([t.data.copy() for t in ft])

    def work(comm):
        lay = build()
        n = len(bottoms[0][0]) // size
        rows = slice(comm.rank * n, (comm.rank + 1) * n)
        b, t = setup_layer(lay, [x[rows] for x in bottoms[0]], num_tops)
        lay.data_parallel(comm)
        got = []
        for step in bottoms:
            for blob, value in zip(b, step):
                blob.data[...] = value[rows]
            lay.forward(b, t)
            got.append([x.data.copy() for x in t])
        return got, [blob.data.copy() for blob in lay.blobs]
    return full, outs, run_workers(size, work)


def test_data_sequence_draws_for_the_global_batch():
    rng = np.random.default_rng(0)
    steps = [(rng.normal(size=(12, 1, 3, 3)).astype(np.float32),
              rng.integers(0, 4, 12).astype(np.float32)) for _ in range(5)]
    spec = '''name: "seq" type: "DataSequence"
              data_sequence_param { k: 1 cache_size: 4 output_labels: true }'''
    _, outs, workers = _global_and_shards(spec, steps, 4)
    for i, full in enumerate(outs):
        for t in range(4):
            np.testing.assert_array_equal(
                np.concatenate([w[0][i][t] for w in workers]), full[t])


@pytest.mark.parametrize("target", ["CENTROID", "KNN"])
def test_decode_updates_from_the_global_batch(target):
    rng = np.random.default_rng(1)
    steps = [(rng.normal(size=(8, 3)).astype(np.float32),
              rng.integers(0, 4, 8).astype(np.float32)) for _ in range(6)]
    spec = f'''name: "decode" type: "Decode"
               decode_param {{ target: {target} cache_size: 2 k: 2 pregen_label_count: 4 }}'''
    full, outs, workers = _global_and_shards(spec, steps, 1)
    for (tops, blobs) in workers:
        for mine, theirs in zip(blobs, full.blobs):
            np.testing.assert_allclose(mine, theirs.data, rtol=1e-6, atol=1e-6)
    for i, full_out in enumerate(outs):
        np.testing.assert_allclose(np.concatenate([w[0][i][0] for w in workers]),
                                   full_out[0], rtol=1e-6)


# ------------------------------------------ in-process: communicators --

def test_plan_buckets_cover_every_element_once():
    counts = [500, 20, 400000, 10, 7, 25000, 16]
    buckets = plan_buckets(counts, 4, bucket_bytes=100_000)
    seen = sorted(i for bucket in buckets for i, _, _ in bucket)
    assert seen == list(range(len(counts)))
    for bucket in buckets:
        offset = 0
        for index, start, count in bucket:  # contiguous, last blob first
            assert (start, count) == (offset, counts[index])
            offset += count
        assert offset * 4 <= 100_000 or len(bucket) == 1
    assert [i for i, _, _ in buckets[0]][0] == len(counts) - 1
    assert plan_buckets([], 4) == []
    # 1 MiB = 262144 floats: the small last blobs, the large one alone, the rest
    assert [[i for i, _, _ in b] for b in plan_buckets(counts, 4, BUCKET_BYTES)] == \
        [[6, 5, 4, 3], [2], [1, 0]]


class _Blob:
    def __init__(self, values):
        self.data = np.zeros_like(values)
        self.diff = values.copy()
        self.xp, self.name, self.count = np, "b", values.size


class TwoWorkers(Communicator):
    """Worker 0 of 2 whose peer's gradient is this one's plus ``offset``."""
    size = 2

    def __init__(self, offset):
        self.offset, self.calls = offset, 0

    def iallreduce_sum(self, array):
        self.calls += 1
        array += array + self.offset
        return super().iallreduce_sum(array)


def test_reducer_averages_through_preallocated_buckets():
    rng = np.random.default_rng(2)
    blobs = [_Blob(rng.normal(size=s).astype(np.float32)) for s in [(30, 4), (7,), (300,)]]
    before = [b.diff.copy() for b in blobs]
    single = GradientReducer(SINGLE, blobs, bucket_bytes=512)
    assert single.reduce(1.25, False) == (1.25, False)
    for b, g in zip(blobs, before):
        np.testing.assert_array_equal(b.diff, g)
    comm = TwoWorkers(offset=np.float32(2.0))
    reducer = GradientReducer(comm, blobs, bucket_bytes=512)
    buffers = [id(b) for b in reducer.buffers]
    assert len(reducer.buffers) == 2 and reducer.bytes == 4 * (120 + 7 + 300)
    loss, stop = reducer.reduce(1.0, True)
    assert (loss, stop) == (2.0, True)   # (1 + (1 + 2)) / 2; a stop vote counts
    for b, g in zip(blobs, before):
        np.testing.assert_allclose(b.diff, g + 1.0, rtol=1e-6, atol=1e-6)  # (g + g + 2) / 2
    reducer.reduce(0.0, False)
    assert [id(b) for b in reducer.buffers] == buffers and comm.calls == 2 * 3


def test_single_process_communicator_and_results():
    a = np.arange(4.0)
    assert SINGLE.size == 1 and SINGLE.rank == 0 and SINGLE.is_root
    assert SINGLE.allgather(a) is a and SINGLE.broadcast_object({"x": 1}) == {"x": 1}
    SINGLE.allreduce_sum(a)
    np.testing.assert_array_equal(a, np.arange(4.0))
    results = {"accuracy": 0.5, "per_label": np.array([0.25, 0.75])}
    out = average_results(SINGLE, results)
    assert out["accuracy"] == 0.5
    np.testing.assert_array_equal(out["per_label"], results["per_label"])


def test_launch_detection_from_the_environment():
    assert launched_size({}) == (None, 1)
    assert launched_size({"PMI_SIZE": "1"}) == (None, 1)
    assert launched_size({"PMI_SIZE": "4"}) == ("mpi", 4)
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == ("mpi", 3)
    assert launched_size({"LAYERGRAPH_WORLD_SIZE": "2"}) == ("gpu", 2)
    assert launched_size({"SLURM_NTASKS": "8"}) == (None, 1)  # an allocation is no launch


def test_plain_training_never_imports_mpi4py():
    code = ("import sys, layergraph.distributed as d, layergraph.cli.train; "
            "assert d.world() is d.SINGLE; print('mpi4py' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_gpu_lists():
    assert gpu_devices(None) is None
    assert gpu_devices("1") == [1]
    assert gpu_devices("0, 2") == [0, 2]
    with pytest.raises(GPUError, match="twice"):
        gpu_devices("1,1")
    with pytest.raises(GPUError, match="bad --gpu"):
        gpu_devices("first")


def test_launcher_ends_the_other_workers_when_one_fails():
    t0 = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
               subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])]
    assert supervise(workers, poll=0.05) == 3
    assert workers[0].returncode == -signal.SIGTERM
    assert time.monotonic() - t0 < 20


def _cuda():
    from layergraph.backend import gpu_status
    ok, why = gpu_status()
    if not ok:
        pytest.skip(f"no GPU: {why}")
    from cupy.cuda import nccl
    if not nccl.available:
        pytest.skip("CuPy has no NCCL (pip install nvidia-nccl-cu12)")
    import cupy
    return cupy, nccl


@pytest.mark.gpu
def test_nccl_single_gpu_communicator():
    cupy, nccl = _cuda()
    from layergraph.distributed import NCCLComm
    comm = NCCLComm(0, 1, nccl.get_unique_id())
    a = cupy.arange(6, dtype=cupy.float32)
    comm.allreduce_sum(a)
    comm.broadcast(a)
    cupy.testing.assert_array_equal(a, cupy.arange(6, dtype=cupy.float32))
    cupy.testing.assert_array_equal(comm.allgather(a.reshape(2, 3)), a.reshape(2, 3))
    assert comm.broadcast_object({"seed": 7}) == {"seed": 7}

    class GpuBlob:
        def __init__(self, values):
            self.data = cupy.zeros_like(values)
            self.diff = values.copy()
            self.xp, self.name, self.count = cupy, "b", values.size
    blobs = [GpuBlob(cupy.arange(n, dtype=cupy.float32)) for n in (5, 300)]
    reducer = GradientReducer(comm, blobs, bucket_bytes=256)
    assert reducer.reduce(0.5, False) == (0.5, False)
    cupy.testing.assert_array_equal(blobs[1].diff, cupy.arange(300, dtype=cupy.float32))
    results = average_results(comm, {"accuracy": 0.75})
    assert results["accuracy"] == 0.75
