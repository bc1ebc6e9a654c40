"""Retrieval metrics (layergraph.evaluation.metrics), binary-code metrics
(evaluation.hashing) and ``layergraph evaluate``.

Every expected number below is derived by hand in the comments, from the
definitions in docs/metrics.md: rel(i) = 1 when the i-th nearest reference
has the query's label, P(i) = the precision of the first i results, R = the
query's relevant reference items.
"""
import json
import math
import os

import numpy as np
import pytest

import layergraph as lg
from layergraph.cli import main
from layergraph.errors import LayergraphError
from layergraph.evaluation import (binarize, code_threshold, hamming_distances,
                                   hamming_metrics, load_codes, retrieval_metrics,
                                   save_codes)
from layergraph.evaluation.metrics import RANKING_METRICS, knn_vote, rank

RANKED = ("precision_at_1", "r_precision", "mean_average_precision_at_r",
          "mean_average_precision", "knn_accuracy", "centroid_accuracy")


# ---------------------------------------------------- query vs reference ----
# 1-D references (position: label):  r0 0:A  r1 1:B  r2 2:A  r3 4:B  r4 5:A  r5 9:C
# Centroids: A (0+2+5)/3 = 2.333, B (1+4)/2 = 2.5, C 9.
A, B, C, D = 0, 1, 2, 3
REFERENCE = np.array([0.0, 1.0, 2.0, 4.0, 5.0, 9.0])[:, None]
REFERENCE_LABELS = np.array([A, B, A, B, A, C])
QUERY = np.array([0.4, 3.2, 8.0, 9.5, 1.2, 2.45])[:, None]
QUERY_LABELS = np.array([A, B, D, C, A, A])
# q0 0.4 (A): order r0 A .4, r1 B .6, r2 A 1.6, r3 B 3.6, r4 A 4.6, r5 C 8.6
#   rel 1 0 1 0 1 0, R = 3: P@1 1, RP 2/3, MAP@R (1 + 2/3)/3 = 5/9,
#   AP (1 + 2/3 + 3/5)/3 = 34/45; 3-NN A B A -> A (right); centroid A 1.93 < B 2.1 (right)
# q1 3.2 (B): order r3 B .8, r2 A 1.2, r4 A 1.8, r1 B 2.2, r0 A 3.2, r5 C 5.8
#   rel 1 0 0 1 0 0, R = 2: P@1 1, RP 1/2, MAP@R 1/2, AP (1 + 2/4)/2 = 3/4;
#   3-NN B A A -> A (wrong); centroid B .7 < A .87 (right)
# q2 8.0 (D): no reference has label D -> excluded
# q3 9.5 (C): r5 C first, R = 1: P@1 = RP = MAP@R = AP = 1;
#   3-NN C A B: a three-way tie goes to the nearest, C (right); centroid C (right)
# q4 1.2 (A): order r1 B .2, r2 A .8, r0 A 1.2, r3 B 2.8, r4 A 3.8, r5 C 7.8
#   rel 0 1 1 0 1 0, R = 3: P@1 0, RP 2/3, MAP@R (1/2 + 2/3)/3 = 7/18,
#   AP (1/2 + 2/3 + 3/5)/3 = 53/90; 3-NN B A A -> A (right); centroid A 1.13 < B 1.3 (right)
# q5 2.45 (A): order r2 A .45, r1 B 1.45, r3 B 1.55, r0 A 2.45, r4 A 2.55, r5 C
#   rel 1 0 0 1 1 0, R = 3: P@1 1, RP 1/3, MAP@R 1/3, AP (1 + 2/4 + 3/5)/3 = 7/10;
#   3-NN A B B -> B (wrong); centroid B .05 < A .117 (wrong)
# Means over the 5 kept queries:
EXPECTED = {
    "precision_at_1": 4 / 5,
    "r_precision": (2 / 3 + 1 / 2 + 1 + 2 / 3 + 1 / 3) / 5,          # 19/30
    "mean_average_precision_at_r": (5 / 9 + 1 / 2 + 1 + 7 / 18 + 1 / 3) / 5,   # 5/9
    "mean_average_precision": (34 / 45 + 3 / 4 + 1 + 53 / 90 + 7 / 10) / 5,  # 683/900
    "knn_accuracy": 3 / 5,
    "centroid_accuracy": 4 / 5,
}


