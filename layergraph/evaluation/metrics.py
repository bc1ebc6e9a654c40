r"""Retrieval and classification metrics of an embedding.

Definitions follow pytorch-metric-learning's ``AccuracyCalculator`` (Musgrave
et al., "A Metric Learning Reality Check", 2020), so the numbers compare with
papers; docs/metrics.md has the same formulas with worked examples.

Setting.  Queries :math:`q` with labels :math:`y_q` are ranked against a
reference set :math:`\{r_j\}` with labels :math:`y_j` by squared Euclidean
distance (the same order as Euclidean distance, and as cosine distance when
the embeddings are L2-normalised).  When the query set *is* the reference set
(the same split: leave-one-out), each query is removed from its own ranking.

* :math:`R_q` = the number of reference items with the query's label (minus
  the query itself when the sets are the same).  A query with
  :math:`R_q = 0` ("lone" query: its label has no other reference item) can
  neither retrieve nor be classified correctly: it is **excluded** from every
  metric below except NMI, and ``excluded_queries`` counts it.
* :math:`\mathrm{rel}_q(i) = 1` if the i-th nearest reference has label
  :math:`y_q`, else 0; :math:`P_q(i) = \frac1i\sum_{j\le i}\mathrm{rel}_q(j)`
  is the precision of the first i results; :math:`N` the ranked list length.

Each metric is the mean over the kept queries of

* precision@1:      :math:`\mathrm{rel}_q(1)`
* R-precision:      :math:`\frac{1}{R_q}\sum_{i=1}^{R_q}\mathrm{rel}_q(i)`
* MAP@R:            :math:`\frac{1}{R_q}\sum_{i=1}^{R_q}P_q(i)\,\mathrm{rel}_q(i)`
* mean average precision (mAP, the whole ranked list):
  :math:`\mathrm{AP}_q = \frac{1}{R_q}\sum_{i=1}^{N}P_q(i)\,\mathrm{rel}_q(i)`
  (every relevant item is somewhere in the list, so the divisor is
  :math:`R_q`; pytorch-metric-learning's ``mean_average_precision`` with
  ``k`` = the whole reference set)
* k-NN accuracy:    1 if the majority label of the k nearest references is
  :math:`y_q`; a tie between labels goes to the one ranked nearest first
* nearest-centroid accuracy: 1 if
  :math:`\arg\min_c \lVert q-\mu_c\rVert^2 = y_q`, :math:`\mu_c` the mean of
  the reference embeddings of label c.  Leave-one-out removes the query from
  its own label's centroid: with :math:`n` items,
  :math:`\mu'=(n\mu-q)/(n-1)` and :math:`q-\mu'=\frac{n}{n-1}(q-\mu)`, so that
  distance is scaled by :math:`(n/(n-1))^2`.

NMI (normalised mutual information) clusters the query embeddings with
k-means (scikit-learn ``KMeans``, as many clusters as query labels, best of
3 k-means++ starts, seeded)
and compares the clusters C with the labels Y over *all* queries:
:math:`\mathrm{NMI} = \frac{2\,I(Y;C)}{H(Y)+H(C)}` (scikit-learn's
``normalized_mutual_info_score``, arithmetic mean).

Ties.  Distances are ranked at float32 precision; equal distances are ordered
by reference index (the dataset order), so every number is reproducible —
Hamming distances (evaluation.hashing) tie often and use the same rule.

Memory.  Queries are processed in chunks: one chunk of queries x all
references distance matrix at a time (about 4 M entries), so 70,000 x 64
embeddings need a few hundred MB, never the 70,000² matrix.  The top
:math:`\max(R_q, k)` of each row is found with ``np.partition`` (argpartition
on keys that carry the reference index); mAP needs the whole ranked list and
sorts each row (about 5 ms a query against 70,000 references on one CPU
core: 10,000 test images against 60,000 training images take under a
minute).  This is plain NumPy: faiss (the library pytorch-metric-
learning uses) is not installed here and would be an optional extra; exact
brute force is what these metrics need anyway.

Example (leave-one-out on four 1-D points)::

    >>> import numpy as np
    >>> x = np.array([[0.0], [2.0], [3.0], [5.0]]); y = np.array([0, 0, 1, 1])
    >>> retrieval_metrics(x, y, k=1, include=("precision_at_1",))["precision_at_1"]
    0.5

(0 and 5 find their own label first, 2 and 3 find each other.)
"""
import numpy as np

from ..errors import LayergraphError

METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r",
           "mean_average_precision", "knn_accuracy", "centroid_accuracy", "nmi")
RANKING_METRICS = METRICS[:5]
MAX_CHUNK_ELEMENTS = 1 << 22    # queries x references per distance matrix

_INDEX_MASK = np.uint64(0xFFFFFFFF)
_LAST = np.uint64(np.iinfo(np.uint64).max)


# ------------------------------------------------------------- helpers ----

