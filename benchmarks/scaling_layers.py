"""Where one core to two gains and where it does not, per layer: the training
step of a bench_triplet.py case built twice in one process (for one thread
and for two: a layer cuts its batch when it is set up), then blocks of steps
alternating the two, each layer's forward and backward timed inside the
step (``Net.forward_prefilled(clock=...)``), the update apart.

    python benchmarks/scaling_layers.py [--case triplet|siamese|lenet]
        [--blocks 40] [--steps 3]

Prints per layer the mean milliseconds at one and two threads and their
ratio, and the median of the steps' paired ratios.

    python benchmarks/scaling_layers.py --ceiling [--rows 192]

measures the machine's own ceiling instead: one single-threaded sgemm of
(rows x 800) by (800 x 500) against two side by side on halves of the
output columns (cpu_kernels.ip_forward_parts: ip1's forward without its
bias), blocks alternating in one process.  The ratio of a layer
that does not split is about 1 (its time is the same on both); the gap of
a split layer from 2x is what its second core loses.
"""
import argparse
import contextlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _harness as H  # noqa: E402

H.set_thread_env(2)   # before numpy is imported; each block then picks its count

import numpy as np  # noqa: E402

import bench_triplet as B  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=["triplet", "siamese", "lenet", "inference"],
                   default="triplet")
    p.add_argument("--blocks", type=int, default=40, help="blocks per thread count")
    p.add_argument("--steps", type=int, default=3, help="steps per block")
    p.add_argument("--dataset", default="MNIST")
    p.add_argument("--ceiling", action="store_true",
                   help="time bare sgemm calls on one and two threads instead")
    p.add_argument("--rows", type=int, default=192, help="rows of the --ceiling product")
    args = p.parse_args(argv)
    if args.ceiling:
        return ceiling(args)
    keep, built = [], {}
    for threads in (1, 2):
        B.select_threads("layergraph", threads, keep)
        worker_args = argparse.Namespace(case=args.case, run=None, dataset=args.dataset,
                                         threads=threads)
        step, _ = B.layergraph_worker(worker_args)
        held = {type(c.cell_contents).__name__: c.cell_contents for c in step.__closure__}
        solver = next((v for k, v in held.items() if k.endswith("Solver")), None)
        # inference: the deploy net alone (forward, no update)
        built[threads] = solver or _Forward(held["Net"], step)
        for _ in range(5):
            step()
    names = [layer.name for layer in built[1].net.layers]
    acc = {t: {"forward": np.zeros(len(names)), "backward": np.zeros(len(names)),
               "update": 0.0, "steps": []} for t in built}

    def block(threads):
        B.select_threads("layergraph", threads, keep)
        solver, a, part = built[threads], acc[threads], ["forward"]

        @contextlib.contextmanager
        def clock(i):
            start = time.perf_counter()
            yield
            a[part[0]][i] += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            if isinstance(solver, _Forward):
                solver.step(clock)
                continue
            solver.net.clear_param_diffs()
            part[0] = "forward"
            solver.net.forward_prefilled(clock=clock)
            part[0] = "backward"
            solver.net.backward(clock=clock)
            u = time.perf_counter()
            solver.apply_update()
            a["update"] += time.perf_counter() - u
        a["steps"].append((time.perf_counter() - start) / args.steps)

    for b in range(args.blocks):
        for threads in ((1, 2) if b % 2 == 0 else (2, 1)):
            block(threads)
    n = args.blocks * args.steps
    print(f"{args.case} step per layer, ms at 1 / 2 threads (ratio), {args.blocks} blocks of "
          f"{args.steps} steps alternating in one process:")
    for i, name in enumerate(names):
        f1, f2 = (acc[t]["forward"][i] / n * 1e3 for t in (1, 2))
        b1, b2 = (acc[t]["backward"][i] / n * 1e3 for t in (1, 2))
        if f1 + b1 < 0.02:
            continue
        print(f"  {name:<12} forward {f1:6.3f} {f2:6.3f} ({f1 / f2:4.2f})   "
              + (f"backward {b1:6.3f} {b2:6.3f} ({b1 / b2:4.2f})" if b1 > 0.001 else ""))
    u1, u2 = (acc[t]["update"] / n * 1e3 for t in (1, 2))
    s1, s2 = (np.array(acc[t]["steps"]) * 1e3 for t in (1, 2))
    update = f"update {u1:.3f} {u2:.3f} ({u1 / u2:.2f}); " if u2 > 0 else ""
    print(f"  {update}step {np.median(s1):.2f} "
          f"{np.median(s2):.2f} ms, paired scaling {np.median(s1 / s2):.2f} "
          f"({(s1 / s2).min():.2f}-{(s1 / s2).max():.2f})")


class _Forward:
    """The inference case in the shape of a solver: ``step(clock)`` runs the
    deploy net's forward pass on its next batch, each layer timed."""

    def __init__(self, net, step):
        self.net = net
        cells = {id(c.cell_contents): c.cell_contents for c in step.__closure__}
        self.batches = next(v for v in cells.values() if isinstance(v, list) and v
                            and isinstance(v[0], np.ndarray))
        self.k = 0

    def step(self, clock):
        self.net.blobs[self.net.inputs[0]].data[...] = self.batches[self.k % len(self.batches)]
        self.k += 1
        self.net.forward_prefilled(clock=clock)


def ceiling(args):
    from layergraph import cpu_kernels
    if not cpu_kernels.native_parts(np.float32):
        raise SystemExit("scaling_layers: --ceiling needs the compiled loops and a BLAS sgemm")
    rng = np.random.default_rng(0)
    x = rng.random((args.rows, 800), dtype=np.float32)
    w = rng.random((500, 800), dtype=np.float32)
    y = np.empty((args.rows, 500), np.float32)
    cuts = {1: ([0], [500]), 2: ([0, 250], [250, 500])}
    cuts = {t: tuple(np.array(v, np.int64) for v in c) for t, c in cuts.items()}
    times = {1: [], 2: []}
    for b in range(args.blocks + 1):
        for threads in ((1, 2) if b % 2 == 0 else (2, 1)):
            start = time.perf_counter()
            for _ in range(20):
                cpu_kernels.ip_forward_parts(x, w, None, *cuts[threads], y)
            if b:                                       # block 0 warms up
                times[threads].append((time.perf_counter() - start) / 20)
    t1, t2 = np.array(times[1]), np.array(times[2])
    flops = 2 * args.rows * 800 * 500
    print(f"sgemm ({args.rows} x 800) by (800 x 500): one thread {np.median(t1) * 1e6:.0f} us "
          f"({flops / np.median(t1) / 1e9:.0f} GFLOP/s), two side by side "
          f"{np.median(t2) * 1e6:.0f} us; paired ratio {np.median(t1 / t2):.2f} "
          f"({(t1 / t2).min():.2f}-{(t1 / t2).max():.2f}), {args.blocks} blocks of 20 calls")


if __name__ == "__main__":
    main()
