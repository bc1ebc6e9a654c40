"""DataSequence: anchor / positive / negative tuples from per-label caches."""
import numpy as np
import pytest

from layergraph.errors import LayerError
from layergraph.testing import make_layer, setup_layer


def sequence_layer(params, n_tops, seed=0):
    spec = f'name: "seq" type: "DataSequence" data_sequence_param {{ {params} }}'
    return make_layer(spec, seed=seed), n_tops


def run(layer, n_tops, batches):
    """Forward each (data, labels) batch; returns the tops of every batch."""
    out = []
    bottom = top = None
    for data, labels in batches:
        if bottom is None:
            bottom, top = setup_layer(layer, [data, labels], n_tops)
        else:
            bottom[0].data[...] = data
            bottom[1].data[...] = labels
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        out.append([t.data.copy() for t in top])
    return out


def make_batches(n_batches, n=12, labels=(0, 1, 2, 3), shape=(1, 3, 3), seed=0):
    """Batches of distinct random images; every label appears at least twice."""
    rng = np.random.default_rng(seed)
    result, table = [], {}
    for _ in range(n_batches):
        y = np.concatenate([np.repeat(labels, 2), rng.choice(labels, n - 2 * len(labels))])
        y = rng.permutation(y).astype(np.float64)
        x = rng.random((n,) + shape)
        for img, lab in zip(x, y):
            table[img.tobytes()] = int(lab)
        result.append((x, y))
    return result, table


def test_triplets_k1_invariants():
    batches, table = make_batches(6)
    layer, n_tops = sequence_layer("k: 1 cache_size: 5 output_labels: true", 4)
    seen = []
    for (data, labels), (anchor, pos, neg, lab) in zip(batches, run(layer, n_tops, batches)):
        seen.extend(data)
        np.testing.assert_array_equal(anchor, data)
        assert lab.shape == (12, 3)
        np.testing.assert_array_equal(lab[:, 0], labels)
        for i in range(12):
            p_label, n_label = table[pos[i].tobytes()], table[neg[i].tobytes()]
            assert p_label == labels[i] and not np.array_equal(pos[i], anchor[i])
            assert n_label != labels[i]
            assert (lab[i, 1], lab[i, 2]) == (p_label, n_label)
        # drawn from the caches: the last cache_size images of each label seen so far
        for y in range(4):
            recent = [img.tobytes() for img in seen if table[img.tobytes()] == y][-5:]
            for i in np.flatnonzero(labels == y):
                assert pos[i].tobytes() in recent


def test_k_negatives_never_share_the_anchor_label():
    batches, table = make_batches(4, n=16, labels=(3, 5, 7, 9, 11))
    layer, n_tops = sequence_layer("k: 3 cache_size: 8", 6)
    for (data, labels), tops in zip(batches, run(layer, n_tops, batches)):
        lab = tops[5]
        assert lab.shape == (16, 5)
        for j in range(3):
            neg = tops[2 + j]
            got = np.array([table[img.tobytes()] for img in neg])
            assert (got != labels).all()
            np.testing.assert_array_equal(lab[:, 2 + j], got)


def test_pairs_k0_balance_matches_alternate():
    batches, table = make_batches(3)
    layer, n_tops = sequence_layer("k: 0 balance_matches: true cache_size: 6", 3)
    for (data, labels), (anchor, other, lab) in zip(batches, run(layer, n_tops, batches)):
        assert lab.shape == (12, 2)
        other_labels = np.array([table[img.tobytes()] for img in other])
        np.testing.assert_array_equal(lab[:, 1], other_labels)
        assert (other_labels[0::2] == labels[0::2]).all()
        assert (other_labels[1::2] != labels[1::2]).all()
    layer, n_tops = sequence_layer("k: 0 balance_matches: false", 3)
    for (data, labels), (_, other, _) in zip(batches, run(layer, n_tops, batches)):
        assert all(table[img.tobytes()] != y for img, y in zip(other, labels))


def test_single_image_label_is_an_error_unless_another_is_cached():
    rng = np.random.default_rng(1)
    x = rng.random((6, 1, 2, 2))
    y = np.array([0, 0, 1, 1, 5, 1.0])
    # first sight of label 5 with one image: the anchor is its own positive
    layer, n_tops = sequence_layer("k: 1", 4)
    out = run(layer, n_tops, [(x, y)])
    np.testing.assert_array_equal(out[0][1][4], x[4])
    # the same single image again: label 5 really has one image -> error
    layer, n_tops = sequence_layer("k: 1", 4)
    with pytest.raises(LayerError, match="label 5 has a single distinct image"):
        run(layer, n_tops, [(x, y), (x, y)])
    # images of label 5 seen in an earlier batch: the cache provides the positive
    layer, n_tops = sequence_layer("k: 1", 4)
    x2 = rng.random((6, 1, 2, 2))
    out = run(layer, n_tops, [(x2, np.array([0, 0, 1, 1, 5, 5.0])), (x, y)])
    assert any(np.array_equal(out[1][1][4], x2[j]) for j in (4, 5))
    # an identical copy is not a different image
    y_dup = np.array([0, 0, 1, 1, 5, 5.0])
    x_dup = x.copy()
    x_dup[5] = x_dup[4]
    layer, n_tops = sequence_layer("k: 1", 4)
    with pytest.raises(LayerError, match="label 5"):
        run(layer, n_tops, [(x_dup, y_dup)])


