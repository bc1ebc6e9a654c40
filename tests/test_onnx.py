"""ONNX export (layergraph.onnx_export, ``layergraph export``): the RUN net
through onnxruntime gives our outputs within 1e-5.

Round trips on the four templates' deploy nets (each trained two iterations
on TINY, so the Decode centroids are real) and on BVLC's trained LeNet, with
real MNIST digits; one test per layer mapping on odd sizes -- Caffe's
ceil-rounded pooling and its AVE divisor, windows past the image, groups,
dilation, axes -- each net built with batch 2 and run with batch 3 (the
exported batch axis is free).  Skipped without onnx / onnxruntime, except
the missing-package message itself.
"""
import os
import sys

import numpy as np
import pytest

import layergraph as lg
from layergraph.cli import main
from layergraph.errors import LayergraphError
from layergraph.evaluation.embedding import data_transform, load_split, preprocess
from layergraph.onnx_export import compare, net_to_onnx, pooling_geometry, run_onnx
from layergraph.prototxt import parse_net, read_net

try:
    import onnx
    import onnxruntime  # noqa: F401
except ImportError:
    onnx = None
needs_onnx = pytest.mark.skipif(onnx is None, reason="onnx/onnxruntime not installed")

COMPAT = os.environ.get("LAYERGRAPH_COMPAT", os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "compat")))
BVLC = os.path.join(COMPAT, "bvlc")
needs_compat = pytest.mark.skipif(not os.path.isdir(BVLC), reason="shared/compat not present")
MNIST_SAMPLE = os.path.join(os.path.dirname(__file__), "..", "layergraph", "imagedb",
                            "mnist_sample")
TOL = dict(rtol=1e-5, atol=1e-5)


def assert_round_trip(net, inputs, outputs=None):
    """Export ``net``, check it, run it on onnxruntime: every graph output
    equals our blob within 1e-5 (NaN where ours is NaN).  Returns the model."""
    proto = net_to_onnx(net, outputs)
    onnx.checker.check_model(proto)
    _, ours, theirs = compare(net, proto, inputs)
    assert set(ours) == {o.name for o in proto.graph.output}
    for name in ours:
        assert theirs[name].shape == ours[name].shape, name
        np.testing.assert_allclose(theirs[name], ours[name], equal_nan=True, err_msg=name,
                                   **TOL)
    return proto


def layer_net(layers, shapes, seed=0):
    """A net of Input blobs x0, x1, ... of ``shapes`` (batch 2) and the
    given layer text; parameters from gaussian fillers."""
    text = "".join(
        f'layer {{ name: "in{k}" type: "Input" top: "x{k}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in (2,) + tuple(s)) + " } } }\n"
        for k, s in enumerate(shapes))
    return lg.Net(parse_net(text + layers), lg.RUN, seed=seed)


def feeds(net, batch=3, seed=1, low=-2.0, high=2.0):
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(low, high, (batch,) + net.blobs[name].shape[1:])
            .astype(np.float32) for name in net.inputs}


def check(layers, *shapes, outputs=None, low=-2.0, high=2.0):
    net = layer_net(layers, shapes)
    return assert_round_trip(net, feeds(net, low=low, high=high), outputs)


GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


# --------------------------------------------------------------- pooling ----

@needs_onnx
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("size, geometry", [
    ((7, 7), "kernel_size: 3 stride: 2"),                 # exact fit
    ((6, 6), "kernel_size: 3 stride: 2"),                 # ceil: the last window overhangs
    ((6, 6), "kernel_size: 3 stride: 2 pad: 1"),          # pad + overhang: AVE divisor
    ((5, 5), "kernel_size: 2 stride: 2 pad: 1"),          # last window would start in pad
    ((5, 7), "kernel_size: 3 stride: 2 pad: 2"),          # pad 2 < kernel 3
    ((5, 5), "kernel_size: 1 stride: 3"),                 # stride > kernel, window past image
    ((6, 6), "kernel_size: 1 stride: 3"),                 # ... starting at its end
    ((8, 5), "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1"),
    ((9, 9), "kernel_size: 2 stride: 2 round_mode: FLOOR"),
    ((5, 6), "global_pooling: true"),
])
def test_pooling_matches_caffe_rounding_and_divisor(pool, size, geometry):
    check(f'layer {{ name: "p" type: "Pooling" bottom: "x0" top: "y" '
          f'pooling_param {{ pool: {pool} {geometry} }} }}', (3,) + size)


