"""BVLC Caffe layers, part B: HingeLoss, InfogainLoss, MultinomialLogisticLoss,
SigmoidCrossEntropyLoss, DummyData, ImageData, MemoryData, HDF5Data,
HDF5Output, WindowData, LSTM, LSTMUnit, RNN, ArgMax, Embed, Filter,
BatchReindex, Parameter, Tile, Reduction.

Forward values against references written here (explicit loops, hand-worked
numbers, or another layer), backward against central differences (float64),
Caffe's defaults and the data layers' order, determinism and resume."""
import math
import os

import numpy as np
import pytest

from layergraph import Net
from layergraph.errors import DataError, LayerError, ShapeError
from layergraph.proto import pb
from layergraph.prototxt import parse_net
from layergraph.testing import check_layer_gradient, make_layer, run_layer, setup_layer


def forward(layer, bottom, top):
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return [t.data.copy() for t in top]


def away_from(values, points, gap=0.05):
    """``values`` nudged so that none lies within ``gap`` of a kink point."""
    values = values.copy()
    for p in points:
        close = np.abs(values - p) < gap
        values[close] = p + np.where(values[close] >= p, gap, -gap) * 2
    return values


# ============================================================== losses ====

def hinge_reference(x, labels, norm):
    n = x.shape[0]
    scores = x.reshape(n, -1)
    total = 0.0
    for i in range(n):
        for k in range(scores.shape[1]):
            delta = 1.0 if k == int(labels[i]) else -1.0
            t = max(0.0, 1.0 - delta * scores[i, k])
            total += t if norm == "L1" else t * t
    return total / n


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_forward_and_gradient(norm):
    rng = np.random.default_rng(0)
    x = away_from(rng.uniform(-2.5, 2.5, (4, 5)), [-1.0, 1.0])
    labels = np.array([0, 4, 2, 2], float)
    spec = f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'
    assert run_layer(spec, [x, labels])[1][0] == pytest.approx(hinge_reference(x, labels, norm))
    check_layer_gradient(spec, [x, labels], check_bottom=[0])


def test_hinge_loss_by_hand_and_default_l1():
    # scores of one sample, label 1: terms max(0, 1 + 0.5), max(0, 1 - 2), max(0, 1 - 3)
    x = np.array([[0.5, 2.0, -3.0]])
    assert run_layer('type: "HingeLoss"', [x, [1.0]])[1][0] == pytest.approx(1.5)
    assert run_layer('type: "HingeLoss" hinge_loss_param { norm: L2 }',
                     [x, [1.0]])[1][0] == pytest.approx(2.25)
    with pytest.raises(LayerError, match="label 3 out of range"):
        run_layer('type: "HingeLoss"', [x, [3.0]])


def test_multinomial_logistic_loss_by_hand_and_clamp():
    p = np.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    loss = run_layer('type: "MultinomialLogisticLoss"', [p, [0.0, 1.0]])[1][0]
    assert loss == pytest.approx(math.log(2) / 2)
    # probability 0 is clamped to 1e-20 (Caffe's kLOG_THRESHOLD): finite loss
    loss = run_layer('type: "MultinomialLogisticLoss"', [p, [0.0, 2.0]])[1][0]
    assert loss == pytest.approx((math.log(2) - math.log(1e-20)) / 2)


def test_multinomial_logistic_loss_gradient():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.5, 1.5, (4, 3, 1, 1))
    labels = np.array([[0], [2], [1], [2]], float)
    layer, tops = run_layer('type: "MultinomialLogisticLoss"', [p, labels])
    expected = -np.mean(np.log(p.reshape(4, 3)[np.arange(4), labels.ravel().astype(int)]))
    assert tops[0] == pytest.approx(expected)
    check_layer_gradient('type: "MultinomialLogisticLoss"', [p, labels], check_bottom=[0])


def sigmoid_ce_reference(x, t, mode, ignore=None):
    total, count = 0.0, 0
    for xi, ti in zip(x.ravel(), t.ravel()):
        if ignore is not None and int(ti) == ignore:
            continue
        p = 1.0 / (1.0 + math.exp(-xi))
        total -= ti * math.log(p) + (1 - ti) * math.log(1 - p)
        count += 1
    z = {"FULL": x.size, "VALID": count, "BATCH_SIZE": x.shape[0], "NONE": 1}[mode]
    return total / max(z, 1)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_sigmoid_cross_entropy_modes_and_gradient(mode):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 2)) * 2
    t = rng.integers(0, 2, (3, 2, 2)).astype(float)
    t[0, 0, 0] = -1
    spec = (f'type: "SigmoidCrossEntropyLoss" '
            f'loss_param {{ normalization: {mode} ignore_label: -1 }}')
    assert run_layer(spec, [x, t])[1][0] == pytest.approx(sigmoid_ce_reference(x, t, mode, -1))
    check_layer_gradient(spec, [x, t], check_bottom=[0])