def test_positive_choice_is_uniform():
    """All cached candidates of the anchor's label are chosen about equally often."""
    rng = np.random.default_rng(2)
    x = rng.random((8, 1, 2, 2))
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1.0])
    layer, n_tops = sequence_layer("k: 1 cache_size: 10", 4)
    counts = np.zeros(5)
    out = run(layer, n_tops, [(x, y)] * 400)
    for anchor, pos, _, _ in out:
        j = [k for k in range(5) if np.array_equal(pos[0], x[k])][0]
        counts[j] += 1
    assert counts[0] == 0                       # never the anchor itself
    assert counts[1:].min() > 70 and counts[1:].max() < 130   # 100 expected each


def test_negative_label_is_uniform_over_labels_not_images():
    rng = np.random.default_rng(3)
    x = rng.random((10, 1, 2, 2))
    y = np.array([0, 0, 1, 1, 1, 1, 1, 1, 2, 2.0])  # label 1 has three times the images
    layer, n_tops = sequence_layer("k: 1 cache_size: 10", 4)
    neg_labels = np.concatenate([out[3][:2, 2] for out in run(layer, n_tops, [(x, y)] * 300)])
    share = (neg_labels == 1).mean()  # anchors of label 0: labels 1 and 2 equally likely
    assert 0.42 < share < 0.58


def test_cache_keeps_the_last_cache_size_images_per_label():
    rng = np.random.default_rng(4)
    x = rng.random((7, 1, 2, 2))
    y = np.array([0, 0, 0, 0, 0, 1, 1.0])
    layer, n_tops = sequence_layer("k: 1 cache_size: 2", 4)
    (anchor, pos, neg, lab), = run(layer, n_tops, [(x, y)])
    for i in range(3):  # evicted anchors: positives from the two most recent images
        assert any(np.array_equal(pos[i], x[j]) for j in (3, 4))
    np.testing.assert_array_equal(pos[3], x[4])
    np.testing.assert_array_equal(pos[4], x[3])


def test_reproducible_and_resumable():
    batches, _ = make_batches(6)
    a, n_tops = sequence_layer("k: 2 cache_size: 4", 5, seed=11)
    b, _ = sequence_layer("k: 2 cache_size: 4", 5, seed=11)
    out_a = run(a, n_tops, batches)
    out_b = run(b, n_tops, batches)
    for ta, tb in zip(out_a, out_b):
        for u, v in zip(ta, tb):
            np.testing.assert_array_equal(u, v)
    # resume after 3 batches: the caches travel in the state
    c, _ = sequence_layer("k: 2 cache_size: 4", 5, seed=11)
    run(c, n_tops, batches[:3])
    state = c.state_dict()
    d, _ = sequence_layer("k: 2 cache_size: 4", 5, seed=11)
    bottom, top = setup_layer(d, list(batches[0]), n_tops)
    d.load_state_dict(state)
    for (data, labels), expected in zip(batches[3:], out_a[3:]):
        bottom[0].data[...] = data
        bottom[1].data[...] = labels
        d.forward(bottom, top)
        for t, e in zip(top, expected):
            np.testing.assert_array_equal(t.data, e)


def test_labels_find_their_cache_rows_in_order_of_first_sight():
    """Rows go to labels in the order they are first seen, whether a batch
    finds them through the small-label array or the dict (negative and
    very large labels), across batches and after a restore."""
    from layergraph.layers.data_sequence import LOOKUP_LABELS
    big = LOOKUP_LABELS + 7
    labels = [(5, 5, 2, 2), (2, 5, 5, 2), (-3, 2, -3, 5), (big, 9, big, 9), (9, 5, big, -3)]
    rng = np.random.default_rng(3)
    batches = [(rng.random((4, 1, 2, 2)), np.array(y, np.float64)) for y in labels]
    layer, n_tops = sequence_layer("k: 1 cache_size: 4 output_labels: true", 4)
    out = run(layer, n_tops, batches)
    assert layer._row_labels == [5, 2, -3, big, 9]
    assert list(layer._row_of) == [-1, -1, 1, -1, -1, 0, -1, -1, -1, 4]
    for (_, y), tops in zip(batches, out):
        np.testing.assert_array_equal(tops[3][:, 0], y)          # the anchors' labels
        assert (tops[3][:, 1] == tops[3][:, 0]).all()            # positives share them
        assert (tops[3][:, 2] != tops[3][:, 0]).all()            # negatives do not
    restored, _ = sequence_layer("k: 1 cache_size: 4 output_labels: true", 4)
    setup_layer(restored, list(batches[0]), n_tops)
    restored.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(restored._row_of, layer._row_of)
    np.testing.assert_array_equal(restored._rows_for(np.array([9, 2, big, 5])), [4, 1, 3, 0])


