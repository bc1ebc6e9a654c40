"""BVLC Caffe's own files run unmodified (issue 13).

Every net prototxt in ../shared/compat/bvlc/ (models/ and v1/ included) builds
in every phase (and stage) it declares, runs forward and backward on
synthetic data, and each named blob has the shape Caffe gives it -- worked
out below from Caffe's formulas (convolution: floor((H + 2p - k) / s) + 1;
pooling: ceil((H + 2p - k) / s) + 1).  BVLC's trained LeNet loads from both
file formats and classifies the MNIST sample; written back, its weights are
bit-identical and its definition self-consistent.  CIFAR-10 quick and
CaffeNet train on DummyData; a ResNet-style block trains and its TEST output
uses the global statistics.  Also the two semantic points where we once
differed from Caffe (Pooling with stride > kernel, ContrastiveLoss labels).
"""
import glob
import os
import warnings

import numpy as np
import pytest

from layergraph import Net, Solver, known_layer_types
from layergraph.net import DATA_LAYER_TYPES, filter_net
from layergraph.proto import pb
from layergraph.prototxt import parse_net, read_net
from layergraph.testing import check_layer_gradient, compare_backends, run_layer
from layergraph.upgrade import upgrade_net

COMPAT = os.environ.get("LAYERGRAPH_COMPAT", os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "compat")))
BVLC = os.path.join(COMPAT, "bvlc")
MNIST_SAMPLE = os.path.join(os.path.dirname(__file__), "..", "layergraph", "imagedb",
                            "mnist_sample")
needs_compat = pytest.mark.skipif(not os.path.isdir(BVLC), reason="shared/compat not present")

N = 3  # the batch used for every file (Caffe's shapes below are per N)


def bvlc_nets():
    paths = glob.glob(os.path.join(BVLC, "**", "*.prototxt"), recursive=True)
    return sorted(os.path.relpath(p, BVLC) for p in paths if "solver" not in os.path.basename(p))


# ------------------------------------------------ Caffe's shapes, by hand --

def lenet_shapes(prefix=""):
    """LeNet on 28x28: conv 5x5 -> 24, pool 2/2 -> 12, conv 5x5 -> 8, pool -> 4."""
    s = {"conv1": (N, 20, 24, 24), "pool1": (N, 20, 12, 12), "conv2": (N, 50, 8, 8),
         "pool2": (N, 50, 4, 4), "ip1": (N, 500), "ip2": (N, 10)}
    return {name + prefix: shape for name, shape in s.items()}


def caffenet_shapes(lrn_after_pool=True):
    """227x227: conv1 11/4 -> (227-11)/4+1 = 55; pool 3/2 -> ceil(52/2)+1 = 27;
    conv2 5 pad 2 -> 27; pool -> ceil(24/2)+1 = 13; conv3-5 3 pad 1 -> 13;
    pool5 -> ceil(10/2)+1 = 6; fc6 9216 -> 4096."""
    s = {"data": (N, 3, 227, 227), "conv1": (N, 96, 55, 55), "pool1": (N, 96, 27, 27),
         "conv2": (N, 256, 27, 27), "pool2": (N, 256, 13, 13), "conv3": (N, 384, 13, 13),
         "conv4": (N, 384, 13, 13), "conv5": (N, 256, 13, 13), "pool5": (N, 256, 6, 6),
         "fc6": (N, 4096), "fc7": (N, 4096), "fc8": (N, 1000)}
    if lrn_after_pool:   # CaffeNet: pool, then norm
        s.update(norm1=(N, 96, 27, 27), norm2=(N, 256, 13, 13))
    else:                # AlexNet: norm, then pool
        s.update(norm1=(N, 96, 55, 55), norm2=(N, 256, 27, 27))
    return s


