"""Structure and data layers on the kernel path (kernels/slice.cu, concat.cu,
split.cu, eltwise.cu, dropout.cu, data_sequence.cu) against the NumPy path,
forward and backward on awkward sizes; Dropout's mask against its NumPy twin;
the Data layer's pinned-memory GPU feed driven through a stand-in for CuPy."""
import threading
import time
import types

import numpy as np
import pytest

from layergraph.backend import Backend, get_backend, to_numpy
from layergraph.blob import Blob
from layergraph.kernels import uniform_hash
from layergraph.layers.data_sequence import _row_hash
from layergraph.proto import pb
from layergraph.testing import compare_backends, make_layer, setup_layer

RNG = np.random.default_rng(11)


def normal(*shape):
    return RNG.standard_normal(shape)


# ----------------------------------------------------------------- Slice ---

@pytest.mark.parametrize("params, shape, tops", [
    ("axis: 0", (6, 5, 3), 2),
    ("axis: 0 slice_point: 1 slice_point: 4", (7, 3, 7), 3),
    ("axis: 1 slice_point: 2 slice_point: 3", (3, 7, 5, 2), 3),
    ("axis: 1 slice_point: 129", (1, 131), 2),                       # wraps the emu grid
    ("axis: 2 slice_point: 1 slice_point: 2 slice_point: 4", (2, 3, 5, 3), 4),
    ("axis: -1", (5, 3, 6), 3),
    ("slice_dim: 0", (4, 37), 2),
    ("axis: 1", (2, 1, 3), 1),                                       # a single top
])
def test_slice_matches_numpy(kernel_backend, params, shape, tops):
    compare_backends(f'type: "Slice" slice_param {{ {params} }}', [normal(*shape)],
                     backend=kernel_backend, num_tops=tops, iterations=2)


# ---------------------------------------------------------------- Concat ---

@pytest.mark.parametrize("params, axis, sizes, shape", [
    ("axis: 0", 0, (1, 2, 3), (5, 7)),
    ("", 1, (2, 5), (3, 0, 4, 3)),
    ("axis: 2", 2, (1, 3, 2, 1), (2, 3, 0, 5)),
    ("axis: -1", 3, (129, 2), (1, 1, 1, 0)),
    ("concat_dim: 1", 1, (7,), (3, 0, 2)),                            # a single bottom
])
def test_concat_matches_numpy(kernel_backend, params, axis, sizes, shape):
    xs = [normal(*(shape[:axis] + (k,) + shape[axis + 1:])) for k in sizes]
    compare_backends(f'type: "Concat" concat_param {{ {params} }}', xs, backend=kernel_backend,
                     iterations=2)


def test_concat_backward_respects_propagate_down(kernel_backend):
    xs = [normal(2, 3, 5), normal(2, 4, 5), normal(2, 1, 5)]
    compare_backends('type: "Concat"', xs, backend=kernel_backend,
                     propagate=[True, False, True])


# ----------------------------------------------------------------- Split ---

@pytest.mark.parametrize("tops", [1, 2, 3, 5])
def test_split_matches_numpy(kernel_backend, tops):
    compare_backends('type: "Split"', [normal(3, 7, 7)], backend=kernel_backend, num_tops=tops,
                     iterations=2, rtol=0, atol=0)  # same summation order: bit for bit


# --------------------------------------------------------------- Eltwise ---

ELTWISE = ["operation: SUM", "operation: SUM coeff: 0.5 coeff: -2 coeff: 3",
           "operation: PROD", "operation: PROD stable_prod_grad: false", "operation: MAX"]


def away_from_zero(*shape):
    x = normal(*shape)
    return np.where(np.abs(x) < 0.1, 0.5, x)  # PROD's unstable gradient divides by x


