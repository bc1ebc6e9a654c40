"""The schema: generated module is fresh, Caffe's field numbers are kept, and
every compat prototxt parses unmodified."""
import glob
import importlib.util
import os

import pytest

from layergraph.proto import pb
from layergraph.prototxt import parse_net, parse_text, read_net, read_solver
from layergraph.errors import PrototxtError

COMPAT = os.environ.get("LAYERGRAPH_COMPAT", os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "compat")))


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None,
                    reason="grpcio-tools not installed")
def test_generated_module_is_fresh():
    from layergraph.proto.generate import main
    assert main(["--check"]) == 0, "run: python -m layergraph.proto.generate"


@pytest.mark.parametrize("message, field, number", [
    ("BlobProto", "shape", 7), ("BlobProto", "data", 5), ("Datum", "label", 5),
    ("NetParameter", "layer", 100), ("NetParameter", "force_backward", 5),
    ("SolverParameter", "type", 40), ("SolverParameter", "base_lr", 5),
    ("SolverParameter", "random_seed", 20), ("SolverParameter", "iter_size", 36),
    ("SolverParameter", "layer_wise_reduce", 41), ("SolverParameter", "weights", 42),
    ("SolverState", "history", 3), ("ParamSpec", "lr_mult", 3),
    ("LayerParameter", "convolution_param", 106), ("LayerParameter", "input_param", 143),
    ("LayerParameter", "contrastive_loss_param", 105), ("LayerParameter", "loss_weight", 5),
    ("ConvolutionParameter", "dilation", 18), ("PoolingParameter", "round_mode", 13),
    ("DataParameter", "backend", 8), ("TransformationParameter", "mean_value", 5),
])
def test_caffe_field_numbers(message, field, number):
    assert getattr(pb, message).DESCRIPTOR.fields_by_name[field].number == number


def test_extensions_do_not_collide_with_caffe_ranges():
    for name, number in [("data_sequence_param", 5000), ("decode_param", 5001),
                         ("triplet_loss_param", 5002)]:
        assert pb.LayerParameter.DESCRIPTOR.fields_by_name[name].number == number


def compat_files():
    return sorted(glob.glob(os.path.join(COMPAT, "*", "*.prototxt")))


@pytest.mark.skipif(not compat_files(), reason="shared/compat not present")
@pytest.mark.parametrize("path", compat_files(), ids=lambda p: os.path.relpath(p, COMPAT))
def test_compat_files_parse(path):
    msg = read_solver(path) if "solver" in os.path.basename(path) else read_net(path)
    assert msg.ByteSize() > 0


def test_mycaffe_dialect():
    sp = parse_text("type: ADAM\nsnapshot_prefix: examples/triplet/x\nsnapshot_after_train: False\n"
                    "delta: 1E-08", pb.SolverParameter())
    assert sp.type == "ADAM" and sp.snapshot_prefix == "examples/triplet/x"
    assert sp.snapshot_after_train is False and sp.delta == pytest.approx(1e-8)
    net = parse_net('layer { name: "d" type: "Data" data_param { backend: IMAGEDB '
                    'enable_random_selection: True } }')
    assert net.layer[0].data_param.enable_random_selection is True


def test_syntax_error_names_file_line_col():
    with pytest.raises(PrototxtError, match=r"^m\.prototxt:3:\d+: "):
        parse_net('layer {\n  name: "a"\n  type: : "ReLU"\n}', "m.prototxt")


def test_binary_given_where_text_expected(tmp_path):
    path = tmp_path / "w.caffemodel"
    path.write_bytes(pb.NetParameter(name="x").SerializeToString() + b"\x00\x01\x02")
    with pytest.raises(PrototxtError, match="binary file"):
        read_net(str(path))
    with pytest.raises(PrototxtError, match="no such file"):
        read_net(str(tmp_path / "missing.prototxt"))
