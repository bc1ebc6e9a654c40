"""BVLC layer types with a kernel path -- BatchNorm (kernels/batch_norm.cu),
Scale (scale.cu), Bias (bias.cu), LRN (lrn.cu), Deconvolution (im2col.cu +
deconvolution.cu), Crop (crop.cu) -- against the NumPy path, forward and
backward, on awkward sizes and every option; the xp-only ones (SPP through
Pooling's kernels, MVN, Im2col, the neuron types) run on the kernel backend
too; and a Conv -> BatchNorm -> Scale -> ReLU net, all in place."""
import numpy as np
import pytest

from layergraph import Net
from layergraph.backend import get_backend, to_numpy
from layergraph.proto import pb
from layergraph.prototxt import parse_net
from layergraph.testing import compare_backends, make_layer, setup_layer

RNG = np.random.default_rng(23)


def distinct(shape, seed=0, step=0.1):
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * step - n * step / 2).reshape(shape)


# ------------------------------------------------------------- BatchNorm --
@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (5, 7), (9,), (1, 3, 1, 1), (2, 70, 3)])
def test_batchnorm_batch_stats_match(kernel_backend, shape):
    x = RNG.standard_normal(shape) * 3 + 2
    report = compare_backends('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.8 }',
                              [x], backend=kernel_backend, iterations=3)
    assert "param[2]" in report and "iter2.bottom_diff[0]" in report


def run_with_stats(spec, backend, x, dy, stats, in_place, phase):
    """Forward/backward once with preset statistics blobs; numpy results."""
    be = get_backend(backend)
    layer = make_layer(spec, phase=phase, dtype=np.float32, backend=be)
    bottom, top = setup_layer(layer, [x.astype(np.float32)])
    if in_place:
        top = bottom
        layer.reshape(bottom, top)
    for blob, value in zip(layer.blobs, stats):
        blob.data[...] = be.xp.asarray(np.asarray(value, np.float32))
    layer.forward(bottom, top)
    y = to_numpy(top[0].data).copy()
    top[0].diff[...] = be.xp.asarray(dy.astype(np.float32))
    layer.backward(top, [True], bottom)
    return y, to_numpy(bottom[0].diff).copy(), [to_numpy(b.data).copy() for b in layer.blobs]


@pytest.mark.parametrize("phase, body", [(pb.TEST, ""), (pb.TRAIN, "use_global_stats: true"),
                                         (pb.TRAIN, ""), (pb.TEST, "use_global_stats: false")])