def test_sigmoid_cross_entropy_defaults_soft_targets_and_large_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3))
    t = rng.uniform(0, 1, (4, 3))                      # soft targets
    # Caffe's default here is BATCH_SIZE; normalize: true means VALID
    assert run_layer('type: "SigmoidCrossEntropyLoss"', [x, t])[1][0] == pytest.approx(
        sigmoid_ce_reference(x, t, "BATCH_SIZE"))
    assert run_layer('type: "SigmoidCrossEntropyLoss" loss_param { normalize: true }',
                     [x, t])[1][0] == pytest.approx(sigmoid_ce_reference(x, t, "VALID"))
    check_layer_gradient('type: "SigmoidCrossEntropyLoss"', [x, t], check_bottom=[0])
    big = np.array([[800.0, -800.0]])
    loss = run_layer('type: "SigmoidCrossEntropyLoss"', [big, [[0.0, 0.0]]])[1][0]
    assert loss == pytest.approx(800.0)                 # log(1 + e^800) without overflow


def infogain_reference(x, labels, h, mode="VALID", ignore=None):
    n, c = x.shape[:2]
    s = x.reshape(n, c, -1)
    lab = labels.reshape(n, -1)
    total, count = 0.0, 0
    for i in range(n):
        for j in range(s.shape[2]):
            label = int(lab[i, j])
            if ignore is not None and label == ignore:
                continue
            e = np.exp(s[i, :, j] - s[i, :, j].max())
            p = e / e.sum()
            total -= sum(h[label, k] * math.log(max(p[k], 1e-20)) for k in range(c))
            count += 1
    z = {"FULL": n * s.shape[2], "VALID": count, "BATCH_SIZE": n, "NONE": 1}[mode]
    return total / max(z, 1)


def test_infogain_identity_equals_softmax_with_loss():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 2))
    labels = rng.integers(0, 4, (3, 1, 2)).astype(float)
    info = run_layer('type: "InfogainLoss"', [x, labels, np.eye(4)], num_tops=2)[1]
    soft = run_layer('type: "SoftmaxWithLoss"', [x, labels], num_tops=2)[1]
    np.testing.assert_allclose(info[0], soft[0], rtol=1e-12)
    np.testing.assert_allclose(info[1], soft[1], rtol=1e-12)  # top[1]: the probabilities


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_infogain_general_matrix_and_gradient(mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 2, 2))
    labels = rng.integers(0, 3, (2, 1, 2, 2)).astype(float)
    labels[1, 0, 1, 0] = 7
    h = rng.uniform(0, 2, (3, 3))
    spec = f'type: "InfogainLoss" loss_param {{ ignore_label: 7 normalization: {mode} }}'
    loss = run_layer(spec, [x, labels, h])[1][0]
    assert loss == pytest.approx(infogain_reference(x, labels, h, mode, ignore=7))
    check_layer_gradient(spec, [x, labels, h], check_bottom=[0])


def test_infogain_matrix_from_source_axis_and_errors(tmp_path):
    rng = np.random.default_rng(6)
    h = rng.uniform(0, 1, (3, 3))
    blob = pb.BlobProto()
    blob.shape.dim.extend([1, 1, 3, 3])
    blob.data.extend(h.ravel().tolist())
    path = tmp_path / "H.binaryproto"
    path.write_bytes(blob.SerializeToString())
    x = rng.standard_normal((2, 2, 3))             # classes on axis 2
    labels = rng.integers(0, 3, (2, 2)).astype(float)
    spec = f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" axis: 2 }}'
    loss = run_layer(spec, [x, labels])[1][0]
    moved = np.moveaxis(x, 2, 1)                   # (2, 3, 2): the reference's axis 1
    assert loss == pytest.approx(infogain_reference(moved, labels, h))
    check_layer_gradient(spec, [x, labels], check_bottom=[0])
    with pytest.raises(LayerError, match="infogain matrix is needed"):
        run_layer('type: "InfogainLoss"', [x, labels])
    with pytest.raises(LayerError, match="normalize is deprecated"):
        run_layer('type: "InfogainLoss" loss_param { normalize: true }', [x, labels, h])
    with pytest.raises(ShapeError, match="3x3"):
        run_layer('type: "InfogainLoss"', [np.zeros((2, 3)), [0.0, 1.0], np.eye(2)])


# ============================================================ ArgMax ====

def test_argmax_per_sample_by_hand():
    x = np.array([[5.0, 1.0, 7.0, 7.0], [0.0, -1.0, 2.0, 1.0]])
    top = run_layer('type: "ArgMax"', [x])[1][0]
    assert top.shape == (2, 1, 1)
    # equal values: the larger index first, as Caffe's sort of (value, index)
    np.testing.assert_array_equal(top.ravel(), [3, 2])
    top = run_layer('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [x])[1][0]
    assert top.shape == (2, 2, 3)
    np.testing.assert_array_equal(top[0], [[3, 2, 0], [7, 7, 5]])
    np.testing.assert_array_equal(top[1], [[2, 3, 0], [2, 1, 0]])
    x4 = np.arange(24.0).reshape(2, 3, 2, 2)
    assert run_layer('type: "ArgMax" argmax_param { top_k: 2 }', [x4])[1][0].shape == (2, 1, 2, 1)


def test_argmax_along_axis_against_sort():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 4))
    idx = run_layer('type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', [x])[1][0]
    np.testing.assert_array_equal(idx, np.argsort(-x, axis=1)[:, :2])
    val = run_layer('type: "ArgMax" argmax_param { axis: -1 top_k: 3 out_max_val: true }',
                    [x])[1][0]
    np.testing.assert_array_equal(val, -np.sort(-x, axis=-1)[..., :3])
    with pytest.raises(ShapeError, match="top_k 6 exceeds"):
        run_layer('type: "ArgMax" argmax_param { axis: 1 top_k: 6 }', [x])


