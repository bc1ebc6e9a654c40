"""Net construction: phase filtering, split insertion, in-place layers, weight
sharing by ParamSpec name, loss weights, need-backward analysis, weights I/O,
the RUN (deploy) net, and the compat prototxt files."""
import glob
import os

import numpy as np
import pytest

from layergraph import Net, NetError, SnapshotError, UnknownLayerTypeError
from layergraph.net import filter_net
from layergraph.proto import pb
from layergraph.prototxt import parse_net, read_net
from layergraph.testing import check_gradient

COMPAT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "compat")
COMPAT = os.environ.get("LAYERGRAPH_COMPAT", os.path.abspath(COMPAT))

TOWERS = """
name: "towers"
layer { name: "in" type: "Input" top: "a" top: "b" top: "t"
        input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa"
        param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "constant" value: 0.2 } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb"
        param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss_a" type: "EuclideanLoss" bottom: "fa" bottom: "t" top: "la" }
layer { name: "loss_b" type: "EuclideanLoss" bottom: "fb" bottom: "t" top: "lb"
        loss_weight: 0.5 }
"""


def feed(net, seed=0):
    rng = np.random.default_rng(seed)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape)


def test_shared_weights_accumulate_both_gradients():
    net = Net(parse_net(TOWERS), pb.TRAIN, dtype=np.float64)
    assert net.layer("ip_a").blobs[0] is net.layer("ip_b").blobs[0]
    assert len(net.learnable_params) == 2
    # t is read by two losses: a Split layer was inserted
    assert any(layer.type == "Split" for layer in net.layers)
    feed(net)
    net.clear_param_diffs()
    loss = net.forward_backward()
    a, b, t = (net.blobs[n].data for n in ("a", "b", "t"))
    W, bias = net.layer("ip_a").blobs[0].data, net.layer("ip_a").blobs[1].data
    ra, rb = a @ W.T + bias - t, b @ W.T + bias - t
    n = a.shape[0]
    expected_loss = (ra ** 2).sum() / (2 * n) + 0.5 * (rb ** 2).sum() / (2 * n)
    assert loss == pytest.approx(expected_loss)
    expected_dW = ra.T @ a / n + 0.5 * rb.T @ b / n
    np.testing.assert_allclose(net.layer("ip_a").blobs[0].diff, expected_dW, rtol=1e-10)
    np.testing.assert_allclose(net.layer("ip_a").blobs[1].diff,
                               ra.sum(0) / n + 0.5 * rb.sum(0) / n, rtol=1e-10)


def test_split_sums_gradients_of_both_consumers():
    net = Net(parse_net("""
    force_backward: true
    layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "r1" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "l1" }
    layer { name: "r2" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "l2" loss_weight: 3 }
    """), pb.TRAIN, dtype=np.float64)
    feed(net)
    net.forward_backward()
    x, t = net.blobs["x"].data, net.blobs["t"].data
    np.testing.assert_allclose(net.blobs["x"].diff, (x - t) / 2 * (1 + 3))