def test_metrics_by_hand_query_against_reference():
    result = retrieval_metrics(QUERY, QUERY_LABELS, REFERENCE, REFERENCE_LABELS, k=3)
    for name, value in EXPECTED.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert result["excluded_queries"] == 1
    assert (result["queries"], result["references"], result["k"]) == (6, 6, 3)
    assert result["same_source"] is False
    assert EXPECTED["mean_average_precision"] == pytest.approx(683 / 900)


# --------------------------------------------------------- leave-one-out ----
# One set, 1-D (index: position label): 0: 0 A  1: 1 A  2: 4 B  3: 7 B  4: 8 A  5: 20 C
# Each point ranks the other five; C has no other member -> point 5 excluded.
LOO = np.array([0.0, 1.0, 4.0, 7.0, 8.0, 20.0])
LOO_LABELS = np.array([A, A, B, B, A, C])
# 0 (A): 1 A, 4 B, 7 B, 8 A, 20 C -> rel 1 0 0 1 0, R 2: P@1 1, RP 1/2, MAP@R 1/2, AP 3/4
# 1 (A): 0 A, 4 B, 7 B, 8 A, 20   -> the same: 1, 1/2, 1/2, 3/4
# 2 (B): 1 and 7 tie at distance 3 -> index order: 1 A, 7 B; then 0, 8 (tied, A), 20
#        rel 0 1 0 0 0, R 1: P@1 0, RP 0, MAP@R 0, AP 1/2
# 3 (B): 8 A, 4 B, 1, 0, 20 -> rel 0 1 0 0 0, R 1: 0, 0, 0, AP 1/2
# 4 (A): 7 B, 4 B, 1 A, 0 A, 20 -> rel 0 0 1 1 0, R 2: 0, 0, 0, AP (1/3 + 2/4)/2 = 5/12
# 3-NN: 0: A B B, 1: A B B, 2: A B A, 3: A B A, 4: B B A -> all wrong; 1-NN = P@1.
# Centroids without the query itself: A {0,1,8} mean 3, B {4,7} mean 5.5.
# 0: A w/o 0 = 4.5 -> 20.25 < B 30.25 (right)   1: A w/o 1 = 4 -> 9 < B 20.25 (right)
# 2: B w/o 2 = 7 -> 9 > A 1 (wrong)              3: B w/o 3 = 4 -> 9 < A 16 (right)
# 4: A w/o 4 = 0.5 -> 56.25 > B 6.25 (wrong)
LOO_EXPECTED = {
    "precision_at_1": 2 / 5,
    "r_precision": (1 / 2 + 1 / 2) / 5,
    "mean_average_precision_at_r": (1 / 2 + 1 / 2) / 5,
    "mean_average_precision": (3 / 4 + 3 / 4 + 1 / 2 + 1 / 2 + 5 / 12) / 5,   # 7/12
    "knn_accuracy": 0.0,
    "centroid_accuracy": 3 / 5,
}


def test_leave_one_out_excludes_each_query_from_its_own_ranking():
    result = retrieval_metrics(LOO, LOO_LABELS, k=3)
    for name, value in LOO_EXPECTED.items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert result["same_source"] is True and result["excluded_queries"] == 1
    assert retrieval_metrics(LOO, LOO_LABELS, k=1)["knn_accuracy"] == pytest.approx(2 / 5)
    # passing the set twice is *not* leave-one-out: every query finds itself first
    crossed = retrieval_metrics(LOO, LOO_LABELS, LOO, LOO_LABELS, k=1)
    assert crossed["precision_at_1"] == 1.0 and crossed["excluded_queries"] == 0