@pytest.mark.parametrize("params", ELTWISE)
@pytest.mark.parametrize("count, shape", [(3, (3, 7, 7)), (2, (1,)), (4, (131,))])
def test_eltwise_matches_numpy(kernel_backend, params, count, shape):
    if "coeff" in params and count != 3:
        pytest.skip("the coeff list is for three bottoms")
    xs = [away_from_zero(*shape) for _ in range(count)]
    compare_backends(f'type: "Eltwise" eltwise_param {{ {params} }}', xs,
                     backend=kernel_backend, iterations=2)


def test_eltwise_max_ties_and_partial_propagation(kernel_backend):
    ints = [RNG.integers(0, 3, (5, 29)).astype(np.float64) for _ in range(3)]  # many ties
    compare_backends('type: "Eltwise" eltwise_param { operation: MAX }', ints,
                     backend=kernel_backend, rtol=0, atol=0)
    for params in ELTWISE:
        compare_backends(f'type: "Eltwise" eltwise_param {{ {params} }}',
                         [away_from_zero(4, 5) for _ in range(3)], backend=kernel_backend,
                         propagate=[False, True, False])


@pytest.mark.parametrize("params", ["operation: SUM coeff: 2 coeff: -1", "operation: PROD",
                                    "operation: PROD stable_prod_grad: false",
                                    "operation: MAX"])
def test_eltwise_in_place_matches_numpy(kernel_backend, params):
    xs = [away_from_zero(3, 43).astype(np.float32) for _ in range(2)]
    dy = normal(3, 43).astype(np.float32)
    out = {}
    for name in ("cpu", kernel_backend):
        be = get_backend(name)
        layer = make_layer(f'type: "Eltwise" eltwise_param {{ {params} }}', dtype=np.float32,
                           backend=be)
        bottom = []
        for x in xs:
            b = Blob(x.shape, dtype=np.float32, xp=be.xp)
            b.data[...] = be.xp.asarray(x)
            bottom.append(b)
        top = [bottom[1]]  # the top is the second bottom
        layer.setup(bottom, top)
        runs = []
        for _ in range(2):
            bottom[1].data[...] = be.xp.asarray(xs[1])
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            y = to_numpy(top[0].data).copy()
            top[0].diff[...] = be.xp.asarray(dy)
            layer.backward(top, [True, True], bottom)
            runs.append((y, to_numpy(bottom[0].diff).copy(), to_numpy(bottom[1].diff).copy()))
        out[name] = runs
    for want, got in zip(out["cpu"], out[kernel_backend]):
        for a, b in zip(want, got):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------- Dropout ---

def dropout_run(backend, ratio, x, dy, seed=0, in_place=False, steps=1, state=None):
    """Forward/backward ``steps`` times; returns the layer and [(y, dx, seed)]."""
    be = get_backend(backend)
    layer = make_layer(f'name: "drop" type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}',
                       seed=seed, dtype=np.float32, backend=be)
    bottom, top = setup_layer(layer, [x])
    if in_place:
        top = bottom
    if state is not None:
        layer.load_state_dict(state)
    out = []
    for _ in range(steps):
        bottom[0].data[...] = be.xp.asarray(x)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        y = to_numpy(top[0].data).copy()
        top[0].diff[...] = be.xp.asarray(dy)
        layer.backward(top, [True], bottom)
        out.append((y, to_numpy(bottom[0].diff).copy(), layer.mask_seed))
    return layer, out


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.0, 0.9])
@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_mask_is_the_uniform_hash(kernel_backend, ratio, in_place):
    x = (normal(3, 7, 11) + 3).astype(np.float32)   # no zeros: y == 0 means dropped
    dy = normal(3, 7, 11).astype(np.float32)
    layer, runs = dropout_run(kernel_backend, ratio, x, dy, in_place=in_place, steps=2)
    scale = np.float32(layer.scale)   # 1 / (1 - p), p the proto's float32 ratio
    seeds = set()
    for y, dx, seed in runs:
        # the seed is the layer's reproducible draw: a fresh layer's rng() stream
        keep = uniform_hash(seed, np.arange(x.size)).reshape(x.shape) >= np.float32(layer.ratio)
        np.testing.assert_array_equal(y, x * (keep * scale).astype(np.float32))
        np.testing.assert_array_equal(dx, dy * (keep * scale).astype(np.float32))
        seeds.add(seed)
    assert len(seeds) == 2   # a new mask every forward
    twin = make_layer('name: "drop" type: "Dropout"', seed=0)
    assert [s for _, _, s in runs] == [int(twin.rng().integers(2**63)) for _ in runs]
    if 0 < ratio < 1:
        share = np.mean(runs[0][0] == 0)
        assert abs(share - ratio) < 0.1


