"""A change to the compiled CPU loops (kernels/cpu/), measured against
another revision's loops in one process: the same nets, built once per
thread count, step in blocks that alternate the two libraries (the working
tree's and ``--base``'s) and the thread counts, so each ratio compares
neighbouring blocks that saw the same state of the machine.

    python benchmarks/ab_kernels.py [--base HEAD] [--case lenet]
        [--threads 1 2] [--blocks 30] [--steps 4]

Prints per thread count the median of the paired time ratios base / new
(above 1: the working tree is faster) with their min-max, and each
library's 2/1-thread scaling (median of the paired ratios).  Only the C++
loops differ between the two; the Python side is the working tree's, so
the two revisions must declare the same C functions with the same
arguments: a base whose ``extern "C"`` definitions differ is refused (a
changed signature needs the A/B done before the change).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _harness as H  # noqa: E402

H.set_thread_env(2)   # before numpy is imported; each block then picks its count

import numpy as np  # noqa: E402

import bench_triplet as B  # noqa: E402


def c_interface(kernels):
    """{function: its parameter list} of the ``extern "C"`` definitions in
    kernels/cpu/*.cpp under ``kernels`` (a macro's ``lg_x_##SUFFIX`` as
    ``lg_x_``), whitespace and line continuations dropped."""
    import glob
    import re
    found = {}
    for path in sorted(glob.glob(os.path.join(kernels, "cpu", "*.cpp"))):
        with open(path, encoding="utf-8") as f:
            text = f.read().replace("\\\n", " ")
        for name, params in re.findall(r'extern "C"\s+[\w\s*]*?\b(lg_\w+)[#\w]*\s*\(([^)]*)\)',
                                       text):
            found[name] = " ".join(params.split())
    return found


def base_library(rev):
    """The loops of kernels/ at git revision ``rev``, compiled and loaded.
    Refused when their C interface differs from the working tree's: the
    Python side (the working tree's) would call them with other arguments."""
    from layergraph import cpu_kernels
    from layergraph.kernels import kernel_dir
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "kernels"],
                                 capture_output=True)
        if archive.returncode != 0:
            raise SystemExit(f"ab_kernels: git archive {rev}: "
                             f"{archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        base, ours = c_interface(os.path.join(tmp, "kernels")), c_interface(kernel_dir())
        differ = sorted(name for name in set(base) | set(ours) if base.get(name) != ours.get(name))
        if differ:
            raise SystemExit(f"ab_kernels: kernels/cpu at {rev} declares other C functions or "
                             f"arguments than the working tree's ({', '.join(differ)}): an A/B "
                             "in one process needs the same interface")
        path = cpu_kernels.compile_sources(os.path.join(tmp, "kernels"))
    return path, cpu_kernels.load(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD", help="git revision of the loops to compare with")
    p.add_argument("--case", choices=B.CASES, default="lenet")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--blocks", type=int, default=30)
    p.add_argument("--steps", type=int, default=4, help="steps per block")
    p.add_argument("--dataset", default="MNIST")
    args = p.parse_args(argv)
    from layergraph import cpu_kernels
    new = cpu_kernels.library()
    if new is None or not cpu_kernels.native_parts(np.float32):
        raise SystemExit("ab_kernels: the compiled loops and a BLAS sgemm are needed")
    base_path, base = base_library(args.base)
    if base_path == new._name:
        raise SystemExit(f"ab_kernels: kernels/ at {args.base} is the working tree's")
    base.lg_set_sgemm(*cpu_kernels._find_sgemm())
    libs = {"base": base, "new": new}

    keep, steps = [], {}
    for t in args.threads:
        B.select_threads("layergraph", t, keep)
        worker_args = argparse.Namespace(case=args.case, run=None, dataset=args.dataset,
                                         threads=t)
        steps[t] = B.layergraph_worker(worker_args)[0]
        for name in libs:
            cpu_kernels._library = libs[name]
            for _ in range(3):
                steps[t]()
    order = [(t, name) for t in args.threads for name in ("base", "new")]
    times = {key: [] for key in order}
    for b in range(args.blocks):
        for t, name in (order if b % 2 == 0 else order[::-1]):
            cpu_kernels._library = libs[name]
            B.select_threads("layergraph", t, keep)
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[t]()
            times[(t, name)].append((time.perf_counter() - start) / args.steps)
    cpu_kernels._library = new
    times = {k: np.array(v) for k, v in times.items()}
    print(f"{args.case}: kernels/cpu of the working tree against {args.base}, "
          f"{args.blocks} blocks of {args.steps} steps alternating in one process")
    for t in args.threads:
        r = times[(t, "base")] / times[(t, "new")]
        print(f"  {t} thread(s): base {np.median(times[(t, 'base')]) * 1e3:.2f} ms, new "
              f"{np.median(times[(t, 'new')]) * 1e3:.2f} ms; base/new {np.median(r):.3f} "
              f"({r.min():.2f}-{r.max():.2f})")
    if len(args.threads) > 1:
        lo, hi = min(args.threads), max(args.threads)
        for name in ("base", "new"):
            s = times[(lo, name)] / times[(hi, name)]
            print(f"  {name} scaling {hi}/{lo} threads {np.median(s):.3f} "
                  f"({s.min():.2f}-{s.max():.2f})")


if __name__ == "__main__":
    main()