def check_embeddings(embeddings, labels, what="embeddings"):
    """(float64 (n, d) embeddings, int64 (n,) labels), or a one-line error."""
    x = np.asarray(embeddings)
    if x.ndim == 1:
        x = x[:, None]
    x = x.reshape(len(x), -1).astype(np.float64)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(x):
        raise LayergraphError(f"{what}: {len(x)} embeddings but {len(labels)} labels")
    if not len(x):
        raise LayergraphError(f"{what}: no embeddings")
    if not np.issubdtype(labels.dtype, np.integer):
        raise LayergraphError(f"{what}: labels must be integers, not {labels.dtype}")
    if not np.isfinite(x).all():
        raise LayergraphError(f"{what}: the embeddings contain NaN or infinite values")
    return x, labels.astype(np.int64)


def query_chunks(n_query, n_reference, chunk_size=None):
    """Slices of query rows so that one chunk's distance matrix holds about
    MAX_CHUNK_ELEMENTS entries (or ``chunk_size`` rows)."""
    if chunk_size is None:
        chunk_size = max(1, MAX_CHUNK_ELEMENTS // max(n_reference, 1))
    if chunk_size < 1:
        raise LayergraphError(f"chunk size must be positive, not {chunk_size}")
    for start in range(0, n_query, chunk_size):
        yield slice(start, min(start + chunk_size, n_query))


def squared_euclidean(query, reference, reference_sqnorm=None):
    """(b, n) squared distances, :math:`\\lVert q\\rVert^2 + \\lVert r\\rVert^2
    - 2 q\\cdot r` in float64, clipped at +0 (cancellation can give tiny
    negatives, and -0.0 would rank last by its bits)."""
    if reference_sqnorm is None:
        reference_sqnorm = np.einsum("ij,ij->i", reference, reference)
    d = np.einsum("ij,ij->i", query, query)[:, None] + reference_sqnorm[None, :]
    d -= 2.0 * (query @ reference.T)
    return np.where(d > 0.0, d, 0.0)


def relevant_counts(query_labels, reference_labels, same_source):
    """:math:`R_q` per query: reference items with the query's label, the
    query itself not counted when the sets are the same."""
    labels, counts = np.unique(reference_labels, return_counts=True)
    pos = np.minimum(np.searchsorted(labels, query_labels), len(labels) - 1)
    r = np.where(labels[pos] == query_labels, counts[pos], 0)
    return r - 1 if same_source else r


def rank(distances, exclude=None, top=None):
    """Reference indices ordered nearest first, (b, L): by distance, ties by
    reference index.

    Float distances: each entry becomes one uint64 key, (float32 bits of the
    distance) << 32 | reference index; for non-negative floats the bits order
    as the values, so sorting the keys orders by distance, then index.
    Integer distances (Hamming): a stable argsort (a radix sort for 8/16-bit
    integers).  ``exclude`` (one reference index per row: the query itself)
    is ranked last and cut off, so L = n - 1.  ``top``: only the ``top``
    nearest (float keys: found with np.partition before sorting them).
    """
    b, n = distances.shape
    if n >= 1 << 32:
        raise LayergraphError("more than 2**32 reference items")
    rows = np.arange(b)
    if np.issubdtype(distances.dtype, np.integer):
        largest = int(distances.max(initial=0)) + 1     # above every real distance
        d = distances.astype(np.uint8 if largest < 255 else np.uint16 if largest < 65535
                             else np.int64)
        if exclude is not None:
            d[rows, exclude] = largest
        length = n - (exclude is not None)
        if top is not None:
            length = min(top, length)
        return np.argsort(d, axis=1, kind="stable")[:, :length]
    keys = distances.astype(np.float32).view(np.uint32).astype(np.uint64)
    keys <<= np.uint64(32)
    keys |= np.arange(n, dtype=np.uint64)[None, :]
    if exclude is not None:
        keys[rows, exclude] = _LAST
        n -= 1
    if top is None or top >= n:
        keys = np.sort(keys, axis=1)[:, :n]
    else:
        keys = np.sort(np.partition(keys, top - 1, axis=1)[:, :top], axis=1)
    return (keys & _INDEX_MASK).astype(np.intp)


def knn_vote(neighbour_labels):
    """Majority label of each row of (b, k) neighbour labels, nearest first;
    among tied labels, the one that appears first (nearest) wins."""
    same = neighbour_labels[:, :, None] == neighbour_labels[:, None, :]
    votes = same.sum(axis=2)         # votes[i, j]: count of the label at position j
    winner = votes.argmax(axis=1)    # first position with the most votes
    return neighbour_labels[np.arange(len(neighbour_labels)), winner]


def ranking_scores(order, query_labels, reference_labels, relevant, k=1,
                   include=RANKING_METRICS):
    """Per-query scores of the ranking metrics named in ``include`` from the
    ranked reference indices ``order`` (b, L) (the whole list for
    mean_average_precision, else at least max(R_q, k) columns)."""
    rel = reference_labels[order] == query_labels[:, None]
    position = np.arange(1, rel.shape[1] + 1)
    precision = np.cumsum(rel, axis=1) / position          # P_q(i)
    within_r = position[None, :] <= relevant[:, None]
    r = np.maximum(relevant, 1).astype(np.float64)
    scores = {}
    if "precision_at_1" in include:
        scores["precision_at_1"] = rel[:, 0].astype(np.float64)
    if "r_precision" in include:
        scores["r_precision"] = (rel & within_r).sum(axis=1) / r
    if "mean_average_precision_at_r" in include:
        scores["mean_average_precision_at_r"] = np.where(rel & within_r, precision, 0.0).sum(1) / r
    if "mean_average_precision" in include:
        scores["mean_average_precision"] = np.where(rel, precision, 0.0).sum(axis=1) / r
    if "knn_accuracy" in include:
        predicted = knn_vote(reference_labels[order[:, :k]])
        scores["knn_accuracy"] = (predicted == query_labels).astype(np.float64)
    return scores


def class_centroids(reference, reference_labels):
    """(labels (c,), centroids (c, d), counts (c,)) of the reference set."""
    classes, inverse, counts = np.unique(reference_labels, return_inverse=True,
                                         return_counts=True)
    centroids = np.zeros((len(classes), reference.shape[1]))
    np.add.at(centroids, inverse, reference)
    return classes, centroids / counts[:, None], counts


def kmeans_nmi(embeddings, labels, seed=0, n_init=3):
    """NMI between the labels and k-means clusters of the embeddings
    (as many clusters as labels; scikit-learn, the best of ``n_init``
    k-means++ starts, ``random_state=seed``)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score
    n_clusters = len(np.unique(labels))
    clusters = KMeans(n_clusters=n_clusters, n_init=n_init,
                      random_state=seed).fit_predict(embeddings)
    return float(normalized_mutual_info_score(labels, clusters))


def confusion_matrix(labels, predicted, num_labels):
    """cm[true, predicted] counts."""
    cm = np.zeros((num_labels, num_labels), np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


# ------------------------------------------------------------- metrics ----

def retrieval_metrics(query, query_labels, reference=None, reference_labels=None, k=5,
                      include=METRICS, chunk_size=None, seed=0):
    """The metrics named in ``include`` (see the module docstring) of
    ``query`` against ``reference``; ``reference=None``: the query set is
    its own reference set (leave-one-out).

    Returns {metric: mean over the kept queries (None when every query is
    excluded), "queries", "references", "excluded_queries", "same_source",
    "k"}.
    """
    unknown = sorted(set(include) - set(METRICS))
    if unknown:
        raise LayergraphError(f"unknown metric(s) {', '.join(unknown)}; "
                              f"known: {', '.join(METRICS)}")
    same_source = reference is None
    query, query_labels = check_embeddings(query, query_labels, "query")
    if same_source:
        reference, reference_labels = query, query_labels
    else:
        reference, reference_labels = check_embeddings(reference, reference_labels,
                                                       "reference")
        if reference.shape[1] != query.shape[1]:
            raise LayergraphError(f"query embeddings are {query.shape[1]}-d but reference "
                                  f"embeddings {reference.shape[1]}-d")
    ranked = len(reference) - same_source
    if "knn_accuracy" in include and not 1 <= k <= ranked:
        raise LayergraphError(f"k must be between 1 and the {ranked} ranked reference "
                              f"items, not {k}")
    relevant = relevant_counts(query_labels, reference_labels, same_source)
    kept = relevant > 0
    ranking = [m for m in RANKING_METRICS if m in include]
    sums = {m: 0.0 for m in ranking}
    if "centroid_accuracy" in include:
        sums["centroid_accuracy"] = 0.0
        classes, centroids, counts = class_centroids(reference, reference_labels)
    reference_sqnorm = np.einsum("ij,ij->i", reference, reference)
    for rows in query_chunks(len(query), len(reference), chunk_size):
        sel = rows.start + np.flatnonzero(kept[rows])
        if not len(sel):
            continue
        q, q_labels, q_relevant = query[sel], query_labels[sel], relevant[sel]
        if ranking:
            distances = squared_euclidean(q, reference, reference_sqnorm)
            top = (None if "mean_average_precision" in include
                   else max(int(q_relevant.max()), k))
            order = rank(distances, sel if same_source else None, top)
            del distances
            for name, values in ranking_scores(order, q_labels, reference_labels,
                                               q_relevant, k, ranking).items():
                sums[name] += float(values.sum())
        if "centroid_accuracy" in include:
            d = squared_euclidean(q, centroids)
            if same_source:
                own = np.searchsorted(classes, q_labels)
                n = counts[own].astype(np.float64)
                d[np.arange(len(sel)), own] *= (n / (n - 1)) ** 2   # n > 1: kept
            predicted = classes[d.argmin(axis=1)]
            sums["centroid_accuracy"] += float((predicted == q_labels).sum())
    n_kept = int(kept.sum())
    result = {name: (sums[name] / n_kept if n_kept else None)
              for name in METRICS if name in sums}
    if "nmi" in include:
        result["nmi"] = kmeans_nmi(query, query_labels, seed=seed)
    result.update({"queries": int(len(query)), "references": int(len(reference)),
                   "excluded_queries": int(len(query) - n_kept),
                   "same_source": bool(same_source),
                   "k": int(k) if "knn_accuracy" in include else None})
    return result
