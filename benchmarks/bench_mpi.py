"""Data-parallel training: measured scaling on this machine, and the
allreduce cost on paper.

    python benchmarks/bench_mpi.py [--batch 64] [--iterations 30] [--repeats 3]
                                   [--json benchmarks/results/mpi.json]

Measured: TripletNet_28x28 (its solver: Adam) on the MNIST sample, in a
temporary image database, three ways over the same global batch of 2B
images per iteration (B = --batch):

* 1 worker x 1 thread, batch 2B    (OPENBLAS_NUM_THREADS=1)
* 1 worker x 2 threads, batch 2B   (OPENBLAS_NUM_THREADS=2)
* 2 workers x 1 thread, B each     (mpiexec -n 2, OPENBLAS_NUM_THREADS=1)

Each run does --warmup iterations, then times --iterations; the figure is the
median time per iteration (so a burst of load from other users of the
machine moves it less); images/s = 2B / that.  --repeats runs of each, in
turn, and the best median of each is reported.  The 2-worker run also
reports the time in the gradient allreduce (GradientReducer: packing, the
MPI reductions, waiting for the slower worker, unpacking) per iteration,
and the reduction alone (20 more, each started by both workers together
after a barrier: the pure cost of moving and summing the gradients).
Scaling efficiency = (2-worker images/s) / (2 x 1-worker-1-thread images/s).

On paper: the float32 learnable parameters of TripletNet_28x28 and
Siamese_28x28 (the towers' shared weights counted once -- both nets have
the same towers), what a ring allreduce moves per worker per iteration,
2 (N - 1) / N x bytes, and its time at 10 and 100 Gbit/s (bandwidth only;
add about 2 (N - 1) x the link latency), against the measured compute per
iteration of one worker; and what DataSequence's allgather of the global
batch (which keeps N workers exactly equivalent to one) moves: (N - 1) B
images of 28 x 28 float32 per worker, which outgrows the gradients for
large N.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TEMPLATES = ("TripletNet_28x28", "Siamese_28x28")


# ------------------------------------------------------------- worker --

def worker(args):
    """One training process (under mpiexec: one of the workers)."""
    import numpy as np
    import layergraph as lg
    solver = lg.Solver(os.path.join(args.run, "solver.prototxt"), log=None,
                       overrides={"test_interval": 0, "snapshot": 0, "display": 0,
                                  "max_iter": args.warmup + args.iterations})
    stamps = []

    class Clock:
        def on_iteration(self, s, record):
            stamps.append(time.perf_counter())
    solver.add_callback(Clock())
    solver.step(args.warmup)
    reduce_before = solver.reducer.seconds if solver.reducer else 0.0
    stamps.append(time.perf_counter())
    solver.step(args.iterations)
    times = np.diff(stamps[-(args.iterations + 1):])
    reduce_s = ((solver.reducer.seconds - reduce_before) / args.iterations
                if solver.reducer else 0.0)
    alone = []  # the reduction alone: the workers start it together (a barrier first)
    for _ in range(20 if solver.reducer else 0):
        solver.comm.barrier()
        t0 = time.perf_counter()
        solver.reducer.reduce(0.0)
        alone.append(time.perf_counter() - t0)
    if solver.comm.rank == 0:
        print("RESULT " + json.dumps({
            "workers": solver.comm.size, "batch_per_worker": solver.batch_size(),
            "median_iteration_s": float(np.median(times)),
            "mean_iteration_s": float(np.mean(times)),
            "allreduce_s_per_iteration": reduce_s,
            "allreduce_alone_s": float(np.median(alone)) if alone else 0.0,
            "gradient_bytes": solver.reducer.bytes if solver.reducer else None}), flush=True)
    solver.close()


# ------------------------------------------------------------- driver --

def make_run(root, template, batch):
    from layergraph.tools.templates import new_from_template
    out = os.path.join(root, f"{template}_b{batch}")
    new_from_template(template, "MNIST", out)
    path = os.path.join(out, "train_val.prototxt")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(re.sub(r"batch_size: \d+", f"batch_size: {batch}", text))
    return out


def run(cmd, threads, db):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), LAYERGRAPH_DB=db)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def parameter_bytes(template):
    """Bytes of the float32 learnable parameters (shared blobs once)."""
    import layergraph as lg
    from layergraph.tools.templates import TEMPLATE_DIR
    net = lg.Net(os.path.join(TEMPLATE_DIR, template, "train_val.prototxt"), lg.RUN,
                 input_shape=(1, 1, 28, 28))
    return sum(int(b.data.nbytes) for b in net.learnable_params)


def on_paper(compute_s, batch):
    rows = []
    image_bytes = 28 * 28 * 4
    for template in TEMPLATES:
        size = parameter_bytes(template)
        for n in (2, 8, 64):
            moved = 2 * (n - 1) / n * size
            gather = (n - 1) * batch * image_bytes  # DataSequence: the others' shards
            row = {"template": template, "workers": n, "parameter_bytes": size,
                   "ring_allreduce_bytes_per_worker": round(moved)}
            for gbit in (10, 100):
                t = moved / (gbit * 1e9 / 8)
                row[f"allreduce_ms_at_{gbit}gbit"] = round(t * 1e3, 3)
                row[f"compute_share_at_{gbit}gbit"] = round(compute_s / (compute_s + t), 4)
            if template == "TripletNet_28x28":
                row["datasequence_allgather_bytes_per_worker"] = gather
                row["datasequence_allgather_ms_at_10gbit"] = round(
                    gather / (10e9 / 8) * 1e3, 3)
            rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="images per worker (B)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("bench_mpi: no mpiexec (pip install -e '.[mpi]')")
    root = tempfile.mkdtemp(prefix="layergraph-bench-mpi-")
    try:
        db = os.path.join(root, "imagedb")
        os.environ["LAYERGRAPH_DB"] = db
        from layergraph.imagedb.creators import create_mnist
        create_mnist(None, name="MNIST", download=False)
        single = make_run(root, "TripletNet_28x28", 2 * args.batch)
        split = make_run(root, "TripletNet_28x28", args.batch)
        me = [sys.executable, os.path.abspath(__file__), "--worker",
              "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
        configs = {
            "1 worker x 1 thread": (me + ["--run", single], 1),
            "1 worker x 2 threads": (me + ["--run", single], 2),
            "2 workers x 1 thread": ([mpiexec, "-n", "2"] + me + ["--run", split], 1),
        }
        results = {name: [] for name in configs}
        load = []
        for _ in range(args.repeats):
            for name, (cmd, threads) in configs.items():
                load.append(os.getloadavg()[0])
                results[name].append(run(cmd, threads, db))
        best = {name: min(runs, key=lambda r: r["median_iteration_s"])
                for name, runs in results.items()}
        global_batch = 2 * args.batch
        table = []
        for name, r in best.items():
            table.append({"config": name,
                          "median_iteration_s": round(r["median_iteration_s"], 4),
                          "images_per_s": round(global_batch / r["median_iteration_s"], 1),
                          "allreduce_s_per_iteration": round(r["allreduce_s_per_iteration"], 5),
                          "allreduce_alone_s": round(r["allreduce_alone_s"], 5),
                          "all_medians_s": [round(x["median_iteration_s"], 4)
                                            for x in results[name]]})
        one = global_batch / best["1 worker x 1 thread"]["median_iteration_s"]
        two = global_batch / best["2 workers x 1 thread"]["median_iteration_s"]
        threads2 = global_batch / best["1 worker x 2 threads"]["median_iteration_s"]
        dp = best["2 workers x 1 thread"]
        compute = dp["median_iteration_s"] - dp["allreduce_s_per_iteration"]
        out = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_average_during_runs": [round(x, 2) for x in load],
            "net": "TripletNet_28x28 (Adam), MNIST sample",
            "batch_per_worker": args.batch, "global_batch": global_batch,
            "iterations_timed": args.iterations, "repeats": args.repeats,
            "measured": table,
            "speedup_2_workers_vs_1_thread": round(two / one, 3),
            "scaling_efficiency_2_workers": round(two / (2 * one), 3),
            "speedup_1_worker_2_threads_vs_1_thread": round(threads2 / one, 3),
            "2_workers_vs_1_worker_2_threads": round(two / threads2, 3),
            "allreduce_share_of_iteration": round(dp["allreduce_s_per_iteration"]
                                                  / dp["median_iteration_s"], 4),
            "gradient_bytes": dp["gradient_bytes"],
            "compute_s_per_iteration_per_worker": round(compute, 4),
            "on_paper": on_paper(compute, args.batch),
        }
        text = json.dumps(out, indent=2)
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