def test_rank_orders_by_distance_then_index_and_drops_the_query():
    distances = np.array([[3.0, 1.0, 0.0, 1.0, 2.0]])
    np.testing.assert_array_equal(rank(distances), [[2, 1, 3, 4, 0]])
    np.testing.assert_array_equal(rank(distances, exclude=np.array([2])), [[1, 3, 4, 0]])
    np.testing.assert_array_equal(rank(distances, top=2), [[2, 1]])
    # -0.0 (from cancellation) must rank as 0, not last by its sign bit
    np.testing.assert_array_equal(rank(np.array([[1.0, -0.0]]) + 0.0), [[1, 0]])
    # integer (Hamming) distances take the stable-argsort path: the same order
    ints = distances.astype(np.int32)
    np.testing.assert_array_equal(rank(ints), [[2, 1, 3, 4, 0]])
    np.testing.assert_array_equal(rank(ints, exclude=np.array([2])), [[1, 3, 4, 0]])
    np.testing.assert_array_equal(rank(ints, exclude=np.array([2]), top=2), [[1, 3]])
    rng = np.random.default_rng(0)
    many = rng.integers(0, 5, (6, 40))
    self_index = np.arange(6)
    np.testing.assert_array_equal(rank(many, exclude=self_index),
                                  rank(many.astype(np.float64), exclude=self_index))


def test_knn_vote_majority_and_nearest_tie_break():
    labels = np.array([[1, 2, 2],        # majority: 2
                       [3, 1, 2],        # three-way tie: the nearest, 3
                       [5, 4, 4, 5][:3]])  # 4 4 beat 5
    np.testing.assert_array_equal(knn_vote(labels), [2, 3, 4])
    # 2-2 tie: the label whose first member is nearer wins (5 at position 0)
    np.testing.assert_array_equal(knn_vote(np.array([[5, 4, 4, 5]])), [5])


def test_nmi_by_hand():
    # Two tight, far-apart groups: k-means (2 clusters: two labels) finds
    # C = {a, a, b, b}; labels Y = {0, 0, 0, 1}.
    # H(Y) = -(3/4 ln 3/4 + 1/4 ln 1/4), H(C) = ln 2,
    # H(Y|C) = 1/2 * 0 + 1/2 * ln 2, I = H(Y) - H(Y|C),
    # NMI = 2 I / (H(Y) + H(C)) = 0.343711...
    x = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    y = np.array([0, 0, 0, 1])
    h_y = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    mutual = h_y - 0.5 * math.log(2)
    expected = 2 * mutual / (h_y + math.log(2))
    assert expected == pytest.approx(0.343711, abs=1e-6)
    result = retrieval_metrics(x, y, include=("nmi",))
    assert result["nmi"] == pytest.approx(expected, abs=1e-9)
    # NMI covers every query, the lone one (label 1) included
    assert result["excluded_queries"] == 1


def test_exclusion_rule_and_all_excluded():
    # every label occurs once: leave-one-out leaves no query
    x = np.arange(4.0)[:, None]
    result = retrieval_metrics(x, np.arange(4), k=1, include=RANKED)
    assert result["excluded_queries"] == 4
    assert all(result[name] is None for name in RANKED)
    # queries whose labels the reference set lacks are excluded, the rest scored
    result = retrieval_metrics(x, np.array([0, 7, 8, 0]), x[:1], np.array([0]), k=1,
                               include=RANKED)
    assert result["excluded_queries"] == 2 and result["precision_at_1"] == 1.0


def test_chunking_and_partition_give_the_single_chunk_result():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, 150)
    query = rng.normal(size=(150, 5)) + labels[:, None] * 0.7
    ref_labels = rng.integers(0, 5, 200)
    reference = rng.normal(size=(200, 5)) + ref_labels[:, None] * 0.7
    for ref, ref_lab in ((reference, ref_labels), (None, None)):
        whole = retrieval_metrics(query, labels, ref, ref_lab, k=4, chunk_size=10 ** 6,
                                  include=RANKED)
        assert whole["excluded_queries"] == (0 if ref is None else int((labels == 5).sum()))
        for chunk in (1, 7, None):
            chunked = retrieval_metrics(query, labels, ref, ref_lab, k=4, chunk_size=chunk,
                                        include=RANKED)
            for name in RANKED:
                assert chunked[name] == pytest.approx(whole[name], abs=1e-12), (name, chunk)
        # without mAP the top max(R, k) come from np.partition instead of a full sort
        partial = retrieval_metrics(query, labels, ref, ref_lab, k=4, chunk_size=13,
                                    include=[m for m in RANKING_METRICS
                                             if m != "mean_average_precision"])
        for name in partial:
            if name in RANKING_METRICS:
                assert partial[name] == pytest.approx(whole[name], abs=1e-12), name


