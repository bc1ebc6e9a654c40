"""QuantizationLoss: the value against a per-element loop written here,
gradient checks (away from the kinks at 0 and 1/2) at a point inside the
ramp, the linear ramp over TRAIN passes and its resume, and the loss weight
through a Net."""
import numpy as np
import pytest

from layergraph import Net
from layergraph.proto import pb
from layergraph.prototxt import parse_text
from layergraph.testing import (check_gradient, compare_backends, make_layer, run_layer,
                                setup_layer)


def spec(relaxation="TANH", ramp=0):
    return (f'type: "QuantizationLoss" quantization_loss_param {{ relaxation: {relaxation} '
            f'ramp_iterations: {ramp} }}')


def ref_quantization(b, relaxation):
    total = 0.0
    for v in np.ravel(b):
        if relaxation == "TANH":
            target = 1.0 if v >= 0 else -1.0
        else:
            target = 1.0 if v >= 0.5 else 0.0
        total += (v - target) ** 2
    return total / b.size


def codes(relaxation, seed=0, shape=(5, 6)):
    """Relaxed codes at least 0.05 away from the kink (0, resp. 1/2)."""
    rng = np.random.default_rng(seed)
    b = np.tanh(rng.standard_normal(shape) * 1.5)
    b = np.where(np.abs(b) < 0.05, np.sign(b) * 0.05 + b, b)
    b = np.where(b == 0, 0.3, b)
    return b if relaxation == "TANH" else (b + 1.0) / 2.0


@pytest.mark.parametrize("relaxation", ["TANH", "SIGMOID"])
def test_value_matches_reference(relaxation):
    b = codes(relaxation)
    _, tops = run_layer(spec(relaxation), [b])
    assert float(tops[0]) == pytest.approx(ref_quantization(b, relaxation), rel=1e-12)
    # exact codes cost nothing; the most undecided ones cost the most
    exact = np.array([[-1.0, 1.0]]) if relaxation == "TANH" else np.array([[0.0, 1.0]])
    assert float(run_layer(spec(relaxation), [exact])[1][0]) == 0.0
    middle = np.array([[0.0]]) if relaxation == "TANH" else np.array([[0.5]])
    assert float(run_layer(spec(relaxation), [middle])[1][0]) == pytest.approx(
        1.0 if relaxation == "TANH" else 0.25)


def test_tanh_and_sigmoid_forms_agree():
    b = codes("SIGMOID", seed=3)
    sig = float(run_layer(spec("SIGMOID"), [b])[1][0])
    tanh = float(run_layer(spec("TANH"), [2.0 * b - 1.0])[1][0])
    assert tanh == pytest.approx(4.0 * sig, rel=1e-12)


@pytest.mark.parametrize("ramp", [0, 4])
@pytest.mark.parametrize("relaxation", ["TANH", "SIGMOID"])
def test_gradient(relaxation, ramp):
    b = codes(relaxation, seed=1)
    layer = make_layer(spec(relaxation, ramp))
    bottom, top = setup_layer(layer, [b])
    for _ in range(3):            # inside the ramp: r = 3/4 when ramp = 4
        layer.forward(bottom, top)
    assert layer.ramp() == (0.75 if ramp else 1.0)
    assert check_gradient(layer, bottom, top, stepsize=1e-4) == b.size


def test_ramp_is_linear_over_train_passes_and_resumes():
    b = codes("TANH", seed=2)
    q = ref_quantization(b, "TANH")
    layer = make_layer(spec("TANH", ramp=4))
    bottom, top = setup_layer(layer, [b])
    values, states = [], []
    for _ in range(7):
        states.append(layer.state_dict())
        layer.forward(bottom, top)
        values.append(float(top[0].data))
    np.testing.assert_allclose(values, [0, q / 4, q / 2, 3 * q / 4, q, q, q], rtol=1e-12)
    resumed = make_layer(spec("TANH", ramp=4))
    bottom2, top2 = setup_layer(resumed, [b])
    resumed.load_state_dict(states[2])
    resumed.forward(bottom2, top2)
    assert float(top2[0].data) == pytest.approx(q / 2, rel=1e-12)
    # the gradient carries the ramp too
    top2[0].diff[...] = 1.0
    resumed.backward(top2, [True], bottom2)
    np.testing.assert_allclose(bottom2[0].diff, 0.5 * 2 * (b - np.sign(b)) / b.size, rtol=1e-12)
    # TEST nets report the unramped quantisation error
    tested = make_layer(spec("TANH", ramp=4), phase=pb.TEST)
    bottom3, top3 = setup_layer(tested, [b])
    tested.forward(bottom3, top3)
    assert float(top3[0].data) == pytest.approx(q, rel=1e-12)


def test_loss_weight_through_a_net():
    net = Net(parse_text("""
        force_backward: true
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 8 } } }
        layer { name: "code" type: "TanH" bottom: "x" top: "code" }
        layer { name: "quant" type: "QuantizationLoss" bottom: "code" top: "quant"
                loss_weight: 0.5 quantization_loss_param { ramp_iterations: 2 } }
        """, pb.NetParameter()), phase=pb.TRAIN, dtype=np.float64)
    x = np.random.default_rng(4).standard_normal((4, 8))
    net.set_input("x", x)
    b = np.tanh(x)
    q = ref_quantization(b, "TANH")
    losses = [net.forward_backward() for _ in range(3)]
    np.testing.assert_allclose(losses, [0.0, 0.5 * q / 2, 0.5 * q], rtol=1e-9)
    grad_code = 0.5 * 2 * (b - np.sign(b)) / b.size
    np.testing.assert_allclose(net.blobs["code"].diff, grad_code, rtol=1e-9)


@pytest.mark.parametrize("relaxation", ["TANH", "SIGMOID"])
def test_same_results_on_every_backend(kernel_backend, relaxation):
    compare_backends(spec(relaxation, ramp=3), [codes(relaxation)], backend=kernel_backend,
                     iterations=3)
