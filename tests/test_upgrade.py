"""Old Caffe files (issue 13): V1 and V0 nets, V1 weights with legacy 4-D
blob shapes, old solvers -- upgraded on load like Caffe's UpgradeNetAsNeeded /
UpgradeSolverAsNeeded, and written in the current format by ``layergraph
upgrade IN OUT``."""
import os
import warnings

import numpy as np
import pytest

from layergraph import Net, Solver
from layergraph.cli import main
from layergraph.errors import NetError, SnapshotError, SolverError
from layergraph.proto import pb
from layergraph.prototxt import parse_net, parse_text, read_net
from layergraph.upgrade import (UpgradeWarning, net_format, upgrade_net, upgrade_solver)

COMPAT = os.environ.get("LAYERGRAPH_COMPAT", os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "compat")))
BVLC = os.path.join(COMPAT, "bvlc")
needs_compat = pytest.mark.skipif(not os.path.isdir(BVLC), reason="shared/compat not present")

V1_NET = os.path.join(BVLC, "v1", "lenet.prototxt")
V1_TRAIN_TEST = os.path.join(BVLC, "v1", "lenet_train_test.prototxt")
V1_WEIGHTS = os.path.join(BVLC, "v1", "lenet_iter_10000.caffemodel")
NET = os.path.join(BVLC, "lenet.prototxt")
WEIGHTS = os.path.join(BVLC, "lenet_iter_10000.caffemodel")


def digits(n=16, seed=0):
    return np.random.default_rng(seed).random((n, 1, 28, 28)).astype(np.float32)


def binary(path):
    param = pb.NetParameter()
    with open(path, "rb") as f:
        param.ParseFromString(f.read())
    return param


# ------------------------------------------------------------- V1 nets ----

@needs_compat
def test_v1_lenet_upgrades_like_caffe():
    v1 = read_net(V1_TRAIN_TEST)
    assert net_format(v1) == "V1"
    net = upgrade_net(v1)
    assert net_format(net) == "current" and not len(net.layers)
    by_name = {}
    for lp in net.layer:
        by_name.setdefault(lp.name, lp)
    assert [lp.type for lp in net.layer] == [
        "Data", "Data", "Convolution", "Pooling", "Convolution", "Pooling", "InnerProduct",
        "ReLU", "InnerProduct", "Accuracy", "SoftmaxWithLoss"]
    conv1 = by_name["conv1"]
    assert [p.lr_mult for p in conv1.param] == [1.0, 2.0]
    assert conv1.convolution_param.num_output == 20
    assert conv1.convolution_param.weight_filler.type == "xavier"
    data = net.layer[0]
    assert data.include[0].phase == pb.TRAIN
    assert data.transform_param.scale == pytest.approx(0.00390625)
    assert data.data_param.backend == pb.DataParameter.LMDB


@needs_compat
def test_v1_net_and_weights_give_the_current_format_outputs():
    """The V1 file with its V1 weights gives exactly what the current-format
    LeNet gives with the same weights, and each format's weights load into
    the other format's net (4-D legacy blob shapes included)."""
    x = digits()
    v1 = Net(V1_NET, pb.TEST, weights=V1_WEIGHTS)
    current_with_v1_weights = Net(NET, pb.TEST, weights=V1_WEIGHTS)
    np.testing.assert_array_equal(v1.forward(data=x)["prob"],
                                  current_with_v1_weights.forward(data=x)["prob"])
    current = Net(NET, pb.TEST, weights=WEIGHTS)
    v1_with_current_weights = Net(V1_NET, pb.TEST, weights=WEIGHTS)
    np.testing.assert_array_equal(current.forward(data=x)["prob"],
                                  v1_with_current_weights.forward(data=x)["prob"])
    assert v1.params["ip1"][0].shape == (500, 800)      # stored as 1 x 1 x 500 x 800


