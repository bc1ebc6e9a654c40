"""Metric-learning layers: ContrastiveLoss, TripletLoss, Decode, AccuracyDecode,
AccuracyEncoding, Debug.  References are written independently of the layers
(plain loops over items and labels)."""
import json
from collections import deque

import numpy as np
import pytest

from layergraph.blob import Blob
from layergraph.errors import LayerError, ShapeError
from layergraph.proto import pb
from layergraph.testing import check_layer_gradient, make_layer, run_layer, setup_layer

NOT_READY = 1e30


# ------------------------------------------------------------ helpers ----
def directions(rng, n, d):
    """Random directions whose components differ in magnitude by at most 2x, so
    no component of a - b is near 0 (keeps the Manhattan kinks away)."""
    mags = rng.uniform(1.0, 2.0, size=(n, d))
    signs = rng.choice([-1.0, 1.0], size=(n, d))
    return mags * signs


def pairs_at(rng, dists, d, manhattan=False):
    """a, b with ||a - b|| (L2 or L1) equal to the given distances."""
    n = len(dists)
    a = rng.standard_normal((n, d))
    v = directions(rng, n, d)
    norm = np.abs(v).sum(1) if manhattan else np.sqrt((v * v).sum(1))
    b = a - v / norm[:, None] * np.asarray(dists)[:, None]
    return a, b


def contrastive_ref(a, b, label, margin, legacy=False, manhattan=False):
    """Loss and matches, one pair at a time."""
    n = a.shape[0]
    rows = np.asarray(label).reshape(n, -1)
    total, matches = 0.0, []
    for i in range(n):
        similar = rows[i, 0] == rows[i, 1] if rows.shape[1] == 2 else rows[i, 0] != 0
        if manhattan:
            d = float(np.sum(np.abs(a[i] - b[i])))
        else:
            d = float(np.linalg.norm(a[i] - b[i]))
        if similar:
            total += d * d
        elif legacy:
            total += max(margin - d * d, 0.0)
        else:
            total += max(margin - d, 0.0) ** 2
        q = d * d if legacy else d
        matches.append(float(q < margin / 2 if similar else q >= margin / 2))
    return total / (2 * n), np.array(matches)


def triplet_ref(a, p, n, alpha):
    total, active = 0.0, 0
    for i in range(a.shape[0]):
        h = np.sum((a[i] - p[i]) ** 2) - np.sum((a[i] - n[i]) ** 2) + alpha
        if h > 0:
            total += h
            active += 1
    return total / (2 * a.shape[0]), active / a.shape[0]


def forward(layer, bottom, top):
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return [t.data.copy() for t in top]


def blobs_of(arrays, dtype=np.float64):
    out = []
    for a in arrays:
        b = Blob(np.shape(a), dtype=dtype)
        b.data[...] = a
        out.append(b)
    return out


# ---------------------------------------------------- ContrastiveLoss ----
CONTRASTIVE = 'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {m} {extra} }}'

# distances: similar pairs anywhere; dissimilar ones well inside (active) and
# well outside (inactive) the margin, never within 0.1 of the hinge.
DISSIMILAR_D = [0.4, 1.2, 2.8, 3.5]          # margin 2: two active, two inactive
SIMILAR_D = [0.3, 1.1, 2.5]


def contrastive_inputs(rng, label_kind, legacy=False, manhattan=False, d=3):
    # legacy: the hinge is on d^2 vs margin 2: d^2 in {0.16, 1.44} active, {7.8, 12.3} not
    dists = DISSIMILAR_D + SIMILAR_D
    a, b = pairs_at(rng, dists, d, manhattan)
    sim = np.array([0, 0, 0, 0, 1, 1, 1], dtype=float)
    if label_kind == "flat":
        label = sim
    elif label_kind == "column":
        label = sim[:, None]
    else:  # two labels per pair, compared for equality
        first = np.array([0, 3, 5, 7, 2, 4, 9], dtype=float)
        second = np.where(sim == 1, first, (first + 1) % 10)
        label = np.stack([first, second], axis=1)
    return a, b, label