@pytest.mark.parametrize("in_place", [False, True])
def test_batchnorm_with_stored_statistics_matches(kernel_backend, phase, body, in_place):
    spec = f'type: "BatchNorm" batch_norm_param {{ {body} }}'
    x = RNG.standard_normal((3, 4, 5)) * 2
    dy = RNG.standard_normal(x.shape)
    stats = (RNG.standard_normal(4), RNG.uniform(1, 3, 4), [2.5])
    ref = run_with_stats(spec, "cpu", x, dy, stats, in_place, phase)
    got = run_with_stats(spec, kernel_backend, x, dy, stats, in_place, phase)
    for a, b in zip(ref[:2] + tuple(ref[2]), got[:2] + tuple(got[2])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_batchnorm_zero_scale_factor_matches(kernel_backend):
    compare_backends('type: "BatchNorm"', [RNG.standard_normal((2, 3, 2))],
                     backend=kernel_backend, phase=pb.TEST)


# ----------------------------------------------------------- Scale, Bias --
FILLERS = 'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'
SCALE_CASES = [
    # (spec body, bottom shapes)
    ("", [(2, 3, 4, 5)]),
    ("bias_term: true", [(2, 3, 4, 5)]),
    ("axis: 1 num_axes: 2 bias_term: true", [(3, 5, 7, 2)]),
    ("num_axes: 0 bias_term: true", [(2, 3, 4)]),
    ("axis: -1 num_axes: -1", [(2, 3, 33)]),
    ("axis: 0 num_axes: -1 bias_term: true", [(2, 3, 4)]),             # element-wise
    ("axis: 1 bias_term: true", [(2, 3, 4, 5), (3, 4)]),
    ("axis: 0", [(5, 3), (5,)]),
    ("bias_term: true", [(4, 6, 3), ()]),
    ("", [(1, 70, 1, 1)]),
]


@pytest.mark.parametrize("body, shapes", SCALE_CASES)
def test_scale_matches(kernel_backend, body, shapes):
    spec = f'type: "Scale" scale_param {{ {body} {FILLERS} }}'
    bottoms = [RNG.standard_normal(s) for s in shapes]
    report = compare_backends(spec, bottoms, backend=kernel_backend, iterations=2)
    if len(shapes) > 1:
        assert "iter1.bottom_diff[1]" in report


BIAS_CASES = [
    ("", [(2, 3, 4, 5)]),
    ("axis: 2 num_axes: 2", [(2, 3, 4, 5)]),
    ("num_axes: 0", [(3, 7)]),
    ("axis: -3 num_axes: -1", [(2, 3, 4, 5)]),
    ("axis: 1", [(2, 3, 4, 5), (3, 4)]),
    ("axis: 0", [(6, 2), ()]),
]


@pytest.mark.parametrize("body, shapes", BIAS_CASES)
def test_bias_matches(kernel_backend, body, shapes):
    spec = f'type: "Bias" bias_param {{ {body} filler {{ type: "gaussian" std: 1 }} }}'
    compare_backends(spec, [RNG.standard_normal(s) for s in shapes], backend=kernel_backend,
                     iterations=2)


@pytest.mark.parametrize("spec", [
    f'type: "Scale" scale_param {{ bias_term: true {FILLERS} }}',
    'type: "Bias" bias_param { filler { type: "gaussian" std: 1 } }'])
def test_scale_bias_in_place_match(kernel_backend, spec):
    x = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    out = {}
    for name in ("cpu", kernel_backend):
        be = get_backend(name)
        layer = make_layer(spec, dtype=np.float32, backend=be)
        bottom, _ = setup_layer(layer, [x])
        layer.reshape(bottom, bottom)
        layer.forward(bottom, bottom)
        y = to_numpy(bottom[0].data).copy()
        bottom[0].diff[...] = be.xp.asarray(dy)
        layer.backward(bottom, [True], bottom)
        out[name] = [y, to_numpy(bottom[0].diff).copy()] + [to_numpy(b.diff).copy()
                                                            for b in layer.blobs]
    for a, b in zip(out["cpu"], out[kernel_backend]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------- LRN --
@pytest.mark.parametrize("body, shape", [
    ("", (2, 7, 4, 5)),
    ("local_size: 3 alpha: 2 beta: 0.6 k: 2", (1, 2, 3, 33)),
    ("local_size: 9", (2, 4, 3, 3)),                   # window wider than the channels
    ("norm_region: WITHIN_CHANNEL local_size: 3 alpha: 2 beta: 0.6", (2, 3, 5, 6)),
    ("norm_region: WITHIN_CHANNEL", (1, 2, 3, 4)),
])
def test_lrn_matches(kernel_backend, body, shape):
    compare_backends(f'type: "LRN" lrn_param {{ {body} }}', [RNG.standard_normal(shape) * 2],
                     backend=kernel_backend)


# --------------------------------------------------------- Deconvolution --
DECONV_FILLERS = ('weight_filler { type: "gaussian" std: 0.5 } '
                  'bias_filler { type: "gaussian" std: 0.5 }')
DECONV_CASES = [
    ((2, 3, 4, 5), "num_output: 4 kernel_size: 3"),
    ((2, 3, 4, 5), "num_output: 2 kernel_size: 4 stride: 2 pad: 1"),
    ((1, 4, 3, 4), "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2"),
    ((2, 2, 3, 3), "num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 "
                   "dilation: 2 pad_h: 1 pad_w: 0"),
    ((2, 3, 5, 4), "num_output: 5 kernel_size: 1 bias_term: false"),
    ((1, 6, 2, 3), "num_output: 3 kernel_size: 3 stride: 3 group: 3 bias_term: false"),
    ((1, 1, 1, 1), "num_output: 1 kernel_size: 1"),
]


@pytest.mark.parametrize("shape, body", DECONV_CASES)
def test_deconvolution_matches(kernel_backend, shape, body):
    spec = f'type: "Deconvolution" convolution_param {{ {body} {DECONV_FILLERS} }}'
    compare_backends(spec, [RNG.standard_normal(shape)], backend=kernel_backend, iterations=2)


# ------------------------------------------------------------------ Crop --
@pytest.mark.parametrize("body, shapes", [
    ("", [(2, 3, 6, 7), (1, 1, 4, 3)]),
    ("offset: 1", [(2, 3, 6, 7), (1, 1, 4, 3)]),
    ("axis: 1 offset: 1 offset: 2 offset: 0", [(2, 5, 6, 7), (2, 3, 4, 7)]),
    ("axis: 0 offset: 1", [(3, 4, 5), (2, 3, 4)]),
    ("axis: -1 offset: 5", [(2, 3, 40), (2, 3, 33)]),
    ("axis: 0", [(5,), (3,)]),
])
def test_crop_matches(kernel_backend, body, shapes):
    bottoms = [RNG.standard_normal(s) for s in shapes]
    report = compare_backends(f'type: "Crop" crop_param {{ {body} }}', bottoms,
                              backend=kernel_backend, iterations=2)
    assert "iter1.bottom_diff[0]" in report and "iter1.bottom_diff[1]" not in report


# ------------------------------------------------- xp-only types, same code --
@pytest.mark.parametrize("spec, shape", [
    ('type: "SPP" spp_param { pyramid_height: 3 }', (2, 2, 8, 7)),
    ('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', (1, 3, 5, 6)),
    ('type: "SPP" spp_param { pyramid_height: 1 }', (2, 2, 3, 3)),
    ('type: "MVN"', (2, 3, 4, 5)),
    ('type: "MVN" mvn_param { across_channels: true normalize_variance: false }', (2, 3, 4)),
    ('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 }', (2, 3, 6, 7)),
    ('type: "AbsVal"', (3, 5)),
    ('type: "BNLL"', (3, 5)),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 }', (3, 5)),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', (3, 5)),
    ('type: "Swish" swish_param { beta: 1.5 }', (3, 5)),
    ('type: "Clip" clip_param { min: -1 max: 0.5 }', (3, 5)),
    ('type: "Threshold" threshold_param { threshold: 0.2 }', (3, 5)),
])
def test_xp_layers_run_on_the_kernel_backend(kernel_backend, spec, shape):
    compare_backends(spec, [distinct(shape, step=0.05)], backend=kernel_backend)


