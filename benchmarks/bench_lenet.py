"""Training-step speed of a LeNet (batch 64, 1x28x28, SGD with momentum) in
layergraph and in PyTorch on the CPU, in the same process, as a ratio.

    python benchmarks/bench_lenet.py [--iterations 100] [--threads N]

Prints images/s for both and layergraph/PyTorch.  PyTorch is a dev-only
reference (pip install torch==2.13.0); without it only layergraph is timed.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import layergraph as lg  # noqa: E402
from layergraph.prototxt import parse_text  # noqa: E402

BATCH = 64
LENET = f"""
name: "LeNet"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {BATCH} dim: 1 dim: 28 dim: 28 }} shape {{ dim: {BATCH} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 20 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param {{ num_output: 50 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param {{ num_output: 500 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


def batches(n):
    rng = np.random.default_rng(0)
    return [(rng.random((BATCH, 1, 28, 28), dtype=np.float32),
             rng.integers(0, 10, BATCH).astype(np.float32)) for _ in range(n)]


def time_layergraph(data, iterations):
    sp = parse_text('base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" weight_decay: 0.0005 '
                    'random_seed: 1', lg.pb.SolverParameter())
    sp.train_net_param.CopyFrom(parse_text(LENET, lg.pb.NetParameter()))
    solver = lg.Solver(sp, log=None)
    net = solver.net

    class Feed:
        def __init__(self):
            self.k = 0

        def on_start(self, s):
            pass
    feed = Feed()

    def step():
        x, y = data[feed.k % len(data)]
        feed.k += 1
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = y
        solver.step(1)
    for _ in range(5):
        step()
    t = time.perf_counter()
    for _ in range(iterations):
        step()
    return iterations * BATCH / (time.perf_counter() - t)


def time_torch(data, iterations):
    import torch
    import torch.nn as nn
    model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5),
                          nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(),
                          nn.Linear(500, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    loss_fn = nn.CrossEntropyLoss()
    tdata = [(torch.from_numpy(x), torch.from_numpy(y).long()) for x, y in data]

    def step(k):
        x, y = tdata[k % len(tdata)]
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    for k in range(5):
        step(k)
    t = time.perf_counter()
    for k in range(iterations):
        step(k)
    return iterations * BATCH / (time.perf_counter() - t)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the two engines this many times, report the best")
    args = parser.parse_args()
    data = batches(16)
    try:
        import torch
        have_torch = True
        threads = torch.get_num_threads()
    except ImportError:
        have_torch, threads = False, None
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(time_layergraph(data, args.iterations))
        if have_torch:
            theirs.append(time_torch(data, args.iterations))
    print(f"LeNet training step, batch {BATCH}, {os.cpu_count()} CPU cores")
    print(f"layergraph: {max(ours):9.0f} images/s")
    if have_torch:
        print(f"PyTorch   : {max(theirs):9.0f} images/s  (torch {torch.__version__}, "
              f"{threads} threads)")
        print(f"ratio layergraph/PyTorch: {max(ours) / max(theirs):.2f}")
    else:
        print("PyTorch not installed: pip install torch==2.13.0 for the reference")


if __name__ == "__main__":
    main()
