"""A user's mistakes and faults end in one line and exit status 2 -- never a
traceback, a crash or a hang (issue: hardening).  Each case runs the CLI as
a user would, in a subprocess."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import layergraph as lg
from layergraph.prototxt import parse_net

SMALL = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""


def cli(*args, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "layergraph", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line(result, *fragments, code=2):
    rc, out, err = result
    assert rc == code, (rc, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_huge_input_names_layer_and_size(tmp_path):
    model = write(tmp_path, "big.prototxt", SMALL.replace(
        "dim: 2 dim: 1 dim: 8 dim: 8", "dim: 100000 dim: 100000 dim: 100000 dim: 100000"))
    line = assert_one_line(cli("time", "--model", model), "layer 'in'", "PiB")
    assert "more than" in line


def test_empty_prototxt_is_an_empty_net(tmp_path):
    model = write(tmp_path, "empty.prototxt", "")
    assert_one_line(cli("time", "--model", model), "the net has no layers")
    solver = write(tmp_path, "solver.prototxt",
                   f'net: "{model}" base_lr: 0.1 max_iter: 5 snapshot_prefix: "{tmp_path}/s"')
    assert_one_line(cli("train", "--solver", solver, "--quiet"), "the net has no layers")
    assert not list(tmp_path.glob("s_iter_*"))


def test_negative_std_names_the_layer(tmp_path):
    model = write(tmp_path, "m.prototxt", SMALL.replace(
        'weight_filler { type: "xavier" }', 'weight_filler { type: "gaussian" std: -1 }'))
    assert_one_line(cli("time", "--model", model), "layer 'ip'", "std must be >= 0")


def test_zero_dimension_input(tmp_path):
    model = write(tmp_path, "m.prototxt", SMALL.replace("dim: 2 dim: 1", "dim: 0 dim: 1"))
    assert_one_line(cli("time", "--model", model), "layer 'in'", "must be > 0")


@pytest.mark.parametrize("command", ["test", "time"])
def test_zero_iterations_rejected(tmp_path, command):
    model = write(tmp_path, "m.prototxt", SMALL)
    extra = ["--weights", "w.caffemodel"] if command == "test" else []
    assert_one_line(cli(command, "--model", model, *extra, "--iterations", "0"),
                    "--iterations", "at least 1")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_model_does_not_hang(tmp_path):
    fifo = tmp_path / "model.prototxt"
    os.mkfifo(fifo)
    assert_one_line(cli("time", "--model", fifo, timeout=20), "not a regular file")


@pytest.mark.parametrize("content", [os.urandom(300), b"[1,2,3]\n", b'{"kind": "train"}\n'])
def test_plot_refuses_what_is_not_a_log(tmp_path, content):
    log = tmp_path / "log.jsonl"
    log.write_bytes(content)
    line = assert_one_line(cli("plot", "--log", log, "--out", tmp_path / "c.png"))
    assert "log.jsonl" in line
    assert not (tmp_path / "c.png").exists()


def test_plot_skips_a_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"kind": "train", "iter": i, "loss": 1.0 / (i + 1), "smoothed_loss": 1.0}
               for i in range(5)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "tr')
    rc, out, err = cli("plot", "--log", log, "--out", tmp_path / "c.png")
    assert rc == 0, err
    assert "torn last line" in err and "Traceback" not in err
    assert (tmp_path / "c.png").exists()


def test_truncated_weights_are_an_error_unless_allowed(tmp_path):
    two = SMALL + """