def test_in_place_relu_and_phase_filtering():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
    layer { name: "train_only" type: "ReLU" bottom: "x" top: "y" include { phase: TRAIN } }
    layer { name: "not_test" type: "ReLU" bottom: "x" top: "z" exclude { phase: TEST } }
    layer { name: "staged" type: "ReLU" bottom: "x" top: "s" include { stage: "deploy" } }
    layer { name: "leveled" type: "ReLU" bottom: "x" top: "v" include { min_level: 2 } }
    """
    net = Net(parse_net(text), pb.TEST)
    assert net.layer_names == ["in", "relu"]
    net.forward(x=np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]]))
    np.testing.assert_array_equal(net.blobs["x"].data, [[0, 2, 0], [4, 0, 6]])
    def names(net):
        return [n for n, layer in zip(net.layer_names, net.layers) if layer.type != "Split"]
    assert names(Net(parse_net(text), pb.TRAIN)) == ["in", "relu", "train_only", "not_test"]
    staged = Net(parse_net(text), pb.TEST, stages=("deploy",), level=3)
    assert names(staged) == ["in", "relu", "staged", "leveled"]


def test_need_backward_and_propagate_down():
    net = Net(parse_net(TOWERS.replace('bottom: "fb" bottom: "t" top: "lb"',
                                       'bottom: "fb" bottom: "t" top: "lb" '
                                       'propagate_down: false propagate_down: false')),
              pb.TRAIN, dtype=np.float64)
    i = net.layer_names.index("loss_b")
    assert net.bottom_need_backward[i] == [False, False]
    # inputs need no gradient: the InnerProduct layers do not propagate down
    assert net.bottom_need_backward[net.layer_names.index("ip_a")] == [False]


def test_layer_gradient_through_net_with_checker():
    """The net-level gradient of a small MLP matches central differences."""
    net = Net(parse_net("""
    force_backward: true
    layer { name: "in" type: "Input" top: "x" top: "t"
            input_param { shape { dim: 3 dim: 4 } shape { dim: 3 dim: 2 } } }
    layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
            inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
    layer { name: "act" type: "TanH" bottom: "h" top: "h" }
    layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
            inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" }
    """), pb.TRAIN, dtype=np.float64)
    feed(net)
    net.clear_param_diffs()
    net.forward_backward()
    W = net.layer("ip1").blobs[0]
    analytic = W.diff.copy()
    eps = 1e-5
    for idx in [(0, 0), (2, 3), (4, 1)]:
        old = W.data[idx]
        W.data[idx] = old + eps
        plus = net.forward_prefilled()
        W.data[idx] = old - eps
        minus = net.forward_prefilled()
        W.data[idx] = old
        assert analytic[idx] == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-9)


def test_errors_name_the_layer():
    with pytest.raises(NetError, match=r"layer 'ip' \(InnerProduct\): unknown bottom blob 'nope'"):
        Net(parse_net('layer { name: "ip" type: "InnerProduct" bottom: "nope" top: "y" '
                      'inner_product_param { num_output: 2 } }'), pb.TRAIN)
    with pytest.raises(UnknownLayerTypeError, match="did you mean 'InnerProduct'"):
        Net(parse_net('layer { name: "ip" type: "InnerProdcut" top: "y" }'), pb.TRAIN)
    with pytest.raises(NetError, match="shared parameter 'w' has shape"):
        Net(parse_net(TOWERS.replace("num_output: 2 weight_filler { type: \"gaussian\" std: 0.3 } }",
                                     "num_output: 3 weight_filler { type: \"gaussian\" std: 0.3 } }",
                                     1)), pb.TRAIN)
    conflicting = TOWERS.replace('param { name: "w" } param { name: "bias" }\n'
                                 '        inner_product_param { num_output: 2 weight_filler '
                                 '{ type: "gaussian" std: 0.3 } }',
                                 'param { name: "w" lr_mult: 3 } param { name: "bias" }\n'
                                 '        inner_product_param { num_output: 2 weight_filler '
                                 '{ type: "gaussian" std: 0.3 } }')
    conflicting = conflicting.replace('param { name: "w" }', 'param { name: "w" lr_mult: 1 }', 1)
    with pytest.raises(NetError, match="lr_mult"):
        Net(parse_net(conflicting), pb.TRAIN)


def test_weights_round_trip_and_mismatch(tmp_path):
    net = Net(parse_net(TOWERS), pb.TRAIN)
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    other = Net(parse_net(TOWERS), pb.TRAIN, seed=99)
    assert not np.array_equal(other.params["ip_a"][0].data, net.params["ip_a"][0].data)
    other.copy_from(str(path))
    np.testing.assert_array_equal(other.params["ip_a"][0].data, net.params["ip_a"][0].data)
    bigger = Net(parse_net(TOWERS.replace("dim: 3 dim: 4", "dim: 3 dim: 6")), pb.TRAIN)
    with pytest.raises(SnapshotError, match="shape"):
        bigger.copy_from(str(path))
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff\xfe not a proto at all \x00\x13")
    with pytest.raises(Exception, match="junk.caffemodel"):
        other.copy_from(str(tmp_path / "junk.caffemodel"))


def test_run_net_derived_from_train_val():
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label" include { phase: TRAIN }
            input_param { shape { dim: 2 dim: 1 dim: 4 dim: 4 } shape { dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
            include { phase: TEST } }
    """
    run = Net(parse_net(text), pb.RUN, input_shape=(1, 1, 4, 4))
    assert run.layer_names == ["input", "ip"]
    assert run.inputs == ["data"] and run.outputs == ["ip"]
    out = run.forward(data=np.ones((5, 1, 4, 4)))
    assert out["ip"].shape == (5, 3)


def compat_files():
    return sorted(f for f in glob.glob(os.path.join(COMPAT, "*", "*.prototxt"))
                  if "solver" not in os.path.basename(f))