# ======================================================= Embed, Parameter ====

def test_embed_forward_by_hand_and_gradient():
    spec = ('type: "Embed" embed_param { input_dim: 4 num_output: 2 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    layer = make_layer(spec)
    bottom, top = setup_layer(layer, [np.array([[3.0, 0.0], [3.0, 1.0]])])
    assert layer.blobs[0].shape == (4, 2) and layer.blobs[1].shape == (2,)
    w = np.arange(8.0).reshape(4, 2)
    layer.blobs[0].data[...] = w
    layer.blobs[1].data[...] = [0.5, -0.5]
    y = forward(layer, bottom, top)[0]
    assert y.shape == (2, 2, 2)
    np.testing.assert_array_equal(y[0], [[6.5, 6.5], [0.5, 0.5]])
    # index 3 twice: its row gathers both gradients
    top[0].diff[...] = 1.0
    layer.blobs[0].zero_diff()
    layer.blobs[1].zero_diff()
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, [[1, 1], [1, 1], [0, 0], [2, 2]])
    np.testing.assert_array_equal(layer.blobs[1].diff, [4, 4])
    check_layer_gradient(spec, [np.array([[3.0, 0.0], [3.0, 1.0]])], check_bottom=[])
    with pytest.raises(LayerError, match="not an integer index"):
        run_layer(spec, [np.array([4.0])])
    with pytest.raises(LayerError, match="not an integer index"):
        run_layer(spec, [np.array([1.5])])


def test_embed_without_bias():
    layer, tops = run_layer('type: "Embed" embed_param { input_dim: 3 num_output: 2 '
                            'bias_term: false weight_filler { type: "constant" value: 2 } }',
                            [np.array([2.0])])
    assert len(layer.blobs) == 1
    np.testing.assert_array_equal(tops[0], [[2.0, 2.0]])


def test_parameter_layer():
    spec = 'type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }'
    layer = make_layer(spec)
    bottom, top = setup_layer(layer, [])
    assert top[0].shape == (2, 3) and not layer.blobs[0].data.any()   # not filled, as Caffe
    layer.blobs[0].data[...] = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(forward(layer, bottom, top)[0], np.arange(6.0).reshape(2, 3))
    top[0].diff[...] = 1.0
    layer.backward(top, [], bottom)
    layer.backward(top, [], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, 2.0)   # parameter diffs accumulate
    check_layer_gradient(spec, [])


# ============================================== Filter, BatchReindex, Tile ====

def test_filter_forward_backward():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((4, 3))
    b = rng.standard_normal((4, 2, 2))
    selector = np.array([[1.0], [0.0], [2.0], [0.0]])
    layer = make_layer('type: "Filter"')
    bottom, top = setup_layer(layer, [a, b, selector], num_tops=2)
    assert top[0].shape == (4, 3)          # the first reshape: every row, as Caffe
    ya, yb = forward(layer, bottom, top)
    np.testing.assert_array_equal(ya, a[[0, 2]])
    np.testing.assert_array_equal(yb, b[[0, 2]])
    check_layer_gradient('type: "Filter"', [a, b, selector], num_tops=2, check_bottom=[0, 1])
    top[0].diff[...] = 1.0
    top[1].diff[...] = 1.0
    layer.backward(top, [True, True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff[[1, 3]], 0.0)
    np.testing.assert_array_equal(bottom[0].diff[[0, 2]], 1.0)
    bottom[2].data[...] = 0
    assert forward(layer, bottom, top)[0].shape == (0, 3)
    with pytest.raises(LayerError, match="one top per filtered bottom"):
        run_layer('type: "Filter"', [a, selector], num_tops=2)
    with pytest.raises(ShapeError, match="singletons"):
        run_layer('type: "Filter"', [a, np.ones((4, 2))])


def test_batch_reindex():
    x = np.arange(12.0).reshape(4, 3)
    index = np.array([3.0, 0.0, 3.0])
    np.testing.assert_array_equal(run_layer('type: "BatchReindex"', [x, index])[1][0],
                                  x[[3, 0, 3]])
    layer = make_layer('type: "BatchReindex"')
    bottom, top = setup_layer(layer, [x, index])
    forward(layer, bottom, top)
    top[0].diff[...] = [[1, 1, 1], [2, 2, 2], [4, 4, 4]]
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff[:, 0], [2, 0, 0, 5])  # repeats add up
    check_layer_gradient('type: "BatchReindex"', [x, index], check_bottom=[0])
    with pytest.raises(LayerError, match="index 4 out of range"):
        run_layer('type: "BatchReindex"', [x, [4.0]])