def test_pooling_geometry_is_caffes():
    """6 wide, kernel 3, stride 2, pad 1: Caffe gives 4 windows starting at
    -1, 1, 3, 5; the last covers 5..7 of which 7 is past the padding, so its
    divisor is 2 (the head pad counts: the first divisor is 3); a tail pad
    of 2 makes floor rounding give 4 windows."""
    tail, divisor, empty = pooling_geometry(6, 3, 1, 2, 4)
    assert tail == 2 and divisor.tolist() == [3, 3, 3, 2] and not empty.any()
    assert (6 + 1 + tail - 3) // 2 + 1 == 4
    # kernel 1, stride 3 on 6: windows at 0, 3, 6 -- the last one is past the image
    tail, divisor, empty = pooling_geometry(6, 1, 0, 3, 3)
    assert tail == 1 and empty.tolist() == [False, False, True]


# ---------------------------------------------------------- convolution ----

@needs_onnx
@pytest.mark.parametrize("params, channels", [
    ("num_output: 4 kernel_size: 3", 3),
    ("num_output: 6 kernel_size: 3 group: 3 stride: 2 pad: 1", 3),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2", 2),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 "
     "bias_term: false", 2),
    ("num_output: 4 kernel_size: 2 group: 2 dilation: 2 stride: 3", 4),
])
def test_convolution_groups_dilation_stride(params, channels):
    check(f'layer {{ name: "c" type: "Convolution" bottom: "x0" top: "y" '
          f'convolution_param {{ {params} {GAUSS} }} }}', (channels, 9, 7))


@needs_onnx
@pytest.mark.parametrize("params", [
    "num_output: 3 kernel_size: 3 stride: 2",
    "num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2",
])
def test_deconvolution(params):
    check(f'layer {{ name: "d" type: "Deconvolution" bottom: "x0" top: "y" '
          f'convolution_param {{ {params} {GAUSS} }} }}', (2, 5, 4))


# -------------------------------------------------------- inner product ----

@needs_onnx
@pytest.mark.parametrize("params, shape", [
    ("num_output: 5", (3, 4, 5)),               # Flatten(axis=1) + Gemm
    ("num_output: 5", (7,)),                     # already 2-D
    ("num_output: 5 transpose: true", (2, 3, 3)),
    ("num_output: 5 bias_term: false", (6,)),
    ("num_output: 5 axis: 2", (3, 4, 2)),         # (N, 3, 5): leading axes kept
    ("num_output: 5 axis: -1 bias_term: false", (3, 4)),
])
def test_inner_product_axis_and_transpose(params, shape):
    check(f'layer {{ name: "ip" type: "InnerProduct" bottom: "x0" top: "y" '
          f'inner_product_param {{ {params} {GAUSS} }} }}', shape)


# ---------------------------------------------------------- activations ----

@needs_onnx
@pytest.mark.parametrize("spec", [
    'type: "ReLU"',
    'type: "ReLU" relu_param { negative_slope: 0.1 }',
    'type: "PReLU" prelu_param { filler { type: "gaussian" std: 0.5 } }',
    'type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: 0.3 } }',
    'type: "ELU" elu_param { alpha: 0.7 }',
    'type: "Sigmoid"', 'type: "TanH"', 'type: "AbsVal"', 'type: "BNLL"',
    'type: "Swish" swish_param { beta: 1.5 }',
    'type: "Clip" clip_param { min: -0.5 max: 1 }',
    'type: "Threshold" threshold_param { threshold: 0.3 }',
    'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
    'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
    'type: "Dropout" dropout_param { dropout_ratio: 0.4 }',
    'type: "Normalize"',
    'type: "Normalize" normalize_param { eps: 0.5 }',
    'type: "Softmax"',
    'type: "Softmax" softmax_param { axis: -1 }',
    'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }',
    'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }',
])
def test_elementwise_and_normalising_layers(spec):
    check(f'layer {{ name: "a" {spec} bottom: "x0" top: "y" }}', (4, 3, 5))


@needs_onnx
def test_log_on_positive_inputs():
    check('layer { name: "l" type: "Log" log_param { base: 10 scale: 2 shift: 0.5 } '
          'bottom: "x0" top: "y" }', (3, 4), low=0.1, high=3.0)


# ------------------------------------------------------------ structure ----