layer { name: "ip2" type: "InnerProduct" bottom: "y" top: "z"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }"""
    net = lg.Net(parse_net(two), lg.TRAIN)
    full = net.to_proto().SerializeToString()
    partial = lg.pb.NetParameter()
    partial.ParseFromString(full)
    del partial.layer[-1]  # as if the file had been cut after 'ip'
    path = tmp_path / "w.caffemodel"
    path.write_bytes(partial.SerializeToString())
    other = lg.Net(parse_net(two), lg.TRAIN, seed=5)
    with pytest.raises(lg.SnapshotError, match="no weights for layer.*ip2"):
        other.copy_from(str(path))
    assert other.copy_from(str(path), allow_missing=True) == ["ip"]
    assert other.last_missing == ["ip2"]
    np.testing.assert_array_equal(other.params["ip"][0].data, net.params["ip"][0].data)


def test_python_api_mistakes_are_layergraph_errors():
    net = lg.Net(parse_net(SMALL), lg.TRAIN)
    with pytest.raises(lg.NetError, match="no layer named 'nope'"):
        net.forward(start="nope")
    with pytest.raises(lg.NetError, match="not an input"):
        net.forward(y=np.zeros((2, 3), np.float32))
    with pytest.raises(lg.NetError, match="phase must be"):
        lg.Net(parse_net(SMALL), phase=7)


def test_usage_mistakes_are_one_line():
    assert_one_line(cli("bogus"), "invalid choice")
    assert_one_line(cli("time"), "--model")


# ------------------------------------------------------------ the solver ----

NAN_NET = """
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def _solver(tmp_path, extra=""):
    (tmp_path / "net.prototxt").write_text(NAN_NET)
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "net.prototxt" max_iter: 20 snapshot: 5 snapshot_prefix: "snap/s" '
                    f'solver_mode: CPU random_seed: 1 display: 1 {extra}')
    return path


def test_nan_loss_stops_training_and_keeps_the_last_finite_snapshot(tmp_path):
    solver = lg.Solver(str(_solver(tmp_path, "base_lr: 0.01")), log=None)
    solver.net.blobs["x"].data[...] = 1.0
    solver.step(5)                      # a finite snapshot at iteration 5
    solver.param.base_lr = 1e35         # then it blows up
    with pytest.raises(lg.DivergedError, match="training diverged.*iteration.*_iter_5"):
        solver.step(10)
    snaps = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert snaps == ["s_iter_5.caffemodel", "s_iter_5.solverstate", "s_log.jsonl"]
    weights = lg.Net(str(tmp_path / "net.prototxt"), lg.TEST,
                     weights=str(tmp_path / "snap" / "s_iter_5.caffemodel"))
    assert np.isfinite(weights.params["ip"][0].data).all()
    for line in (tmp_path / "snap" / "s_log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in the log"))


@pytest.mark.parametrize("schedule,fragment", [
    ('lr_policy: "inv" gamma: -2 power: 0.5', "learning rate"),
    ('lr_policy: "poly" power: -1', "learning rate"),
    ('lr_policy: "step" gamma: -0.5 stepsize: 3', "gamma >= 0"),
])
def test_bad_schedules_are_refused_up_front(tmp_path, schedule, fragment):
    solver = _solver(tmp_path, f"base_lr: 0.1 {schedule}")
    assert_one_line(cli("train", "--solver", solver, "--quiet"), "solver.prototxt", fragment)
    assert not (tmp_path / "snap").exists()


def test_sigmoid_schedule_with_a_steep_gamma_does_not_overflow(tmp_path):
    solver = lg.Solver(str(_solver(tmp_path, 'base_lr: 0.1 lr_policy: "sigmoid" gamma: 1000 '
                                             'stepsize: 10')), log=None)
    assert solver.learning_rate() == 0.0
    solver.iter = 15
    assert solver.learning_rate() == pytest.approx(0.1)