@pytest.mark.parametrize("label_kind,legacy,manhattan", [
    ("column", False, False),
    ("pairs", False, False),
    ("column", True, False),
    ("pairs", True, False),
    ("flat", False, True),
    ("pairs", True, True),
])
def test_contrastive_gradient(label_kind, legacy, manhattan):
    rng = np.random.default_rng(3)
    a, b, label = contrastive_inputs(rng, label_kind, legacy, manhattan)
    extra = ("legacy_version: true " if legacy else "") + ("distance: MANHATTAN" if manhattan else "")
    spec = CONTRASTIVE.format(m=2.0, extra=extra)
    # both hinge cases are present
    dist = (np.abs(a - b).sum(1) if manhattan else np.linalg.norm(a - b, axis=1))[:4]
    q = dist ** 2 if legacy else dist
    assert (q < 2).any() and (q > 2).any()
    checked = check_layer_gradient(spec, [a, b, label], check_bottom=[0, 1])
    assert checked == 2 * a.size


def test_contrastive_gradient_with_matches_top():
    rng = np.random.default_rng(4)
    a, b, label = contrastive_inputs(rng, "pairs")
    spec = ('type: "ContrastiveLoss" top: "loss" top: "match" '
            'contrastive_loss_param { margin: 2 output_matches: true }')
    check_layer_gradient(spec, [a, b, label], check_bottom=[0, 1], top_index=0)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("manhattan", [False, True])
@pytest.mark.parametrize("label_kind", ["flat", "column", "pairs"])
def test_contrastive_forward_matches_reference(label_kind, manhattan, legacy):
    rng = np.random.default_rng(5)
    a, b, label = contrastive_inputs(rng, label_kind, legacy, manhattan, d=5)
    extra = ("legacy_version: true " if legacy else "") + ("distance: MANHATTAN" if manhattan else "")
    spec = ('type: "ContrastiveLoss" top: "loss" top: "match" '
            f'contrastive_loss_param {{ margin: 2 {extra} }}')
    _, (loss, matches) = run_layer(spec, [a, b, label])
    ref_loss, ref_matches = contrastive_ref(a, b, label, 2.0, legacy, manhattan)
    assert loss.shape == () and matches.shape == (a.shape[0],)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_array_equal(matches, ref_matches)


def test_contrastive_known_values():
    # d = 1 (similar): 1; d = 0.5 dissimilar, margin 2: (1.5)^2 = 2.25; d = 3: 0
    a = np.zeros((3, 2))
    b = np.array([[1.0, 0.0], [0.0, 0.5], [3.0, 0.0]])
    _, (loss, match) = run_layer(
        'type: "ContrastiveLoss" top: "l" top: "m" contrastive_loss_param { margin: 2 }',
        [a, b, np.array([1.0, 0.0, 0.0])])
    assert loss == pytest.approx((1.0 + 2.25 + 0.0) / 6)
    # similar d=1 >= margin/2=1 -> wrong; dissimilar 0.5 < 1 -> wrong; 3 >= 1 -> right
    np.testing.assert_array_equal(match, [0.0, 0.0, 1.0])


def test_contrastive_zero_distance_dissimilar_is_finite():
    a = np.ones((2, 3))
    layer = make_layer('type: "ContrastiveLoss" contrastive_loss_param { margin: 1.5 }')
    bottom, top = setup_layer(layer, [a, a.copy(), np.zeros(2)])
    layer.forward(bottom, top)
    assert top[0].data == pytest.approx(2 * 1.5 ** 2 / 4)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True, False], bottom)
    assert np.all(np.isfinite(bottom[0].diff)) and np.all(bottom[0].diff == 0)
    assert np.all(bottom[1].diff == 0)