def cifar_shapes(full):
    """32x32: conv 5 pad 2 -> 32; pool 3/2 -> ceil(29/2)+1 = 16 (floor would
    give 15); -> ceil(13/2)+1 = 8; -> ceil(5/2)+1 = 4."""
    s = {"data": (N, 3, 32, 32), "conv1": (N, 32, 32, 32), "pool1": (N, 32, 16, 16),
         "conv2": (N, 32, 16, 16), "pool2": (N, 32, 8, 8), "conv3": (N, 64, 8, 8),
         "pool3": (N, 64, 4, 4), "loss": ()}
    if full:
        s.update(norm1=(N, 32, 16, 16), norm2=(N, 32, 8, 8), ip1=(N, 10))
    else:
        s.update(ip1=(N, 64), ip2=(N, 10))
    return s


AUTOENCODER = {"data": (N, 1, 28, 28), "flatdata": (N, 784), "encode1": (N, 1000),
               "encode2": (N, 500), "encode3": (N, 250), "encode4": (N, 30),
               "decode4": (N, 250), "decode3": (N, 500), "decode2": (N, 1000),
               "decode1": (N, 784), "decode1neuron": (N, 784), "cross_entropy_loss": (),
               "l2_error": ()}

#: file -> (the image each data source yields (C, H, W), Caffe's blob shapes)
EXPECTED = {
    "lenet.prototxt": (None, {"data": (N, 1, 28, 28), **lenet_shapes(), "prob": (N, 10)}),
    "lenet_train_test.prototxt": ((1, 28, 28), {"data": (N, 1, 28, 28), "label": (N,),
                                                **lenet_shapes(), "loss": ()}),
    "mnist_siamese.prototxt": (None, {"data": (N, 1, 28, 28), **lenet_shapes(),
                                      "feat": (N, 2)}),
    # the pair database stores both images as two channels
    "mnist_siamese_train_test.prototxt": ((2, 28, 28), {
        "pair_data": (N, 2, 28, 28), "sim": (N,), "data": (N, 1, 28, 28),
        "data_p": (N, 1, 28, 28), **lenet_shapes(), **lenet_shapes("_p"),
        "feat": (N, 2), "feat_p": (N, 2), "loss": ()}),
    "models/bvlc_alexnet_deploy.prototxt": (None, {**caffenet_shapes(False),
                                                   "prob": (N, 1000)}),
    "models/bvlc_reference_caffenet_deploy.prototxt": (None, {**caffenet_shapes(),
                                                              "prob": (N, 1000)}),
    "models/bvlc_reference_caffenet_train_val.prototxt": ((3, 227, 227), {
        **caffenet_shapes(), "label": (N,), "loss": ()}),
    "models/cifar10_cifar10_full_train_test.prototxt": ((3, 32, 32), cifar_shapes(True)),
    "models/cifar10_cifar10_quick_train_test.prototxt": ((3, 32, 32), cifar_shapes(False)),
    "models/mnist_mnist_autoencoder.prototxt": ((1, 28, 28), AUTOENCODER),
    "v1/lenet.prototxt": (None, {"data": (N, 1, 28, 28), **lenet_shapes(), "prob": (N, 10)}),
    "v1/lenet_train_test.prototxt": ((1, 28, 28), {"data": (N, 1, 28, 28), "label": (N,),
                                                   **lenet_shapes(), "loss": ()}),
}


# ------------------------------------------------------------- helpers ----

def declared_states(param):
    """Every NetState the file's include/exclude rules name (phase and stages);
    TEST alone (Caffe's default state) for a file without rules."""
    states = set()
    for lp in param.layer:
        for rule in list(lp.include) + list(lp.exclude):
            if rule.HasField("phase"):
                states.add((rule.phase, tuple(rule.stage)))
    return sorted(states) or [(pb.TEST, ())]