def test_dropout_deterministic_and_resumable(kernel_backend):
    x = normal(5, 29).astype(np.float32)
    dy = normal(5, 29).astype(np.float32)
    _, a = dropout_run(kernel_backend, 0.4, x, dy, seed=3, steps=3)
    _, b = dropout_run(kernel_backend, 0.4, x, dy, seed=3, steps=3)
    _, c = dropout_run(kernel_backend, 0.4, x, dy, seed=4, steps=1)
    for (ya, da, _), (yb, db, _) in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(da, db)
    assert not np.array_equal(a[0][0], c[0][0])
    # resume after one step: the rng counter travels in the state
    first, _ = dropout_run(kernel_backend, 0.4, x, dy, seed=3, steps=1)
    _, rest = dropout_run(kernel_backend, 0.4, x, dy, seed=3, steps=2,
                          state=first.state_dict())
    for (ya, da, _), (yb, db, _) in zip(a[1:], rest):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(da, db)


@pytest.mark.parametrize("phase", [pb.TEST, pb.RUN])
def test_dropout_test_phase_is_identity(kernel_backend, phase):
    compare_backends('type: "Dropout" dropout_param { dropout_ratio: 0.7 }', [normal(3, 67)],
                     backend=kernel_backend, phase=phase, iterations=2, rtol=0, atol=0)


# ---------------------------------------------------------- DataSequence ---

def sequence_batches(n_batches, n=12, labels=(0, 1, 2, 3), shape=(1, 3, 3), seed=0):
    """Batches of distinct random images; every label at least twice a batch
    (the feeding of tests/test_data_sequence.py)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        y = np.concatenate([np.repeat(labels, 2), rng.choice(labels, n - 2 * len(labels))])
        out.append((rng.random((n,) + shape).astype(np.float32),
                    rng.permutation(y).astype(np.float32)))
    return out


def sequence_run(backend, params, tops, batches, seed=0, state=None):
    be = get_backend(backend)
    layer = make_layer(f'name: "seq" type: "DataSequence" data_sequence_param {{ {params} }}',
                       seed=seed, dtype=np.float32, backend=be)
    bottom = None
    out = []
    for data, labels in batches:
        if bottom is None:
            bottom, top = setup_layer(layer, [data, labels], tops)
            if state is not None:
                layer.load_state_dict(state)
        bottom[0].data[...] = be.xp.asarray(data)
        bottom[1].data[...] = be.xp.asarray(labels)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        out.append([to_numpy(t.data).copy() for t in top])
    return layer, out


SEQUENCES = [("k: 1 cache_size: 5", 4), ("k: 3 cache_size: 3", 6),
             ("k: 2 cache_size: 4 output_labels: false", 4),
             ("k: 0 balance_matches: true cache_size: 6", 3), ("k: 0", 3)]


@pytest.mark.parametrize("params, tops", SEQUENCES)
def test_data_sequence_matches_numpy_exactly(kernel_backend, params, tops):
    batches = sequence_batches(5)
    batches.append((batches[0][0].copy(), batches[0][1].copy()))  # images seen before
    _, want = sequence_run("cpu", params, tops, batches, seed=5)
    _, got = sequence_run(kernel_backend, params, tops, batches, seed=5)
    for w, g in zip(want, got):
        for a, b in zip(w, g):
            np.testing.assert_array_equal(b, a)


def test_data_sequence_big_items_and_first_seen_labels(kernel_backend):
    """Items bigger than the emulation's grid; a label met once (its own positive)."""
    rng = np.random.default_rng(3)
    batches = [(rng.random((7, 2, 9, 9)).astype(np.float32),
                np.array([0, 0, 1, 1, 5, 1, 0], np.float32)),
               (rng.random((7, 2, 9, 9)).astype(np.float32),
                np.array([2, 2, 1, 5, 5, 0, 7], np.float32))]
    for params, tops in SEQUENCES[:2]:
        _, want = sequence_run("cpu", params, tops, batches)
        _, got = sequence_run(kernel_backend, params, tops, batches)
        for w, g in zip(want, got):
            for a, b in zip(w, g):
                np.testing.assert_array_equal(b, a)


