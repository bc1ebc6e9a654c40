"""Softmax, SoftmaxWithLoss, EuclideanLoss, Normalize (kernels/softmax.cu,
euclidean_loss.cu, normalize.cu) and the array-only layers Flatten, Reshape,
Input, Silence, Debug, Python on the kernel backends, against the NumPy path:
forward and backward, every option, on awkward sizes (rows 1, 7, 130 --
more than the emulation's grid of 4 blocks; features 1, 3, 10, 33 -- more
than its 32-thread block)."""
import numpy as np
import pytest

from layergraph.backend import get_backend, to_numpy
from layergraph.errors import LayerError
from layergraph.testing import compare_backends, make_layer, setup_layer

RNG = np.random.default_rng(11)
ROWS = [1, 7, 130]
FEATURES = [1, 3, 10, 33]


def _normal(*shape, scale=3.0):
    return RNG.standard_normal(shape) * scale


# --------------------------------------------------------------- Softmax --
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("features", FEATURES)
def test_softmax_rows(kernel_backend, rows, features):
    compare_backends('type: "Softmax"', [_normal(rows, features)], backend=kernel_backend,
                     iterations=2)


@pytest.mark.parametrize("axis,shape", [(1, (2, 5, 3, 2)), (0, (7, 3)), (-1, (3, 2, 33)),
                                        (2, (2, 3, 5, 1)), (1, (1, 1))])
def test_softmax_axis(kernel_backend, axis, shape):
    compare_backends(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [_normal(*shape)],
                     backend=kernel_backend)


def test_softmax_large_inputs(kernel_backend):
    """The maximum is subtracted first: no overflow at +-1000."""
    x = np.array([[0.0, 1000.0, -1000.0], [5.0, 5.0, 5.0]])
    compare_backends('type: "Softmax"', [x], backend=kernel_backend)


