"""The device switch from the command line: `layergraph device`, --gpu and
--backend, and the one-line messages when no GPU can be used."""
import subprocess
import sys

import pytest

from layergraph import backend as backend_mod
from layergraph.backend import get_backend, gpu_status
from layergraph.cli import gpu_error_message, main
from layergraph.errors import GPUError

NO_GPU = not gpu_status()[0]


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "layergraph", *args], capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_device_without_gpu_is_one_line():
    rc, out, err = run_cli("device")
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("layergraph: error: no GPU:")
    assert "Traceback" not in err


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("command", [
    ["test", "--model", "m.prototxt", "--weights", "w.caffemodel", "--gpu", "0"],
    ["time", "--model", "m.prototxt", "--gpu", "0"],
    ["train", "--solver", "s.prototxt", "--gpu", "0"],
])
def test_gpu_flag_without_gpu_is_one_line(command):
    rc, out, err = run_cli(*command)
    assert rc == 2
    assert err.count("\n") == 1 and "cannot use GPU 0" in err
    assert "Traceback" not in err


def test_bad_backend_names():
    with pytest.raises(GPUError, match="unknown backend 'tpu'"):
        get_backend("tpu")
    with pytest.raises(GPUError, match="bad GPU id"):
        get_backend("gpu:x")


def test_missing_cupy_names_the_extra(monkeypatch):
    monkeypatch.setattr(backend_mod, "_cupy", None)
    monkeypatch.setattr(backend_mod, "_cupy_error", ModuleNotFoundError("No module named 'cupy'"))
    ok, why = gpu_status()
    assert not ok and "CuPy is not installed" in why and '.[gpu]' in why
    with pytest.raises(GPUError, match="cannot use GPU 3: CuPy is not installed"):
        get_backend("gpu:3")


def test_cupy_errors_become_one_line():
    OutOfMemoryError = type("OutOfMemoryError", (Exception,), {"__module__": "cupy.cuda.memory"})
    msg = gpu_error_message(OutOfMemoryError("Out of memory allocating 1,024 bytes\n(x)"))
    assert msg.startswith("out of GPU memory") and "\n" not in msg
    assert gpu_error_message(ValueError("not ours")) is None


def test_time_runs_on_the_emulated_kernels(tmp_path, capsys):
    model = tmp_path / "net.prototxt"
    model.write_text('''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "sig" type: "Sigmoid" bottom: "y" top: "z" }
''')
    before = get_backend("emu").launches
    assert main(["time", "--model", str(model), "--iterations", "2", "--backend", "emu"]) == 0
    assert "Average forward-backward" in capsys.readouterr().out
    assert get_backend("emu").launches > before


def test_time_fills_label_inputs_with_valid_labels(tmp_path, capsys):
    """Regression: `time` filled Input blobs with Gaussian values, so a net
    whose labels come from an Input (Caffe's LeNet deploy style) stopped at
    'label -2 out of range'.  U[0, 1) truncates to class 0."""
    model = tmp_path / "net.prototxt"
    model.write_text('''
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
''')
    assert main(["time", "--model", str(model), "--iterations", "2"]) == 0
    assert "Average forward-backward" in capsys.readouterr().out
