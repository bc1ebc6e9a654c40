"""The solver on a kernel backend (kernels/solver_update.cu) against the NumPy
path: every solver type, L2/L1/no decay, iter_size 1 and 2, lr_mult 0/1/2 and
decay_mult 0/1/2 on different blobs, clipping on and off -- the weights, the
history and the gradient left in the diffs agree after a few steps.  Also:
snapshots move between backends, and ``solver_mode: GPU`` without a GPU is
a one-line GPUError."""
import numpy as np
import pytest

from layergraph import Layer, Solver, register_layer
from layergraph import backend as backend_module
from layergraph.backend import to_numpy
from layergraph.errors import GPUError
from layergraph.proto import pb
from layergraph.prototxt import parse_text

N, D, H, K = 4, 37, 5, 3   # ip1 weights: 185 values, more than the emulation's grid * block


def batch(k):
    rng = np.random.default_rng(2000 + k)
    return (rng.standard_normal((N, D)).astype(np.float32),
            rng.standard_normal((N, K)).astype(np.float32))


@register_layer("SolverBackendFeed")
class SolverBackendFeed(Layer):
    """Emits batch k on its k-th forward (x, target), on the net's backend."""
    exact_bottoms = 0
    exact_tops = 2
    has_backward = False

    def setup(self, bottom, top):
        self.k = 0

    def reshape(self, bottom, top):
        top[0].reshape((N, D))
        top[1].reshape((N, K))

    def forward(self, bottom, top):
        x, t = batch(self.k)
        top[0].data[...] = self.xp.asarray(x)
        top[1].data[...] = self.xp.asarray(t)
        self.k += 1

    def state_dict(self):
        return dict(super().state_dict(), k=self.k)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.k = state["k"]


