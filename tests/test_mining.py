"""OnlineTripletLoss and OnlineContrastiveLoss against brute-force references
written here (explicit loops over every (a, p, n) and every pair), gradient
checks for every miner / distance / margin combination, the empty and the
collapsed batch, warm-up switching and the random miner's resume."""
import math

import numpy as np
import pytest

from layergraph.errors import LayerError, ShapeError
from layergraph.layers import _mining
from layergraph.proto import pb
from layergraph.testing import check_layer_gradient, compare_backends, make_layer, setup_layer

MINERS = ["BATCH_ALL", "BATCH_HARD", "SEMI_HARD", "RANDOM_HARD_NEGATIVE", "HARDEST_NEGATIVE"]
DISTANCES = ["EUCLIDEAN", "SQUARED_EUCLIDEAN", "COSINE"]


def triplet_spec(miner, distance="EUCLIDEAN", margin=0.5, soft=False, extra=""):
    return (f'type: "OnlineTripletLoss" top: "loss" top: "active" '
            f'online_triplet_loss_param {{ miner: {miner} distance: {distance} '
            f'margin: {margin} soft_margin: {str(soft).lower()} {extra} }}')


def contrastive_spec(distance="EUCLIDEAN", margin=1.0, pos_margin=0.0, hardest=True):
    return (f'type: "OnlineContrastiveLoss" top: "loss" top: "active" '
            f'online_contrastive_loss_param {{ distance: {distance} margin: {margin} '
            f'pos_margin: {pos_margin} hardest_negatives: {str(hardest).lower()} }}')


# ----------------------------------------------------------- references --
def ref_distances(x, kind):
    b = len(x)
    d = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            if kind == "COSINE":
                yi = x[i] / math.sqrt(x[i] @ x[i] + 1e-12)
                yj = x[j] / math.sqrt(x[j] @ x[j] + 1e-12)
                d[i, j] = 1.0 - yi @ yj
            else:
                sq = float((x[i] - x[j]) @ (x[i] - x[j]))
                d[i, j] = sq if kind == "SQUARED_EUCLIDEAN" else math.sqrt(sq + 1e-12)
    return d


def softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def ref_mine(d, labels, miner, margin, soft, uniform=None):
    """(sorted triplets, loss, active fraction) by enumeration."""
    b = len(labels)

    def loss(a, p, n):
        v = d[a, p] - d[a, n]
        return softplus(v) if soft else max(0.0, v + margin)

    def positives(a):
        return [p for p in range(b) if p != a and labels[p] == labels[a]]

    def negatives(a):
        return [n for n in range(b) if labels[n] != labels[a]]

    def closest(a, candidates):
        return min(candidates, key=lambda n: (d[a, n], n))

    if miner == "BATCH_ALL":
        units = [(a, p, n) for a in range(b) for p in positives(a) for n in negatives(a)]
        chosen = [t for t in units if loss(*t) > 0]
    elif miner == "BATCH_HARD":
        units = [a for a in range(b) if positives(a) and negatives(a)]
        chosen = [(a, max(positives(a), key=lambda p: (d[a, p], -p)), closest(a, negatives(a)))
                  for a in units]
    else:
        units = [(a, p) for a in range(b) for p in positives(a) if negatives(a)]
        chosen = []
        for a, p in units:
            if miner == "HARDEST_NEGATIVE":
                chosen.append((a, p, closest(a, negatives(a))))
            elif miner == "SEMI_HARD":
                window = [n for n in negatives(a) if d[a, p] < d[a, n] < d[a, p] + margin]
                if window:
                    chosen.append((a, p, closest(a, window)))
            else:  # RANDOM_HARD_NEGATIVE
                window = sorted((n for n in negatives(a) if d[a, n] < d[a, p] + margin),
                                key=lambda n: (d[a, n], n))
                if window:
                    chosen.append((a, p, window[int(math.floor(uniform[a, p] * len(window)))]))
    values = [loss(*t) for t in chosen]
    total = sum(values) / len(values) if values else 0.0
    active = sum(v > 0 for v in values) / len(units) if units else 0.0
    return sorted(chosen), total, active


def random_batch(seed, b=10, dim=3, classes=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, dim)), rng.integers(0, classes, b).astype(np.float64)


def forward(spec, x, labels, **kw):
    layer = make_layer(spec, **kw)
    bottom, top = setup_layer(layer, [x, labels])
    layer.forward(bottom, top)
    return layer, bottom, top