def test_bad_inputs_are_one_line_errors():
    x = np.zeros((4, 2))
    with pytest.raises(LayergraphError, match="k must be between 1 and the 3"):
        retrieval_metrics(x, np.array([0, 0, 1, 1]), k=4)
    with pytest.raises(LayergraphError, match="NaN"):
        retrieval_metrics(np.full((2, 2), np.nan), np.array([0, 0]))
    with pytest.raises(LayergraphError, match="unknown metric"):
        retrieval_metrics(x, np.array([0, 0, 1, 1]), include=("accuracy",))
    with pytest.raises(LayergraphError, match="3 labels"):
        retrieval_metrics(x, np.array([0, 0, 1]))
    with pytest.raises(LayergraphError, match="2-d but reference"):
        retrieval_metrics(x, np.array([0, 0, 1, 1]), np.zeros((3, 3)), np.array([0, 1, 1]))


# ------------------------------------------------------------ hash codes ----

def codes(text):
    return np.array([[c == "1" for c in word] for word in text.split()])


HASH_REFERENCE = codes("00000000 00010000 00110000 11110000 01110000")
HASH_REFERENCE_LABELS = np.array([0, 0, 1, 1, 0])
HASH_QUERY = codes("00000000 11100000 10000000 00001111 11111111")
HASH_QUERY_LABELS = np.array([0, 1, 1, 0, 2])
# Hamming distances to r0..r4 and the ranking (ties by reference index):
# q0 00000000 (0): 0 1 2 4 3 -> r0 0, r1 0, r2 1, r4 0, r3 1: rel 1 1 0 1 0, R 3
#    AP (1 + 1 + 3/4)/3 = 11/12; radius 2: r0 r1 r2 -> 2/3
# q1 11100000 (1): 3 4 3 1 2 -> r3 1, r4 0, r0 0 (3, before r2), r2 1, r1 0: rel 1 0 0 1 0,
#    R 2: AP (1 + 2/4)/2 = 3/4; radius 2: r3 r4 -> 1/2
# q2 10000000 (1): 1 2 3 3 4 -> r0 0, r1 0, r2 1, r3 1, r4 0: rel 0 0 1 1 0, R 2
#    AP (1/3 + 2/4)/2 = 5/12; radius 2: r0 r1 -> 0/2 = 0
# q3 00001111 (0): 4 5 6 8 7 -> the order of q0: AP 11/12; nothing within 2 -> 0 (empty)
# q4 (2): no reference with label 2 -> excluded
# mAP = (11/12 + 3/4 + 5/12 + 11/12)/4 = 3/4; P(r<=2) = (2/3 + 1/2 + 0 + 0)/4 = 7/24


def test_hamming_distances_and_metrics_by_hand():
    from layergraph.evaluation.hashing import pack, popcount_distances
    distances = hamming_distances(HASH_QUERY, HASH_REFERENCE)
    np.testing.assert_array_equal(distances[:4], [[0, 1, 2, 4, 3], [3, 4, 3, 1, 2],
                                                  [1, 2, 3, 3, 4], [4, 5, 6, 8, 7]])
    np.testing.assert_array_equal(popcount_distances(pack(HASH_QUERY), pack(HASH_REFERENCE)),
                                  distances)
    result = hamming_metrics(HASH_QUERY, HASH_QUERY_LABELS, HASH_REFERENCE,
                             HASH_REFERENCE_LABELS)
    assert result["hamming_map"] == pytest.approx(3 / 4, abs=1e-12)
    assert result["precision_hamming_radius_2"] == pytest.approx(7 / 24, abs=1e-12)
    assert result["empty_hamming_radius_2"] == 1
    assert result["excluded_queries"] == 1 and result["bits"] == 8
    chunked = hamming_metrics(HASH_QUERY, HASH_QUERY_LABELS, HASH_REFERENCE,
                              HASH_REFERENCE_LABELS, chunk_size=1)
    assert chunked == pytest.approx(result)


