"""Deploy nets in test-many / inspect / evaluate (issue 14, item 5).

A deploy prototxt has no Data layer, so no transform: BVLC's LeNet then gets
raw 0-255 pixels.  ``--train-val FILE`` takes the transform from that file's
Data layer, ``--scale`` / ``--mean`` give it directly; without any of them a
one-line warning says so on stderr (evaluation.embedding.warn_raw_pixels).
"""
import json
import os

import numpy as np
import pytest

import layergraph as lg
from layergraph.cli import main
from layergraph.errors import LayergraphError
from layergraph.evaluation.embedding import (RAW_PIXELS_WARNING, data_transform, embed,
                                             preprocess, resolve_transform,
                                             transform_override)
from layergraph.proto import pb
from layergraph.prototxt import parse_net

COMPAT = os.environ.get("LAYERGRAPH_COMPAT", os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "compat")))
BVLC = os.path.join(COMPAT, "bvlc")
needs_compat = pytest.mark.skipif(not os.path.isdir(BVLC), reason="shared/compat not present")
DEPLOY = os.path.join(BVLC, "lenet.prototxt")
TRAIN_VAL = os.path.join(BVLC, "lenet_train_test.prototxt")
WEIGHTS = os.path.join(BVLC, "lenet_iter_10000.caffemodel")


def run_test_many(capsys, *options):
    code = main(["test-many", "--model", DEPLOY, "--weights", WEIGHTS, "--dataset", "MNIST",
                 *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    accuracy = float(captured.out.split("accuracy: ")[1].split()[0])
    return accuracy, captured.err


@needs_compat
def test_deploy_lenet_warns_without_transform_and_scores_with_scale(db, capsys):
    """Raw pixels: the warning, once; --scale 0.00390625 (Caffe's MNIST
    recipe) or --train-val: no warning and >= 99.5% on the MNIST sample
    (5,002 digits), the two the same."""
    _, err = run_test_many(capsys, "--count", "300")
    assert err.strip() == RAW_PIXELS_WARNING.strip()
    scaled, err = run_test_many(capsys, "--all", "--scale", "0.00390625")
    assert err == "" and scaled >= 0.995
    from_file, err = run_test_many(capsys, "--all", "--train-val", TRAIN_VAL)
    assert err == "" and from_file == scaled
    # a mean of 0 changes nothing
    with_mean, err = run_test_many(capsys, "--all", "--scale", "0.00390625", "--mean", "0")
    assert err == "" and with_mean == scaled


@needs_compat
def test_evaluate_and_inspect_take_the_transform(db, tmp_path, capsys):
    args = ["--model", DEPLOY, "--weights", WEIGHTS, "--dataset", "MNIST"]
    assert main(["evaluate", *args, "--count", "200", "--json", "--layer", "ip1",
                 "--train-val", TRAIN_VAL]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out)["precision_at_1"] > 0.9
    assert main(["inspect", *args, "--layer", "ip2", "--count", "60",
                 "--projector", str(tmp_path / "proj")]) == 0
    captured = capsys.readouterr()
    assert RAW_PIXELS_WARNING in captured.err
    assert main(["inspect", *args, "--layer", "ip2", "--count", "60", "--scale", "0.00390625",
                 "--projector", str(tmp_path / "proj2")]) == 0
    assert RAW_PIXELS_WARNING not in capsys.readouterr().err


@needs_compat
def test_train_val_without_a_data_layer_is_one_line_error(db, capsys):
    code = main(["test-many", "--model", DEPLOY, "--weights", WEIGHTS, "--dataset", "MNIST",
                 "--train-val", DEPLOY])
    err = capsys.readouterr().err
    assert code == 2 and "has no data layer" in err and len(err.strip().splitlines()) == 1


def test_resolve_transform_choices(tmp_path):
    deploy = parse_net('layer { name: "in" type: "Input" top: "x" '
                       'input_param { shape { dim: 1 dim: 3 dim: 2 dim: 2 } } }')
    train_val = parse_net('layer { name: "d" type: "Data" top: "x" top: "y" '
                          'include { phase: TEST } transform_param { scale: 0.5 '
                          'mean_value: 1 mean_value: 2 mean_value: 3 } }')
    assert data_transform(deploy) is None
    assert resolve_transform(deploy) is None
    assert resolve_transform(deploy, train_val=train_val).scale == 0.5
    t = resolve_transform(deploy, train_val=train_val, scale=2.0)
    assert t.scale == 2.0 and list(t.mean_value) == [1, 2, 3]
    t = resolve_transform(deploy, mean="10,20,30")
    assert t.scale == 1 and list(t.mean_value) == [10, 20, 30]
    images = np.full((1, 3, 2, 2), 40, np.uint8)
    np.testing.assert_array_equal(preprocess(images, t)[0, :, 0, 0], [30, 20, 10])
    np.testing.assert_array_equal(preprocess(images, None), images.astype(np.float32))
    with transform_override(scale=0.25):
        assert data_transform(deploy).scale == 0.25
        assert data_transform(train_val).scale == 0.25     # overrides the file's
        assert list(data_transform(train_val).mean_value) == [1, 2, 3]
    assert data_transform(deploy) is None
    for bad, message in [({"scale": 0.0}, "--scale"), ({"mean": "a,b"}, "--mean"),
                         ({"train_val": deploy}, "no data layer")]:
        with pytest.raises(LayergraphError, match=message):
            resolve_transform(deploy, **bad)


def test_warning_once_per_net_and_only_for_raw_pixels(capsys):
    net = lg.Net(parse_net('layer { name: "in" type: "Input" top: "x" input_param { shape { '
                           'dim: 1 dim: 1 dim: 2 dim: 2 } } }\n'
                           'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }'), pb.RUN)
    pixels = np.full((3, 1, 2, 2), 200, np.uint8)
    embed(net, pixels, None, None, ["y"], batch_size=2)
    embed(net, pixels, None, None, ["y"], batch_size=2)
    assert capsys.readouterr().err.count("warning: feeding raw 0-255 pixels") == 1
    other = lg.Net(net.user_param, pb.RUN)
    embed(other, pixels // 200, None, None, ["y"])           # values in [0, 1]: fine
    embed(other, pixels, pb.TransformationParameter(), None, ["y"])   # known, no scale
    assert capsys.readouterr().err == ""
