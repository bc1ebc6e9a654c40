"""Metric-learning and accuracy layers on the kernel path (kernels/
contrastive_loss.cu, triplet_loss.cu, decode.cu, accuracy.cu) against the
NumPy path: every mode, forward and backward, on awkward sizes -- 1 row, 7
rows, 130 rows (more than the emulation's 4 x 32 threads, so the loops wrap)
-- and embedding sizes 1, 3 and 10."""
import json
import zlib

import numpy as np
import pytest

from layergraph.backend import get_backend, to_numpy
from layergraph.proto import pb
from layergraph.testing import compare_backends, make_layer, setup_layer

SIZES = [(1, 1), (7, 3), (130, 10)]          # (rows, embedding size)


def rng_for(*key):
    """A generator seeded by the test's parameters (stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def assert_close(report, limit=1e-3):
    """compare_backends scales its tolerance by the largest magnitude, which
    NOT_READY (1e30) makes meaningless: also bound the absolute differences
    (every other value in these tests is far below 1e3)."""
    worst = max(report.items(), key=lambda kv: kv[1])
    assert worst[1] <= limit, f"{worst[0]} differs by {worst[1]:.3g}"


# ------------------------------------------------------- ContrastiveLoss --
def pair_batch(rng, n, d, label_kind):
    a = rng.standard_normal((n, d))
    b = a + rng.uniform(0.2, 1.5, size=(n, 1)) * rng.standard_normal((n, d))
    if label_kind == "N":
        label = rng.integers(0, 2, size=n).astype(float)
    elif label_kind == "N1":
        # any non-zero value means similar
        label = rng.integers(0, 2, size=(n, 1)) * rng.uniform(0.5, 3, size=(n, 1))
    else:  # (N, 2): the two class labels of the pair
        label = rng.integers(0, 3, size=(n, 2)).astype(float)
    return a, b, label


def pair_margin(a, b, legacy, manhattan):
    """A margin that leaves about half of the pairs inside it."""
    diff = (a - b).reshape(len(a), -1)
    dist = np.abs(diff).sum(1) if manhattan else np.sqrt((diff * diff).sum(1))
    q = dist * dist if legacy else dist
    return round(float(np.median(q)) + 0.0123, 4)


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("label_kind", ["N", "N1", "N2"])
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("manhattan", [False, True])
def test_contrastive_matches_numpy(kernel_backend, n, d, label_kind, legacy, manhattan):
    a, b, label = pair_batch(rng_for(n, d, label_kind, legacy, manhattan), n, d, label_kind)
    margin = pair_margin(a, b, legacy, manhattan)
    opts = f"margin: {margin}" + (" legacy_version: true" if legacy else "") + \
        (" distance: MANHATTAN" if manhattan else "")
    spec = (f'type: "ContrastiveLoss" top: "loss" top: "matches" '
            f'contrastive_loss_param {{ {opts} output_matches: true }}')
    report = compare_backends(spec, [a, b, label], backend=kernel_backend, iterations=2)
    assert {"iter1.top[1]", "iter1.bottom_diff[0]", "iter1.bottom_diff[1]"} <= set(report)


@pytest.mark.parametrize("propagate", [[True, False, False], [False, True, False]])
def test_contrastive_one_top_normalization_none_and_partial_backward(kernel_backend, propagate):
    a, b, label = pair_batch(rng_for("none", propagate), 130, 3, "N")
    spec = ('type: "ContrastiveLoss" contrastive_loss_param { margin: 2.5 } '
            'loss_param { normalization: NONE }')
    compare_backends(spec, [a.reshape(130, 3, 1), b.reshape(130, 3, 1), label],
                     backend=kernel_backend, propagate=propagate)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("manhattan", [False, True])
def test_contrastive_no_active_term(kernel_backend, legacy, manhattan):
    """Dissimilar pairs beyond the margin: loss 0 and zero gradients; a
    dissimilar pair at distance 0 keeps a finite gradient."""
    rng = rng_for("far", legacy, manhattan)
    a = rng.standard_normal((7, 3))
    b = a + 10.0
    opts = "margin: 1" + (" legacy_version: true" if legacy else "") + \
        (" distance: MANHATTAN" if manhattan else "")
    spec = f'type: "ContrastiveLoss" contrastive_loss_param {{ {opts} }}'
    be = get_backend(kernel_backend)
    layer = make_layer(spec, dtype=np.float32, backend=be)
    bottom, top = setup_layer(layer, [a, b, np.zeros(7)])
    layer.forward(bottom, top)
    assert float(to_numpy(top[0].data)) == 0.0
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True, False], bottom)
    assert not np.any(to_numpy(bottom[0].diff)) and not np.any(to_numpy(bottom[1].diff))
    compare_backends(spec, [a, a.copy(), np.zeros(7)], backend=kernel_backend)  # d = 0


# ----------------------------------------------------------- TripletLoss --
def triplet_batch(rng, n, d):
    a = rng.standard_normal((n, d))
    p = a + 0.7 * rng.standard_normal((n, d))
    q = a + 0.9 * rng.standard_normal((n, d))
    return a, p, q


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("alpha", [0.2, 1.1])
@pytest.mark.parametrize("extra", ["", "label", "active_top", "none"])
def test_triplet_matches_numpy(kernel_backend, n, d, alpha, extra):
    a, p, q = triplet_batch(rng_for(n, d, alpha, extra), n, d)
    bottoms = [a, p, q] + ([np.arange(n, dtype=float)] if extra == "label" else [])
    tops = ' top: "loss" top: "active"' if extra == "active_top" else ""
    norm = " loss_param { normalization: NONE }" if extra == "none" else ""
    spec = f'type: "TripletLoss"{tops} triplet_loss_param {{ alpha: {alpha} }}{norm}'
    report = compare_backends(spec, bottoms, backend=kernel_backend, iterations=2)
    assert {"iter1.bottom_diff[0]", "iter1.bottom_diff[1]", "iter1.bottom_diff[2]"} <= set(report)


@pytest.mark.parametrize("propagate", [[True, False, False], [False, True, True]])
def test_triplet_partial_backward(kernel_backend, propagate):
    a, p, q = triplet_batch(rng_for("partial", propagate), 130, 3)
    compare_backends('type: "TripletLoss"', [a.reshape(130, 1, 3), p.reshape(130, 1, 3),
                                             q.reshape(130, 1, 3)],
                     backend=kernel_backend, propagate=propagate)


def test_triplet_no_active_triplet(kernel_backend):
    rng = rng_for("inactive")
    a = rng.standard_normal((130, 3))
    spec = 'type: "TripletLoss" top: "loss" top: "active" triplet_loss_param { alpha: 0.1 }'
    be = get_backend(kernel_backend)
    layer = make_layer(spec, dtype=np.float32, backend=be)
    bottom, top = setup_layer(layer, [a, a + 0.01, a + 5.0])
    layer.forward(bottom, top)
    assert float(to_numpy(top[0].data)) == 0.0 and float(to_numpy(top[1].data)) == 0.0
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True, True], bottom)
    for blob in bottom:
        assert not np.any(to_numpy(blob.diff))


# ---------------------------------------------------------------- Decode --
def labelled_batch(rng, n, d, num_labels, label_cols=1):
    y = rng.integers(0, num_labels, size=n)
    x = rng.standard_normal((n, d)) + 1.5 * y[:, None]
    if label_cols == 0:
        label = y.astype(float)
    else:
        label = np.concatenate([y[:, None], rng.integers(0, num_labels, (n, label_cols - 1))], 1)
    return x, label.astype(float)


DECODE_MODES = [
    "",                                                  # running mean
    "cache_size: 1",                                     # EMA once M = N items were seen
    "ignore_labels: 2 ignore_labels: 7",
    "output_centroids: true centroid_output_iteration: 1",
    "target: KNN cache_size: 3 k: 2",                    # the ring wraps
    "target: KNN cache_size: 4 k: 9 ignore_labels: 0",   # k above the cache size
    "target: KNN cache_size: 40 k: 5 output_centroids: true centroid_output_iteration: 2",
]


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("mode", DECODE_MODES)
def test_decode_matches_numpy(kernel_backend, n, d, mode):
    rng = rng_for("decode", n, d, mode)
    x, label = labelled_batch(rng, n, d, 4, label_cols=3)
    tops = ' top: "dist" top: "centroids"' if "output_centroids" in mode else ""
    spec = f'type: "Decode"{tops} decode_param {{ pregen_label_count: 4 {mode} }}'
    report = compare_backends(spec, [x, label], backend=kernel_backend, iterations=3)
    assert_close(report)
    assert "param[0]" in report and "iter2.top[0]" in report


@pytest.mark.parametrize("n", [1, 7, 130])
def test_decode_single_label_reaches_the_moving_average(kernel_backend, n):
    """One label, cache_size 1: after the first batch the count is M = N, so
    the next batches take the EMA branch; the labels come as (N,)."""
    rng = rng_for("ema", n)
    x = rng.standard_normal((n, 3))
    spec = ('type: "Decode" top: "d" top: "c" decode_param { pregen_label_count: 1 '
            'cache_size: 1 output_centroids: true centroid_output_iteration: 0 }')
    for shift in (0.0, 2.0):  # a second pass with other data, same state
        report = compare_backends(spec, [x + shift, np.zeros(n)], backend=kernel_backend,
                                  iterations=3)
        assert_close(report)


def test_decode_ignored_and_out_of_batch_labels(kernel_backend):
    """Items labelled -1 (ignored) and labels absent from the batch."""
    rng = rng_for("ignore")
    x, label = labelled_batch(rng, 130, 3, 3, label_cols=0)
    label[::5] = -1
    for mode in ("ignore_labels: -1", "target: KNN cache_size: 6 k: 3 ignore_labels: -1"):
        spec = f'type: "Decode" decode_param {{ pregen_label_count: 6 {mode} }}'
        assert_close(compare_backends(spec, [x, label], backend=kernel_backend, iterations=3))


@pytest.mark.parametrize("phase", [pb.TEST, pb.RUN])
def test_decode_without_update(kernel_backend, phase):
    rng = rng_for("noupdate", phase)
    x, label = labelled_batch(rng, 7, 3, 3)
    bottoms = [x] if phase == pb.RUN else [x, label]
    for mode in ("", "target: KNN"):
        spec = f'type: "Decode" decode_param {{ pregen_label_count: 3 {mode} }}'
        assert_close(compare_backends(spec, bottoms, backend=kernel_backend, phase=phase,
                                      iterations=2))


@pytest.mark.parametrize("mode", ["cache_size: 1", "target: KNN cache_size: 3 k: 2"])
def test_decode_state_round_trip_on_the_kernel_path(kernel_backend, mode):
    """Snapshot (blobs through BlobProto, state_dict through JSON) and resume:
    the resumed layer continues exactly, and so does the CPU from the same
    snapshot."""
    rng = rng_for("resume", mode)
    batches = [labelled_batch(rng, 7, 3, 3) for _ in range(6)]
    spec = f'type: "Decode" decode_param {{ pregen_label_count: 3 {mode} }}'

    def build(backend):
        layer = make_layer(spec, dtype=np.float32, backend=get_backend(backend), name="dec")
        bottom, top = setup_layer(layer, list(batches[0]))
        return layer, bottom, top

    def run(layer, bottom, top, x, y):
        bottom[0].data[...] = layer.xp.asarray(x.astype(np.float32))
        bottom[1].data[...] = layer.xp.asarray(y.astype(np.float32))
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        return to_numpy(top[0].data).copy()

    first = build(kernel_backend)
    for x, y in batches[:3]:
        run(*first, x, y)
    protos = [blob.to_proto() for blob in first[0].blobs]
    state = json.loads(json.dumps(first[0].state_dict()))
    resumed, on_cpu = build(kernel_backend), build("cpu")
    for layer in (resumed[0], on_cpu[0]):
        for blob, proto in zip(layer.blobs, protos):
            blob.from_proto(proto)
        layer.load_state_dict(state)
    for x, y in batches[3:]:
        expected = run(*first, x, y)
        np.testing.assert_array_equal(run(*resumed, x, y), expected)
        np.testing.assert_allclose(run(*on_cpu, x, y), expected, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------- AccuracyDecode --
def decode_distances(rng, n, num_labels):
    dist = rng.uniform(0.1, 5.0, size=(n, num_labels))
    dist[:, 1] = 1e30                                   # a class not ready
    if n > 2:
        dist[1, :] = dist[1, 0]                         # a tie: the first class wins
        dist[2, 3] = np.nan                             # a NaN: wrong
    return dist


@pytest.mark.parametrize("n", [1, 7, 130])
@pytest.mark.parametrize("label_cols", [0, 2])
@pytest.mark.parametrize("options", ["", "accuracy_param { ignore_label: 2 }",
                                     "accuracy_param { ignore_label: -1 }"])
@pytest.mark.parametrize("per_label", [False, True])
def test_accuracy_decode_matches_numpy(kernel_backend, n, label_cols, options, per_label):
    rng = rng_for("accdec", n, label_cols, options, per_label)
    dist = decode_distances(rng, n, 5)
    y = np.argmin(np.where(rng.random((n, 5)) < 0.6, dist, 9.0), axis=1)  # often right
    if "-1" in options:
        y[::3] = -1
    label = y.astype(float) if label_cols == 0 else np.stack([y, y + 1], 1).astype(float)
    tops = ' top: "acc" top: "per_label"' if per_label else ""
    report = compare_backends(f'type: "AccuracyDecode"{tops} {options}', [dist, label],
                              backend=kernel_backend)
    assert_close(report, 1e-6)


# ------------------------------------------------------ AccuracyEncoding --
@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("phase", [pb.TRAIN, pb.TEST])
@pytest.mark.parametrize("options", ["", "accuracy_param { ignore_label: 1 }"])
def test_accuracy_encoding_matches_numpy(kernel_backend, n, d, phase, options):
    """TRAIN: scored against the earlier batches' centroids, then updated
    (3 iterations: not ready, running mean, ...); TEST with no centroids:
    leave-one-out batch means."""
    rng = rng_for("accenc", n, d, phase, options)
    x, label = labelled_batch(rng, n, d, 3, label_cols=2)
    spec = ('type: "AccuracyEncoding" top: "acc" top: "per_label" '
            f'decode_param {{ pregen_label_count: 3 cache_size: 1 }} {options}')
    report = compare_backends(spec, [x, label], backend=kernel_backend, phase=phase,
                              iterations=3)
    assert_close(report, 1e-5)


def test_accuracy_encoding_test_phase_with_trained_centroids(kernel_backend):
    """TEST with counts > 0 uses the stored centroids (no leave-one-out)."""
    rng = rng_for("trained")
    x, label = labelled_batch(rng, 130, 3, 4, label_cols=0)
    centroids = (1.5 * np.arange(4)[:, None] + 0.3 * rng.standard_normal((4, 3))).astype(np.float32)
    counts = np.array([5, 0, 3, 9], np.float32)        # class 1 not ready
    out = {}
    for name in ("cpu", kernel_backend):
        be = get_backend(name)
        layer = make_layer('type: "AccuracyEncoding" top: "a" top: "p" '
                           'decode_param { pregen_label_count: 4 }', phase=pb.TEST,
                           dtype=np.float32, backend=be)
        bottom, top = setup_layer(layer, [x, label])
        layer.blobs[0].data[...] = be.xp.asarray(centroids)
        layer.blobs[1].data[...] = be.xp.asarray(counts)
        layer.forward(bottom, top)
        out[name] = [to_numpy(t.data).copy() for t in top]
    for got, expected in zip(out[kernel_backend], out["cpu"]):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert 0 < out["cpu"][0] < 1


# -------------------------------------------------------------- Accuracy --
@pytest.mark.parametrize("shape", [(1, 4), (7, 5, 3), (130, 10)])
@pytest.mark.parametrize("options", ["", "top_k: 3", "ignore_label: 2", "axis: -1 top_k: 2"])
@pytest.mark.parametrize("per_class", [False, True])
def test_accuracy_matches_numpy(kernel_backend, shape, options, per_class):
    rng = rng_for("acc", shape, options, per_class)
    x = rng.standard_normal(shape).round(1)             # rounding makes ties
    axis = -1 if "axis" in options else 1
    classes = shape[axis]
    label_shape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    label = rng.integers(0, classes, size=label_shape).astype(float)
    if x.size > 5:
        x.reshape(-1)[3] = np.nan                        # NaN scores: as NumPy compares them
    tops = ' top: "acc" top: "per_class"' if per_class else ""
    spec = f'type: "Accuracy"{tops} accuracy_param {{ {options} }}'
    report = compare_backends(spec, [x, label], backend=kernel_backend)
    assert_close(report, 1e-6)


def test_accuracy_all_ignored(kernel_backend):
    spec = 'type: "Accuracy" top: "a" top: "c" accuracy_param { ignore_label: 1 }'
    assert_close(compare_backends(spec, [np.zeros((130, 3)), np.ones(130)],
                                  backend=kernel_backend), 0.0)