def test_hamming_leave_one_out_by_hand():
    # r0 0000 (0): r1 1, r2 2, r4 3, r3 4 -> rel 1 0 1 0, R 2: AP (1 + 2/3)/2 = 5/6; r<=2: 1/2
    # r1 0001 (0): r0 1, r2 1, r4 2, r3 3 -> rel 1 0 1 0: AP 5/6; r<=2: r0 r2 r4 -> 2/3
    # r2 0011 (1): r1 1, r4 1, r0 2, r3 2 -> rel 0 0 0 1, R 1: AP 1/4; r<=2: 1/4
    # r3 1111 (1): r4 1, r2 2, r1 3, r0 4 -> rel 0 1 0 0, R 1: AP 1/2; r<=2: r4 r2 -> 1/2
    # r4 0111 (0): r2 1, r3 1, r1 2, r0 3 -> rel 0 0 1 1, R 2: AP (1/3 + 2/4)/2 = 5/12;
    #    r<=2: r2 r3 r1 -> 1/3
    # mAP = (5/6 + 5/6 + 1/4 + 1/2 + 5/12)/5 = 17/30; P = (1/2 + 2/3 + 1/4 + 1/2 + 1/3)/5 = 9/20
    result = hamming_metrics(HASH_REFERENCE, HASH_REFERENCE_LABELS)
    assert result["hamming_map"] == pytest.approx(17 / 30, abs=1e-12)
    assert result["precision_hamming_radius_2"] == pytest.approx(9 / 20, abs=1e-12)
    assert result["empty_hamming_radius_2"] == 0 and result["excluded_queries"] == 0