def test_log_runs_on_the_kernel_backend(kernel_backend):
    compare_backends('type: "Log" log_param { base: 10 shift: 1 }',
                     [RNG.uniform(0.1, 3, (4, 5))], backend=kernel_backend)


# ------------------------------------------------------------------ a net --
RESNET_BLOCK = """
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 4 dim: 2 dim: 6 dim: 5 }
                      shape { dim: 4 dim: 3 dim: 6 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "scale" type: "Scale" bottom: "c" top: "c"
        scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "loss" type: "EuclideanLoss" bottom: "c" bottom: "t" top: "loss" }
"""


def test_batchnorm_scale_block_matches(kernel_backend):
    rng = np.random.default_rng(3)
    inputs = {"x": rng.standard_normal((4, 2, 6, 5)), "t": rng.standard_normal((4, 3, 6, 5))}
    results = {}
    for name in ("cpu", kernel_backend):
        net = Net(parse_net(RESNET_BLOCK), pb.TRAIN, backend=name, dtype=np.float32)
        xp = net.backend.xp
        for key, value in inputs.items():
            net.blobs[key].data[...] = xp.asarray(value.astype(np.float32))
        net.clear_param_diffs()
        loss = net.forward_backward()
        results[name] = [float(loss), to_numpy(net.blobs["x"].diff).copy()] + [
            to_numpy(b.diff).copy() for b in net.learnable_params] + [
            to_numpy(b.data).copy() for b in net.layer("bn").blobs]
    assert results[kernel_backend][0] == pytest.approx(results["cpu"][0], rel=1e-5)
    for a, b in zip(results["cpu"][1:], results[kernel_backend][1:]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
