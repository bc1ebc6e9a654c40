"""Softmax, SoftmaxWithLoss, Accuracy and EuclideanLoss: forward values
against NumPy references written here (explicit loops over positions),
backward against central differences (float64), Caffe's normalisation and
ignore_label semantics, loss-weight scaling and input errors."""
import numpy as np
import pytest

from layergraph.errors import LayerError, ShapeError
from layergraph.proto import pb
from layergraph.testing import check_layer_gradient, make_layer, run_layer, setup_layer

MODES = ["FULL", "VALID", "BATCH_SIZE", "NONE"]


def ref_softmax(x, axis):
    x = np.moveaxis(x, axis, -1)
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        e = np.exp(x[idx] - x[idx].max())
        out[idx] = e / e.sum()
    return np.moveaxis(out, -1, axis)


def ref_softmax_loss(x, labels, mode, ignore=None):
    """Caffe's SoftmaxWithLoss for axis 1 with an explicit loop."""
    n, c = x.shape[:2]
    scores = x.reshape(n, c, -1)
    labels = labels.reshape(n, -1)
    inner = scores.shape[2]
    loss, count = 0.0, 0
    for i in range(n):
        for j in range(inner):
            label = int(labels[i, j])
            if ignore is not None and label == ignore:
                continue
            s = scores[i, :, j]
            loss -= s[label] - s.max() - np.log(np.sum(np.exp(s - s.max())))
            count += 1
    z = {"FULL": n * inner, "VALID": count, "BATCH_SIZE": n, "NONE": 1}[mode]
    return loss / max(z, 1)


def loss_spec(mode=None, ignore=None, normalize=None, extra=""):
    fields = []
    if mode is not None:
        fields.append(f"normalization: {mode}")
    if ignore is not None:
        fields.append(f"ignore_label: {ignore}")
    if normalize is not None:
        fields.append(f"normalize: {str(normalize).lower()}")
    lp = f"loss_param {{ {' '.join(fields)} }}" if fields else ""
    return f'type: "SoftmaxWithLoss" {lp} {extra}'


def spatial_problem(seed=0, n=3, c=4, h=2, w=3, ignore=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)) * 2
    labels = rng.integers(0, c, size=(n, 1, h, w)).astype(np.float64)
    if ignore is not None:
        labels.reshape(-1)[::3] = ignore
    return x, labels


# --------------------------------------------------------------- Softmax --
@pytest.mark.parametrize("axis", [1, -1, 0, 2])
def test_softmax_forward(axis):
    x = np.random.default_rng(1).standard_normal((2, 3, 4)) * 3
    _, (y,) = run_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])
    np.testing.assert_allclose(y, ref_softmax(x, axis), rtol=1e-12)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0)


def test_softmax_large_inputs_stay_finite():
    x = np.array([[1000.0, 0.0, -1000.0], [-5000.0, -5000.0, -5001.0]])
    _, (y,) = run_layer('type: "Softmax"', [x])
    e = np.exp(-1.0)
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / (2 + e), 1 / (2 + e), e / (2 + e)]])


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax_gradient(axis):
    x = np.random.default_rng(2).standard_normal((2, 3, 4))
    check_layer_gradient(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])


def test_softmax_bad_axis():
    with pytest.raises(ShapeError, match=r"axis 3.*\(2, 3\)"):
        run_layer('type: "Softmax" softmax_param { axis: 3 }', [np.zeros((2, 3))])


# ------------------------------------------------------- SoftmaxWithLoss --
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_loss_forward_modes(mode, ignore):
    x, labels = spatial_problem(seed=3, ignore=ignore)
    _, (loss,) = run_layer(loss_spec(mode, ignore), [x, labels])
    assert loss.shape == ()
    np.testing.assert_allclose(loss, ref_softmax_loss(x, labels, mode, ignore), rtol=1e-12)


@pytest.mark.parametrize("normalize, mode", [(True, "VALID"), (False, "BATCH_SIZE")])
def test_softmax_loss_legacy_normalize(normalize, mode):
    x, labels = spatial_problem(seed=4, ignore=1)
    _, (loss,) = run_layer(loss_spec(ignore=1, normalize=normalize), [x, labels])
    np.testing.assert_allclose(loss, ref_softmax_loss(x, labels, mode, 1), rtol=1e-12)
    # an explicit normalization wins over the legacy flag (Caffe)
    _, (full,) = run_layer(loss_spec("FULL", ignore=1, normalize=normalize), [x, labels])
    np.testing.assert_allclose(full, ref_softmax_loss(x, labels, "FULL", 1), rtol=1e-12)


