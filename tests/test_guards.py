"""CollapseGuard on tiny real training runs (a linear 8 -> 4 embedding of 64
fixed points, fed through Input layers).

The collapsing run is a deliberately bad setting: labels drawn independently
of the inputs (no embedding can separate them) with BATCH_HARD mining and a
margin far larger than the embedding can earn.  Batch-hard's best answer is
then to put every embedding on one point (loss = margin, every anchor
active): the spread falls geometrically.  The healthy runs use labels that
follow clusters of the inputs."""
import numpy as np
import pytest

from layergraph import Solver
from layergraph.guards import CollapseGuard, collapsed_loss
from layergraph.proto import pb
from layergraph.prototxt import parse_text

NET = """
name: "tiny"
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 64 dim: 8 } shape { dim: 64 } } }
layer { name: "embed" type: "InnerProduct" bottom: "data" top: "embed"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "OnlineTripletLoss" bottom: "embed" bottom: "label"
        top: "loss" top: "active" loss_weight: 1 loss_weight: 0
        online_triplet_loss_param { miner: %s distance: %s margin: 1 } }
"""
SOLVER = 'base_lr: 0.05 type: "SGD" momentum: 0.9 lr_policy: "fixed" solver_mode: CPU'


def make_run(tmp_path, miner="BATCH_HARD", distance="SQUARED_EUCLIDEAN", clustered=False,
             guard=None):
    param = parse_text(SOLVER, pb.SolverParameter())
    param.train_net_param.CopyFrom(parse_text(NET % (miner, distance), pb.NetParameter()))
    param.snapshot_prefix = str(tmp_path / "snap")
    param.random_seed = 1
    messages = []
    solver = Solver(param, log=messages.append)
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(4), 16))
    x = rng.standard_normal((64, 8))
    if clustered:
        x += 3.0 * rng.standard_normal((4, 8))[labels]
    solver.net.set_input("data", x)
    solver.net.set_input("label", labels)
    guard = guard or CollapseGuard()
    solver.add_callback(guard)
    return solver, guard, messages


def spread(solver):
    e = solver.net.blobs["embed"].data
    return float(np.mean(np.linalg.norm(e - e.mean(0), axis=1)))


def test_guard_fires_once_on_a_collapsing_run(tmp_path):
    solver, guard, messages = make_run(tmp_path)
    solver.step(150)
    assert spread(solver) < 0.01              # the run did collapse
    assert guard.fired_at is not None and guard.fired_at < 150
    warnings = [m for m in messages if "collapse" in m]
    assert warnings == [guard.message]
    for cause in ("learning rate", "margin", "warmup_iterations", "SEMI_HARD", "'loss'"):
        assert cause in guard.message
    solver.step(60)                            # still collapsed: no second warning
    assert [m for m in messages if "collapse" in m] == warnings


def test_each_condition_fires_on_its_own(tmp_path):
    # (b) alone: loss at the margin with every anchor active (spread rule disabled)
    solver, by_loss, messages = make_run(tmp_path, guard=CollapseGuard(ratio=1e-12))
    solver.step(150)
    assert by_loss.fired_at is not None and "of triplets active" in by_loss.message
    # (a) alone: the spread fell 100-fold (loss rule disabled)
    solver, by_spread, _ = make_run(tmp_path, guard=CollapseGuard(loss_tolerance=0.0))
    solver.step(150)
    assert by_spread.fired_at is not None and "of its initial" in by_spread.message


@pytest.mark.parametrize("miner,distance", [("BATCH_HARD", "SQUARED_EUCLIDEAN"),
                                            ("BATCH_HARD", "EUCLIDEAN"),
                                            ("SEMI_HARD", "EUCLIDEAN")])
def test_guard_stays_silent_on_a_healthy_run(tmp_path, miner, distance):
    solver, guard, messages = make_run(tmp_path, miner, distance, clustered=True)
    solver.net.forward()
    start = spread(solver)
    solver.step(150)
    assert spread(solver) > 0.5 * start        # the embedding did not shrink
    assert guard.fired_at is None
    assert not [m for m in messages if "collapse" in m]


def test_guard_watches_every_metric_loss_by_type(tmp_path):
    param = parse_text(SOLVER, pb.SolverParameter())
    param.train_net_param.CopyFrom(parse_text("""
        layer { name: "in" type: "Input" top: "a" top: "p" top: "n" top: "sim"
                input_param { shape { dim: 6 dim: 3 } shape { dim: 6 dim: 3 }
                              shape { dim: 6 dim: 3 } shape { dim: 6 } } }
        layer { name: "triplet" type: "TripletLoss" bottom: "a" bottom: "p" bottom: "n"
                top: "tl" top: "tactive" loss_weight: 1 loss_weight: 0 }
        layer { name: "pair" type: "ContrastiveLoss" bottom: "a" bottom: "p" bottom: "sim"
                top: "cl" }
        """, pb.NetParameter()))
    param.snapshot_prefix = str(tmp_path / "snap")
    messages = []
    solver = Solver(param, log=messages.append)
    guard = CollapseGuard(every=1, patience=2, baseline_checks=1)
    solver.add_callback(guard)
    point = np.full((6, 3), 0.25)
    for name in ("a", "p", "n"):                # every embedding on one point
        solver.net.set_input(name, point)
    solver.net.set_input("sim", np.ones(6))
    solver.step(4)
    # the spread of a collapsed batch is 0 from the start: the spread rule has
    # no reference, but TripletLoss sits at its collapsed value alpha / 2
    triplet = solver.net.layer("triplet")
    assert float(solver.net.blobs["tl"].data) == pytest.approx(collapsed_loss(triplet, 6))
    assert guard.fired_at is not None and "layer 'triplet'" in guard.message
    watched = guard.watched         # blob names (Split layers feed the shared inputs)
    assert list(watched) == ["triplet", "pair"]
    assert [len(v) for v in watched.values()] == [3, 2] and watched["triplet"][2] == "n"


def test_guard_rejects_bad_settings():
    with pytest.raises(ValueError):
        CollapseGuard(ratio=2.0)
    with pytest.raises(ValueError):
        CollapseGuard(every=0)