@needs_compat
def test_v1_train_test_builds_in_both_phases():
    for phase in (pb.TRAIN, pb.TEST):
        param = upgrade_net(read_net(V1_TRAIN_TEST))
        for lp in param.layer:
            if lp.type == "Data":
                batch = lp.data_param.batch_size
                lp.ClearField("data_param")
                lp.ClearField("transform_param")
                lp.type = "Input"
                lp.input_param.shape.add().dim.extend([4, 1, 28, 28])
                lp.input_param.shape.add().dim.append(4)
                assert batch in (64, 100)
        net = Net(param, phase)
        net.forward_backward()
        assert net.blobs["pool2"].shape == (4, 50, 4, 4)


def test_legacy_blob_shape_must_match_by_caffes_rule():
    """A legacy num/channels/height/width matches the net's shape padded with
    leading 1s (Caffe's Blob::ShapeEquals); any other arrangement is refused."""
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
            inner_product_param { num_output: 4 } }
    """
    net = Net(parse_net(text), pb.TEST)
    weights = pb.NetParameter()
    lp = weights.layer.add(name="ip", type="InnerProduct")
    w = np.arange(12, dtype=np.float32)
    lp.blobs.add(num=1, channels=1, height=4, width=3).data.extend(w)
    lp.blobs.add(num=1, channels=1, height=1, width=4).data.extend(np.ones(4))
    net.copy_from(weights)
    np.testing.assert_array_equal(net.params["ip"][0].data, w.reshape(4, 3))
    lp.blobs[0].num, lp.blobs[0].height = 4, 1          # 4 x 1 x 1 x 3: not Caffe's form
    with pytest.raises(SnapshotError, match=r"\(4, 3\) in the net but \(4, 1, 1, 3\)"):
        net.copy_from(weights)


# ------------------------------------------------------------- V0 nets ----

V0_NET = """
name: "V0Net"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 3 kernelsize: 3 stride: 1
          weight_filler { type: "gaussian" std: 0.1 } blobs_lr: 1 blobs_lr: 2
          weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
         bottom: "conv1" top: "pool1" }
layers { layer { name: "relu1" type: "relu" } bottom: "pool1" top: "pool1" }
layers { layer { name: "ip" type: "innerproduct" num_output: 4
                 weight_filler { type: "xavier" } } bottom: "pool1" top: "ip" }
