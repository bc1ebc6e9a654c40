"""Micro-benchmark: forward+backward of the LeNet layers, layergraph vs PyTorch.

Times Convolution, Pooling and InnerProduct at the shapes of Caffe's LeNet
(batch 64, 1x28x28 input: conv20 5x5 -> maxpool 2 -> conv50 5x5 -> maxpool 2
-> ip500 -> ip10), float32, and -- when torch is importable -- the same ops
with torch.nn.functional (conv2d / max_pool2d / linear, autograd backward) in
the same run.  conv1 computes no input gradient (its bottom is the data), as
in training.

    python benchmarks/bench_layers.py [--threads 2] [--repeat 7] [--number 20]

``speed`` is torch time / layergraph time (1.0: as fast as PyTorch; > 1:
faster).  torch is a development tool here, never a runtime dependency.
"""
import argparse
import os
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/OpenMP threads for both frameworks (default: library default)")
    ap.add_argument("--repeat", type=int, default=7, help="timing runs (the median is shown)")
    ap.add_argument("--number", type=int, default=20, help="calls per timing run")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    return ap.parse_args()


ARGS = parse_args()
if ARGS.threads:  # must precede the first numpy import to reach OpenBLAS
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from layergraph.testing import make_layer, setup_layer  # noqa: E402

BATCH = 64
FILLERS = 'weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 }'
# name, prototxt snippet, bottom shape, propagate to the bottom
OPS = [
    ("conv1", 'type: "Convolution" convolution_param { num_output: 20 kernel_size: 5 '
              + FILLERS + " }", (BATCH, 1, 28, 28), False),
    ("pool1", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
     (BATCH, 20, 24, 24), True),
    ("conv2", 'type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 '
              + FILLERS + " }", (BATCH, 20, 12, 12), True),
    ("pool2", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
     (BATCH, 50, 8, 8), True),
    ("ip1", 'type: "InnerProduct" inner_product_param { num_output: 500 ' + FILLERS + " }",
     (BATCH, 50, 4, 4), True),
    ("ip2", 'type: "InnerProduct" inner_product_param { num_output: 10 ' + FILLERS + " }",
     (BATCH, 500), True),
]


def timeit(fn):
    """Median milliseconds per call over ARGS.repeat runs of ARGS.number calls."""
    fn()
    fn()
    runs = []
    for _ in range(ARGS.repeat):
        start = time.perf_counter()
        for _ in range(ARGS.number):
            fn()
        runs.append((time.perf_counter() - start) / ARGS.number * 1e3)
    return float(np.median(runs))


def bench_layergraph(spec, shape, propagate):
    rng = np.random.default_rng(0)
    layer = make_layer(spec, dtype=np.float32)
    bottom, top = setup_layer(layer, [rng.standard_normal(shape, dtype=np.float32)])
    top[0].diff[...] = rng.standard_normal(top[0].shape, dtype=np.float32)

    def forward():
        layer.reshape(bottom, top)
        layer.forward(bottom, top)

    def forward_backward():
        forward()
        layer.backward(top, [propagate], bottom)
    return timeit(forward), timeit(forward_backward)


def torch_ops():
    import torch
    import torch.nn.functional as F

    def conv(o):
        return lambda x, w, b: F.conv2d(x, w, b)

    def params(name, shape):
        c = shape[1]
        if name.startswith("conv"):
            o = 20 if name == "conv1" else 50
            return conv(o), [torch.randn(o, c, 5, 5), torch.randn(o)]
        if name.startswith("pool"):
            return (lambda x: F.max_pool2d(x, 2, 2)), []
        k = int(np.prod(shape[1:]))
        o = 500 if name == "ip1" else 10
        return (lambda x, w, b: F.linear(x.reshape(x.shape[0], -1), w, b)), \
            [torch.randn(o, k), torch.randn(o)]

    def bench(name, shape, propagate):
        fn, ps = params(name, shape)
        x = torch.randn(*shape, requires_grad=propagate)
        ps = [p.requires_grad_() for p in ps]
        args = [x] + ps
        with torch.no_grad():
            dy = torch.randn_like(fn(*args))

        def forward():
            with torch.no_grad():
                fn(*args)

        def forward_backward():
            fn(*args).backward(dy)
        return timeit(forward), timeit(forward_backward)
    return torch, bench


def main():
    torch_bench = None
    if not ARGS.no_torch:
        try:
            torch, torch_bench = torch_ops()
            if ARGS.threads:
                torch.set_num_threads(ARGS.threads)
            print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        except ImportError:
            print("torch is not importable: layergraph timings only")
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, threads: "
          f"{ARGS.threads or 'default'}; median of {ARGS.repeat} x {ARGS.number} calls")
    header = f"{'op':6} {'lg fwd':>8} {'lg f+b':>8}"
    if torch_bench:
        header += f" {'pt fwd':>8} {'pt f+b':>8} {'speed f+b':>9}"
    print(header + "   (ms)")
    totals = np.zeros(4)
    for name, spec, shape, propagate in OPS:
        lg = bench_layergraph(spec, shape, propagate)
        line = f"{name:6} {lg[0]:8.3f} {lg[1]:8.3f}"
        totals[:2] += lg
        if torch_bench:
            pt = torch_bench(name, shape, propagate)
            totals[2:] += pt
            line += f" {pt[0]:8.3f} {pt[1]:8.3f} {pt[1] / lg[1]:9.2f}"
        print(line)
    line = f"{'total':6} {totals[0]:8.3f} {totals[1]:8.3f}"
    if torch_bench:
        line += f" {totals[2]:8.3f} {totals[3]:8.3f} {totals[3] / totals[1]:9.2f}"
    print(line)


if __name__ == "__main__":
    main()