def with_inputs(param, image, batch=N):
    """The net with each data layer replaced by an Input layer yielding what
    the data source would (image (C, H, W), label (N,)), and every Input's
    batch set to ``batch``."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type in DATA_LAYER_TYPES:
            tops = list(lp.top)
            include, exclude = list(lp.include), list(lp.exclude)
            name = lp.name
            lp.Clear()
            lp.name, lp.type = name, "Input"
            lp.top.extend(tops)
            lp.include.extend(include)
            lp.exclude.extend(exclude)
            lp.input_param.shape.add().dim.extend((batch,) + tuple(image))
            if len(tops) > 1:
                lp.input_param.shape.add().dim.append(batch)
        elif lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
    return out


def fill_inputs(net, rng):
    for name in net.inputs:
        blob = net.blobs[name]
        if blob.num_axes == 1:      # labels
            blob.data[...] = rng.integers(0, 10, size=blob.shape)
        else:
            blob.data[...] = rng.random(blob.shape)


def self_consistent(net_param):
    """Every bottom is a top of an earlier layer of the file."""
    produced = set()
    for lp in net_param.layer:
        missing = [b for b in lp.bottom if b not in produced]
        if missing:
            return f"layer '{lp.name}' reads {missing}, which no earlier layer produces"
        produced.update(lp.top)
    return None


def mnist_sample(count):
    from layergraph.imagedb.creators import read_idx
    images = read_idx(os.path.join(MNIST_SAMPLE, "t10k-images-idx3-ubyte.gz"), "images")
    labels = read_idx(os.path.join(MNIST_SAMPLE, "t10k-labels-idx1-ubyte.gz"), "labels")
    # Caffe's MNIST recipe: transform_param scale 0.00390625
    return images[:count, None].astype(np.float32) * 0.00390625, labels[:count]


def accuracy(net, images, labels, batch=500):
    right = 0
    for i in range(0, len(images), batch):
        prob = net.forward(data=images[i:i + batch])["prob"]
        right += int((prob.argmax(axis=1) == labels[i:i + batch]).sum())
    return right / len(images)


# ------------------------------------------------------------- schema -----

@pytest.mark.parametrize("message, field, number", [
    ("LayerParameter", "lrn_param", 118), ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142), ("LayerParameter", "bias_param", 141),
    ("LayerParameter", "crop_param", 144), ("LayerParameter", "recurrent_param", 146),
    ("LayerParameter", "swish_param", 147), ("LayerParameter", "clip_param", 148),
    ("LayerParameter", "reduction_param", 136), ("LayerParameter", "spp_param", 132),
    ("LayerParameter", "window_data_param", 129), ("LayerParameter", "threshold_param", 128),
    ("LayerParameter", "hdf5_data_param", 112), ("LayerParameter", "embed_param", 137),
    ("LayerParameter", "tile_param", 138), ("LayerParameter", "parameter_param", 145),
    ("NetParameter", "layers", 2), ("V1LayerParameter", "blobs_lr", 7),
    ("V1LayerParameter", "layer", 1), ("V0LayerParameter", "kernelsize", 8),
    ("BatchNormParameter", "moving_average_fraction", 2), ("LRNParameter", "k", 5),
])
def test_caffe_field_numbers(message, field, number):
    assert getattr(pb, message).DESCRIPTOR.fields_by_name[field].number == number


def test_caffe_defaults():
    assert pb.LRNParameter().local_size == 5 and pb.LRNParameter().beta == pytest.approx(0.75)
    assert pb.BatchNormParameter().moving_average_fraction == pytest.approx(0.999)
    assert pb.BatchNormParameter().eps == pytest.approx(1e-5)
    assert pb.MVNParameter().eps == pytest.approx(1e-9)
    assert pb.CropParameter().axis == 2 and pb.ReductionParameter().operation == 1
    assert pb.ImageDataParameter().batch_size == 1 and pb.ExpParameter().base == -1
    assert pb.V1LayerParameter.LayerType.Value("SOFTMAX_LOSS") == 21


# ------------------------------------------------ every BVLC file runs -----

@needs_compat
@pytest.mark.parametrize("rel", bvlc_nets())
def test_bvlc_net_builds_runs_and_has_caffes_shapes(rel):
    image, expected = EXPECTED[rel]
    param = upgrade_net(read_net(os.path.join(BVLC, rel)))
    rng = np.random.default_rng(0)
    for phase, stages in declared_states(param):
        state_param = filter_net(param, pb.NetState(phase=phase, stage=stages))
        if image is None:
            assert not any(lp.type in DATA_LAYER_TYPES for lp in state_param.layer)
        net_param = with_inputs(param, image)
        net_param.force_backward = True      # deploy nets: backward through every layer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the autoencoder's two 'loss' layers
            net = Net(net_param, phase, stages=stages)
        fill_inputs(net, rng)
        net.forward()
        # backward where Caffe runs it: the TRAIN net, or the one net of a
        # deploy file (no loss there: seed the outputs' gradients)
        backward = phase == pb.TRAIN or image is None
        if backward:
            for name in net.outputs:
                net.blobs[name].diff[...] = 1.0
            net.backward()
        where = f"{rel} {pb.Phase.Name(phase)} {stages}"
        for name, shape in expected.items():
            assert net.blobs[name].shape == shape, f"{where}: blob {name}"
        if phase == pb.TEST and any(lp.type == "Accuracy" for lp in net.param.layer):
            assert net.blobs["accuracy"].shape == ()
        for layer in net.layers if backward else ():
            for blob in layer.blobs:
                assert np.isfinite(blob.diff).all(), f"{where}: {layer.name} gradient"
        net.close()


@needs_compat
def test_deploy_net_of_the_autoencoder_has_no_loss():
    """README: the RUN net leaves out loss layers (both of the autoencoder's)."""
    param = read_net(os.path.join(BVLC, "models", "mnist_mnist_autoencoder.prototxt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = Net(param, pb.RUN, input_shape=(N, 1, 28, 28))
    assert not any("two layers are named" in str(w.message) for w in caught)
    assert not any(layer.is_loss for layer in run.layers)
    assert "cross_entropy_loss" not in run.blobs and "l2_error" not in run.blobs
    out = run.forward(data=np.random.default_rng(1).random((N, 1, 28, 28)))
    assert out["decode1neuron"].shape == (N, 784)


@needs_compat
def test_duplicate_layer_names_accepted_with_a_warning():
    """Caffe accepts two layers named 'loss' (BVLC's autoencoder); so do we."""
    param = with_inputs(read_net(os.path.join(BVLC, "models",
                                              "mnist_mnist_autoencoder.prototxt")), (1, 28, 28))
    with pytest.warns(UserWarning, match="two layers are named 'loss'"):
        net = Net(param, pb.TRAIN)
    fill_inputs(net, np.random.default_rng(2))
    loss = net.forward_backward()
    # only the cross-entropy counts (the Euclidean 'loss' has loss_weight 0)
    assert loss == pytest.approx(float(net.blobs["cross_entropy_loss"].data))
    assert net.layer("loss").type == "SigmoidCrossEntropyLoss"   # the first of the two


def test_copy_from_fills_the_first_of_duplicate_names(tmp_path):
    """Caffe's CopyTrainedLayersFrom matches a name to the net's first layer of
    that name."""
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "a"
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "ip" type: "InnerProduct" bottom: "a" top: "b"
            inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
    """
    source = Net(parse_net(text.replace('"ip" type: "InnerProduct" bottom: "a"',
                                        '"other" type: "InnerProduct" bottom: "a"')), pb.TEST)
    source.save(str(tmp_path / "w.caffemodel"))
    with pytest.warns(UserWarning, match="two layers are named 'ip'"):
        net = Net(parse_net(text), pb.TEST, seed=5)
    net.copy_from(str(tmp_path / "w.caffemodel"), allow_missing=True)
    np.testing.assert_array_equal(net.layers[1].blobs[0].data, source.layers[1].blobs[0].data)
    assert not np.array_equal(net.layers[2].blobs[0].data, source.layers[2].blobs[0].data)


# ------------------------------------------------ BVLC's trained LeNet ------

@needs_compat
@pytest.mark.parametrize("model, weights", [
    ("lenet.prototxt", "lenet_iter_10000.caffemodel"),
    ("v1/lenet.prototxt", "v1/lenet_iter_10000.caffemodel"),
])
def test_trained_lenet_classifies_the_mnist_sample(model, weights):
    """BVLC's LeNet (trained on MNIST's training set, which the sample is
    drawn from), current and V1 formats: >= 99.5% on 2,000 sample digits."""
    net = Net(os.path.join(BVLC, model), pb.TEST, weights=os.path.join(BVLC, weights))
    images, labels = mnist_sample(2000)
    assert accuracy(net, images, labels) >= 0.995


@needs_compat
@pytest.mark.parametrize("weights", ["lenet_iter_10000.caffemodel",
                                     "v1/lenet_iter_10000.caffemodel"])
def test_trained_lenet_saved_back_bit_identical_and_self_consistent(weights, tmp_path):
    """The TEST net of lenet_train_test (ip2 feeds both the accuracy and the
    loss: a Split is inserted) with BVLC's weights, saved: the weights read
    back bit for bit, the definition refers to no split blob and every bottom
    is produced in the file, and the file loads into a fresh net."""
    source = os.path.join(BVLC, weights)
    net = Net(with_inputs(read_net(os.path.join(BVLC, "lenet_train_test.prototxt")),
                          (1, 28, 28)), pb.TEST, weights=source)
    assert any(layer.type == "Split" for layer in net.layers)
    net.save(str(tmp_path / "saved.caffemodel"))
    saved = pb.NetParameter()
    saved.ParseFromString((tmp_path / "saved.caffemodel").read_bytes())
    assert self_consistent(saved) is None, self_consistent(saved)
    assert not any("split" in name for lp in saved.layer for name in list(lp.bottom) + list(lp.top))
    original = upgrade_net(read_net_binary(source))
    original_blobs = {lp.name: lp.blobs for lp in original.layer if lp.blobs}
    saved_blobs = {lp.name: lp.blobs for lp in saved.layer if lp.blobs}
    assert set(saved_blobs) == set(original_blobs)
    for name, blobs in original_blobs.items():
        for a, b in zip(blobs, saved_blobs[name]):
            assert np.asarray(a.data, np.float32).tobytes() == \
                np.asarray(b.data, np.float32).tobytes(), name
    images, labels = mnist_sample(200)
    again = Net(os.path.join(BVLC, "lenet.prototxt"), pb.TEST,
                weights=str(tmp_path / "saved.caffemodel"))
    reference = Net(os.path.join(BVLC, "lenet.prototxt"), pb.TEST, weights=source)
    np.testing.assert_array_equal(again.forward(data=images)["prob"],
                                  reference.forward(data=images)["prob"])


def read_net_binary(path):
    param = pb.NetParameter()
    with open(path, "rb") as f:
        param.ParseFromString(f.read())
    return param


# ------------------------------------------------------------ training ----

def dummy_data(param, image, batch):
    """The net with each data layer replaced by a DummyData layer of Caffe's
    shapes: gaussian images, constant labels."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type in DATA_LAYER_TYPES:
            tops, include, name = list(lp.top), list(lp.include), lp.name
            lp.Clear()
            lp.name, lp.type = name, "DummyData"
            lp.top.extend(tops)
            lp.include.extend(include)
            dd = lp.dummy_data_param
            dd.shape.add().dim.extend((batch,) + tuple(image))
            dd.data_filler.add(type="gaussian", std=1.0)
            if len(tops) > 1:
                dd.shape.add().dim.append(batch)
                dd.data_filler.add(type="constant", value=3)
    return out


def train_a_few(net_param, iterations=2, **solver_fields):
    solver = pb.SolverParameter(base_lr=0.001, momentum=0.9, lr_policy="fixed",
                                max_iter=iterations, display=0, random_seed=1,
                                snapshot_after_train=False, solver_mode=pb.SolverParameter.CPU,
                                **solver_fields)
    solver.net_param.CopyFrom(net_param)
    s = Solver(solver, log=None)
    s.step(iterations)
    return s


@needs_compat
def test_cifar10_quick_trains_on_dummy_data():
    param = read_net(os.path.join(BVLC, "models", "cifar10_cifar10_quick_train_test.prototxt"))
    s = train_a_few(dummy_data(param, (3, 32, 32), 8), iterations=3, test_iter=[1],
                    test_interval=1000, test_initialization=False)
    assert s.iter == 3 and np.isfinite(s.losses).all()
    assert s.net.blobs["pool3"].shape == (8, 64, 4, 4)
    assert s.test_nets[0].blobs["accuracy"].shape == ()


@needs_compat
def test_caffenet_trains_on_dummy_data():
    param = read_net(os.path.join(BVLC, "models", "bvlc_reference_caffenet_train_val.prototxt"))
    s = train_a_few(dummy_data(param, (3, 227, 227), 2), iterations=2)
    assert s.iter == 2 and np.isfinite(s.losses).all()
    assert s.net.blobs["pool5"].shape == (2, 256, 6, 6)


RESNET_BLOCK = """
name: "ResBlock"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 8 dim: 4 dim: 6 dim: 6 } shape { dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false
                            weight_filler { type: "msra" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv"
        param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv"
        scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "conv" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool"
        pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_resnet_block_trains_and_tests_with_global_stats():
    """Convolution -> BatchNorm -> Scale -> ReLU -> Eltwise trains; the TEST
    net normalises with the stored statistics (Caffe: mean = blobs[0] / s,
    var = blobs[1] / s, s = blobs[2]), so a sample's output does not depend
    on the rest of its batch."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 4, 6, 6)) * 2 + 1
    labels = rng.integers(0, 3, size=8)
    solver = pb.SolverParameter(base_lr=0.01, momentum=0.9, lr_policy="fixed", max_iter=3,
                                display=0, random_seed=1, snapshot_after_train=False,
                                test_iter=[1], test_interval=1000, test_initialization=False,
                                solver_mode=pb.SolverParameter.CPU)
    solver.net_param.CopyFrom(parse_net(RESNET_BLOCK))
    s = Solver(solver, log=None)
    s.net.blobs["data"].data[...] = x
    s.net.blobs["label"].data[...] = labels
    scale_before = s.net.params["scale"][0].data.copy()
    s.step(3)
    assert np.isfinite(s.losses).all()
    assert not np.array_equal(s.net.params["scale"][0].data, scale_before)   # learned
    mean, var, factor = (b.data.copy() for b in s.net.params["bn"])
    # Caffe's moving average: s <- 0.999 s + 1 per TRAIN pass
    assert float(factor.ravel()[0]) == pytest.approx(1 + 0.999 + 0.999 ** 2, rel=1e-6)
    test = s.test_nets[0]
    test.blobs["data"].data[...] = x
    test.forward(end="conv")
    conv = test.blobs["conv"].data.copy()
    test.forward_prefilled()
    conv_only = test.blobs["conv"].data    # after bn, scale, relu (in place)
    expected_bn = ((conv - (mean / factor.ravel()[0]).reshape(1, -1, 1, 1))
                   / np.sqrt((var / factor.ravel()[0]).reshape(1, -1, 1, 1) + 1e-5))
    gamma, beta = (p.data.reshape(1, -1, 1, 1) for p in s.net.params["scale"])
    np.testing.assert_allclose(conv_only, np.maximum(expected_bn * gamma + beta, 0),
                               rtol=1e-5, atol=1e-6)
    test.forward(data=x, label=labels)
    full = test.blobs["ip"].data.copy()
    test.forward(data=x[:4], label=labels[:4])
    half = test.blobs["ip"].data
    np.testing.assert_allclose(half, full[:4], rtol=1e-5, atol=1e-6)


# ------------------------------------------------ semantic cross-checks ----

def test_pooling_stride_larger_than_kernel_gives_caffes_output():
    """kernel 1, stride 3 on 5x5: Caffe's ceil((5 - 1) / 3) + 1 = 3; the last
    row and column of windows start at 6, past the image: MAX -FLT_MAX (mask
    -1), AVE 0, and no gradient."""
    x = np.arange(2 * 25, dtype=np.float64).reshape(2, 1, 5, 5)
    _, (y, mask) = run_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 1 '
                             'stride: 3 }', [x], num_tops=2)
    assert y.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(y[:, :, :2, :2], x[:, :, ::3, ::3])
    assert (y[:, :, 2, :] == np.finfo(np.float32).min).all()
    assert (y[:, :, :, 2] == np.finfo(np.float32).min).all()
    np.testing.assert_array_equal(mask[0, 0], [[0, 3, -1], [15, 18, -1], [-1, -1, -1]])
    _, (ave,) = run_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 1 '
                          'stride: 3 }', [x])
    np.testing.assert_array_equal(ave[:, :, :2, :2], x[:, :, ::3, ::3])
    assert (ave[:, :, 2, :] == 0).all() and (ave[:, :, :, 2] == 0).all()
    check_layer_gradient('type: "Pooling" pooling_param { pool: AVE kernel_size: 1 stride: 3 }',
                         [np.random.default_rng(0).random((2, 2, 5, 5))])