layers { layer { name: "prob" type: "softmax" } bottom: "ip" top: "prob" }
"""


def test_v0_net_with_a_padding_layer_upgrades_and_runs():
    """V0: the padding layer disappears into conv1's pad; every V0 field goes
    to its current place; the net runs with Caffe's shapes (pad 1, kernel 3
    keeps 8x8; pool 2/2 -> 4x4)."""
    v0 = parse_net(V0_NET)
    assert net_format(v0) == "V0"
    net = upgrade_net(v0)
    assert [lp.name for lp in net.layer] == ["input", "conv1", "pool1", "relu1", "ip", "prob"]
    conv1 = net.layer[1]
    assert conv1.type == "Convolution" and list(conv1.bottom) == ["data"]
    assert list(conv1.convolution_param.pad) == [1]
    assert list(conv1.convolution_param.kernel_size) == [3]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 0)]
    assert net.layer[2].pooling_param.pool == pb.PoolingParameter.AVE
    assert net.layer[4].inner_product_param.num_output == 4
    built = Net(v0, pb.TEST)
    out = built.forward(data=np.random.default_rng(0).random((2, 1, 8, 8)))
    assert built.blobs["conv1"].shape == (2, 3, 8, 8)
    assert built.blobs["pool1"].shape == (2, 3, 4, 4)
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1.0, rtol=1e-6)


def test_v0_data_layer_fields_move_like_caffe():
    v0 = parse_net("""layers { layer { name: "d" type: "data" source: "train_db"
        meanfile: "mean.binaryproto" batchsize: 32 cropsize: 227 mirror: true scale: 0.5
        rand_skip: 7 } top: "data" top: "label" }""")
    lp = upgrade_net(v0).layer[0]
    assert lp.type == "Data" and lp.data_param.source == "train_db"
    assert lp.data_param.batch_size == 32 and lp.data_param.rand_skip == 7
    t = lp.transform_param
    assert (t.crop_size, t.mirror, t.mean_file, t.scale) == (227, True, "mean.binaryproto", 0.5)


def test_v0_problems_are_refused_or_warned():
    with pytest.raises(NetError, match="unknown type 'warp'"):
        upgrade_net(parse_net('layers { layer { name: "w" type: "warp" } top: "x" }'))
    with pytest.raises(NetError, match="only conv and pool"):
        upgrade_net(parse_net("""input: "x" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4
            layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }
            layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }"""))
    with pytest.warns(UpgradeWarning, match="'num_output' has no meaning for type 'relu'"):
        upgrade_net(parse_net('input: "x" layers { layer { name: "r" type: "relu" '
                              'num_output: 3 } bottom: "x" top: "x" }'))


# ----------------------------------------------------- other upgrades ----

def test_v1_data_transformation_fields_move_to_transform_param():
    v1 = parse_net('layers { name: "d" type: DATA top: "data" data_param { source: "s" '
                   'scale: 0.25 crop_size: 20 mirror: true } }')
    lp = upgrade_net(v1).layer[0]
    assert not lp.data_param.HasField("scale") and not lp.data_param.HasField("crop_size")
    assert (lp.transform_param.scale, lp.transform_param.crop_size,
            lp.transform_param.mirror) == (0.25, 20, True)


def test_v1_share_names_and_modes_become_param_specs():
    v1 = parse_net('layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y" '
                   'param: "w" param: "b" blob_share_mode: PERMISSIVE blobs_lr: 0 '
                   'weight_decay: 0 loss_weight: 0.5 }')
    lp = upgrade_net(v1).layer[0]
    assert [p.name for p in lp.param] == ["w", "b"]
    assert lp.param[0].share_mode == pb.ParamSpec.PERMISSIVE
    assert (lp.param[0].lr_mult, lp.param[0].decay_mult) == (0, 0)
    assert lp.param[1].lr_mult == 1 and list(lp.loss_weight) == [0.5]


def test_both_layer_and_layers_warns_and_keeps_the_v1_layers():
    both = parse_net('layer { name: "new" type: "ReLU" } '
                     'layers { name: "old" type: RELU bottom: "x" top: "x" }')
    with pytest.warns(UpgradeWarning, match="both 'layer' and V1 'layers'"):
        out = upgrade_net(both)
    assert [lp.name for lp in out.layer] == ["old"]


def test_batchnorm_with_three_param_specs_is_frozen():
    net = upgrade_net(parse_net('input: "x" input_dim: 1 input_dim: 2 input_dim: 3 '
                                'input_dim: 3 layer { name: "bn" type: "BatchNorm" bottom: "x" '
                                'top: "x" param { lr_mult: 1 } param { lr_mult: 1 } '
                                'param { lr_mult: 1 decay_mult: 1 } }'))
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(0, 0)] * 3


def test_current_files_are_returned_unchanged():
    param = parse_net('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }')
    assert upgrade_net(param) is param


# ------------------------------------------------------------- solvers ----

OLD_SOLVER = """
base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" max_iter: 2 display: 0
random_seed: 1 snapshot_after_train: false solver_mode: CPU solver_type: NESTEROV
net_param {
  input: "data" input_dim: 4 input_dim: 1 input_dim: 6 input_dim: 6
  input: "label" input_dim: 4 input_dim: 1 input_dim: 1 input_dim: 1
  layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 blobs_lr: 2
           inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
  layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" }
}
"""


def test_old_solver_upgrades_and_trains():
    old = parse_text(OLD_SOLVER, pb.SolverParameter())
    new = upgrade_solver(old)
    assert new.type == "Nesterov" and not new.HasField("solver_type")
    assert len(new.net_param.layer) == 3 and not len(new.net_param.layers)
    assert not old.HasField("type")                          # the argument is left alone
    solver = Solver(new, log=None)
    assert solver.type == "Nesterov"
    solver.net.blobs["data"].data[...] = np.random.default_rng(0).random((4, 1, 6, 6))
    w0 = solver.net.params["ip"][0].data.copy()
    solver.step(2)
    assert np.isfinite(solver.losses).all()
    assert not np.array_equal(w0, solver.net.params["ip"][0].data)
    # the Solver also reads the old file directly (the enum and the V1 net)
    assert Solver(old, log=None).type == "Nesterov"


def test_solver_with_both_type_fields_is_refused():
    both = parse_text('type: "Adam" solver_type: SGD', pb.SolverParameter())
    with pytest.raises(SolverError, match="not both"):
        upgrade_solver(both)


# ------------------------------------------------------ the upgrade tool --

@needs_compat
def test_upgrade_command_text_round_trip(tmp_path, capsys):
    out = tmp_path / "lenet_train_test.prototxt"
    assert main(["upgrade", V1_TRAIN_TEST, str(out)]) == 0
    assert "V1 format" in capsys.readouterr().out
    written = out.read_text()                                  # text stays text
    assert "layers {" not in written and "type: \"Convolution\"" in written
    assert read_net(str(out)) == upgrade_net(read_net(V1_TRAIN_TEST))
    deploy = tmp_path / "lenet.prototxt"
    assert main(["upgrade", V1_NET, str(deploy)]) == 0
    x = digits()
    a = Net(str(deploy), pb.TEST, weights=V1_WEIGHTS).forward(data=x)["prob"]
    b = Net(V1_NET, pb.TEST, weights=V1_WEIGHTS).forward(data=x)["prob"]
    np.testing.assert_array_equal(a, b)
    again = tmp_path / "again.prototxt"                       # idempotent
    assert main(["upgrade", str(out), str(again)]) == 0
    assert read_net(str(again)) == read_net(str(out))


@needs_compat
def test_upgrade_command_binary_weights(tmp_path, capsys):
    out = tmp_path / "lenet.caffemodel"
    assert main(["upgrade", V1_WEIGHTS, str(out)]) == 0
    upgraded = binary(str(out))                                # binary stays binary
    assert not len(upgraded.layers) and len(upgraded.layer) == 9
    original = binary(V1_WEIGHTS)
    for old, new in zip(original.layers, upgraded.layer):
        assert old.name == new.name and len(old.blobs) == len(new.blobs)
        for a, b in zip(old.blobs, new.blobs):
            assert np.asarray(a.data, np.float32).tobytes() == \
                np.asarray(b.data, np.float32).tobytes()
    x = digits()
    a = Net(NET, pb.TEST, weights=str(out)).forward(data=x)["prob"]
    b = Net(NET, pb.TEST, weights=V1_WEIGHTS).forward(data=x)["prob"]
    np.testing.assert_array_equal(a, b)


def test_upgrade_command_solver_and_refusals(tmp_path, capsys):
    src = tmp_path / "old_solver.prototxt"
    src.write_text(OLD_SOLVER)
    out = tmp_path / "solver.prototxt"
    assert main(["upgrade", str(src), str(out)]) == 0
    solver = parse_text(out.read_text(), pb.SolverParameter())
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert "text solver" in capsys.readouterr().out
    assert main(["upgrade", str(src), str(out)]) == 2                # exists
    assert "--force" in capsys.readouterr().err
    assert main(["upgrade", str(src), str(src)]) == 2                # in place
    assert "--in-place" in capsys.readouterr().err
    assert main(["upgrade", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.prototxt").write_text("this is { not a net")
    assert main(["upgrade", str(tmp_path / "junk.prototxt"), str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layergraph: error: ") and len(err.strip().splitlines()) == 1


@needs_compat
def test_v1_weights_no_longer_fail_with_no_layer_name_matches():
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # and without any upgrade warning
        net = Net(NET, pb.TEST)
        assert net.copy_from(V1_WEIGHTS) == ["conv1", "conv2", "ip1", "ip2"]
