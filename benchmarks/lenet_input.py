"""LeNet built from prototxt with Input layers, fed the MNIST sample from
Python (pycaffe style), trained with BVLC's lenet_solver settings (SGD, lr
0.01, momentum 0.9, weight decay 5e-4, inv policy, batch 64).

    python benchmarks/lenet_input.py [--iterations 2000]

Prints the test accuracy on the 5,002 testing images every 500 iterations.
tests/test_lenet_training.py runs a small, fast version of the same thing.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import layergraph as lg  # noqa: E402
from layergraph.imagedb.creators import SAMPLE_DIR, read_idx_dataset  # noqa: E402
from layergraph.prototxt import parse_text  # noqa: E402

LENET = """
name: "LeNet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 stride: 1
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 50 kernel_size: 5 stride: 1
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 500
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 10
          weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss"
        include { phase: TRAIN } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
        include { phase: TEST } }
"""
SOLVER = """
base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005
lr_policy: "inv" gamma: 0.0001 power: 0.75
random_seed: 1
"""


def load_sample():
    data = read_idx_dataset(SAMPLE_DIR)
    (xtr, ytr), (xte, yte) = data["training"], data["testing"]
    scale = np.float32(0.00390625)
    return (xtr.astype(np.float32) * scale, ytr.astype(np.float32),
            xte.astype(np.float32) * scale, yte.astype(np.float32))


def build(max_iter, train_count=None):
    sp = parse_text(SOLVER, lg.pb.SolverParameter())
    sp.max_iter = max_iter
    sp.train_net_param.CopyFrom(parse_text(LENET, lg.pb.NetParameter()))
    solver = lg.Solver(sp, log=None)
    test_net = lg.Net(sp.train_net_param, lg.TEST)
    test_net.share_weights_from(solver.net)
    return solver, test_net


def train(solver, x, y, iterations, batch=64, seed=1):
    """Feed shuffled batches from Python and step the solver (pycaffe idiom)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    pos = 0
    for _ in range(iterations):
        if pos + batch > len(order):
            order, pos = rng.permutation(len(x)), 0
        idx = order[pos:pos + batch]
        pos += batch
        solver.net.blobs["data"].data[...] = x[idx]
        solver.net.blobs["label"].data[...] = y[idx]
        solver.step(1)


def accuracy(test_net, x, y, batch=500):
    correct = 0
    for s in range(0, len(x), batch):
        out = test_net.forward(data=x[s:s + batch], label=y[s:s + batch])
        correct += out["accuracy"] * len(x[s:s + batch])
    return correct / len(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    xtr, ytr, xte, yte = load_sample()
    solver, test_net = build(args.iterations)
    t0 = time.time()
    done = 0
    while done < args.iterations:
        n = min(500, args.iterations - done)
        train(solver, xtr, ytr, n, seed=done)
        done += n
        print(f"iteration {done}: test accuracy {accuracy(test_net, xte, yte):.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