@needs_onnx
def test_concat_slice_eltwise_flatten_reshape():
    check('''
layer { name: "cat" type: "Concat" bottom: "x0" bottom: "x1" top: "cat" concat_param { axis: 1 } }
layer { name: "cut" type: "Slice" bottom: "cat" top: "a" top: "b" top: "c"
        slice_param { axis: 1 slice_point: 1 slice_point: 4 } }
layer { name: "halves" type: "Slice" bottom: "x1" top: "h1" top: "h2" slice_param { axis: 3 } }
layer { name: "sum" type: "Eltwise" bottom: "h1" bottom: "h2" top: "sum"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "h1" bottom: "h2" bottom: "sum" top: "prod"
        eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "h1" bottom: "h2" bottom: "prod" top: "max"
        eltwise_param { operation: MAX } }
layer { name: "flat" type: "Flatten" bottom: "max" top: "flat" flatten_param { axis: 2 } }
layer { name: "flat_all" type: "Flatten" bottom: "c" top: "flat_all" }
layer { name: "shape" type: "Reshape" bottom: "b" top: "shape"
        reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
layer { name: "shape_tail" type: "Reshape" bottom: "a" top: "shape_tail"
        reshape_param { axis: 2 shape { dim: 2 dim: -1 } } }
''', (2, 3, 4), (3, 3, 4), outputs=["flat", "flat_all", "shape", "shape_tail", "sum"])


@needs_onnx
def test_slice_and_concat_on_the_batch_axis():
    proto = check('''
layer { name: "cut" type: "Slice" bottom: "x0" top: "first" top: "rest"
        slice_param { axis: 0 slice_point: 1 } }
layer { name: "cat" type: "Concat" bottom: "rest" bottom: "first" top: "y" concat_param { axis: 0 } }
''', (2, 3))
    assert [o.name for o in proto.graph.output] == ["y"]


@needs_onnx
def test_batch_norm_scale_bias_with_stored_statistics():
    net = layer_net('''
layer { name: "bn" type: "BatchNorm" bottom: "x0" top: "x0"
        batch_norm_param { use_global_stats: true eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "x0" top: "x0"
        scale_param { bias_term: true filler { type: "gaussian" std: 1 }
                      bias_filler { type: "gaussian" std: 1 } } }
layer { name: "b" type: "Bias" bottom: "x0" top: "b" bias_param { filler { type: "gaussian" } } }
layer { name: "s2" type: "Scale" bottom: "b" bottom: "x1" top: "s2" scale_param { axis: 0 } }
layer { name: "bn2" type: "BatchNorm" bottom: "s2" top: "y" batch_norm_param { use_global_stats: true } }
''', [(3, 4, 5), (3, 4)])
    rng = np.random.default_rng(3)
    for name in ("bn", "bn2"):
        mean_sum, var_sum, factor = net.layer(name).blobs
        factor.data[...] = 2.5
        mean_sum.data[...] = rng.normal(0, 1, 3)
        var_sum.data[...] = rng.uniform(0.5, 2, 3)
    assert_round_trip(net, feeds(net))


@needs_onnx
def test_in_place_chain_exports_each_version_and_requested_blobs():
    """ip1 is computed, then rewritten in place by the ReLU: the output
    'ip1' is the final (rectified) version, as net.blobs['ip1'] after a
    forward pass; a layer name stands for its first top."""
    proto = check(f'''
layer {{ name: "ip1" type: "InnerProduct" bottom: "x0" top: "ip1"
        inner_product_param {{ num_output: 6 {GAUSS} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 3 {GAUSS} }} }}
layer {{ name: "sum" type: "Eltwise" bottom: "ip1" bottom: "ip1" top: "sum" }}
''', (5,), outputs=["ip1", "ip2", "sum"])
    assert [o.name for o in proto.graph.output] == ["ip1", "ip2", "sum"]
    assert [d.dim_param or d.dim_value for d in proto.graph.output[1].type.tensor_type.shape.dim] \
        == ["batch", 3]


def decode_net(target):
    net = layer_net(f'''
layer {{ name: "decode" type: "Decode" bottom: "x0" top: "distances" top: "centroids"
        decode_param {{ target: {target} pregen_label_count: 4 cache_size: 3 k: 2
                       ignore_labels: 3 }} }}''', [(2, 3)])
    layer = net.layer("decode")
    rng = np.random.default_rng(5)
    layer.blobs[0].data[...] = rng.normal(0, 1, layer.blobs[0].shape)
    layer.blobs[1].data[...] = [2, 0, 3, 1] if target == "KNN" else [5, 0, 7, 2]
    layer.blobs[2].data[...] = 10
    return net


@needs_onnx
@pytest.mark.parametrize("target", ["CENTROID", "KNN"])
def test_decode_distances_with_classes_not_ready(target):
    """Label 1 has no centroid / cached item and label 3 is ignored: both
    give 1e30, as our layer; KNN averages the min(k, fill) nearest."""
    net = decode_net(target)
    proto = assert_round_trip(net, feeds(net))
    out = run_onnx(proto, feeds(net))
    assert (out["distances"][:, [1, 3]] == 1e30).all()
    assert (out["distances"][:, [0, 2]] < 1e29).all()