def test_data_sequence_compare_backends(kernel_backend):
    data, labels = sequence_batches(1, n=9, labels=(0, 1, 2))[0]
    compare_backends('type: "DataSequence" data_sequence_param { k: 2 cache_size: 3 }',
                     [data, labels], backend=kernel_backend, num_tops=5, iterations=3,
                     rtol=0, atol=0)


def test_data_sequence_resume_across_backends(kernel_backend):
    batches = sequence_batches(6)
    _, full = sequence_run("cpu", "k: 2 cache_size: 4", 5, batches, seed=11)
    for first, then in (("cpu", kernel_backend), (kernel_backend, "cpu"),
                        (kernel_backend, kernel_backend)):
        layer, _ = sequence_run(first, "k: 2 cache_size: 4", 5, batches[:3], seed=11)
        _, rest = sequence_run(then, "k: 2 cache_size: 4", 5, batches[3:], seed=11,
                               state=layer.state_dict())
        for w, g in zip(full[3:], rest):
            for a, b in zip(w, g):
                np.testing.assert_array_equal(b, a)


def test_data_sequence_errors_on_the_kernel_path(kernel_backend):
    from layergraph.errors import LayerError
    rng = np.random.default_rng(1)
    x = rng.random((6, 1, 2, 2)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 5, 1], np.float32)
    with pytest.raises(LayerError, match="label 5 has a single distinct image"):
        sequence_run(kernel_backend, "k: 1", 4, [(x, y), (x, y)])
    with pytest.raises(LayerError, match="label 3 is outside"):
        sequence_run(kernel_backend, "k: 1 label_count: 2", 4,
                     [(x[:4], np.array([0, 0, 1, 3], np.float32))])


def test_data_sequence_hash_kernel_matches_its_numpy_twin():
    emu = get_backend("emu")
    x = RNG.standard_normal((5, 301)).astype(np.float32)
    x[3] = x[1]
    x[4] = x[1]
    x[4, 300] = -x[4, 300]                       # one element differs
    labels = np.array([0.4, 1.6, 2.5, -3.0, 7.0], np.float32)
    out = np.empty(10, np.int64)
    emu.launch("data_sequence_hash", (5, 301, x.view(np.uint32), labels, out), grid=5,
               shared=8 * emu.block)
    hashes = out[:5].view(np.uint64)
    np.testing.assert_array_equal(hashes, _row_hash(x))
    np.testing.assert_array_equal(out[5:], np.rint(labels).astype(np.int64))
    assert hashes[3] == hashes[1] and len(set(hashes.tolist())) == 4


# ------------------------------------------ Data: the GPU feed, stood in ---

class _Device:
    """A GPU that lags as far as it may: every copy (host-to-device and
    device-to-device, on any stream) is queued and runs, in issue order, only
    when the host waits for an event recorded after it (or at ``drain``).
    Issue order respects every stream dependency, so this is a schedule a
    real GPU may follow; a pinned buffer the host overwrites before its
    queued copy ran delivers the wrong batch."""

    def __init__(self):
        self.lock = threading.RLock()
        self.queued = []      # callables, in issue order
        self.done = 0

    def issue(self, op):
        with self.lock:
            self.queued.append(op)

    def run_until(self, position):
        with self.lock:
            while self.done < position:
                self.queued[self.done]()
                self.done += 1

    def drain(self):
        self.run_until(len(self.queued))