def test_pooling_max_stride_larger_than_kernel_routes_gradient_by_hand():
    from layergraph.testing import make_layer, setup_layer
    layer = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 1 stride: 3 }')
    x = np.random.default_rng(4).random((1, 2, 5, 5))
    bottom, top = setup_layer(layer, [x])
    layer.forward(bottom, top)
    dy = np.random.default_rng(5).random(top[0].shape)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    expected = np.zeros_like(x)
    expected[:, :, ::3, ::3] = dy[:, :, :2, :2]
    np.testing.assert_array_equal(bottom[0].diff, expected)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_stride_larger_than_kernel_kernel_path(method):
    spec = f'type: "Pooling" pooling_param {{ pool: {method} kernel_size: 2 stride: 3 }}'
    compare_backends(spec, [np.random.default_rng(6).random((2, 2, 6, 7))], backend="emu",
                     num_tops=2 if method == "MAX" else 1)


def test_contrastive_loss_casts_the_label_to_an_integer():
    """Caffe: similar iff static_cast<int>(label) != 0, so 0.5 and 0.99 are
    dissimilar.  d = ||(0.6, 0.8)|| = 1, margin 3: a similar pair costs
    d^2 = 1, a dissimilar one (3 - d)^2 = 4; the loss is their sum / (2N)."""
    a = np.zeros((3, 2))
    b = np.array([[0.6, 0.8]] * 3)
    labels = np.array([1.0, 0.5, 0.99])
    _, (loss,) = run_layer('type: "ContrastiveLoss" contrastive_loss_param { margin: 3 }',
                           [a, b, labels], num_tops=1)
    assert float(loss) == pytest.approx((1.0 + 4.0 + 4.0) / (2 * 3))
    compare_backends('type: "ContrastiveLoss" contrastive_loss_param { margin: 3 }',
                     [a + 0.1, b, labels], backend="emu", num_tops=1)


def test_known_layer_types_cover_bvlc():
    """Every BVLC layer type this issue lists is registered (WindowData may be
    a one-line refusal, but it must be known)."""
    bvlc = {"AbsVal", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip", "Crop",
            "Deconvolution", "DummyData", "Embed", "Exp", "Filter", "HDF5Data", "HDF5Output",
            "HingeLoss", "Im2col", "ImageData", "InfogainLoss", "LRN", "LSTM", "LSTMUnit",
            "Log", "MVN", "MemoryData", "MultinomialLogisticLoss", "Parameter", "Power", "RNN",
            "Reduction", "SPP", "Scale", "SigmoidCrossEntropyLoss", "Swish", "Threshold",
            "Tile", "WindowData"}
    missing = sorted(bvlc - set(known_layer_types()))
    assert not missing, f"not registered: {missing}"