def _in_place(spec, x, backend):
    """(y, dx) of a layer run with top is bottom."""
    out = {}
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    for name in ("cpu", backend):
        be = get_backend(name)
        layer = make_layer(spec, dtype=np.float32, backend=be)
        bottom, _ = setup_layer(layer, [x.astype(np.float32)])
        layer.reshape(bottom, bottom)
        layer.forward(bottom, bottom)
        y = to_numpy(bottom[0].data).copy()
        bottom[0].diff[...] = be.xp.asarray(dy)
        layer.backward(bottom, [True], bottom)
        out[name] = (y, to_numpy(bottom[0].diff).copy())
    for got, want in zip(out[backend], out["cpu"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_softmax_in_place(kernel_backend):
    _in_place('type: "Softmax"', _normal(7, 10), kernel_backend)


# ------------------------------------------------------- SoftmaxWithLoss --
NORMALIZATIONS = ["", "loss_param { normalization: VALID }",
                  "loss_param { normalization: BATCH_SIZE }", "loss_param { normalization: FULL }",
                  "loss_param { normalization: NONE }", "loss_param { normalize: true }",
                  "loss_param { normalize: false }"]


def _labels(shape, classes, ignore=None, fraction=0.3):
    labels = RNG.integers(0, classes, size=shape).astype(np.float64)
    if ignore is not None:
        labels[RNG.random(shape) < fraction] = ignore
    return labels


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("features", FEATURES)
def test_softmax_loss_rows(kernel_backend, rows, features):
    x = _normal(rows, features)
    compare_backends('type: "SoftmaxWithLoss"', [x, _labels((rows,), features)],
                     backend=kernel_backend, iterations=2)


@pytest.mark.parametrize("norm", NORMALIZATIONS)
@pytest.mark.parametrize("ignore", [None, -1, 2])
def test_softmax_loss_normalization_and_ignore(kernel_backend, norm, ignore):
    lp = norm
    if ignore is not None:
        lp = (norm[:-1] if norm else "loss_param { ") + f" ignore_label: {ignore} }}"
    x = _normal(130, 3)
    labels = _labels((130,), 3, ignore)
    compare_backends(f'type: "SoftmaxWithLoss" {lp}', [x, labels], backend=kernel_backend)


def test_softmax_loss_all_ignored(kernel_backend):
    """No counted position: loss 0 and zero gradients (VALID clamps Z to 1)."""
    x = _normal(7, 3)
    compare_backends('type: "SoftmaxWithLoss" loss_param { ignore_label: 1 }',
                     [x, np.ones(7)], backend=kernel_backend)


@pytest.mark.parametrize("axis,shape,label_shape", [
    (1, (2, 5, 3, 2), (2, 1, 3, 2)),      # N x C x H x W, Caffe's segmentation layout
    (2, (2, 3, 33), (2, 3)),
    (-1, (7, 10), (7,)),
    (0, (10, 7), (7,))])
@pytest.mark.parametrize("norm", ["", "loss_param { normalization: FULL ignore_label: 0 }"])
def test_softmax_loss_axis(kernel_backend, axis, shape, label_shape, norm):
    classes = shape[axis]
    labels = _labels(label_shape, classes)
    compare_backends(f'type: "SoftmaxWithLoss" softmax_param {{ axis: {axis} }} {norm}',
                     [_normal(*shape), labels], backend=kernel_backend)


def test_softmax_loss_probability_top_and_loss_weight(kernel_backend):
    """top[1] carries p; the top diff (the loss weight) scales the gradient."""
    x, labels = _normal(7, 10), _labels((7,), 10)
    compare_backends('type: "SoftmaxWithLoss"', [x, labels], backend=kernel_backend,
                     num_tops=2, iterations=2)
    compare_backends('type: "SoftmaxWithLoss"', [x, labels], backend=kernel_backend,
                     top_diffs=[np.float32(2.5)])


def test_softmax_loss_fractional_and_confident_labels(kernel_backend):
    """Labels are truncated as astype(int64) does; confident wrong scores
    give a large finite loss."""
    x = np.array([[0.0, 1000.0, -1000.0], [1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    labels = np.array([2.0, 1.7, -0.5])
    compare_backends('type: "SoftmaxWithLoss"', [x, labels], backend=kernel_backend)


@pytest.mark.parametrize("label", [3.0, -1.0, 7.0])
def test_softmax_loss_label_out_of_range(kernel_backend, label):
    layer = make_layer('type: "SoftmaxWithLoss"', dtype=np.float32,
                       backend=get_backend(kernel_backend))
    bottom, top = setup_layer(layer, [np.zeros((3, 3)), np.array([0.0, label, 1.0])])
    with pytest.raises(LayerError, match=rf"label {int(label)} out of range \[0, 3\)"):
        layer.forward(bottom, top)
    # an ignored label may be anything
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 }',
                       dtype=np.float32, backend=get_backend(kernel_backend))
    bottom, top = setup_layer(layer, [np.zeros((3, 3)), np.array([0.0, 7.0, 1.0])])
    layer.forward(bottom, top)


# --------------------------------------------------------- EuclideanLoss --
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("features", FEATURES)
def test_euclidean_loss_rows(kernel_backend, rows, features):
    compare_backends('type: "EuclideanLoss"', [_normal(rows, features), _normal(rows, features)],
                     backend=kernel_backend, iterations=2)


@pytest.mark.parametrize("propagate", [[True, False], [False, True], [True, True]])
def test_euclidean_loss_shapes_and_propagation(kernel_backend, propagate):
    a, b = _normal(7, 33), _normal(7, 33, 1, 1)
    compare_backends('type: "EuclideanLoss"', [a, b], backend=kernel_backend,
                     propagate=propagate, top_diffs=[np.float32(0.7)])


def test_euclidean_loss_empty_batch(kernel_backend):
    report = compare_backends('type: "EuclideanLoss"', [np.zeros((0, 3)), np.zeros((0, 3))],
                              backend=kernel_backend)
    assert report["iter0.top[0]"] == 0


# ------------------------------------------------------------- Normalize --
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("features", FEATURES)
def test_normalize_rows(kernel_backend, rows, features):
    compare_backends('type: "Normalize"', [_normal(rows, features)], backend=kernel_backend,
                     iterations=2)


@pytest.mark.parametrize("spec", ['type: "Normalize"',
                                  'type: "Normalize" normalize_param { eps: 0.5 }',
                                  'type: "Normalize" normalize_param { eps: 0 }'])
def test_normalize_options_and_shapes(kernel_backend, spec):
    compare_backends(spec, [_normal(7, 3, 2, 2)], backend=kernel_backend)
    compare_backends(spec, [_normal(5)], backend=kernel_backend)  # one value per item


def test_normalize_zero_row(kernel_backend):
    """A zero item: r = sqrt(eps), y = 0 (default eps keeps it finite)."""
    x = _normal(3, 10)
    x[1] = 0
    compare_backends('type: "Normalize"', [x], backend=kernel_backend)


def test_normalize_in_place(kernel_backend):
    _in_place('type: "Normalize"', _normal(7, 33), kernel_backend)


# ------------------------------------------------ Flatten, Reshape, ... --
@pytest.mark.parametrize("spec,shape", [
    ('type: "Flatten"', (7, 3, 2, 5)),
    ('type: "Flatten" flatten_param { axis: 2 }', (2, 3, 5, 1)),
    ('type: "Flatten" flatten_param { axis: 0 end_axis: 1 }', (7, 3, 2)),
    ('type: "Flatten" flatten_param { axis: -2 end_axis: -1 }', (1, 10, 33)),
    ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', (7, 3, 2, 5)),
    ('type: "Reshape" reshape_param { axis: 1 shape { dim: 2 dim: 5 } }', (130, 10)),
    ('type: "Reshape" reshape_param { axis: -1 shape { dim: 1 } }', (7, 3)),
    ('type: "Reshape" reshape_param { axis: 1 num_axes: 1 shape { dim: -1 dim: 1 } }',
     (3, 33, 2)),
])
def test_view_layers(kernel_backend, spec, shape):
    report = compare_backends(spec, [_normal(*shape)], backend=kernel_backend, iterations=2)
    assert "iter1.bottom_diff[0]" in report


def test_silence_and_input(kernel_backend):
    report = compare_backends('type: "Silence"', [_normal(7, 3), _normal(130)],
                              backend=kernel_backend, num_tops=0)
    assert "iter0.bottom_diff[1]" in report
    compare_backends('type: "Input" top: "a" top: "b" input_param { shape { dim: 7 dim: 3 } '
                     'shape { dim: 1 } }', [], backend=kernel_backend, num_tops=2)


# ---------------------------------------------------------------- Debug --
def test_debug_matches_numpy(kernel_backend):
    x, labels = _normal(7, 10), np.stack([np.arange(7.0), np.zeros(7)], 1)
    compare_backends('type: "Debug"', [x, labels], backend=kernel_backend, iterations=2)
    compare_backends('type: "Debug"', [x], backend=kernel_backend)


def test_debug_store_wraps_like_numpy(kernel_backend):
    """The ring buffer (kept on the device) holds the same items in the same
    order, across a wrap and a batch larger than the buffer."""
    stored = {}
    for name in ("cpu", kernel_backend):
        be = get_backend(name)
        layer = make_layer('type: "Debug" debug_param { max_stored: 10 }', dtype=np.float32,
                           backend=be)
        bottom, top = setup_layer(layer, [np.zeros((7, 3)), np.zeros(7)])
        history = []
        for step, n in enumerate([7, 7, 1, 13, 3]):
            x, labels = np.full((n, 3), step) + np.arange(n)[:, None], np.arange(n) + 10.0 * step
            bottom[0].reshape((n, 3))
            bottom[1].reshape((n,))
            bottom[0].data[...] = be.xp.asarray(x)
            bottom[1].data[...] = be.xp.asarray(labels)
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            history.append(layer.stored_embeddings())
        stored[name] = history
    for (e1, l1), (e2, l2) in zip(stored["cpu"], stored[kernel_backend]):
        np.testing.assert_array_equal(e1, e2)
        np.testing.assert_array_equal(l1, l2)


# --------------------------------------------------------------- Python --
USER_LAYER = '''
import numpy as np
from layergraph.blob import Blob

class Scale:
    """y = w * x**2 with one learned w; asserts it is handed NumPy arrays."""
    def setup(self, bottom, top):
        self.blobs.append(Blob((1,)))
        self.blobs[0].data[...] = 1.5
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)
    def forward(self, bottom, top):
        assert isinstance(bottom[0].data, np.ndarray)
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data ** 2
    def backward(self, top, propagate_down, bottom):
        assert isinstance(top[0].diff, np.ndarray)
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data ** 2).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = 2 * self.blobs[0].data[0] * bottom[0].data * top[0].diff
'''
PY_SPEC = 'type: "Python" python_param { module: "lg_user_layers" layer: "Scale" }'


@pytest.fixture
def user_layer(tmp_path, monkeypatch):
    (tmp_path / "lg_user_layers.py").write_text(USER_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return PY_SPEC


@pytest.mark.parametrize("host_copies", [False, True])
def test_python_layer(kernel_backend, user_layer, monkeypatch, host_copies):
    """The user's code gets NumPy arrays; with host copies (what a GPU
    backend uses, forced here on the emulation, against the direct CPU run)
    it gets copies that are written back: tops, bottom diffs, parameter
    diffs."""
    from layergraph.layers.python_layer import PythonLayer
    if host_copies:
        monkeypatch.setattr(PythonLayer, "_host",
                            property(lambda self: self.backend.name != "cpu"))
    report = compare_backends(user_layer, [_normal(7, 3)], backend=kernel_backend,
                              iterations=2, num_tops=1)
    assert "iter1.param_diff[0]" in report and "param[0]" in report