def test_softmax_loss_default_is_valid_and_flat_labels():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, size=6).astype(np.float64)
    layer, (loss,) = run_layer('type: "SoftmaxWithLoss"', [x, labels])
    assert layer.normalization == pb.LossParameter.VALID
    expected = -np.mean([np.log(np.exp(x[i, int(labels[i])]) / np.exp(x[i]).sum())
                         for i in range(6)])
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_softmax_loss_all_ignored_is_zero():
    x = np.random.default_rng(6).standard_normal((2, 3))
    _, (loss,) = run_layer(loss_spec("VALID", ignore=0), [x, np.zeros(2)])
    assert loss == 0.0


def test_softmax_loss_extreme_logits_finite():
    x = np.array([[1000.0, -1000.0], [0.0, 0.0]])
    _, (loss,) = run_layer('type: "SoftmaxWithLoss"', [x, np.array([1.0, 0.0])])
    np.testing.assert_allclose(loss, (2000.0 + np.log(2)) / 2, rtol=1e-12)


def test_softmax_loss_second_top_is_probabilities():
    x, labels = spatial_problem(seed=7)
    _, (loss, prob) = run_layer('type: "SoftmaxWithLoss" top: "loss" top: "prob"',
                                [x, labels])
    np.testing.assert_allclose(prob, ref_softmax(x, 1), rtol=1e-12)
    np.testing.assert_allclose(loss, ref_softmax_loss(x, labels, "VALID"), rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_loss_gradient(mode, ignore):
    x, labels = spatial_problem(seed=8, n=2, c=3, h=2, w=2, ignore=ignore)
    checked = check_layer_gradient(loss_spec(mode, ignore), [x, labels], check_bottom=[0])
    assert checked == x.size


def test_softmax_loss_gradient_other_axis_with_prob_top():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 4))
    labels = rng.integers(0, 4, size=(2, 3)).astype(np.float64)
    check_layer_gradient(
        'type: "SoftmaxWithLoss" top: "l" top: "p" softmax_param { axis: 2 }',
        [x, labels], check_bottom=[0], top_index=0)


def test_softmax_loss_backward_reference_and_loss_weight():
    x, labels = spatial_problem(seed=10, ignore=3)
    layer = make_layer(loss_spec("VALID", 3))
    bottom, top = setup_layer(layer, [x, labels])
    layer.forward(bottom, top)
    grads = []
    for weight in (1.0, 2.0):
        top[0].diff[...] = weight
        layer.backward(top, [True, False], bottom)
        grads.append(bottom[0].diff.copy())
    np.testing.assert_array_equal(bottom[1].diff, 0.0)  # labels untouched
    # reference: (p - onehot) / #valid at counted positions, 0 elsewhere
    p = ref_softmax(x, 1)
    lab = labels[:, 0]
    expected = np.zeros_like(x)
    valid = lab != 3
    for n, h, w in zip(*np.nonzero(valid)):
        expected[n, :, h, w] = p[n, :, h, w]
        expected[n, int(lab[n, h, w]), h, w] -= 1
    expected /= valid.sum()
    np.testing.assert_allclose(grads[0], expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads[1], 2 * grads[0], rtol=1e-12)


def test_softmax_loss_label_shape_error():
    x = np.zeros((4, 3, 2))
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(4, 3, 2\)"):
        run_layer('type: "SoftmaxWithLoss"', [x, np.zeros((4, 3))])
    with pytest.raises(ShapeError, match=r"\(8,\).*\(4, 3, 2\)"):
        run_layer('type: "SoftmaxWithLoss"', [x, np.zeros(8)])
    run_layer('type: "SoftmaxWithLoss"', [x, np.zeros((4, 1, 2))])  # N x 1 x inner fits


@pytest.mark.parametrize("label", [3.0, -1.0])
def test_softmax_loss_label_out_of_range(label):
    with pytest.raises(LayerError, match=rf"label {int(label)} out of range \[0, 3\)"):
        run_layer('type: "SoftmaxWithLoss"', [np.zeros((2, 3)), np.array([0.0, label])])


def test_softmax_loss_declares_label_bottom():
    layer = make_layer('type: "SoftmaxWithLoss"')
    assert layer.is_loss and tuple(layer.label_bottoms) == (1,)