@pytest.mark.parametrize("axis,tiles", [(1, 3), (0, 2), (-1, 2)])
def test_tile(axis, tiles):
    x = np.random.default_rng(9).standard_normal((2, 3, 2))
    spec = f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}'
    reps = [1, 1, 1]
    reps[axis] = tiles
    np.testing.assert_array_equal(run_layer(spec, [x])[1][0], np.tile(x, reps))
    check_layer_gradient(spec, [x])


def test_tile_needs_tiles():
    with pytest.raises(LayerError, match="tiles"):
        run_layer('type: "Tile"', [np.zeros((2, 2))])


# ========================================================== Reduction ====

@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_reduction(op, axis):
    rng = np.random.default_rng(10)
    x = away_from(rng.standard_normal((2, 3, 4)), [0.0])
    spec = f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: -1.5 }}'
    a = axis % 3
    flat = x.reshape(x.shape[:a] + (-1,))
    expected = {"SUM": flat.sum(-1), "ASUM": np.abs(flat).sum(-1),
                "SUMSQ": (flat ** 2).sum(-1), "MEAN": flat.mean(-1)}[op] * -1.5
    top = run_layer(spec, [x])[1][0]
    assert top.shape == x.shape[:a]
    np.testing.assert_allclose(top, expected, rtol=1e-12)
    check_layer_gradient(spec, [x])


def test_reduction_defaults_sum_everything():
    assert run_layer('type: "Reduction"', [np.arange(6.0).reshape(2, 3)])[1][0] == 15.0


# ========================================================= recurrent ====

def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def ref_lstm(x, cont, wx, b, wh, h0, c0, ws=None, xs=None):
    """Caffe's LSTM with scalar loops: gates i, f, o, g in row blocks."""
    t_steps, n, _ = x.shape
    hidden = wh.shape[1]
    out = np.zeros((t_steps, n, hidden))
    h_fin, c_fin = np.zeros((n, hidden)), np.zeros((n, hidden))
    for s in range(n):
        h, c = list(h0[s]), list(c0[s])
        for t in range(t_steps):
            k = cont[t, s]
            pre = []
            for row in range(4 * hidden):
                v = b[row] + sum(wx[row, d] * x[t, s, d] for d in range(x.shape[2]))
                v += sum(wh[row, j] * k * h[j] for j in range(hidden))
                if ws is not None:
                    v += sum(ws[row, d] * xs[s, d] for d in range(xs.shape[1]))
                pre.append(v)
            new_c, new_h = [], []
            for u in range(hidden):
                i, f = sig(pre[u]), sig(pre[hidden + u])
                o, g = sig(pre[2 * hidden + u]), math.tanh(pre[3 * hidden + u])
                cu = k * f * c[u] + i * g
                new_c.append(cu)
                new_h.append(o * math.tanh(cu))
            h, c = new_h, new_c
            out[t, s] = h
        h_fin[s], c_fin[s] = h, c
    return out, h_fin, c_fin


def ref_rnn(x, cont, wx, b, whh, who, bo, h0, ws=None, xs=None):
    t_steps, n, _ = x.shape
    hidden = whh.shape[0]
    out = np.zeros((t_steps, n, hidden))
    h_fin = np.zeros((n, hidden))
    for s in range(n):
        h = list(h0[s])
        for t in range(t_steps):
            k = cont[t, s]
            new_h = []
            for u in range(hidden):
                v = b[u] + sum(wx[u, d] * x[t, s, d] for d in range(x.shape[2]))
                v += sum(whh[u, j] * k * h[j] for j in range(hidden))
                if ws is not None:
                    v += sum(ws[u, d] * xs[s, d] for d in range(xs.shape[1]))
                new_h.append(math.tanh(v))
            h = new_h
            out[t, s] = [math.tanh(bo[u] + sum(who[u, j] * h[j] for j in range(hidden)))
                         for u in range(hidden)]
        h_fin[s] = h
    return out, h_fin


FILL = ('weight_filler { type: "uniform" min: -0.6 max: 0.6 } '
        'bias_filler { type: "uniform" min: -0.4 max: 0.4 }')
CONT = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])   # T=3, N=2: a reset in stream 1