def uniform_of(spec, b):
    """The draws the layer makes on its first pass (a twin layer: same name, seed)."""
    return make_layer(spec).rng().random((b, b))


# ------------------------------------------------ miners vs brute force --
@pytest.mark.parametrize("soft", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("miner", MINERS)
def test_miner_matches_brute_force(miner, distance, soft):
    for seed in range(3):
        x, labels = random_batch(seed)
        margin = 0.375 if distance == "COSINE" else 0.75  # exact in float32 (the proto's type)
        spec = triplet_spec(miner, distance, margin, soft)
        layer, _, top = forward(spec, x, labels)
        uniform = uniform_of(spec, len(x)) if miner == "RANDOM_HARD_NEGATIVE" else None
        chosen, loss, active = ref_mine(ref_distances(x, distance), labels, miner, margin, soft,
                                        uniform)
        assert [tuple(t) for t in layer.mined_triplets()] == chosen
        assert float(top[0].data) == pytest.approx(loss, rel=1e-9, abs=1e-12)
        assert float(top[1].data) == pytest.approx(active, rel=1e-12, abs=1e-12)


def test_semi_hard_condition_holds_for_every_chosen_triplet():
    x, labels = random_batch(7, b=24, dim=4, classes=4)
    margin = 0.6
    layer, _, top = forward(triplet_spec("SEMI_HARD", margin=margin), x, labels)
    d = ref_distances(x, "EUCLIDEAN")
    chosen = layer.mined_triplets()
    assert len(chosen) > 10
    for a, p, n in chosen:
        assert labels[a] == labels[p] and a != p and labels[n] != labels[a]
        assert d[a, p] < d[a, n] < d[a, p] + margin
        # the hardest semi-hard negative: no closer negative is farther than the positive
        assert not [m for m in range(len(x))
                    if labels[m] != labels[a] and d[a, p] < d[a, m] < d[a, n]]
    assert float(top[0].data) > 0


def test_random_hard_negative_draws_every_violating_negative():
    x, labels = random_batch(3, b=12, dim=2, classes=3)
    margin = 1.0
    spec = triplet_spec("RANDOM_HARD_NEGATIVE", margin=margin)
    layer = make_layer(spec)
    bottom, top = setup_layer(layer, [x, labels])
    d = ref_distances(x, "EUCLIDEAN")
    seen = {}
    for _ in range(150):
        layer.forward(bottom, top)
        for a, p, n in layer.mined_triplets():
            assert d[a, n] < d[a, p] + margin and labels[n] != labels[a]
            seen.setdefault((a, p), set()).add(n)
    for (a, p), drawn in seen.items():
        window = {n for n in range(len(x)) if labels[n] != labels[a] and d[a, n] < d[a, p] + margin}
        assert drawn == window


def test_batch_all_chunks_do_not_change_the_result(monkeypatch):
    x, labels = random_batch(11, b=14)
    spec = triplet_spec("BATCH_ALL", margin=1.0)
    results = []
    for chunk in (_mining.CHUNK_ELEMENTS, 1, 2 * 14 * 14):
        monkeypatch.setattr(_mining, "CHUNK_ELEMENTS", chunk)
        layer, bottom, top = forward(spec, x, labels)
        top[0].diff[...] = 1.0
        layer.backward(top, [True, False], bottom)
        results.append((float(top[0].data), float(top[1].data), bottom[0].diff.copy()))
    for loss, active, grad in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-12)
        assert active == results[0][1]
        np.testing.assert_allclose(grad, results[0][2], rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------- gradients --
def separated_batch(distance, margin, soft, b=8, dim=3, gap=2e-3):
    """A random batch whose every triplet is at least ``gap`` away from a
    kink or a change of the mined set (D_ap - D_an near 0 or -margin) and
    whose rows have no near-equal distances (argmin/argmax ties)."""
    for seed in range(1000):
        x, labels = random_batch(100 + seed, b=b, dim=dim, classes=3)
        d = ref_distances(x, distance)
        same = labels[:, None] == labels[None, :]
        ok = True
        for a in range(b):
            row = np.delete(d[a], a)
            if np.min(np.diff(np.sort(row))) < gap:
                ok = False
                break
            for p in range(b):
                if p == a or not same[a, p]:
                    continue
                v = d[a, p] - d[a, ~same[a]]
                if np.min(np.abs(v)) < gap or (not soft and np.min(np.abs(v + margin)) < gap):
                    ok = False
        if ok:
            return x, labels
    raise AssertionError("no separated batch found")


@pytest.mark.parametrize("margin", [0.2, 1.0, "soft"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("miner", MINERS)
def test_triplet_gradient(miner, distance, margin):
    soft = margin == "soft"
    m = 0.5 if soft else margin
    x, labels = separated_batch(distance, m, soft)
    spec = triplet_spec(miner, distance, m, soft)
    check_layer_gradient(spec, [x, labels], check_bottom=[0], stepsize=1e-5, threshold=1e-4)


def test_gradient_is_scaled_by_the_top_diff():
    x, labels = random_batch(5)
    spec = triplet_spec("BATCH_HARD")
    grads = []
    for scale in (1.0, 2.5):
        layer, bottom, top = forward(spec, x, labels)
        top[0].diff[...] = scale
        layer.backward(top, [True, False], bottom)
        grads.append(bottom[0].diff.copy())
    np.testing.assert_allclose(grads[1], 2.5 * grads[0], rtol=1e-12)
    assert np.abs(grads[0]).max() > 0


# ------------------------------------------------ empty and collapsed --
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("miner", MINERS)
@pytest.mark.parametrize("labels", [[1.0] * 6, [0, 1, 2, 3, 4, 5]], ids=["one-class", "distinct"])
def test_no_valid_triplet_gives_zero_loss_and_gradient(miner, distance, labels):
    x, _ = random_batch(2, b=6)
    layer, bottom, top = forward(triplet_spec(miner, distance), x, np.asarray(labels, float))
    top[0].diff[...] = 1.0
    bottom[0].diff[...] = np.nan
    layer.backward(top, [True, False], bottom)
    assert float(top[0].data) == 0.0 and float(top[1].data) == 0.0
    assert np.array_equal(bottom[0].diff, np.zeros_like(x))
    assert len(layer.mined_triplets()) == 0


@pytest.mark.parametrize("soft", [False, True], ids=["hinge", "soft"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("miner", MINERS)
def test_collapsed_embeddings_give_finite_values(miner, distance, soft):
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1], float)
    margin = 0.3
    nearly = np.full((8, 4), 0.7) + 1e-9 * np.arange(32).reshape(8, 4)
    for x in (np.full((8, 4), 0.7), np.zeros((8, 4)), nearly):
        layer, bottom, top = forward(triplet_spec(miner, distance, margin, soft), x, labels)
        top[0].diff[...] = 1.0
        layer.backward(top, [True, False], bottom)
        assert np.all(np.isfinite(bottom[0].diff)), (miner, distance, x[0, 0])
        loss, active = float(top[0].data), float(top[1].data)
        if miner == "SEMI_HARD":
            if x is not nearly:     # no negative is farther than the positive
                assert loss == 0.0 and active == 0.0
        else:                       # every triplet sits at the margin, all active
            assert loss == pytest.approx(math.log(2) if soft else margin, abs=1e-5)
            assert active == 1.0


def test_euclidean_gradient_at_zero_distance_is_finite_for_a_mined_pair():
    # anchor 0 and its only positive 1 coincide: dD/dx at D = 0 must not be NaN
    x = np.array([[0.5, 0.5], [0.5, 0.5], [2.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 0, 1, 1], float)
    layer, bottom, top = forward(triplet_spec("BATCH_ALL", margin=5.0), x, labels)
    top[0].diff[...] = 1.0
    layer.backward(top, [True, False], bottom)
    assert np.all(np.isfinite(bottom[0].diff))
    assert float(top[0].data) > 0


# --------------------------------------------- warm-up, RNG and phases --
def test_warmup_switches_miner_after_the_given_training_passes():
    x, labels = random_batch(4, b=12)
    d = ref_distances(x, "EUCLIDEAN")
    semi = ref_mine(d, labels, "SEMI_HARD", 0.75, False)[0]
    hard = ref_mine(d, labels, "BATCH_HARD", 0.75, False)[0]
    assert semi != hard
    spec = triplet_spec("BATCH_HARD", margin=0.75,
                        extra="warmup_iterations: 2 warmup_miner: SEMI_HARD")
    layer, bottom, top = forward(spec, x, labels)
    assert [tuple(t) for t in layer.mined_triplets()] == semi
    state = layer.state_dict()
    layer.forward(bottom, top)
    assert [tuple(t) for t in layer.mined_triplets()] == semi
    layer.forward(bottom, top)
    assert [tuple(t) for t in layer.mined_triplets()] == hard
    # resumed after one pass: one more warm-up pass, then the main miner
    resumed = make_layer(spec)
    bottom2, top2 = setup_layer(resumed, [x, labels])
    resumed.load_state_dict(state)
    resumed.forward(bottom2, top2)
    assert [tuple(t) for t in resumed.mined_triplets()] == semi
    resumed.forward(bottom2, top2)
    assert [tuple(t) for t in resumed.mined_triplets()] == hard
    # TEST nets never warm up
    tested, _, _ = forward(spec, x, labels, phase=pb.TEST)
    assert [tuple(t) for t in tested.mined_triplets()] == hard


def test_random_miner_resumes_from_state_dict():
    x, labels = random_batch(9, b=12, dim=2)
    spec = triplet_spec("RANDOM_HARD_NEGATIVE", margin=1.5)
    layer, bottom, top = forward(spec, x, labels)
    state = layer.state_dict()
    runs = []
    for _ in range(3):
        layer.forward(bottom, top)
        runs.append(layer.mined_triplets().tolist())
    assert runs[0] != runs[1] or runs[1] != runs[2]   # the draws do change
    resumed = make_layer(spec)
    bottom2, top2 = setup_layer(resumed, [x, labels])
    resumed.load_state_dict(state)
    for expected in runs:
        resumed.forward(bottom2, top2)
        assert resumed.mined_triplets().tolist() == expected


def test_float32_matches_float64():
    x, labels = random_batch(6, b=16, dim=5, classes=4)
    for miner in MINERS:
        for distance in DISTANCES:
            spec = triplet_spec(miner, distance, 0.3)
            ref = forward(spec, x, labels)[2]
            layer, bottom, top = forward(spec, x, labels, dtype=np.float32)
            assert top[0].data.dtype == np.float32
            assert float(top[0].data) == pytest.approx(float(ref[0].data), rel=1e-4, abs=1e-5)
            top[0].diff[...] = 1.0
            layer.backward(top, [True, False], bottom)
            assert bottom[0].diff.dtype == np.float32 and np.all(np.isfinite(bottom[0].diff))


@pytest.mark.parametrize("spec", [triplet_spec(m, "EUCLIDEAN", 0.5) for m in MINERS]
                         + [triplet_spec("BATCH_HARD", "COSINE", 0.25, soft=True),
                            triplet_spec("SEMI_HARD", "SQUARED_EUCLIDEAN", 1.0),
                            contrastive_spec("EUCLIDEAN", 2.0, 0.25, True),
                            contrastive_spec("COSINE", 0.75, 0.0, False)])
def test_same_results_on_every_backend(kernel_backend, spec):
    # one array code path: the emulated-kernel backend and CuPy (where a GPU
    # is usable) must give the NumPy results, draws of the random miner included
    x, labels = random_batch(8, b=16, dim=4, classes=4)
    compare_backends(spec, [x, labels], backend=kernel_backend, iterations=2)


def test_parameter_and_shape_errors():
    x, labels = random_batch(1)
    with pytest.raises(LayerError, match="margin > 0"):
        forward(triplet_spec("SEMI_HARD", margin=0), x, labels)
    with pytest.raises(LayerError, match="margin must be >= 0"):
        forward(triplet_spec("BATCH_HARD", margin=-1), x, labels)
    with pytest.raises(ShapeError, match="labels"):
        forward(triplet_spec("BATCH_HARD"), x, labels[:5])
    with pytest.raises(LayerError, match="pos_margin < margin"):
        forward(contrastive_spec(margin=0.5, pos_margin=0.5), x, labels)


# ------------------------------------------------- OnlineContrastiveLoss --
def ref_contrastive(d, labels, margin, pos_margin, hardest):
    b = len(labels)
    pull, push, n_pairs = [], [], 0
    for i in range(b):
        negatives = [j for j in range(b) if labels[j] != labels[i]]
        if hardest and negatives:
            negatives = [min(negatives, key=lambda j: (d[i, j], j))]
        for j in range(b):
            if j != i and labels[j] == labels[i]:
                pull.append(max(0.0, d[i, j] - pos_margin) ** 2)
                n_pairs += 1
        for j in negatives:
            push.append(max(0.0, margin - d[i, j]) ** 2)
            n_pairs += 1
    live = [v for v in pull if v > 0], [v for v in push if v > 0]
    loss = sum(sum(v) / len(v) if v else 0.0 for v in live)
    return loss, (len(live[0]) + len(live[1])) / n_pairs if n_pairs else 0.0


@pytest.mark.parametrize("hardest", [True, False])
@pytest.mark.parametrize("distance", DISTANCES)
def test_contrastive_matches_brute_force(distance, hardest):
    for seed in range(3):
        x, labels = random_batch(20 + seed, b=10)
        margin, pos_margin = (0.75, 0.125) if distance == "COSINE" else (2.0, 0.25)
        _, _, top = forward(contrastive_spec(distance, margin, pos_margin, hardest), x, labels)
        loss, active = ref_contrastive(ref_distances(x, distance), labels, margin, pos_margin,
                                       hardest)
        assert float(top[0].data) == pytest.approx(loss, rel=1e-9)
        assert float(top[1].data) == pytest.approx(active, rel=1e-12)


@pytest.mark.parametrize("hardest", [True, False])
@pytest.mark.parametrize("distance", DISTANCES)
def test_contrastive_gradient(distance, hardest):
    margin, pos_margin = (0.75, 0.125) if distance == "COSINE" else (2.0, 0.25)
    x, labels = separated_batch(distance, 0.5, True)
    d = ref_distances(x, distance)
    off = ~np.eye(len(x), dtype=bool)
    assert np.min(np.abs(d[off] - margin)) > 1e-3 and np.min(np.abs(d[off] - pos_margin)) > 1e-3
    check_layer_gradient(contrastive_spec(distance, margin, pos_margin, hardest), [x, labels],
                         check_bottom=[0], stepsize=1e-5, threshold=1e-4)


@pytest.mark.parametrize("distance", DISTANCES)
def test_contrastive_empty_and_collapsed(distance):
    x, _ = random_batch(3, b=6)
    for labels in ([0, 1, 2, 3, 4, 5], [2] * 6):       # no positive / no negative pair
        spec = contrastive_spec(distance, pos_margin=0.0)
        layer, bottom, top = forward(spec, np.full((6, 3), 0.5), np.asarray(labels, float))
        top[0].diff[...] = 1.0
        layer.backward(top, [True, False], bottom)
        assert np.all(np.isfinite(bottom[0].diff))
    # collapsed: positives cost nothing, every hardest negative costs margin^2
    layer, bottom, top = forward(contrastive_spec(distance, margin=1.0), np.full((6, 3), 0.5),
                                 np.array([0, 0, 1, 1, 2, 2], float))
    top[0].diff[...] = 1.0
    layer.backward(top, [True, False], bottom)
    assert float(top[0].data) == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.isfinite(bottom[0].diff))
    # a batch without any pair at all: loss 0, zero gradient
    layer, bottom, top = forward(contrastive_spec(distance), x[:1], np.zeros(1))
    top[0].diff[...] = 1.0
    layer.backward(top, [True, False], bottom)
    assert float(top[0].data) == 0.0 and float(top[1].data) == 0.0
    assert np.array_equal(bottom[0].diff, np.zeros((1, 3)))


def test_layers_in_a_net_report_the_active_fraction():
    from layergraph import Net
    from layergraph.prototxt import parse_text
    net = Net(parse_text("""
        layer { name: "in" type: "Input" top: "x" top: "y"
                input_param { shape { dim: 10 dim: 3 } shape { dim: 10 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "e"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
        layer { name: "triplet" type: "OnlineTripletLoss" bottom: "e" bottom: "y"
                top: "tl" top: "tactive" online_triplet_loss_param { miner: BATCH_HARD } }
        layer { name: "pairs" type: "OnlineContrastiveLoss" bottom: "e" bottom: "y"
                top: "cl" top: "cactive" }
        """, pb.NetParameter()), phase=pb.TRAIN)
    x, labels = random_batch(0)
    net.set_input("x", x)
    net.set_input("y", labels)
    loss = net.forward_backward()
    tl, cl = float(net.blobs["tl"].data), float(net.blobs["cl"].data)
    assert loss == pytest.approx(tl + cl, rel=1e-6)   # the active tops carry weight 0
    assert 0 < float(net.blobs["tactive"].data) <= 1
    assert np.abs(net.layer("ip").blobs[0].diff).max() > 0