def test_contrastive_normalization_none_and_loss_weight_scaling():
    rng = np.random.default_rng(6)
    a, b, label = contrastive_inputs(rng, "column")
    ref, _ = contrastive_ref(a, b, label, 2.0)
    _, (loss,) = run_layer('type: "ContrastiveLoss" contrastive_loss_param { margin: 2 } '
                           'loss_param { normalization: NONE }', [a, b, label])
    assert loss == pytest.approx(ref * a.shape[0])
    # the top diff (loss weight) scales the gradient linearly
    layer = make_layer(CONTRASTIVE.format(m=2, extra=""))
    bottom, top = setup_layer(layer, [a, b, label])
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True, False], bottom)
    g1 = bottom[0].diff.copy()
    top[0].diff[...] = 3.0
    layer.backward(top, [True, True, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, 3 * g1)
    np.testing.assert_allclose(bottom[1].diff, -3 * g1)


def test_contrastive_shape_errors_name_both_shapes():
    a = np.zeros((4, 3))
    with pytest.raises(ShapeError) as e:
        run_layer(CONTRASTIVE.format(m=1, extra=""), [a, np.zeros((4, 2)), np.zeros(4)])
    assert "(4, 3)" in str(e.value) and "(4, 2)" in str(e.value)
    with pytest.raises(ShapeError) as e:
        run_layer(CONTRASTIVE.format(m=1, extra=""), [a, a, np.zeros((4, 3))])
    assert "(4, 3)" in str(e.value) and "label" in str(e.value)
    with pytest.raises(ShapeError) as e:
        run_layer(CONTRASTIVE.format(m=1, extra=""), [a, a, np.zeros(5)])
    assert "(5,)" in str(e.value) and "(4, 3)" in str(e.value)
    with pytest.raises(LayerError):
        run_layer('type: "ContrastiveLoss" contrastive_loss_param { output_matches: true }',
                  [a, a, np.zeros(4)])


def test_contrastive_label_has_no_gradient_and_is_loss():
    layer = make_layer(CONTRASTIVE.format(m=1, extra=""))
    assert layer.is_loss and layer.label_bottoms == (2,)


# -------------------------------------------------------- TripletLoss ----
def triplet_inputs(rng, n_active=3, n_inactive=3, d=4, alpha=1.0):
    """h = rp^2 - rn^2 + alpha = +1 (active) or -1 (inactive) exactly."""
    n = n_active + n_inactive
    a = rng.standard_normal((n, d))
    rp = rng.uniform(0.5, 1.5, size=n)
    h = np.r_[np.ones(n_active), -np.ones(n_inactive)]
    rn = np.sqrt(rp ** 2 + alpha - h)
    u = rng.standard_normal((n, d))
    v = rng.standard_normal((n, d))
    p = a + u / np.linalg.norm(u, axis=1, keepdims=True) * rp[:, None]
    neg = a + v / np.linalg.norm(v, axis=1, keepdims=True) * rn[:, None]
    return a, p, neg


def test_triplet_gradient_active_and_inactive():
    rng = np.random.default_rng(7)
    a, p, n = triplet_inputs(rng)
    checked = check_layer_gradient('type: "TripletLoss" triplet_loss_param { alpha: 1 }',
                                   [a, p, n])
    assert checked == 3 * a.size


def test_triplet_gradient_with_label_and_second_top():
    rng = np.random.default_rng(8)
    a, p, n = triplet_inputs(rng, alpha=1.0)
    lbl = np.stack([np.arange(6), np.arange(6), (np.arange(6) + 1) % 6], 1).astype(float)
    spec = ('type: "TripletLoss" top: "loss" top: "active" '
            'triplet_loss_param { alpha: 1 }')
    check_layer_gradient(spec, [a, p, n, lbl], check_bottom=[0, 1, 2], top_index=0)


def test_triplet_forward_matches_reference():
    rng = np.random.default_rng(9)
    a, p, n = (rng.standard_normal((10, 5)) for _ in range(3))
    spec = 'type: "TripletLoss" top: "loss" top: "active"'  # MyCaffe default alpha 1.1
    _, (loss, active) = run_layer(spec, [a, p, n])
    ref_loss, ref_active = triplet_ref(a, p, n, 1.1)
    assert 0 < ref_active < 1
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert active == pytest.approx(ref_active)


def test_triplet_explicit_gradient_formula():
    rng = np.random.default_rng(10)
    a, p, n = triplet_inputs(rng, n_active=2, n_inactive=2, d=3, alpha=0.5)
    layer = make_layer('type: "TripletLoss" triplet_loss_param { alpha: 0.5 }')
    bottom, top = setup_layer(layer, [a, p, n])
    layer.forward(bottom, top)
    top[0].diff[...] = 2.0
    layer.backward(top, [True, True, True], bottom)
    g = 2.0 / (2 * 4)
    act = np.array([1, 1, 0, 0.0])[:, None]
    np.testing.assert_allclose(bottom[0].diff, g * act * 2 * (n - p))
    np.testing.assert_allclose(bottom[1].diff, g * act * -2 * (a - p))
    np.testing.assert_allclose(bottom[2].diff, g * act * 2 * (a - n))


def test_triplet_no_active_triplet_gives_zero_loss_and_gradient():
    rng = np.random.default_rng(11)
    a, p, n = triplet_inputs(rng, n_active=0, n_inactive=5)
    layer = make_layer('type: "TripletLoss" top: "l" top: "f" triplet_loss_param { alpha: 1 }')
    bottom, top = setup_layer(layer, [a, p, n])
    layer.forward(bottom, top)
    assert top[0].data == 0.0 and top[1].data == 0.0
    top[0].diff[...] = 1.0
    for blob in bottom:
        blob.diff[...] = np.nan
    layer.backward(top, [True, True, True], bottom)
    for blob in bottom:
        assert np.all(blob.diff == 0.0)


def test_triplet_shape_errors_name_both_shapes():
    a = np.zeros((4, 3))
    with pytest.raises(ShapeError) as e:
        run_layer('type: "TripletLoss"', [a, a, np.zeros((8, 3))])
    assert "(8, 3)" in str(e.value) and "(4, 3)" in str(e.value)
    with pytest.raises(ShapeError) as e:
        run_layer('type: "TripletLoss"', [a, a, a, np.zeros((5, 3))])
    assert "(5, 3)" in str(e.value) and "(4, 3)" in str(e.value)


# ------------------------------------------------------------- Decode ----
def decode_layer(extra="", phase=pb.TRAIN, tops=1, labels=3, name="decode"):
    top = "".join(f' top: "t{i}"' for i in range(tops))
    spec = (f'type: "Decode"{top} decode_param {{ pregen_label_count: {labels} {extra} }}')
    return make_layer(spec, phase=phase, name=name)


def label_batches(rng, batches, n, labels, d):
    out = []
    for _ in range(batches):
        y = rng.integers(0, labels, size=n)
        x = rng.standard_normal((n, d)) + 3.0 * y[:, None]
        out.append((x, y))
    return out


class CentroidReference:
    """True class means while fewer than M items were seen (before the batch),
    then the EMA with beta = m / M per batch."""

    def __init__(self, labels, d, big_m):
        self.items = {l: [] for l in range(labels)}
        self.centroid = {l: None for l in range(labels)}
        self.big_m = big_m
        self.moving = {l: False for l in range(labels)}

    def update(self, x, y):
        for l in self.items:
            batch = [x[i] for i in range(len(y)) if y[i] == l]
            if not batch:
                continue
            if len(self.items[l]) < self.big_m:
                self.items[l].extend(batch)
                self.centroid[l] = np.mean(self.items[l], axis=0)
            else:
                self.moving[l] = True
                beta = len(batch) / self.big_m
                self.centroid[l] = (1 - beta) * self.centroid[l] + beta * np.mean(batch, axis=0)

    def distances(self, x):
        out = np.full((len(x), len(self.centroid)), NOT_READY)
        for l, c in self.centroid.items():
            if c is not None:
                out[:, l] = [np.linalg.norm(xi - c) for xi in x]
        return out


def test_decode_centroids_running_mean_then_ema():
    rng = np.random.default_rng(12)
    n, d, labels, cache = 6, 4, 3, 2          # M = 12 items per label
    layer = decode_layer(f"cache_size: {cache}")
    batches = label_batches(rng, 14, n, labels, d)
    ref = CentroidReference(labels, d, cache * n)
    bottom, top = setup_layer(layer, [batches[0][0], batches[0][1]])
    saw_mean = saw_ema = False
    for x, y in batches:
        bottom = blobs_of([x, y.astype(float)[:, None]])
        (dist,) = forward(layer, bottom, top)
        np.testing.assert_allclose(dist, ref.distances(x), rtol=1e-10)  # pre-update state
        ref.update(x, y)
        for l in range(labels):
            np.testing.assert_allclose(layer.blobs[0].data[l], ref.centroid[l], rtol=1e-10,
                                       atol=1e-12)
            if ref.moving[l]:
                saw_ema = True
            else:
                saw_mean = True
                # below M: exactly the class mean of everything seen
                np.testing.assert_allclose(layer.blobs[0].data[l],
                                           np.mean(ref.items[l], axis=0), rtol=1e-10)
    assert saw_mean and saw_ema
    assert all(not b.learnable for b in layer.blobs)
    assert float(layer.blobs[2].data[0]) == len(batches)


def test_decode_ema_uses_batch_as_a_whole():
    # M = cache_size * N = 2 items per label
    layer = decode_layer("cache_size: 1", labels=2)
    bottom, top = setup_layer(layer, [np.array([[0.0], [2.0]]), np.zeros(2)])
    layer.forward(bottom, top)
    assert layer.blobs[0].data[0, 0] == pytest.approx(1.0)        # exact mean, n0 = M
    forward(layer, blobs_of([np.array([[4.0], [10.0]]), np.zeros(2)]), top)
    # beta = m/M = 1: the batch mean 7, whatever the order inside the batch
    # (an item-by-item EMA with 1/M steps would give 0.5*(0.5*1+0.5*4)+0.5*10)
    assert layer.blobs[0].data[0, 0] == pytest.approx(7.0)
    forward(layer, blobs_of([np.array([[1.0], [50.0]]), np.array([0.0, 1.0])]), top)
    assert layer.blobs[0].data[0, 0] == pytest.approx(0.5 * 7 + 0.5 * 1)   # beta = 1/2
    assert layer.blobs[0].data[1, 0] == pytest.approx(50.0)               # running mean
    np.testing.assert_allclose(layer.blobs[1].data, [2, 1])


def test_decode_test_phase_shares_state_and_does_not_update():
    rng = np.random.default_rng(13)
    train = decode_layer("cache_size: 5")
    batches = label_batches(rng, 3, 8, 3, 2)
    _, top = setup_layer(train, [batches[0][0], batches[0][1]])
    for x, y in batches:
        forward(train, blobs_of([x, y]), top)
    test = decode_layer("cache_size: 5", phase=pb.TEST)
    setup_layer(test, [batches[0][0], batches[0][1]])
    test.blobs = train.blobs          # what the Net does for layers of the same name
    before = [b.data.copy() for b in train.blobs]
    x = rng.standard_normal((5, 2))
    (dist,) = forward(test, blobs_of([x, np.zeros(5)]), [Blob((), dtype=np.float64)])
    for b, old in zip(train.blobs, before):
        np.testing.assert_array_equal(b.data, old)
    expected = np.linalg.norm(x[:, None, :] - train.blobs[0].data[None], axis=2)
    np.testing.assert_allclose(dist, expected, rtol=1e-12)
    # RUN phase: the label bottom may be absent
    run = decode_layer("cache_size: 5", phase=pb.RUN)
    setup_layer(run, [x])
    run.blobs = train.blobs
    (dist_run,) = forward(run, blobs_of([x]), [Blob((), dtype=np.float64)])
    np.testing.assert_allclose(dist_run, expected, rtol=1e-12)


def test_decode_not_ready_and_ignore_labels():
    layer = decode_layer("cache_size: 10 ignore_labels: 2", labels=4)
    x = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    y = np.array([0.0, 0.0, 2.0])
    bottom, top = setup_layer(layer, [x, y])
    layer.forward(bottom, top)
    assert np.all(top[0].data == NOT_READY)       # nothing seen before this batch
    (dist,) = forward(layer, blobs_of([x, y]), top)
    np.testing.assert_allclose(dist[:, 0], np.linalg.norm(x - [0.5, 0.0], axis=1))
    assert np.all(dist[:, 1:] == NOT_READY)          # 1, 3 unseen; 2 ignored
    assert layer.blobs[1].data[2] == 0 and np.all(layer.blobs[0].data[2] == 0)


def test_decode_output_centroids_and_output_iteration():
    layer = decode_layer("cache_size: 10 centroid_output_iteration: 2 output_centroids: true",
                         tops=2, labels=3)
    x = np.array([[0.0, 2.0], [2.0, 2.0], [9.0, 9.0]])
    y = np.array([0.0, 0.0, 2.0])
    bottom, top = setup_layer(layer, [x, y])
    layer.forward(bottom, top)
    assert top[1].data.shape == (3, 2) and np.all(top[1].data == 0)  # 1 update < 2
    forward(layer, bottom, top)
    np.testing.assert_allclose(top[1].data, [[1.0, 2.0], [0.0, 0.0], [9.0, 9.0]])


def knn_reference(caches, x, k, labels):
    out = np.full((len(x), labels), NOT_READY)
    for l in range(labels):
        items = list(caches[l])
        if not items:
            continue
        for i, xi in enumerate(x):
            ds = sorted(np.linalg.norm(xi - c) for c in items)
            out[i, l] = np.mean(ds[:k])
    return out


def test_decode_knn_matches_brute_force():
    rng = np.random.default_rng(14)
    labels, cache, k, n, d = 4, 3, 2, 7, 3
    layer = decode_layer(f"target: KNN cache_size: {cache} k: {k}", labels=labels)
    batches = label_batches(rng, 6, n, labels, d)
    batches.append((rng.standard_normal((n, d)), np.zeros(n, dtype=int)))  # > cache of one label
    caches = {l: deque(maxlen=cache) for l in range(labels)}
    bottom, top = setup_layer(layer, [batches[0][0], batches[0][1]])
    for x, y in batches:
        (dist,) = forward(layer, blobs_of([x, y]), top)
        np.testing.assert_allclose(dist, knn_reference(caches, x, k, labels), rtol=1e-10)
        for xi, yi in zip(x, y):
            caches[int(yi)].append(xi)
    # the cache holds exactly the most recent items (as a set per label)
    for l in range(labels):
        fill = int(layer.blobs[1].data[l])
        got = sorted(map(tuple, layer.blobs[0].data[l, :fill]))
        assert got == sorted(map(tuple, caches[l]))


def test_decode_knn_ready_with_one_item():
    layer = decode_layer("target: KNN cache_size: 4 k: 3", labels=2)
    x = np.array([[1.0, 1.0]])
    bottom, top = setup_layer(layer, [x, np.array([1.0])])
    layer.forward(bottom, top)
    (dist,) = forward(layer, blobs_of([np.array([[4.0, 5.0]]), np.array([0.0])]), top)
    assert dist[0, 0] == NOT_READY and dist[0, 1] == pytest.approx(5.0)


def test_decode_state_round_trip_resumes_exactly():
    rng = np.random.default_rng(15)
    for extra in ("cache_size: 1", "target: KNN cache_size: 3 k: 2"):
        batches = label_batches(rng, 8, 5, 3, 2)
        a = decode_layer(extra, name="dec")
        _, top_a = setup_layer(a, [batches[0][0], batches[0][1]])
        for x, y in batches[:4]:
            forward(a, blobs_of([x, y]), top_a)
        # snapshot: blobs through BlobProto (as the .caffemodel stores them), state via JSON
        protos = [blob.to_proto() for blob in a.blobs]
        state = json.loads(json.dumps(a.state_dict()))
        b = decode_layer(extra, name="dec")
        _, top_b = setup_layer(b, [batches[0][0], batches[0][1]])
        for blob, proto in zip(b.blobs, protos):
            blob.from_proto(proto)
        b.load_state_dict(state)
        for x, y in batches[4:]:
            out_a = forward(a, blobs_of([x, y]), top_a)
            out_b = forward(b, blobs_of([x, y]), top_b)
            np.testing.assert_array_equal(out_a[0], out_b[0])
        for ba, bb in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(ba.data, bb.data)


def test_decode_errors():
    x = np.zeros((4, 3))
    with pytest.raises(ShapeError) as e:
        run_layer('type: "Decode"', [x, np.zeros(5)])
    assert "(5,)" in str(e.value) and "(4, 3)" in str(e.value)
    with pytest.raises(LayerError) as e:
        run_layer('type: "Decode" decode_param { pregen_label_count: 3 }',
                  [x, np.array([0.0, 1.0, 3.0, 0.0])])
    assert "3" in str(e.value)
    with pytest.raises(LayerError):
        run_layer('type: "Decode" decode_param { target: PREGEN }', [x, np.zeros(4)])
    with pytest.raises(LayerError):
        run_layer('type: "Decode"', [x])                     # TRAIN needs labels
    _, (dist,) = run_layer('type: "Decode"', [x], phase=pb.RUN)
    assert dist.shape == (4, 10)


# ----------------------------------------------------- AccuracyDecode ----
def test_accuracy_decode_hand_built():
    dist = np.array([[0.1, 2.0, 3.0],
                     [1.0, 0.5, 2.0],
                     [NOT_READY, NOT_READY, NOT_READY],   # nothing ready: wrong
                     [2.0, 1.0, 0.3],
                     [NOT_READY, 1.0, 2.0]])              # own class not ready: wrong
    labels = np.array([0, 0, 0, 2, 0], dtype=float)
    spec = 'type: "AccuracyDecode" top: "acc" top: "per"'
    for lab in (labels, labels[:, None], np.stack([labels, labels + 1, labels + 2], 1)):
        _, (acc, per) = run_layer(spec, [dist, lab])
        assert acc == pytest.approx(2 / 5)
        np.testing.assert_allclose(per, [1 / 4, 0.0, 1.0])


def test_accuracy_decode_ignore_label_and_errors():
    dist = np.array([[0.1, 2.0], [0.1, 0.5], [3.0, 0.2]])
    _, (acc,) = run_layer('type: "AccuracyDecode" accuracy_param { ignore_label: 1 }',
                          [dist, np.array([0.0, 1.0, 1.0])])
    assert acc == pytest.approx(1.0)
    with pytest.raises(ShapeError) as e:
        run_layer('type: "AccuracyDecode"', [dist, np.zeros(4)])
    assert "(4,)" in str(e.value) and "(3, 2)" in str(e.value)
    with pytest.raises(LayerError):
        run_layer('type: "AccuracyDecode"', [dist, np.array([0.0, 2.0, 1.0])])


def test_decode_then_accuracy_decode():
    rng = np.random.default_rng(16)
    layer = decode_layer("cache_size: 10")
    x = np.array([[0.0, 0.0], [0.2, 0.0], [5.0, 0.0], [5.0, 0.4], [0.0, 5.0]])
    y = np.array([0, 0, 1, 1, 2], dtype=float)
    _, top = setup_layer(layer, [x, y])
    forward(layer, blobs_of([x, y]), top)
    probe = x + rng.normal(scale=0.1, size=x.shape)
    (dist,) = forward(layer, blobs_of([probe, y]), top)
    _, (acc,) = run_layer('type: "AccuracyDecode"', [dist, y])
    assert acc == 1.0


# --------------------------------------------------- AccuracyEncoding ----
ENCODING = 'type: "AccuracyEncoding" decode_param {{ pregen_label_count: 3 {extra} }}'


def test_accuracy_encoding_leave_one_out_when_untrained():
    x = np.array([[0.0], [1.0], [10.0], [11.0], [3.0], [5.0]])
    y = np.array([0, 0, 1, 1, 1, 2], dtype=float)
    # item 3.0: own (10, 11) -> 7.5 vs class 0 -> 2.5: wrong; item 5.0 alone in class 2: wrong
    pair_labels = np.stack([y, (y + 1) % 3], 1)
    _, (acc,) = run_layer(ENCODING.format(extra=""), [x, pair_labels], phase=pb.TEST)
    assert acc == pytest.approx(4 / 6)
    # brute-force leave-one-out reference on random data
    rng = np.random.default_rng(17)
    x = rng.standard_normal((20, 3))
    y = rng.integers(0, 3, size=20)
    right = 0
    for i in range(20):
        ds = []
        for l in range(3):
            members = [x[j] for j in range(20) if y[j] == l and j != i]
            ds.append(np.linalg.norm(x[i] - np.mean(members, 0)) if members else np.inf)
        right += int(np.argmin(ds) == y[i] and np.isfinite(ds[y[i]]))
    _, (acc,) = run_layer(ENCODING.format(extra=""), [x, y], phase=pb.TEST)
    assert acc == pytest.approx(right / 20)


def test_accuracy_encoding_train_then_test_shares_centroids():
    train = make_layer(ENCODING.format(extra="cache_size: 10"), name="acc")
    x = np.array([[0.0, 0.0], [0.0, 2.0], [6.0, 0.0], [6.0, 2.0]])
    y = np.array([0, 0, 2, 2], dtype=float)
    bottom, top = setup_layer(train, [x, y])
    train.forward(bottom, top)
    assert top[0].data == 0.0                                    # no centroid yet
    np.testing.assert_allclose(train.blobs[0].data, [[0, 1], [0, 0], [6, 1]])
    np.testing.assert_allclose(train.blobs[1].data, [2, 0, 2])
    test = make_layer(ENCODING.format(extra="cache_size: 10"), phase=pb.TEST, name="acc")
    probe = np.array([[1.0, 1.0], [2.0, 1.0], [4.5, 1.0], [2.9, 1.0]])
    lab = np.array([0, 2, 2, 2], dtype=float)  # 2.0 is nearer class 0: wrong; 2.9 < 3: wrong
    tb, tt = setup_layer(test, [probe, lab], num_tops=2)
    test.blobs = train.blobs
    test.forward(tb, tt)
    assert tt[0].data == pytest.approx(2 / 4)
    np.testing.assert_allclose(tt[1].data, [1.0, 0.0, 1 / 3])
    np.testing.assert_allclose(train.blobs[1].data, [2, 0, 2])   # TEST does not update
    # an item of class 1 (no centroid) is wrong even when it sits at the origin
    tb2 = blobs_of([np.array([[0.0, 1.0]]), np.array([1.0])])
    assert forward(test, tb2, tt[:1])[0] == 0.0


def test_accuracy_encoding_training_update_matches_decode_rule():
    rng = np.random.default_rng(18)
    layer = make_layer(ENCODING.format(extra="cache_size: 1"))
    ref = CentroidReference(3, 2, 6)
    batches = label_batches(rng, 6, 6, 3, 2)
    _, top = setup_layer(layer, [batches[0][0], batches[0][1]])
    for x, y in batches:
        forward(layer, blobs_of([x, y]), top)
        ref.update(x, y)
    for l in range(3):
        np.testing.assert_allclose(layer.blobs[0].data[l], ref.centroid[l], rtol=1e-10)


# -------------------------------------------------------------- Debug ----
def test_debug_gradient_and_pass_through():
    rng = np.random.default_rng(19)
    x = rng.standard_normal((4, 3))
    check_layer_gradient('type: "Debug"', [x, np.arange(4.0)], check_bottom=[0])
    _, (out,) = run_layer('type: "Debug"', [x])
    np.testing.assert_array_equal(out, x)


def test_debug_ring_buffer_order_and_labels():
    layer = make_layer('type: "Debug" debug_param { max_stored: 5 }')
    xs = np.arange(27.0).reshape(9, 3)
    labels = np.stack([np.arange(9.0) + 100, np.zeros(9)], 1)
    bottom, top = setup_layer(layer, [xs[:3], labels[:3]])
    emb, lab = layer.stored_embeddings()
    assert emb.shape == (0, 3) and lab.shape == (0,)
    for s in range(0, 9, 3):
        forward(layer, blobs_of([xs[s:s + 3], labels[s:s + 3]]), top)
        np.testing.assert_array_equal(top[0].data, xs[s:s + 3])
    emb, lab = layer.stored_embeddings()
    np.testing.assert_array_equal(emb, xs[4:9])
    np.testing.assert_array_equal(lab, np.arange(4.0, 9.0) + 100)
    # a batch larger than the buffer keeps its tail; no label bottom -> NaN labels
    big = np.arange(21.0).reshape(7, 3) + 1000
    forward(layer, blobs_of([big]), top)
    emb, lab = layer.stored_embeddings()
    np.testing.assert_array_equal(emb, big[2:])
    assert np.all(np.isnan(lab))


def test_debug_in_place():
    layer = make_layer('type: "Debug"')
    x = Blob((2, 2), dtype=np.float64)
    x.data[...] = [[1, 2], [3, 4]]
    layer.setup([x], [x])
    layer.reshape([x], [x])
    layer.forward([x], [x])
    np.testing.assert_array_equal(x.data, [[1, 2], [3, 4]])
    x.diff[...] = 7.0
    layer.backward([x], [True], [x])
    assert np.all(x.diff == 7.0)
    emb, _ = layer.stored_embeddings()
    np.testing.assert_array_equal(emb, [[1, 2], [3, 4]])


def test_layer_flags():
    for spec, has_backward in (('type: "Decode"', False), ('type: "AccuracyDecode"', False),
                               ('type: "AccuracyEncoding"', False), ('type: "Debug"', True),
                               ('type: "TripletLoss"', True)):
        assert make_layer(spec).has_backward is has_backward
    assert make_layer('type: "Decode"').optional_bottoms == (1,)
