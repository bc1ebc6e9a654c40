"""Every solver update checked against its formula, computed by hand here.

The net is a linear model y = W x + b with a Euclidean loss against targets,
fed by a test data layer that emits a different batch each call (so iter_size
really averages distinct gradients).  The reference recomputes the gradient
analytically in NumPy and applies Caffe's update rules step by step.
"""
import math

import numpy as np
import pytest

from layergraph import Layer, Solver, SolverError, register_layer
from layergraph.proto import pb
from layergraph.prototxt import parse_text
from layergraph.solver import learning_rate

N, D, K = 4, 3, 2


def batch(k):
    rng = np.random.default_rng(1000 + k)
    return rng.standard_normal((N, D)), rng.standard_normal((N, K))


@register_layer("FeedBatches")
class FeedBatches(Layer):
    """Emits batch k on its k-th forward (x, target)."""
    exact_bottoms = 0
    exact_tops = 2
    has_backward = False

    def setup(self, bottom, top):
        self.k = 0

    def reshape(self, bottom, top):
        top[0].reshape((N, D))
        top[1].reshape((N, K))

    def forward(self, bottom, top):
        x, t = batch(self.k)
        top[0].data[...] = x
        top[1].data[...] = t
        self.k += 1

    def state_dict(self):
        return dict(super().state_dict(), k=self.k)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.k = state["k"]


NET = """
name: "linear"
layer { name: "data" type: "FeedBatches" top: "x" top: "t" }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 2
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def make_solver(extra, tmp_path):
    param = parse_text(extra, pb.SolverParameter())
    param.train_net_param.CopyFrom(parse_text(NET, pb.NetParameter()))
    param.snapshot_prefix = str(tmp_path / "snap")
    param.random_seed = 3
    return Solver(param, log=None)


def grads(W, b, k):
    x, t = batch(k)
    r = x @ W.T + b - t
    return r.T @ x / N, r.sum(0) / N


def reference(kind, W, b, sp, steps):
    """Caffe's update rules, applied by hand."""
    params = [W.astype(np.float64), b.astype(np.float64)]
    lr_mult, decay_mult = [1.0, 2.0], [1.0, 0.0]
    hist = [np.zeros_like(p) for p in params]
    hist2 = [np.zeros_like(p) for p in params]
    k = 0
    current_step = 0
    for it in range(steps):
        g_acc = [np.zeros_like(p) for p in params]
        for _ in range(sp.iter_size):
            gw, gb = grads(params[0], params[1], k)
            k += 1
            g_acc[0] += gw
            g_acc[1] += gb
        rate, current_step = learning_rate(sp, it, current_step)
        if sp.clip_gradients >= 0:
            norm = math.sqrt(sum((g ** 2).sum() for g in g_acc))
            if norm > sp.clip_gradients:
                g_acc = [g * sp.clip_gradients / norm for g in g_acc]
        for i, p in enumerate(params):
            g = g_acc[i] / sp.iter_size
            decay = sp.weight_decay * decay_mult[i]
            g = g + (decay * p if sp.regularization_type == "L2" else decay * np.sign(p))
            lr = rate * lr_mult[i]
            m = sp.momentum
            if kind == "SGD":
                hist[i] = m * hist[i] + lr * g
                u = hist[i]
            elif kind == "Nesterov":
                prev = hist[i].copy()
                hist[i] = m * hist[i] + lr * g
                u = (1 + m) * hist[i] - m * prev
            elif kind == "AdaGrad":
                hist[i] = hist[i] + g * g
                u = lr * g / (np.sqrt(hist[i]) + sp.delta)
            elif kind == "RMSProp":
                hist[i] = sp.rms_decay * hist[i] + (1 - sp.rms_decay) * g * g
                u = lr * g / (np.sqrt(hist[i]) + sp.delta)
            elif kind == "AdaDelta":
                hist[i] = m * hist[i] + (1 - m) * g * g
                v = g * np.sqrt(hist2[i] + sp.delta) / np.sqrt(hist[i] + sp.delta)
                hist2[i] = m * hist2[i] + (1 - m) * v * v
                u = lr * v
            elif kind == "Adam":
                hist[i] = m * hist[i] + (1 - m) * g
                hist2[i] = sp.momentum2 * hist2[i] + (1 - sp.momentum2) * g * g
                t = it + 1
                corr = math.sqrt(1 - sp.momentum2 ** t) / (1 - m ** t)
                u = lr * corr * hist[i] / (np.sqrt(hist2[i]) + sp.delta)
            params[i] = p - u
    return params