# ---------------------------------------------------------------- errors ----

@needs_onnx
def test_layer_without_mapping_is_one_line_error():
    net = layer_net('layer { name: "am" type: "ArgMax" bottom: "x0" top: "y" }', [(5,)])
    with pytest.raises(LayergraphError) as e:
        net_to_onnx(net)
    assert "layer 'am' (ArgMax)" in str(e.value) and "no ONNX mapping" in str(e.value)
    assert "\n" not in str(e.value)


@needs_onnx
def test_unknown_output_is_one_line_error():
    net = layer_net('layer { name: "r" type: "ReLU" bottom: "x0" top: "y" }', [(5,)])
    with pytest.raises(LayergraphError, match="no blob or layer 'nope'"):
        net_to_onnx(net, ["nope"])


def test_missing_onnx_package_is_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "--model", "m.prototxt", "--weights", "w", "--out", "x.onnx"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'layergraph[onnx]'" in err and len(err.strip().splitlines()) == 1


# -------------------------------------------------------- real networks ----

def mnist_sample(count, scale=0.00390625):
    from layergraph.imagedb.creators import read_idx
    images = read_idx(os.path.join(MNIST_SAMPLE, "t10k-images-idx3-ubyte.gz"), "images")
    labels = read_idx(os.path.join(MNIST_SAMPLE, "t10k-labels-idx1-ubyte.gz"), "labels")
    return images[:count, None].astype(np.float32) * scale, labels[:count]


@needs_onnx
@needs_compat
def test_bvlc_lenet_round_trip_on_mnist_digits(tmp_path, capsys):
    """BVLC's trained LeNet, exported through the CLI: the file passes
    onnx.checker and onnxruntime's probabilities on 500 real digits equal
    ours within 1e-5 (so the same digits are right)."""
    out = str(tmp_path / "lenet.onnx")
    model = os.path.join(BVLC, "lenet.prototxt")
    weights = os.path.join(BVLC, "lenet_iter_10000.caffemodel")
    assert main(["export", "--model", model, "--weights", weights, "--out", out,
                 "--verify", "4"]) == 0
    printed = capsys.readouterr().out
    assert "input data: (batch, 1, 28, 28)" in printed and "verify prob" in printed
    onnx.checker.check_model(out)
    images, labels = mnist_sample(500)
    theirs = run_onnx(out, {"data": images})["prob"]
    net = lg.Net(model, lg.RUN, weights=weights)
    ours = net.forward(data=images)["prob"]
    np.testing.assert_allclose(theirs, ours, **TOL)
    assert (theirs.argmax(1) == ours.argmax(1)).all()
    assert (theirs.argmax(1) == labels).mean() >= 0.99


@needs_onnx
@needs_compat
def test_export_of_a_train_val_needs_the_input_shape(tmp_path, capsys):
    model = os.path.join(BVLC, "lenet_train_test.prototxt")
    weights = os.path.join(BVLC, "lenet_iter_10000.caffemodel")
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", model, "--weights", weights, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "give --input-shape" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["export", "--model", model, "--weights", weights, "--out", str(out),
                 "--input-shape", "1,1,28,28"]) == 0
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert '"scale": 0.00390625' in meta["layergraph.transform"]


@needs_onnx
@pytest.mark.parametrize("template", ["TripletNet_28x28", "Siamese_28x28",
                                      "TripletNet_28x28_BatchHard", "DeepHash_28x28"])
def test_template_deploy_net_round_trip(template, db, tmp_path):
    """Each template trained two iterations on TINY; its RUN net exported:
    the embedding and Decode's distances (to the learned centroids) on 64
    real MNIST digits equal ours within 1e-5."""
    from layergraph.tools.templates import new_from_template
    run = tmp_path / template
    new_from_template(template, "TINY", str(run))
    solver = lg.Solver(str(run / "solver.prototxt"), log=None, overrides={
        "max_iter": 2, "test_interval": 1000, "snapshot": 0})
    solver.solve()
    weights = f"{solver.snapshot_prefix()}_iter_2.caffemodel"
    solver.close()
    model = str(run / "train_val.prototxt")
    net = lg.Net(model, lg.RUN, weights=weights, input_shape=(1, 1, 28, 28))
    assert net.layer("decode").blobs[1].data.sum() > 0   # centroids were learned
    images, _, source = load_split("MNIST", "testing", 64)
    x = preprocess(images, data_transform(read_net(model)), source)
    proto = assert_round_trip(net, {net.inputs[0]: x})
    names = [o.name for o in proto.graph.output]
    assert names[-1] == "distances" and names[0] == net.bottom_names[-1][0]
    net.close()
