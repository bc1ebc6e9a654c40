"""Training-step speed of a LeNet (batch 64, 1x28x28, SGD with momentum) in
layergraph and in PyTorch on the CPU, as a ratio.

    python benchmarks/bench_lenet.py [--iterations 100] [--rounds 5]
                                     [--threads 1 2] [--quick] [--json FILE]

The ``lenet`` case of bench_triplet.py (the same net: conv 20, pool, conv 50,
pool, ip 500, ReLU, ip 10, softmax loss; SGD lr 0.01, momentum 0.9, weight
decay 5e-4; random batches fed through an Input layer), with its protocol:
each engine in a fresh process of its own, the thread count (``--threads``,
default 1 and 2) set before numpy/torch are imported, rounds alternating
the engines, the median images/s over the rounds with its min-max spread,
and the ratio layergraph / PyTorch.  A full run writes
benchmarks/results/bench_lenet.json.  PyTorch is a dev-only reference
(pip install torch==2.13.0); without it only layergraph is timed.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_triplet  # noqa: E402  (imports neither numpy nor torch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int,
                   help=f"timed steps per worker (default {bench_triplet.DEFAULT_STEPS['lenet']})")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating rounds per engine; the median is reported (default 5)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                   help="thread counts to measure (default: 1 2)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, a few steps")
    p.add_argument("--json", help="write the results here (default for a full run: "
                   "benchmarks/results/bench_lenet.json)")
    args = p.parse_args(argv)
    forward = ["--cases", "lenet", "--rounds", str(args.rounds),
               "--threads", *map(str, args.threads)]
    if args.iterations is not None:
        forward += ["--steps", str(args.iterations)]
    if args.warmup is not None:
        forward += ["--warmup", str(args.warmup)]
    if args.quick:
        forward.append("--quick")
    json_path = args.json
    if json_path is None and not args.quick:
        json_path = os.path.join(HERE, "results", "bench_lenet.json")
    if json_path:
        forward += ["--json", json_path]
    return bench_triplet.main(forward, script=os.path.abspath(bench_triplet.__file__))


if __name__ == "__main__":
    main()
