"""CLI: every user mistake is one line on stderr and exit status 2, never a
traceback; the main commands run end to end on a tiny net."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from layergraph.cli import main

TINY_NET = """
name: "tiny"
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 8 dim: 4 } shape { dim: 8 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""
SOLVER = """
net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
max_iter: 6
display: 2
snapshot: 3
snapshot_prefix: "snap/tiny"
random_seed: 5
"""


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def project(tmp_path):
    write(tmp_path, "net.prototxt", TINY_NET)
    return tmp_path, write(tmp_path, "solver.prototxt", SOLVER)


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("layergraph: error: ")
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], lines[0]


def test_train_snapshot_resume_and_plot(project, capsys):
    tmp_path, solver = project
    code, out, err = run(["train", "--solver", solver, "--quiet"], capsys)
    assert code == 0, err
    snap = tmp_path / "snap"
    assert (snap / "tiny_iter_3.caffemodel").exists()
    assert (snap / "tiny_iter_6.solverstate").exists()
    log = [json.loads(line) for line in (snap / "tiny_log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if r["kind"] == "train"] == [0, 2, 4]
    code, out, err = run(["train", "--solver", solver, "--quiet", "--snapshot",
                          str(snap / "tiny_iter_3.solverstate")], capsys)
    assert code == 0, err
    assert "from iteration 3" in err + out
    code, out, err = run(["plot", "--log", str(snap / "tiny_log.jsonl"),
                          "--out", str(tmp_path / "curves.png")], capsys)
    assert code == 0 and (tmp_path / "curves.png").stat().st_size > 1000
    code, out, err = run(["time", "--model", str(tmp_path / "net.prototxt"),
                          "--iterations", "2"], capsys)
    assert code == 0 and "Average forward pass" in out
    code, out, err = run(["draw", "--model", str(tmp_path / "net.prototxt"),
                          "--out", str(tmp_path / "net.png")], capsys)
    assert code == 0 and (tmp_path / "net.png").exists()
    code, out, err = run(["test", "--model", str(tmp_path / "net.prototxt"), "--weights",
                          str(snap / "tiny_iter_6.caffemodel"), "--iterations", "2"], capsys)
    assert code == 0 and "loss = " in out


def test_syntax_error(project, capsys):
    tmp_path, solver = project
    write(tmp_path, "net.prototxt", TINY_NET.replace('type: "Input"', 'type: : "Input"'))
    code, out, err = run(["train", "--solver", solver], capsys)
    assert_one_line_error(code, err, "net.prototxt:3:")


def test_unknown_layer_type(project, capsys):
    tmp_path, solver = project
    write(tmp_path, "net.prototxt", TINY_NET.replace("InnerProduct", "InnerProdct"))
    code, out, err = run(["train", "--solver", solver], capsys)
    assert_one_line_error(code, err, "unknown layer type 'InnerProdct'", "InnerProduct")


def test_unknown_bottom(project, capsys):
    tmp_path, solver = project
    write(tmp_path, "net.prototxt", TINY_NET.replace('bottom: "x" top: "y"', 'bottom: "z" top: "y"'))
    code, out, err = run(["train", "--solver", solver], capsys)
    assert_one_line_error(code, err, "layer 'ip'", "unknown bottom blob 'z'")


def test_shape_mismatch(project, capsys):
    tmp_path, solver = project
    write(tmp_path, "net.prototxt", TINY_NET.replace("shape { dim: 8 dim: 2 }",
                                                     "shape { dim: 8 dim: 3 }"))
    code, out, err = run(["train", "--solver", solver], capsys)
    assert_one_line_error(code, err, "layer 'loss'", "(8, 2)", "(8, 3)")


def test_missing_files(project, capsys):
    tmp_path, solver = project
    code, out, err = run(["train", "--solver", str(tmp_path / "nope.prototxt")], capsys)
    assert_one_line_error(code, err, "nope.prototxt", "no such file")
    write(tmp_path, "solver.prototxt", SOLVER.replace("net.prototxt", "gone.prototxt"))
    code, out, err = run(["train", "--solver", solver], capsys)
    assert_one_line_error(code, err, "gone.prototxt")


def test_binary_file_as_solver(project, capsys):
    tmp_path, solver = project
    (tmp_path / "bin.prototxt").write_bytes(b"\x08\x96\x01\x00\x00\xff")
    code, out, err = run(["train", "--solver", str(tmp_path / "bin.prototxt")], capsys)
    assert_one_line_error(code, err, "binary file")


@pytest.mark.parametrize("change, fragment", [
    ('lr_policy: "fixed"', 'lr_policy: "step"'),
    ("momentum: 0.9", "momentum: 1.9"),
    ("base_lr: 0.01", "base_lr: -1"),
])
def test_bad_solver_values(project, capsys, change, fragment):
    tmp_path, solver = project
    write(tmp_path, "solver.prototxt", SOLVER.replace(change, fragment))
    code, out, err = run(["train", "--solver", solver], capsys)
    assert_one_line_error(code, err, "solver.prototxt")


def test_corrupt_snapshot(project, capsys):
    tmp_path, solver = project
    (tmp_path / "bad.solverstate").write_bytes(b"\xff\xff\xff\xff garbage")
    code, out, err = run(["train", "--solver", solver, "--snapshot",
                          str(tmp_path / "bad.solverstate")], capsys)
    assert_one_line_error(code, err, "bad.solverstate")


def test_console_entry_point_exit_code(tmp_path):
    """Through a real process: exit status 2 and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "layergraph", "train", "--solver",
                           str(tmp_path / "missing.prototxt")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no such file" in proc.stderr


def test_sigint_writes_snapshot(project):
    """Ctrl-C during training: a snapshot is written and the process exits cleanly."""
    import signal
    import time
    tmp_path, _ = project
    solver = write(tmp_path, "long.prototxt", SOLVER.replace("max_iter: 6", "max_iter: 10000000")
                   .replace("snapshot: 3", "snapshot: 0"))
    proc = subprocess.Popen([sys.executable, "-m", "layergraph", "train", "--solver", solver,
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    log = tmp_path / "snap" / "tiny_log.jsonl"
    while time.time() < deadline and not log.exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert list((tmp_path / "snap").glob("tiny_iter_*.solverstate"))
