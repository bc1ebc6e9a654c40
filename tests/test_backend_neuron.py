"""Neuron layers on the kernel path (kernels/relu.cu, prelu.cu, elu.cu,
sigmoid.cu, tanh.cu) against the NumPy path: forward and backward, on awkward
sizes, in place and not."""
import numpy as np
import pytest

from layergraph.testing import compare_backends

RNG = np.random.default_rng(7)
SHAPES = [(1,), (3, 5, 7, 2), (2, 3, 1, 33)]

SPECS = [
    'type: "ReLU"',
    'type: "ReLU" relu_param { negative_slope: 0.3 }',
    'type: "ReLU" relu_param { negative_slope: -0.3 }',
    'type: "Sigmoid"',
    'type: "TanH"',
    'type: "ELU" elu_param { alpha: 0.7 }',
    'type: "PReLU" prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } }',
    'type: "PReLU" prelu_param { channel_shared: true }',
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", SHAPES)
def test_neuron_matches_numpy(kernel_backend, spec, shape):
    if "PReLU" in spec and "channel_shared" not in spec and len(shape) < 2:
        pytest.skip("per-channel PReLU needs a channel axis")
    x = RNG.standard_normal(shape) * 3
    report = compare_backends(spec, [x], backend=kernel_backend, iterations=2)
    assert any(k.startswith("iter1.bottom_diff") for k in report)


@pytest.mark.parametrize("spec", SPECS[:6])
def test_neuron_in_place_matches_numpy(kernel_backend, spec):
    """top is bottom: the kernel path keeps what backward needs."""
    from layergraph.backend import get_backend, to_numpy
    from layergraph.testing import make_layer, setup_layer
    x = RNG.standard_normal((4, 3, 5)).astype(np.float32)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    out = {}
    for name in ("cpu", kernel_backend):
        be = get_backend(name)
        layer = make_layer(spec, dtype=np.float32, backend=be)
        bottom, _ = setup_layer(layer, [x])
        top = bottom  # in place
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        y = to_numpy(top[0].data).copy()
        top[0].diff[...] = be.xp.asarray(dy)
        layer.backward(top, [True], bottom)
        out[name] = (y, to_numpy(bottom[0].diff).copy())
    np.testing.assert_allclose(out[kernel_backend][0], out["cpu"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[kernel_backend][1], out["cpu"][1], rtol=1e-5, atol=1e-6)