NET = """
name: "two_layers"
layer { name: "data" type: "SolverBackendFeed" top: "x" top: "t" }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 5
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        param { lr_mult: 0 } param { lr_mult: 1 decay_mult: 2 }
        inner_product_param { num_output: 3
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: -0.2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""

TYPES = {
    "SGD": 'type: "SGD" base_lr: 0.05 momentum: 0.9',
    "Nesterov": 'type: "Nesterov" base_lr: 0.05 momentum: 0.8',
    "AdaGrad": 'type: "AdaGrad" base_lr: 0.1 delta: 1e-6',
    "RMSProp": 'type: "RMSProp" base_lr: 0.01 rms_decay: 0.95 delta: 1e-6',
    "AdaDelta": 'type: "AdaDelta" base_lr: 1.0 momentum: 0.95 delta: 1e-6',
    "Adam": 'type: "Adam" base_lr: 0.01 momentum: 0.9 momentum2: 0.999 delta: 1e-8',
}
DECAY = {"L2": 'weight_decay: 0.02 regularization_type: "L2"',
         "L1": 'weight_decay: 0.02 regularization_type: "L1"',
         "none": "weight_decay: 0"}


def make_solver(text, tmp_path, backend):
    param = parse_text(text, pb.SolverParameter())
    param.train_net_param.CopyFrom(parse_text(NET, pb.NetParameter()))
    param.test_net_param.add().CopyFrom(parse_text(NET, pb.NetParameter()))
    param.test_iter.append(2)
    param.snapshot_prefix = str(tmp_path / "snap")
    param.random_seed = 5
    param.lr_policy = param.lr_policy or "step"
    if param.lr_policy == "step":
        param.gamma, param.stepsize = 0.5, 2
    return Solver(param, log=None, backend=backend)


def state(solver):
    """name -> host copy of every parameter, its diff and the history."""
    out = {}
    for i, blob in enumerate(solver.net.learnable_params):
        out[f"param{i}"] = to_numpy(blob.data).copy()
        out[f"diff{i}"] = to_numpy(blob.diff).copy()
    for k, h in enumerate(solver.history):
        out[f"history{k}"] = to_numpy(h).copy()
    return out


def assert_states_match(got, want, what=""):
    assert got.keys() == want.keys()
    for key in want:
        scale = float(np.abs(want[key]).max(initial=0.0))
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6 * scale + 1e-12,
                                   err_msg=f"{what} {key}")


@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
@pytest.mark.parametrize("iter_size", [1, 2])
@pytest.mark.parametrize("decay", sorted(DECAY))
@pytest.mark.parametrize("kind", sorted(TYPES))
def test_update_matches_numpy(kernel_backend, kind, decay, iter_size, clip, tmp_path):
    text = f"{TYPES[kind]} {DECAY[decay]} iter_size: {iter_size}"
    if clip:
        text += " clip_gradients: 0.05"   # well below the gradient norm here
    cpu = make_solver(text, tmp_path / "cpu", "cpu")
    dev = make_solver(text, tmp_path / "dev", kernel_backend)
    assert dev.backend.kernels is not None and cpu.backend.kernels is None
    assert_states_match(state(dev), state(cpu), "initial")
    scales = []
    if clip:
        class Watch:
            def on_gradients_ready(self, s):
                scales.append(s.clip_scale())
        cpu.add_callback(Watch())
    for step in range(3):
        cpu.step(1)
        dev.step(1)
        assert_states_match(state(dev), state(cpu), f"step {step}")
    if clip:
        assert all(s is not None and s < 1 for s in scales), scales
    launches = dev.backend.launches
    dev.apply_update()
    # one fused launch per blob with lr_mult != 0 (3 of the 4)
    assert dev.backend.launches - launches == 3


@pytest.mark.parametrize("decay", sorted(DECAY))
@pytest.mark.parametrize("kind", sorted(TYPES))
def test_fused_update_rounds_like_numpy(kernel_backend, kind, decay, tmp_path):
    """apply_update alone, from the same weights and gradients: the kernel
    takes NumPy's float32 steps in NumPy's order (no FMA contraction), so on
    the emulation the results are bit for bit the NumPy path's.  (On a GPU
    the clipping norm is summed in another order: tolerance there.)"""
    rng = np.random.default_rng(11)
    for iter_size, clip in [(1, ""), (2, ""), (3, " clip_gradients: 0.05")]:
        text = f"{TYPES[kind]} {DECAY[decay]} iter_size: {iter_size}{clip}"
        solvers = [make_solver(text, tmp_path / name, name) for name in ("cpu", kernel_backend)]
        weights = [rng.standard_normal(b.shape).astype(np.float32)
                   for b in solvers[0].net.learnable_params]
        for w in weights:
            w.ravel()[::7] = 0.0          # sign(0) = 0 for L1
        for solver in solvers:
            for blob, w in zip(solver.net.learnable_params, weights):
                blob.data[...] = solver.backend.xp.asarray(w)
        for _ in range(3):
            grads = [rng.standard_normal(w.shape).astype(np.float32) for w in weights]
            for solver in solvers:
                for blob, g in zip(solver.net.learnable_params, grads):
                    blob.diff[...] = solver.backend.xp.asarray(g)
                solver.apply_update()
            want, got = state(solvers[0]), state(solvers[1])
            for key in want:
                if kernel_backend == "emu":
                    np.testing.assert_array_equal(got[key], want[key], err_msg=f"{text}: {key}")
                else:
                    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-9,
                                               err_msg=f"{text}: {key}")


def test_frozen_blob_is_clipped_but_not_updated(kernel_backend, tmp_path):
    text = f"{TYPES['SGD']} {DECAY['L2']} iter_size: 2 clip_gradients: 0.05"
    cpu = make_solver(text, tmp_path / "cpu", "cpu")
    dev = make_solver(text, tmp_path / "dev", kernel_backend)
    frozen = dev.net.params_lr.index(0)
    w0 = to_numpy(dev.net.learnable_params[frozen].data).copy()
    for solver in (cpu, dev):
        solver.step(2)
    assert_states_match(state(dev), state(cpu))
    np.testing.assert_array_equal(to_numpy(dev.net.learnable_params[frozen].data), w0)


def test_test_net_outputs_come_to_the_host(kernel_backend, tmp_path):
    cpu = make_solver(TYPES["SGD"], tmp_path / "cpu", "cpu")
    dev = make_solver(TYPES["SGD"], tmp_path / "dev", kernel_backend)
    cpu.step(1)
    dev.step(1)
    want, got = cpu.test(0), dev.test(0)
    assert isinstance(got["loss"], float)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


@pytest.mark.parametrize("direction", ["device_to_cpu", "cpu_to_device"])
def test_snapshot_moves_between_backends(kernel_backend, direction, tmp_path):
    text = (f"{TYPES['Adam']} {DECAY['L1']} iter_size: 2 clip_gradients: 0.5 "
            f"max_iter: 10 lr_policy: \"fixed\"")
    first, second = (kernel_backend, "cpu") if direction == "device_to_cpu" \
        else ("cpu", kernel_backend)
    straight = make_solver(text, tmp_path / "a", first)
    straight.step(3)
    _, state_path = straight.snapshot()
    resumed = make_solver(text, tmp_path / "b", second)
    resumed.restore(state_path)
    assert resumed.iter == 3
    assert_states_match({k: v for k, v in state(resumed).items() if "diff" not in k},
                        {k: v for k, v in state(straight).items() if "diff" not in k},
                        "restored")
    straight.step(2)
    resumed.step(2)
    assert resumed.iter == straight.iter == 5
    assert_states_match(state(resumed), state(straight), "continued")


def _no_gpu(monkeypatch):
    monkeypatch.setattr(backend_module, "gpu_status",
                        lambda: (False, "no CUDA device found"))
    for key in [k for k in backend_module._backends if k.startswith("gpu")]:
        monkeypatch.delitem(backend_module._backends, key)


@pytest.mark.parametrize("device_id", [0, 1])
def test_solver_mode_gpu_without_gpu_falls_back(monkeypatch, tmp_path, device_id):
    """solver_mode: GPU is a preference (Caffe's own solver files say GPU):
    no GPU means the CPU, and one line saying why."""
    _no_gpu(monkeypatch)
    param = parse_text(f"{TYPES['SGD']} solver_mode: GPU device_id: {device_id}",
                       pb.SolverParameter())
    param.train_net_param.CopyFrom(parse_text(NET, pb.NetParameter()))
    param.snapshot_prefix = str(tmp_path / "snap")
    lines = []
    solver = Solver(param, log=lines.append)
    assert solver.backend.name == "cpu"
    notes = [line for line in lines if "solver_mode: GPU" in line]
    assert len(notes) == 1 and "\n" not in notes[0] and "no CUDA device found" in notes[0]
    solver.step(1)


@pytest.mark.parametrize("device_id", [0, 1])
def test_gpu_backend_without_gpu_is_one_line_error(monkeypatch, tmp_path, device_id):
    _no_gpu(monkeypatch)
    with pytest.raises(GPUError) as info:
        make_solver(TYPES["SGD"], tmp_path, f"gpu:{device_id}")
    message = str(info.value)
    assert "\n" not in message
    assert f"GPU {device_id}" in message and "no CUDA device found" in message


def test_backend_argument_wins_over_solver_mode(monkeypatch, tmp_path):
    _no_gpu(monkeypatch)
    solver = make_solver(f"{TYPES['SGD']} solver_mode: GPU", tmp_path, "emu")
    assert solver.backend.name == "emu"
    assert all(net.backend is solver.backend for net in [solver.net, *solver.test_nets])
    assert make_solver(f"{TYPES['SGD']} solver_mode: CPU", tmp_path, None).backend.name == "cpu"