class _Event:
    def __init__(self, device):
        self.device = device
        self.position = len(device.queued)

    def synchronize(self):
        self.device.run_until(self.position)


class _Stream:
    device = None

    def __init__(self, non_blocking=False):
        pass

    def record(self):
        with self.device.lock:
            return _Event(self.device)

    def wait_event(self, event):
        assert isinstance(event, _Event)  # a device-side wait: the queue's order has it


class _DeviceArray(np.ndarray):
    def set(self, host, stream=None):
        assert isinstance(stream, _Stream) and host.shape == self.shape
        _Stream.device.issue(lambda: np.ndarray.__setitem__(self, Ellipsis, host))

    def __setitem__(self, index, value):
        if isinstance(value, _DeviceArray):  # a device-to-device copy: queued too
            _Stream.device.issue(lambda: np.ndarray.__setitem__(self, index, value))
        else:
            np.ndarray.__setitem__(self, index, value)


class _StandInCupy(types.ModuleType):
    """NumPy dressed as the few CuPy calls the Data layer's GPU feed makes,
    on the lagging :class:`_Device`."""

    def __init__(self):
        super().__init__("standin_cupy")
        self.cuda = types.SimpleNamespace(
            Stream=_Stream, get_current_stream=_Stream,
            alloc_pinned_memory=lambda nbytes: bytearray(nbytes),
            runtime=types.SimpleNamespace(memGetInfo=lambda: (1 << 34, 1 << 34)))

    def empty(self, shape, dtype):
        return np.empty(shape, dtype).view(_DeviceArray)

    def zeros(self, shape, dtype=float):
        return np.zeros(shape, dtype).view(_DeviceArray)

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def toy_db(tmp_path, monkeypatch):
    from layergraph.imagedb import store
    monkeypatch.setenv("LAYERGRAPH_DB", str(tmp_path / "db"))
    rng = np.random.default_rng(42)
    with store.DatasetWriter("TOY") as w:
        w.add("training", rng.integers(0, 256, (23, 1, 5, 4), dtype=np.uint8),
              np.arange(23) % 4)
    return "TOY.training"


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_data_gpu_feed_gives_the_cpu_batches(toy_db, prefetch):
    spec = (f'name: "data" type: "Data" top: "data" top: "label" '
            f'transform_param {{ mirror: true scale: 0.5 }} data_param {{ source: "{toy_db}" '
            f'batch_size: 6 backend: IMAGEDB enable_random_selection: true '
            f'prefetch: {prefetch} }}')
    device = _Stream.device = _Device()
    out = {}
    for name, backend in (("cpu", None), ("gpu", Backend("gpu", _StandInCupy()))):
        layer = make_layer(spec, dtype=np.float32, backend=backend)
        _, top = setup_layer(layer, [], 2)
        got = []
        for step in range(12):
            if step == 8:  # resume from an earlier state: the stream restarts
                state = layer.state_dict()
                state["batch"] = 2
                layer.load_state_dict(state)
            layer.forward([], top)
            if backend is None:
                got.append([t.data.copy() for t in top])
                continue
            snapshot = [np.empty(t.shape, t.data.dtype) for t in top]
            for t, copy in zip(top, snapshot):   # read the tops when the device gets there
                device.issue(lambda t=t, copy=copy: copy.__setitem__(Ellipsis, t.data))
            got.append(snapshot)
            time.sleep(0.003)  # "compute": the prefetch thread runs ahead
        device.drain()
        layer.close()
        out[name] = got
    for want, have in zip(out["cpu"], out["gpu"]):
        for a, b in zip(want, have):
            np.testing.assert_array_equal(b, a)