def recurrent_problem(seed=11, t_steps=3, n=2, d=3, static=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((t_steps, n, d)), rng.standard_normal((n, static))


@pytest.mark.parametrize("static", [False, True])
def test_lstm_forward_against_reference(static):
    x, xs = recurrent_problem()
    spec = f'type: "LSTM" recurrent_param {{ num_output: 2 {FILL} }}'
    bottoms = [x, CONT] + ([xs] if static else [])
    layer, tops = run_layer(spec, bottoms)
    shapes = [b.shape for b in layer.blobs]
    assert shapes == [(8, 3), (8,)] + ([(8, 2)] if static else []) + [(8, 2)]  # Caffe's order
    p = [b.data for b in layer.blobs]
    zeros = np.zeros((2, 2))
    ref, _, _ = ref_lstm(x, CONT, p[0], p[1], p[-1], zeros, zeros,
                         *((p[2], xs) if static else ()))
    np.testing.assert_allclose(tops[0], ref, rtol=1e-12, atol=1e-14)


def test_lstm_expose_hidden_forward_and_gradient():
    x, xs = recurrent_problem(12)
    rng = np.random.default_rng(13)
    h0, c0 = rng.standard_normal((1, 2, 2)), rng.standard_normal((1, 2, 2))
    cont = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    spec = f'type: "LSTM" recurrent_param {{ num_output: 2 expose_hidden: true {FILL} }}'
    layer, tops = run_layer(spec, [x, cont, xs, h0, c0], num_tops=3)
    p = [b.data for b in layer.blobs]
    ref, h_fin, c_fin = ref_lstm(x, cont, p[0], p[1], p[3], h0[0], c0[0], p[2], xs)
    np.testing.assert_allclose(tops[0], ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tops[1][0], h_fin, rtol=1e-12)
    np.testing.assert_allclose(tops[2][0], c_fin, rtol=1e-12)
    # every input but cont, every parameter; h_T and c_T diffs included
    check_layer_gradient(spec, [x, cont, xs, h0, c0], num_tops=3, check_bottom=[0, 2, 3, 4])


@pytest.mark.parametrize("static", [False, True])
def test_lstm_gradient_with_resets(static):
    x, xs = recurrent_problem(14)
    spec = f'type: "LSTM" recurrent_param {{ num_output: 2 {FILL} }}'
    bottoms = [x, CONT] + ([xs] if static else [])
    check_layer_gradient(spec, bottoms, check_bottom=[0, 2] if static else [0])


@pytest.mark.parametrize("static", [False, True])
def test_rnn_forward_against_reference_and_gradient(static):
    x, xs = recurrent_problem(15)
    spec = f'type: "RNN" recurrent_param {{ num_output: 3 {FILL} }}'
    bottoms = [x, CONT] + ([xs] if static else [])
    layer, tops = run_layer(spec, bottoms)
    shapes = [b.shape for b in layer.blobs]
    assert shapes == [(3, 3), (3,)] + ([(3, 2)] if static else []) + [(3, 3), (3, 3), (3,)]
    p = [b.data for b in layer.blobs]
    whh, who, bo = p[-3:]
    ref, _ = ref_rnn(x, CONT, p[0], p[1], whh, who, bo, np.zeros((2, 3)),
                     *((p[2], xs) if static else ()))
    np.testing.assert_allclose(tops[0], ref, rtol=1e-12, atol=1e-14)
    check_layer_gradient(spec, bottoms, check_bottom=[0, 2] if static else [0])


def test_rnn_expose_hidden_gradient():
    x, _ = recurrent_problem(16)
    h0 = np.random.default_rng(17).standard_normal((1, 2, 2))
    spec = f'type: "RNN" recurrent_param {{ num_output: 2 expose_hidden: true {FILL} }}'
    layer, tops = run_layer(spec, [x, np.ones((3, 2)), h0], num_tops=2)
    p = [b.data for b in layer.blobs]
    ref, h_fin = ref_rnn(x, np.ones((3, 2)), p[0], p[1], p[2], p[3], p[4], h0[0])
    np.testing.assert_allclose(tops[0], ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tops[1][0], h_fin, rtol=1e-12)
    check_layer_gradient(spec, [x, np.ones((3, 2)), h0], num_tops=2, check_bottom=[0, 2])


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_hidden_state_carries_across_batches(kind):
    """Without expose_hidden the final state of a forward starts the next
    (as Caffe): two batches of 2 steps equal one batch of 4 steps."""
    rng = np.random.default_rng(18)
    x = rng.standard_normal((4, 2, 3))
    cont = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    spec = f'type: "{kind}" recurrent_param {{ num_output: 2 {FILL} }}'
    _, whole = run_layer(spec, [x, cont])
    layer = make_layer(spec)                   # same seed: same weights
    bottom, top = setup_layer(layer, [x[:2], cont[:2]])
    first = forward(layer, bottom, top)[0]
    bottom[0].data[...] = x[2:]
    bottom[1].data[...] = cont[2:]
    second = forward(layer, bottom, top)[0]
    np.testing.assert_allclose(np.concatenate([first, second]), whole[0], rtol=1e-12)
    layer.reset()                              # back to a zero state
    again = forward(layer, bottom, top)[0]
    _, fresh = run_layer(spec, [x[2:], cont[2:]])
    np.testing.assert_allclose(again, fresh[0], rtol=1e-12)


def test_recurrent_errors():
    x, _ = recurrent_problem()
    with pytest.raises(LayerError, match="num_output must be > 0"):
        run_layer('type: "LSTM"', [x, CONT])
    with pytest.raises(ShapeError, match="cont"):
        run_layer('type: "LSTM" recurrent_param { num_output: 2 }', [x, CONT[:2]])
    with pytest.raises(LayerError, match="needs 3 top"):
        run_layer('type: "LSTM" recurrent_param { num_output: 2 expose_hidden: true }',
                  [x, CONT, np.zeros((1, 2, 2)), np.zeros((1, 2, 2))])


def test_lstm_unit_by_formula_and_gradient():
    rng = np.random.default_rng(19)
    c_prev = rng.standard_normal((1, 3, 2))
    gates = rng.standard_normal((1, 3, 8))
    cont = np.array([[1.0, 0.0, 1.0]])
    c, h = run_layer('type: "LSTMUnit"', [c_prev, gates, cont], num_tops=2)[1]
    for n in range(3):
        for d in range(2):
            g = gates[0, n]
            i, f, o, gg = sig(g[d]), sig(g[2 + d]), sig(g[4 + d]), math.tanh(g[6 + d])
            expected_c = cont[0, n] * f * c_prev[0, n, d] + i * gg
            assert c[0, n, d] == pytest.approx(expected_c, rel=1e-12)
            assert h[0, n, d] == pytest.approx(o * math.tanh(expected_c), rel=1e-12)
    check_layer_gradient('type: "LSTMUnit"', [c_prev, gates, cont], num_tops=2,
                         check_bottom=[0, 1])
    with pytest.raises(ShapeError, match="gate input"):
        run_layer('type: "LSTMUnit"', [c_prev, gates[..., :6], cont], num_tops=2)


def test_lstm_trains_in_a_net():
    net = Net(parse_net('''
        layer { name: "d" type: "DummyData" top: "x" top: "cont" top: "y"
          dummy_data_param { shape { dim: 4 dim: 3 dim: 5 } shape { dim: 4 dim: 3 }
            shape { dim: 4 dim: 3 dim: 1 } data_filler { type: "gaussian" }
            data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 1 } } }
        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
          recurrent_param { num_output: 4 weight_filler { type: "uniform" min: -0.2 max: 0.2 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "h" top: "s"
          inner_product_param { num_output: 1 axis: 2
                                weight_filler { type: "gaussian" std: 0.1 } } }
        layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "s" bottom: "y" top: "loss" }
    '''), pb.TRAIN, dtype=np.float64)
    assert net.blobs["h"].shape == (4, 3, 4)
    losses = []
    for _ in range(5):
        net.clear_param_diffs()
        losses.append(net.forward_backward())
        for blob in net.learnable_params:
            blob.data[...] -= 0.5 * blob.diff
    assert losses[-1] < losses[0]


# ======================================================= data layers ====

def test_dummy_data_shapes_fillers_and_refill():
    spec = ('type: "DummyData" top: "a" top: "b" dummy_data_param { '
            'num: 2 channels: 3 height: 4 width: 5 num: 2 channels: 1 height: 1 width: 1 '
            'data_filler { type: "gaussian" std: 2 } data_filler { type: "constant" value: 7 } }')
    layer = make_layer(spec)
    bottom, top = setup_layer(layer, [], num_tops=2)
    assert top[0].shape == (2, 3, 4, 5) and top[1].shape == (2, 1, 1, 1)
    first = forward(layer, bottom, top)
    second = forward(layer, bottom, top)
    assert not np.array_equal(first[0], second[0])          # refilled every forward
    assert abs(np.std(np.concatenate([first[0], second[0]])) - 2) < 0.5
    np.testing.assert_array_equal(second[1], 7.0)
    top[1].data[...] = -1                                    # constant: filled once only
    np.testing.assert_array_equal(forward(layer, bottom, top)[1], -1.0)
    # no filler: zeros; one shape for every top
    _, tops = run_layer('type: "DummyData" top: "a" top: "b" dummy_data_param '
                        '{ shape { dim: 3 } }', [], num_tops=2)
    assert [t.shape for t in tops] == [(3,), (3,)] and not tops[0].any()


def test_dummy_data_is_reproducible_and_checks_counts():
    spec = ('type: "DummyData" top: "a" dummy_data_param { shape { dim: 4 } '
            'data_filler { type: "uniform" } }')
    np.testing.assert_array_equal(run_layer(spec, [])[1][0], run_layer(spec, [])[1][0])
    with pytest.raises(LayerError, match="not both"):
        run_layer('type: "DummyData" dummy_data_param { num: 1 shape { dim: 1 } }', [])
    with pytest.raises(LayerError, match="shape must be given"):
        run_layer('type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param '
                  '{ shape { dim: 1 } shape { dim: 2 } }', [], num_tops=3)


def test_memory_data():
    layer = make_layer('type: "MemoryData" memory_data_param '
                       '{ batch_size: 2 channels: 1 height: 2 width: 1 }')
    bottom, top = setup_layer(layer, [], num_tops=2)
    assert top[0].shape == (2, 1, 2, 1) and top[1].shape == (2,)
    with pytest.raises(LayerError, match="set_data"):
        layer.forward(bottom, top)
    data = np.arange(12.0).reshape(6, 1, 2, 1)
    layer.set_data(data, np.arange(6).reshape(6, 1, 1, 1))
    seen = [forward(layer, bottom, top) for _ in range(4)]
    np.testing.assert_array_equal(seen[0][0], data[:2])
    np.testing.assert_array_equal(seen[2][1], [4, 5])
    np.testing.assert_array_equal(seen[3][0], data[:2])       # wraps around
    state = layer.state_dict()
    layer.set_batch_size(3)
    assert forward(layer, bottom, top)[0].shape == (3, 1, 2, 1)
    layer.load_state_dict(state)
    layer.set_batch_size(2)
    layer.load_state_dict(state)
    np.testing.assert_array_equal(forward(layer, bottom, top)[1], [2, 3])
    with pytest.raises(LayerError, match="multiple of batch_size"):
        layer.set_data(data[:3], np.arange(3))
    with pytest.raises(ShapeError, match="does not fit"):
        layer.set_data(np.zeros((2, 2, 2, 1)), np.arange(2))
    with pytest.raises(LayerError, match="must be given and positive"):
        run_layer('type: "MemoryData" memory_data_param { batch_size: 2 }', [], num_tops=2)


def write_images(folder, shapes, gray=False):
    from PIL import Image
    rng = np.random.default_rng(20)
    images = []
    for i, (h, w) in enumerate(shapes):
        a = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
        Image.fromarray(a).save(os.path.join(folder, f"img {i}.png"))
        images.append(a)
    return images


def image_list(tmp_path, count, labels=None):
    lines = [f"img {i}.png {labels[i] if labels else i}" for i in range(count)]
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n\n")
    return path


def image_spec(path, root, extra="", transform=""):
    return (f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{path}" '
            f'root_folder: "{root}/" {extra} }} {transform}')


def test_image_data_reads_list_in_order_as_bgr(tmp_path):
    images = write_images(tmp_path, [(4, 6)] * 5)
    path = image_list(tmp_path, 5, labels=[3, 1, 4, 1, 5])
    layer = make_layer(image_spec(path, tmp_path, "batch_size: 2"))
    bottom, top = setup_layer(layer, [], num_tops=2)
    assert top[0].shape == (2, 3, 4, 6) and top[1].shape == (2,)
    batches = [forward(layer, bottom, top) for _ in range(3)]
    np.testing.assert_array_equal(batches[0][1], [3, 1])
    np.testing.assert_array_equal(batches[2][1], [5, 3])        # wraps to the start
    bgr = images[1][:, :, ::-1].transpose(2, 0, 1)              # OpenCV's channel order
    np.testing.assert_array_equal(batches[0][0][1], bgr)


def test_image_data_gray_resize_and_transform(tmp_path):
    from PIL import Image
    Image.fromarray(np.array([[0, 100]], np.uint8)).save(tmp_path / "img 0.png")
    path = image_list(tmp_path, 1)
    spec = image_spec(path, tmp_path, "is_color: false new_height: 1 new_width: 4",
                      'transform_param { mean_value: 10 scale: 0.5 }')
    data = run_layer(spec, [], num_tops=2)[1][0]
    # OpenCV's bilinear: source x = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped)
    np.testing.assert_allclose(data.ravel(), (np.array([0, 25, 75, 100]) - 10) * 0.5)
    rgb = np.array([[[200, 100, 50]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img 0.png")
    gray = run_layer(image_spec(path, tmp_path, "is_color: false"), [], num_tops=2)[1][0]
    assert gray.ravel()[0] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1)


def test_image_data_shuffle_is_reproducible_and_resumable(tmp_path):
    write_images(tmp_path, [(3, 3)] * 6)
    path = image_list(tmp_path, 6)
    spec = image_spec(path, tmp_path, "batch_size: 3 shuffle: true",
                      'transform_param { crop_size: 2 mirror: true }')
    layer = make_layer(spec, seed=5)
    bottom, top = setup_layer(layer, [], num_tops=2)
    runs = [forward(layer, bottom, top) for _ in range(4)]
    labels = [r[1] for r in runs]
    for epoch in (labels[0:2], labels[2:4]):                    # each pass: a permutation
        assert sorted(np.concatenate(epoch)) == list(range(6))
    assert not np.array_equal(np.concatenate(labels[0:2]), np.concatenate(labels[2:4]))
    again = make_layer(spec, seed=5)
    b2, t2 = setup_layer(again, [], num_tops=2)
    again.load_state_dict(layer.state_dict())
    layer_next = forward(layer, bottom, top)
    resumed = forward(again, b2, t2)
    np.testing.assert_array_equal(layer_next[0], resumed[0])
    np.testing.assert_array_equal(layer_next[1], resumed[1])
    other = make_layer(spec, seed=6)
    b3, t3 = setup_layer(other, [], num_tops=2)
    assert any(not np.array_equal(forward(other, b3, t3)[1], r[1]) for r in runs[:2])


def test_image_data_sizes_and_errors(tmp_path):
    write_images(tmp_path, [(3, 3), (2, 5)])
    path = image_list(tmp_path, 2)
    layer = make_layer(image_spec(path, tmp_path))                # batch_size 1: any size
    bottom, top = setup_layer(layer, [], num_tops=2)
    assert [forward(layer, bottom, top)[0].shape for _ in range(2)] == \
        [(1, 3, 3, 3), (1, 3, 2, 5)]
    with pytest.raises(DataError, match="batch's first image"):
        run_layer(image_spec(path, tmp_path, "batch_size: 2"), [], num_tops=2)
    bad = tmp_path / "bad.txt"
    bad.write_text("nolabel\n")
    with pytest.raises(DataError, match="line 1"):
        run_layer(image_spec(bad, tmp_path), [], num_tops=2)
    missing = tmp_path / "missing.txt"
    missing.write_text("nothere.png 0\n")
    with pytest.raises(DataError, match="could not load image"):
        run_layer(image_spec(missing, tmp_path), [], num_tops=2)


def test_image_data_in_a_net(tmp_path):
    write_images(tmp_path, [(4, 4)] * 4)
    path = image_list(tmp_path, 4, labels=[0, 1, 0, 1])
    net = Net(parse_net(f'''
        layer {{ name: "d" {image_spec(path, tmp_path, "batch_size: 2",
                                       "transform_param { scale: 0.00390625 }")} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                 inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    '''), pb.TRAIN)
    assert np.isfinite(net.forward_backward())
    assert net.blobs["data"].shape == (2, 3, 4, 4)


def test_window_data_is_refused_in_one_line():
    with pytest.raises(LayerError, match="WindowData is deprecated and not supported") as e:
        run_layer('type: "WindowData" window_data_param { source: "w.txt" batch_size: 1 }',
                  [], num_tops=2)
    assert "\n" not in str(e.value) and "ImageData" in str(e.value)


def test_hdf5_without_h5py_is_one_line(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "h5py", None)     # import h5py raises ImportError
    with pytest.raises(LayerError, match="HDF5Data needs h5py: pip install h5py"):
        run_layer('type: "HDF5Data" top: "data" hdf5_data_param { source: "x" batch_size: 1 }',
                  [])


def hdf5_files(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.arange(12.0).reshape(3, 2, 2)
        f["label"] = np.arange(3.0)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["data"] = 100 + np.arange(8.0).reshape(2, 2, 2)
        f["label"] = 10 + np.arange(2.0)
    listing = tmp_path / "files.txt"
    listing.write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    return listing


def hdf5_spec(listing, extra=""):
    return (f'type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{listing}" batch_size: 2 {extra} }}')


def test_hdf5_data_in_order_across_files(tmp_path):
    listing = hdf5_files(tmp_path)
    layer = make_layer(hdf5_spec(listing))
    bottom, top = setup_layer(layer, [], num_tops=2)
    assert top[0].shape == (2, 2, 2) and top[1].shape == (2,)
    labels = [forward(layer, bottom, top)[1].tolist() for _ in range(4)]
    assert labels == [[0, 1], [2, 10], [11, 0], [1, 2]]
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[0], 100 + np.arange(4.0).reshape(2, 2))


def test_hdf5_data_shuffle_reproducible_and_resumable(tmp_path):
    listing = hdf5_files(tmp_path)
    layer = make_layer(hdf5_spec(listing, "shuffle: true"), seed=3)
    bottom, top = setup_layer(layer, [], num_tops=2)
    seen = []
    for k in range(5):
        seen += forward(layer, bottom, top)[1].tolist()
        if k == 1:
            state = layer.state_dict()
    assert sorted(seen[:5]) == [0, 1, 2, 10, 11]             # one pass: every row once
    again = make_layer(hdf5_spec(listing, "shuffle: true"), seed=3)
    b2, t2 = setup_layer(again, [], num_tops=2)
    again.load_state_dict(state)
    resumed = []
    for _ in range(3):
        resumed += forward(again, b2, t2)[1].tolist()
    assert resumed == seen[4:]


def test_hdf5_data_errors(tmp_path):
    listing = hdf5_files(tmp_path)
    with pytest.raises(DataError, match="no dataset 'score'"):
        run_layer(f'type: "HDF5Data" top: "score" hdf5_data_param {{ source: "{listing}" '
                  'batch_size: 1 }', [])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="lists no file"):
        run_layer(hdf5_spec(empty), [], num_tops=2)


def test_hdf5_output_appends_batches(tmp_path):
    h5py = pytest.importorskip("h5py")
    out = tmp_path / "out.h5"
    layer = make_layer(f'type: "HDF5Output" hdf5_output_param {{ file_name: "{out}" }}')
    data = np.arange(6.0).reshape(2, 3)
    bottom, top = setup_layer(layer, [data, np.array([1.0, 2.0])], num_tops=0)
    forward(layer, bottom, top)
    bottom[0].data[...] = -data
    forward(layer, bottom, top)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["data"][()], np.concatenate([data, -data]))
        np.testing.assert_array_equal(f["label"][()], [1, 2, 1, 2])