def test_stale_temporaries_are_removed_and_latest_finds_the_newest_pair(tmp_path):
    solver_path = _solver(tmp_path, "base_lr: 0.01")
    assert cli("train", "--solver", solver_path, "--quiet", "--iterations", "10")[0] == 0
    snap = tmp_path / "snap"
    # a writer killed mid-snapshot: a temporary, and a weights file without its state
    (snap / "s_iter_15.solverstate.tmp999999").write_bytes(b"partial")
    (snap / "s_iter_15.caffemodel").write_bytes((snap / "s_iter_10.caffemodel").read_bytes())
    from layergraph.solver import latest_snapshot
    assert latest_snapshot(str(snap / "s")) == str(snap / "s_iter_10.solverstate")
    rc, out, err = cli("train", "--solver", solver_path, "--quiet", "--snapshot", "latest")
    assert rc == 0, err
    assert "Restored solver state from" in out + err and "s_iter_10.solverstate" in out + err
    assert not list(snap.glob("*.tmp*"))
    iters = [json.loads(line)["iter"] for line in (snap / "s_log.jsonl").read_text().splitlines()
             if json.loads(line).get("kind") == "train"]
    assert iters == sorted(set(iters)), "the resumed log repeats iterations"


def test_caffemodel_given_to_snapshot(tmp_path):
    solver_path = _solver(tmp_path, "base_lr: 0.01")
    assert cli("train", "--solver", solver_path, "--quiet", "--iterations", "5")[0] == 0
    assert_one_line(cli("train", "--solver", solver_path, "--snapshot",
                        tmp_path / "snap" / "s_iter_5.caffemodel"), "is a weights file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_snapshot_prefix_fails_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    solver_path = _solver(tmp_path, "base_lr: 0.01")
    assert_one_line(cli("train", "--solver", solver_path, "--snapshot-prefix",
                        locked / "sub" / "s"), "cannot write")


def test_solver_api_mistakes(tmp_path):
    solver = lg.Solver(str(_solver(tmp_path, "base_lr: 0.01")), log=None)
    for bad in ("3", -5, 2.5):
        with pytest.raises(lg.SolverError):
            solver.step(bad)
    with pytest.raises(lg.SolverError, match="no test net #5"):
        solver.test(5)


def test_accuracy_counts_nan_scores_as_wrong():
    from layergraph.testing import run_layer
    scores = np.array([[0.1, 0.9, 0.0], [np.nan, 0.2, 0.1], [0.3, np.nan, 0.2]])
    _, (acc,) = run_layer('type: "Accuracy"', [scores, np.array([1.0, 0.0, 0.0])])
    assert float(acc) == pytest.approx(1 / 3)


# --------------------------------------------------- kill -9 and resume ----

KILL_NET = """
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00390625 }
        data_param { source: "TINY.training" batch_size: 8 backend: IMAGEDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_killed_writers_resume_to_the_same_bytes(tmp_path, db):
    """SIGKILL the training process at random moments (mid-iteration,
    mid-snapshot), resume each time from the newest complete pair: the run
    ends byte-identical to an uninterrupted one, with no temporaries left."""
    import random
    import signal
    import time
    (tmp_path / "net.prototxt").write_text(KILL_NET)
    iters = 3000

    def solver(name):
        path = tmp_path / f"{name}.prototxt"
        path.write_text(f'net: "net.prototxt" type: "Adam" base_lr: 0.001 max_iter: {iters} '
                        f'snapshot: 2 snapshot_prefix: "{name}/s" solver_mode: CPU '
                        f'random_seed: 7 display: 0')
        return path
    env = dict(os.environ, LAYERGRAPH_DB=str(db))
    base = [sys.executable, "-m", "layergraph", "train", "--quiet"]
    subprocess.run(base + ["--solver", solver("clean")], env=env, check=True,
                   capture_output=True, timeout=300)
    killed_solver = solver("killed")
    rng = random.Random(1234)
    kills = 0
    for attempt in range(40):
        args = base + ["--solver", killed_solver]
        if attempt:
            args += ["--snapshot", "latest"]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.7, 1.4))  # past start-up, into training/snapshots
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()
        break
    else:
        pytest.fail("the killed run never finished")
    assert kills >= 3, "no kill landed: the run was too quick for this test"
    final = f"s_iter_{iters}.caffemodel"
    assert (tmp_path / "killed" / final).read_bytes() == (tmp_path / "clean" / final).read_bytes()
    assert not list((tmp_path / "killed").glob("*.tmp*"))