def test_parameter_errors():
    x, y = np.zeros((4, 1, 2, 2)), np.zeros(4)
    layer, _ = sequence_layer("k: 1", 3)
    with pytest.raises(LayerError, match="needs 4 tops"):
        setup_layer(layer, [x, y], 3)
    layer, _ = sequence_layer("k: 1", 4)
    with pytest.raises(LayerError, match="one label per item"):
        setup_layer(layer, [x, np.zeros(3)], 4)
    rng = np.random.default_rng(0)
    layer, n_tops = sequence_layer("k: 1 label_count: 2 label_start: 0", 4)
    with pytest.raises(LayerError, match="label 3 is outside"):
        run(layer, n_tops, [(rng.random((4, 1, 2, 2)), np.array([0, 0, 1, 3.0]))])
    layer, n_tops = sequence_layer("k: 1", 4)
    with pytest.raises(LayerError, match="at least two labels"):
        run(layer, n_tops, [(rng.random((4, 1, 2, 2)), np.zeros(4))])
    assert not layer.has_backward


def _both_paths(params, n_tops, batches, seed=5):
    """Each batch through the compiled host step and through the NumPy code
    (float32 layers, the same seed): tops per batch, the final caches'
    state, or the error each raised -- checking that each path ran."""
    from layergraph import cpu_kernels
    if cpu_kernels.library() is None:
        pytest.skip("no compiled loops here")
    out = []
    for native in (True, False):
        spec = f'name: "seq" type: "DataSequence" data_sequence_param {{ {params} }}'
        layer = make_layer(spec, seed=seed, dtype=np.float32)
        layer.native_step = native
        calls = []
        step = cpu_kernels.data_sequence_step
        try:
            cpu_kernels.data_sequence_step = lambda *a: calls.append(1) or step(*a)
            tops = run(layer, n_tops, [(x.astype(np.float32), y) for x, y in batches])
        except LayerError as e:
            tops = str(e)
        finally:
            cpu_kernels.data_sequence_step = step
        assert bool(calls) == native
        state = (layer._cache.copy(), layer._hash.copy(), layer._count.copy(),
                 layer._cursor.copy())
        out.append((tops, state))
    return out


@pytest.mark.parametrize("params,n_tops", [
    ("k: 1 cache_size: 3 output_labels: true", 4),      # rings wrap within a batch
    ("k: 2 cache_size: 5 output_labels: false", 4),
    ("k: 0 cache_size: 4 balance_matches: true output_labels: true", 3),
    ("k: 0 cache_size: 6 output_labels: false", 2),
])
def test_compiled_step_makes_the_numpy_choices(params, n_tops):
    """kernels/cpu/data_sequence.cpp against the NumPy code it replaces: the
    same tops (images and labels) bit for bit, batch after batch, and the
    same caches, counts and cursors after."""
    batches, _ = make_batches(7, n=13, labels=(0, 1, 2, 3, 4), shape=(1, 3, 2))
    # first: labels 5 and 6 seen once each (the anchor is its own positive)
    rng = np.random.default_rng(8)
    batches.insert(0, (rng.random((13, 1, 3, 2)),
                       np.array([5., 0, 0, 6, 1, 1, 2, 2, 3, 3, 4, 4, 0])))
    (native, native_state), (ref, ref_state) = _both_paths(params, n_tops, batches)
    assert not isinstance(native, str) and not isinstance(ref, str)
    for a, b in zip(native, ref):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    for u, v in zip(native_state, ref_state):
        np.testing.assert_array_equal(u, v)


def test_compiled_step_raises_the_numpy_errors():
    """Label 0 with two copies of one image only (no positive) and a batch
    of one label (no negative): the same messages from both paths."""
    rng = np.random.default_rng(4)
    x = rng.random((4, 1, 2, 2))
    x[3] = x[0]
    for batches in ([(x, np.array([0., 1, 1, 0]))], [(rng.random((4, 1, 2, 2)), np.zeros(4))]):
        (native, native_state), (ref, ref_state) = _both_paths(
            "k: 1 cache_size: 4 output_labels: false", 3, batches)
        assert isinstance(native, str) and native == ref
        for u, v in zip(native_state, ref_state):   # the batch stored before the error
            np.testing.assert_array_equal(u, v)


def test_numpy_reference_inside_cpu_kernels_disabled():
    """Set up inside cpu_kernels.disabled() (the NumPy reference of every
    compiled loop), the layer takes its NumPy code too."""
    from layergraph import cpu_kernels
    batches, _ = make_batches(2)
    with cpu_kernels.disabled():
        layer, n_tops = sequence_layer("k: 1 cache_size: 4", 4)
        bottom, top = setup_layer(layer, [b.astype(np.float32) for b in batches[0]], n_tops)
    assert not layer._compiled
    layer.native_step = True
    layer.reshape(bottom, top)
    assert layer._compiled == (cpu_kernels.library() is not None)