CASES = {
    "SGD": 'type: "SGD" base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 lr_policy: "step" '
           'gamma: 0.5 stepsize: 2 iter_size: 2',
    "Nesterov": 'type: "Nesterov" base_lr: 0.05 momentum: 0.8 weight_decay: 0.02 '
                'lr_policy: "inv" gamma: 0.1 power: 0.75',
    "AdaGrad": 'type: "AdaGrad" base_lr: 0.2 weight_decay: 0.01 lr_policy: "fixed" delta: 1e-6 '
               'regularization_type: "L1"',
    "RMSProp": 'type: "RMSProp" base_lr: 0.01 rms_decay: 0.95 weight_decay: 0.001 '
               'lr_policy: "exp" gamma: 0.9 delta: 1e-6 iter_size: 3',
    "AdaDelta": 'type: "AdaDelta" base_lr: 1.0 momentum: 0.95 delta: 1e-6 lr_policy: "fixed" '
                'weight_decay: 0.005',
    "Adam": 'type: ADAM base_lr: 0.01 momentum: 0.9 momentum2: 0.999 delta: 1e-8 '
            'lr_policy: "multistep" gamma: 0.5 stepvalue: 1 stepvalue: 3 weight_decay: 0.01 '
            'clip_gradients: 0.5',
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_update_matches_formula(kind, tmp_path):
    solver = make_solver(CASES[kind] + " max_iter: 10", tmp_path)
    ip = solver.net.layer("ip")
    W0, b0 = ip.blobs[0].data.astype(np.float64), ip.blobs[1].data.astype(np.float64)
    steps = 5  # K + 1 steps, K = 4
    solver.step(steps)
    W_ref, b_ref = reference(kind, W0, b0, solver.param, steps)
    np.testing.assert_allclose(ip.blobs[0].data, W_ref, rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(ip.blobs[1].data, b_ref, rtol=2e-4, atol=2e-6)
    assert solver.iter == steps
    assert not np.allclose(W_ref, W0)  # the parameters actually moved


def test_lr_policies():
    sp = pb.SolverParameter(base_lr=0.1, gamma=0.5, power=2.0, stepsize=3, max_iter=10)
    for policy, it, expected in [
            ("fixed", 7, 0.1), ("step", 7, 0.1 * 0.5 ** 2), ("exp", 3, 0.1 * 0.5 ** 3),
            ("inv", 4, 0.1 * (1 + 0.5 * 4) ** -2.0), ("poly", 4, 0.1 * (1 - 0.4) ** 2),
            ("sigmoid", 5, 0.1 / (1 + math.exp(-0.5 * (5 - 3))))]:
        sp.lr_policy = policy
        assert learning_rate(sp, it)[0] == pytest.approx(expected, rel=1e-6), policy
    sp.lr_policy = "multistep"
    sp.stepvalue.extend([2, 5])
    rates = []
    step = 0
    for it in range(7):
        rate, step = learning_rate(sp, it, step)
        rates.append(rate)
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])


def test_resume_continues_exactly(tmp_path):
    cfg = CASES["Adam"] + " max_iter: 8 snapshot: 4 display: 1"
    straight = make_solver(cfg, tmp_path / "a")
    straight.solve()
    W_straight = straight.net.layer("ip").blobs[0].data.copy()

    first = make_solver(cfg.replace("max_iter: 8", "max_iter: 4"), tmp_path / "b")
    first.solve()
    state = tmp_path / "b" / "snap_iter_4.solverstate"
    assert state.exists() and (tmp_path / "b" / "snap_iter_4.caffemodel").exists()
    resumed = make_solver(cfg, tmp_path / "b")
    resumed.solve(resume=str(state))
    assert resumed.iter == 8
    np.testing.assert_array_equal(resumed.net.layer("ip").blobs[0].data, W_straight)


def test_lr_mult_zero_freezes(tmp_path):
    solver = make_solver(CASES["SGD"], tmp_path)
    solver.net.params_lr[0] = 0.0
    W0 = solver.net.layer("ip").blobs[0].data.copy()
    solver.step(2)
    np.testing.assert_array_equal(solver.net.layer("ip").blobs[0].data, W0)


def test_stop_request_snapshots(tmp_path):
    solver = make_solver(CASES["SGD"] + " max_iter: 100", tmp_path)

    class StopAt3:
        def on_iteration(self, s, record):
            if s.iter == 3:
                s.request_stop()
    solver.add_callback(StopAt3())
    solver.solve()
    assert solver.iter == 3
    assert (tmp_path / "snap_iter_3.solverstate").exists()


@pytest.mark.parametrize("bad, message", [
    ('base_lr: 0.1 lr_policy: "step" gamma: 0.1', "stepsize"),
    ('base_lr: 0.1 lr_policy: "wobble"', "unknown lr_policy"),
    ('base_lr: 0.1 type: "Turbo"', "unknown solver type"),
    ('base_lr: 0.1 momentum: 1.5', "momentum"),
    ('lr_policy: "fixed"', "base_lr"),
    ('base_lr: 0.1 iter_size: 0', "iter_size"),
    ('base_lr: 0.1 regularization_type: "L3"', "regularization_type"),
    ('base_lr: 0.1 test_iter: 5', "test_iter"),
])
def test_bad_solver_values(bad, message, tmp_path):
    with pytest.raises(SolverError, match=message):
        make_solver(bad, tmp_path)