@pytest.mark.skipif(not compat_files(), reason="shared/compat not present")
@pytest.mark.parametrize("path", compat_files(), ids=os.path.basename)
def test_compat_nets_build_with_inputs(path):
    """Each compat net builds in TRAIN and TEST once its data layers are
    replaced by Input layers of the right shapes."""
    param = read_net(path)
    for phase in (pb.TRAIN, pb.TEST):
        p = filter_net(param, pb.NetState(phase=phase))
        for lp in p.layer:
            if lp.type == "Input":  # BVLC's deploy files feed 10,000 images at once
                for shape in lp.input_param.shape:
                    shape.dim[0] = min(shape.dim[0], 16)
            if lp.type != "Data":
                continue
            batch = lp.data_param.batch_size
            per = lp.data_param.images_per_blob or 1
            if any(other.type == "Slice" and lp.top[0] in other.bottom for other in p.layer):
                per = 2  # BVLC's siamese pair database stores both images as channels
            lp.ClearField("data_param")
            lp.ClearField("transform_param")
            lp.type = "Input"
            lp.input_param.shape.add().dim.extend([batch, per, 28, 28])
            label = lp.input_param.shape.add()
            label.dim.extend([batch, 2] if lp.data_param.output_all_labels else [batch])
        net = Net(p, phase)
        rng = np.random.default_rng(0)
        net.blobs[net.inputs[0]].data[...] = rng.random(net.blobs[net.inputs[0]].shape)
        if len(net.inputs) > 1:
            labels = net.blobs[net.inputs[1]]
            labels.data[...] = rng.integers(0, 10, size=labels.shape)
        net.forward_backward() if phase == pb.TRAIN else net.forward()
        net.close()


def test_python_layer_from_prototxt(tmp_path, monkeypatch):
    """Caffe's Python layer type: the class named by python_param runs with
    pycaffe's contract, param_str included, and its gradient checks out."""
    (tmp_path / "my_layers.py").write_text('''
import ast

class Power:
    def setup(self, bottom, top):
        self.p = ast.literal_eval(self.param_str)["p"]
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)
    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data ** self.p
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.p * bottom[0].data ** (self.p - 1) * top[0].diff
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    from layergraph.testing import check_layer_gradient
    spec = ('type: "Python" python_param { module: "my_layers" layer: "Power" '
            'param_str: "{\'p\': 3}" }')
    x = np.array([[0.5, -1.2, 2.0]])
    checked = check_layer_gradient(spec, [x], num_tops=1)
    assert checked == 3
    net = Net(parse_net("""
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
    layer { name: "cube" type: "Python" bottom: "x" top: "y"
            python_param { module: "my_layers" layer: "Power" param_str: "{'p': 3}" } }
    """), pb.TEST)
    np.testing.assert_allclose(net.forward(x=x)["y"], x ** 3, rtol=1e-6)
    with pytest.raises(NetError, match="cannot import module 'nope'"):
        Net(parse_net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }'
                      'layer { name: "p" type: "Python" bottom: "x" top: "y" '
                      'python_param { module: "nope" layer: "X" } }'), pb.TEST)


def test_a_top_only_silence_reads_is_not_computed():
    """Decode's distances read by Silence alone (the templates' TRAIN nets)
    are skipped -- the centroids still update, identically -- and computed
    as soon as another layer reads them or they are a net output."""
    feed = """
    layer { name: "in" type: "Input" top: "x" top: "y"
            input_param { shape { dim: 6 dim: 3 } shape { dim: 6 } } }
    layer { name: "decode" type: "Decode" bottom: "x" bottom: "y" top: "d"
            decode_param { pregen_label_count: 3 } }
    """
    tails = {"silenced": 'layer { name: "s" type: "Silence" bottom: "d" }',
             "read": 'layer { name: "acc" type: "AccuracyDecode" bottom: "d" bottom: "y" '
                     'top: "a" }',
             "output": ""}
    rng = np.random.default_rng(2)
    batches = [(rng.standard_normal((6, 3)), rng.integers(0, 3, 6).astype(float))
               for _ in range(3)]
    nets = {k: Net(parse_net(feed + tail), pb.TRAIN, dtype=np.float64)
            for k, tail in tails.items()}
    for net in nets.values():
        for x, y in batches:
            net.forward(x=x, y=y)
    decode = {k: net.layers[net.layer_names.index("decode")] for k, net in nets.items()}
    assert decode["silenced"].unread_tops == {0}
    assert not decode["read"].unread_tops and not decode["output"].unread_tops
    assert not nets["silenced"].blobs["d"].data.any()        # never written
    np.testing.assert_array_equal(nets["read"].blobs["d"].data, nets["output"].blobs["d"].data)
    assert nets["read"].blobs["d"].data.any()
    for k in ("silenced", "read"):                             # the same centroids
        np.testing.assert_array_equal(decode[k].blobs[0].data, decode["output"].blobs[0].data)
