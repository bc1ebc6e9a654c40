"""The Python API: ``Net(..., db=)`` and ``Solver(..., db=)`` reach the image
database without $LAYERGRAPH_DB; ``Net.transform`` gives a RUN net what the
train_val's Data layer gave in training; the train record's image counts."""
import numpy as np
import pytest

import layergraph as lg
from layergraph.imagedb.store import open_source, read_mean

TRAIN_VAL = """
name: "api"
layer { name: "data" type: "Data" top: "images" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 %(extra)s }
        data_param { source: "TINY.training" batch_size: 20 backend: IMAGEDB } }
layer { name: "data" type: "Data" top: "images" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 %(extra)s }
        data_param { source: "TINY.testing" batch_size: 20 backend: IMAGEDB } }
layer { name: "feat" type: "InnerProduct" bottom: "images" top: "feat"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "OnlineTripletLoss" bottom: "feat" bottom: "label"
        top: "loss" top: "active" loss_weight: 1 loss_weight: 0 exclude { phase: RUN }
        online_triplet_loss_param { miner: BATCH_ALL margin: 0.2 } }
"""
SOLVER = """
net: "train_val.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 2
test_iter: 1
test_interval: 2
snapshot_prefix: "snap/api"
random_seed: 3
"""


def write_model(tmp_path, extra=""):
    (tmp_path / "train_val.prototxt").write_text(TRAIN_VAL % {"extra": extra})
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return str(tmp_path / "train_val.prototxt"), str(tmp_path / "solver.prototxt")


@pytest.fixture
def elsewhere(db, tmp_path, monkeypatch):
    """$LAYERGRAPH_DB names an empty folder: only db= finds the datasets."""
    empty = tmp_path / "no-database-here"
    empty.mkdir()
    monkeypatch.setenv("LAYERGRAPH_DB", str(empty))
    return db


def test_net_db_reaches_the_database_without_the_variable(elsewhere, tmp_path):
    model, _ = write_model(tmp_path)
    with pytest.raises(lg.DatasetNotFoundError):
        lg.Net(model, lg.TRAIN)
    net = lg.Net(model, lg.TRAIN, db=elsewhere)
    try:
        assert net.db == str(elsewhere)
        net.forward()
        images, labels = open_source("TINY.training", root=elsewhere).read(np.arange(20))
        np.testing.assert_array_equal(net.blobs["label"].data, labels)
        np.testing.assert_allclose(net.blobs["images"].data, images / 256.0, rtol=1e-6)
    finally:
        net.close()


def test_solver_db_reaches_train_and_test_nets(elsewhere, tmp_path):
    _, solver_file = write_model(tmp_path)
    with pytest.raises(lg.DatasetNotFoundError):
        lg.Solver(solver_file, log=None)
    solver = lg.Solver(solver_file, log=None, db=elsewhere)
    try:
        assert solver.net.db == solver.test_nets[0].db == str(elsewhere)
        solver.solve()
        assert solver.iter == 2
        results = solver.test(0)
        assert set(results) >= {"loss", "active"} and np.isfinite(results["loss"])
    finally:
        solver.close()


@pytest.mark.parametrize("extra", ["mean_value: 33", "crop_size: 24 mean_value: 7",
                                   "use_imagedb_mean: true crop_size: 20"])
def test_transform_equals_the_test_data_layer(db, tmp_path, extra):
    """transform(raw uint8) on the RUN net == what the TEST Data layer feeds
    (the same images: the first batch in database order)."""
    model, _ = write_model(tmp_path, extra)
    test_net = lg.Net(model, lg.TEST)
    try:
        test_net.forward()
        fed = np.array(test_net.blobs["images"].data)
    finally:
        test_net.close()
    raw, _ = open_source("TINY.testing").read(np.arange(20))
    run = lg.Net(model, lg.RUN, input_shape=(1,) + fed.shape[1:])
    x = run.transform(raw)
    assert x.dtype == np.float32 and x.shape == fed.shape
    np.testing.assert_array_equal(x, fed)
    # the formula, by hand: scale * crop(x - mean)
    if "use_imagedb_mean" in extra:
        mean = read_mean("TINY")
        by_hand = (raw.astype(np.float32) - mean)[:, :, 4:24, 4:24] * np.float32(1 / 256)
        np.testing.assert_allclose(x, by_hand, rtol=1e-6, atol=1e-7)
    # one image (C, H, W) becomes a batch of one
    np.testing.assert_array_equal(run.transform(raw[0]), x[:1])
    out = run.forward(images=x)
    assert out["feat"].shape == (20, 4)


def test_transform_without_a_data_layer_and_bad_input(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text('layer { name: "in" type: "Input" top: "x" '
                      'input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }\n'
                      'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    net = lg.Net(str(deploy), lg.RUN)
    raw = np.arange(8, dtype=np.uint8).reshape(2, 1, 2, 2)
    x = net.transform(raw)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, raw.astype(np.float32))  # nothing to apply
    with pytest.raises(lg.ShapeError, match="transform takes images"):
        net.transform(np.zeros((2, 2)))


def test_images_per_s_counts_data_and_tower_images(db, tmp_path):
    """Siamese: 64 pairs per Data row -> 128 data images, 2 towers x 64 rows;
    TripletNet: 64 data images, 3 towers x 64 rows = 192 through the towers."""
    from layergraph.tools.templates import new_from_template
    expected = {"Siamese_28x28": (128, 128), "TripletNet_28x28": (64, 192)}
    for template, (data, towers) in expected.items():
        out = tmp_path / template
        new_from_template(template, "TINY", str(out))
        solver = lg.Solver(str(out / "solver.prototxt"), log=None,
                           overrides={"test_interval": 0, "max_iter": 1})
        records = []

        class Keep:
            def on_iteration(self, solver, record):
                records.append(record)
        try:
            assert solver.images_per_forward() == (data, towers)
            solver.add_callback(Keep())
            solver.step(1)
        finally:
            solver.close()
        record = records[0]
        # both rates come from the same iteration time
        assert record["tower_images_per_s"] / record["images_per_s"] == \
            pytest.approx(towers / data)


def test_images_per_s_without_data_layers_or_towers(db, tmp_path):
    model, _ = write_model(tmp_path)
    solver = lg.Solver(lg.pb.SolverParameter(net=model, base_lr=0.01, max_iter=1), log=None)
    try:
        assert solver.images_per_forward() == (20, None)
    finally:
        solver.close()