# -------------------------------------------------------------- Accuracy --
def ref_accuracy(x, labels, k, ignore=None):
    """Caffe's rule with a loop: correct when fewer than k scores are larger."""
    n, c = x.shape[:2]
    scores = x.reshape(n, c, -1)
    labels = labels.reshape(n, -1)
    hits, count = 0, 0
    class_hits, class_count = np.zeros(c), np.zeros(c)
    for i in range(n):
        for j in range(scores.shape[2]):
            label = int(labels[i, j])
            if ignore is not None and label == ignore:
                continue
            ok = np.sum(scores[i, :, j] > scores[i, label, j]) < k
            hits += ok
            count += 1
            class_hits[label] += ok
            class_count[label] += 1
    per_class = np.where(class_count > 0, class_hits / np.maximum(class_count, 1), 0)
    return (hits / count if count else 0.0), per_class


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("ignore", [None, 0])
def test_accuracy_top_k_and_per_class(k, ignore):
    x, labels = spatial_problem(seed=11, n=5, c=5, ignore=ignore)
    ig = "" if ignore is None else f"ignore_label: {ignore}"
    spec = f'type: "Accuracy" top: "acc" top: "per_class" accuracy_param {{ top_k: {k} {ig} }}'
    layer, (acc, per_class) = run_layer(spec, [x, labels])
    expected, expected_per_class = ref_accuracy(x, labels, k, ignore)
    assert acc.shape == () and per_class.shape == (5,)
    np.testing.assert_allclose(acc, expected, rtol=1e-12)
    np.testing.assert_allclose(per_class, expected_per_class, rtol=1e-12)
    assert layer.has_backward is False and tuple(layer.label_bottoms) == (1,)


def test_accuracy_known_values_and_ties():
    x = np.array([[0.1, 0.7, 0.2],
                  [0.5, 0.5, 0.0],     # tie: counts as correct (only larger scores count)
                  [0.3, 0.3, 0.4],
                  [0.9, 0.05, 0.05],   # label 2 ties class 1 for second place
                  [0.2, 0.5, 0.3]])    # label 0 is last: wrong even at top 2
    labels = np.array([1.0, 0.0, 0.0, 2.0, 0.0])
    _, (top1, per_class) = run_layer('type: "Accuracy" top: "a" top: "c"', [x, labels])
    assert top1 == pytest.approx(2 / 5)
    np.testing.assert_allclose(per_class, [1 / 3, 1.0, 0.0])
    _, (top2,) = run_layer('type: "Accuracy" accuracy_param { top_k: 2 }', [x, labels])
    assert top2 == pytest.approx(4 / 5)


def test_accuracy_axis_and_all_ignored():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 4))  # classes on the last axis
    labels = rng.integers(0, 4, size=(2, 3)).astype(np.float64)
    _, (acc,) = run_layer('type: "Accuracy" accuracy_param { axis: -1 }', [x, labels])
    np.testing.assert_allclose(acc, np.mean(x.argmax(axis=2) == labels))
    _, (none,) = run_layer('type: "Accuracy" accuracy_param { ignore_label: 1 }',
                           [np.zeros((2, 3)), np.ones(2)])
    assert none == 0.0


def test_accuracy_errors():
    with pytest.raises(LayerError, match="top_k 4 exceeds the number of classes 3"):
        run_layer('type: "Accuracy" accuracy_param { top_k: 4 }', [np.zeros((2, 3)), np.zeros(2)])
    with pytest.raises(ShapeError, match=r"\(3,\).*\(2, 3\)"):
        run_layer('type: "Accuracy"', [np.zeros((2, 3)), np.zeros(3)])
    with pytest.raises(LayerError, match=r"label 5 out of range \[0, 3\)"):
        run_layer('type: "Accuracy"', [np.zeros((2, 3)), np.array([0.0, 5.0])])


# --------------------------------------------------------- EuclideanLoss --
def test_euclidean_loss_forward():
    rng = np.random.default_rng(13)
    a, b = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 6))
    _, (loss,) = run_layer('type: "EuclideanLoss"', [a, b])
    expected = sum(np.sum((a[n].ravel() - b[n]) ** 2) for n in range(4)) / (2 * 4)
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


def test_euclidean_loss_gradient_both_bottoms():
    rng = np.random.default_rng(14)
    checked = check_layer_gradient('type: "EuclideanLoss"',
                                   [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))])
    assert checked == 24


def test_euclidean_loss_backward_signs_and_loss_weight():
    rng = np.random.default_rng(15)
    a, b = rng.standard_normal((5, 2)), rng.standard_normal((5, 2, 1, 1))
    layer = make_layer('type: "EuclideanLoss"')
    bottom, top = setup_layer(layer, [a, b])
    layer.forward(bottom, top)
    for weight in (1.0, 2.0):
        top[0].diff[...] = weight
        layer.backward(top, [True, True], bottom)
        np.testing.assert_allclose(bottom[0].diff, weight * (a - b[:, :, 0, 0]) / 5)
        np.testing.assert_allclose(bottom[1].diff, -weight * (a - b[:, :, 0, 0])[..., None, None] / 5)


def test_euclidean_loss_shape_error():
    with pytest.raises(ShapeError, match=r"\(4, 3\) and \(4, 2\)"):
        run_layer('type: "EuclideanLoss"', [np.zeros((4, 3)), np.zeros((4, 2))])
    with pytest.raises(ShapeError, match=r"\(4, 3\) and \(3, 4\)"):
        run_layer('type: "EuclideanLoss"', [np.zeros((4, 3)), np.zeros((3, 4))])