def test_binarize_threshold_from_the_value_range():
    tanh_like = np.array([[-0.9, 0.2, 0.0], [0.4, -0.1, 0.7]])
    sigmoid_like = np.array([[0.1, 0.6, 0.5], [0.9, 0.4, 1.0]])
    assert code_threshold(tanh_like) == 0.0
    assert code_threshold(sigmoid_like) == 0.5
    assert code_threshold(sigmoid_like, tanh_like) == 0.0   # both splits decide together
    np.testing.assert_array_equal(binarize(tanh_like, 0.0), [[0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(binarize(sigmoid_like, 0.5), [[0, 1, 0], [1, 0, 1]])


def test_packed_codes_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    bits = rng.random((9, 13)) > 0.5          # 13 bits: two bytes, 3 padding bits
    labels = rng.integers(0, 4, 9)
    path = tmp_path / "sub" / "codes.npz"
    save_codes(str(path), {"testing": (bits, labels), "training": (bits[:4], labels[:4])},
               threshold=0.5)
    raw = np.load(path)
    assert raw["testing_codes"].dtype == np.uint8 and raw["testing_codes"].shape == (9, 2)
    np.testing.assert_array_equal(raw["testing_codes"], np.packbits(bits, axis=1))
    loaded = load_codes(str(path))
    assert loaded["bits"] == 13 and loaded["threshold"] == 0.5
    np.testing.assert_array_equal(loaded["splits"]["testing"][0], bits)
    np.testing.assert_array_equal(loaded["splits"]["testing"][1], labels)
    np.testing.assert_array_equal(loaded["splits"]["training"][0], bits[:4])
    with pytest.raises(LayergraphError, match="not a code file"):
        (tmp_path / "bad.npz").write_bytes(b"nope")
        load_codes(str(tmp_path / "bad.npz"))


# ------------------------------------------------------ evaluate command ----

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A TripletNet_28x28 trained for 3 iterations on 12 images per label."""
    from layergraph.imagedb.creators import copy_dataset, create_mnist
    from layergraph.tools.templates import new_from_template
    root = tmp_path_factory.mktemp("evaluate")
    old = os.environ.get("LAYERGRAPH_DB")
    os.environ["LAYERGRAPH_DB"] = str(root / "db")
    create_mnist(None, name="MNIST", download=False)
    copy_dataset("MNIST", "TINY", max_per_label=12, seed=0)
    run = root / "run"
    new_from_template("TripletNet_28x28", "TINY", str(run))
    solver = lg.Solver(str(run / "solver.prototxt"), log=None, overrides={
        "max_iter": 3, "test_interval": 0, "snapshot": 0})
    solver.solve()
    weights = f"{solver.snapshot_prefix()}_iter_3.caffemodel"
    solver.close()
    yield str(run / "train_val.prototxt"), weights
    if old is None:
        os.environ.pop("LAYERGRAPH_DB", None)
    else:
        os.environ["LAYERGRAPH_DB"] = old


def split_embeddings(model, weights, split):
    """The 'feat' embeddings of TINY.<split>, computed directly with a RUN net."""
    from layergraph.imagedb.store import open_source
    images, labels = open_source(f"TINY.{split}").read_all()
    net = lg.Net(model, lg.RUN, weights=weights, input_shape=(1, 1, 28, 28))
    out = []
    for start in range(0, len(images), 50):
        x = images[start:start + 50].astype(np.float32) * np.float32(0.00390625)  # the scale
        net.forward(**{net.inputs[0]: x})
        out.append(np.array(net.blobs["feat"].data, np.float64))
    net.close()
    return np.concatenate(out), labels


def test_evaluate_command_end_to_end(trained, tmp_path, capsys):
    model, weights = trained
    assert main(["evaluate", "--model", model, "--weights", weights, "--dataset", "TINY",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layer"] == "feat" and report["dimensions"] == 16
    assert (report["query"], report["reference"], report["same_source"]) == (
        "testing", "training", False)
    assert report["queries"] == report["references"] == 120
    assert report["excluded_queries"] == 0 and report["k"] == 5
    # the same numbers from embeddings computed here, independently of evaluate
    query, query_labels = split_embeddings(model, weights, "testing")
    reference, reference_labels = split_embeddings(model, weights, "training")
    direct = retrieval_metrics(query, query_labels, reference, reference_labels, k=5)
    for name in RANKED + ("nmi",):
        assert report[name] == pytest.approx(direct[name], abs=1e-6), name
        assert 0.0 <= report[name] <= 1.0

    # text: one metric per line; leave-one-out within the testing split, k = 3
    assert main(["evaluate", "--model", model, "--weights", weights, "--dataset", "TINY",
                 "--query", "testing", "--reference", "testing", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "leave-one-out" in lines[0]
    values = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    loo = retrieval_metrics(query, query_labels, k=3)
    for name in RANKED:
        assert float(values[name].split()[0]) == pytest.approx(loo[name], abs=5e-5), name
    assert values["knn_accuracy"].strip().endswith("(k=3)")

    # binary codes: the sign of the (tanh-free, so signed) embedding
    codes_file = tmp_path / "codes.npz"
    assert main(["evaluate", "--model", model, "--weights", weights, "--dataset", "TINY",
                 "--binary", "--export-codes", str(codes_file), "--count", "60",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries"] == report["references"] == 60
    assert report["threshold"] == 0.0 and report["bits"] == 16
    assert 0.0 <= report["hamming_map"] <= 1.0
    assert 0.0 <= report["precision_hamming_radius_2"] <= 1.0
    assert 0 <= report["empty_hamming_radius_2"] <= 60
    assert 0.0 <= report["mean_average_precision"] <= 1.0
    loaded = load_codes(str(codes_file))
    assert loaded["bits"] == 16 and set(loaded["splits"]) == {"testing", "training"}
    test_bits, test_labels = loaded["splits"]["testing"]
    pick = np.sort(np.random.default_rng(0).choice(120, 60, replace=False))  # --count 60
    np.testing.assert_array_equal(test_labels, query_labels[pick])
    np.testing.assert_array_equal(test_bits, query[pick] > 0.0)
    train_bits, train_labels = loaded["splits"]["training"]
    again = hamming_metrics(test_bits, test_labels, train_bits, train_labels)
    assert again["hamming_map"] == pytest.approx(report["hamming_map"])


@pytest.mark.parametrize("argv, fragment", [
    (["--dataset", "TINY.testing"], "without the split"),
    (["--dataset", "TINY", "--k", "0"], "--k must be positive"),
    (["--dataset", "TINY", "--k", "500"], "k must be between 1 and the 120"),
    (["--dataset", "TINY", "--layer", "nope"], "no layer or blob 'nope'"),
    (["--dataset", "TINY", "--threshold", "0.5"], "--threshold needs --binary"),
    (["--dataset", "NOPE"], "NOPE"),
])
def test_evaluate_errors_are_one_line(trained, capsys, argv, fragment):
    model, weights = trained
    code = main(["evaluate", "--model", model, "--weights", weights] + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1
