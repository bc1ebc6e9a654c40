"""A LeNet from prototxt with Input layers, fed real MNIST digits from Python,
learns: a small, fast slice of benchmarks/lenet_input.py."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import lenet_input  # noqa: E402


def test_lenet_learns_mnist_slice():
    xtr, ytr, xte, yte = lenet_input.load_sample()
    solver, test_net = lenet_input.build(max_iter=200)
    lenet_input.train(solver, xtr[:2000], ytr[:2000], 200)
    acc = lenet_input.accuracy(test_net, xte[:1000], yte[:1000])
    assert acc >= 0.90, acc
