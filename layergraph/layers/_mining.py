r"""Online mining inside one batch: the pieces shared by OnlineTripletLoss and
OnlineContrastiveLoss (pytorch-metric-learning's split into a distance, a
miner and a reducer, written for ``xp`` = NumPy or CuPy).

Everything here works on the (B, B) matrix of pairwise distances and the
(B, B) masks of positive pairs (same label, a != p) and negative pairs
(different labels); memory grows with B^2, never B^3.

Distances (``OnlineTripletLossParameter.Distance``), x_i the i-th row::

    SQUARED_EUCLIDEAN   D_ij = ||x_i - x_j||^2
    EUCLIDEAN           D_ij = sqrt(||x_i - x_j||^2 + eps)        eps = 1e-12
    COSINE              D_ij = 1 - y_i . y_j,  y_i = x_i / sqrt(||x_i||^2 + eps)

The squared distances come from the Gram matrix of the *centred* rows
(x_i - mean): distances do not change under a translation, and centring keeps
the cancellation in ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j relative to the
embedding's spread, not its offset (a nearly collapsed batch far from the
origin still gets accurate distances).  The eps under the square root keeps
dD/dx = (x_i - x_j) / D finite at D = 0 (a collapsed batch gets a zero
gradient there, never NaN).  COSINE normalises internally, so the layer gives
1 - cos whatever the input's scale; on L2-normalised input it changes nothing.

Backward of a loss E through D, with G = dE/dD and C = G + G^T::

    SQUARED_EUCLIDEAN   dE/dx_i = 2 (sum_j C_ij x_i - sum_j C_ij x_j)
    EUCLIDEAN           the same with C_ij / (2 D_ij) in place of C_ij
    COSINE              dE/dy_i = -sum_j C_ij y_j,
                        dE/dx_i = (dE/dy_i - y_i (y_i . dE/dy_i)) / sqrt(||x_i||^2 + eps)

Every product is (B, B) x (B, D): O(B^2 + B D) memory.
"""
import numpy as np

from ..proto import pb

EPS = 1e-12
#: BATCH_ALL looks at c x B x B triplets at a time, c anchors chosen so that a
#: chunk holds about this many elements (memory stays O(B^2 + CHUNK_ELEMENTS))
CHUNK_ELEMENTS = 1 << 22

_P = pb.OnlineTripletLossParameter
BATCH_ALL, BATCH_HARD, SEMI_HARD = _P.BATCH_ALL, _P.BATCH_HARD, _P.SEMI_HARD
RANDOM_HARD_NEGATIVE, HARDEST_NEGATIVE = _P.RANDOM_HARD_NEGATIVE, _P.HARDEST_NEGATIVE
EUCLIDEAN, SQUARED_EUCLIDEAN, COSINE = _P.EUCLIDEAN, _P.SQUARED_EUCLIDEAN, _P.COSINE


def miner_name(miner):
    return _P.Miner.Name(miner)


def distance_name(distance):
    return _P.Distance.Name(distance)


def stable_argsort(xp, a):
    """Row-wise stable argsort (ties keep their column order).  CuPy's sort is
    always stable and takes no ``kind``."""
    if xp is np:
        return np.argsort(a, axis=1, kind="stable")
    return xp.argsort(a, axis=1)


def label_masks(xp, labels):
    """(positive, negative) (B, B) boolean masks from B labels:
    positive[a, j] = label_a == label_j and a != j; negative = label_a != label_j."""
    n = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    return same & ~xp.eye(n, dtype=bool), ~same


def count_at_most(xp, values, queries, strict):
    """For every row a and column j of ``queries`` (B, Q): how many entries of
    row a of ``values`` (B, M) are <= queries[a, j] (``strict``: < ).

    A row-wise searchsorted done with one stable sort of the (B, M + Q) rows
    [values | queries] (queries first when ``strict``, so that a value equal to
    a query sorts after it and is not counted): the running count of values
    in sorted order, read at each query's position."""
    b, m = values.shape
    q = queries.shape[1]
    if strict:
        joint = xp.concatenate([queries, values], axis=1)
        is_value = xp.concatenate([xp.zeros(q, dtype=np.int64), xp.ones(m, dtype=np.int64)])
        at = slice(0, q)
    else:
        joint = xp.concatenate([values, queries], axis=1)
        is_value = xp.concatenate([xp.ones(m, dtype=np.int64), xp.zeros(q, dtype=np.int64)])
        at = slice(m, m + q)
    order = stable_argsort(xp, joint)
    running = xp.cumsum(is_value[order], axis=1)
    counts = xp.empty_like(running)
    counts[xp.arange(b)[:, None], order] = running
    return counts[:, at]


class PairwiseDistance:
    """The (B, B) distance matrix of a batch and its backward (module docstring)."""

    def __init__(self, xp, kind, eps=EPS):
        if kind not in (EUCLIDEAN, SQUARED_EUCLIDEAN, COSINE):
            raise ValueError(f"unknown distance {kind!r}")
        self.xp, self.kind, self.eps = xp, kind, eps

    def forward(self, x):
        """x (B, D) -> D (B, B)."""
        xp = self.xp
        n = x.shape[0]
        diag = xp.arange(n)
        if self.kind == COSINE:
            self._norm = xp.sqrt(xp.sum(x * x, axis=1) + self.eps)
            self._y = x / self._norm[:, None]
            return 1.0 - self._y @ self._y.T
        centred = x - xp.mean(x, axis=0) if n else x
        sq = xp.sum(centred * centred, axis=1)
        d2 = xp.maximum(sq[:, None] + sq[None, :] - 2.0 * (centred @ centred.T), 0.0)
        d2[diag, diag] = 0.0
        self._centred = centred
        if self.kind == SQUARED_EUCLIDEAN:
            return d2
        self._dist = xp.sqrt(d2 + self.eps)
        return self._dist

    def backward(self, grad):
        """dE/dD (B, B) -> dE/dx (B, D)."""
        xp = self.xp
        c = grad + grad.T
        if self.kind == COSINE:
            y = self._y
            dy = -(c @ y)
            dot = xp.sum(dy * y, axis=1)
            return (dy - y * dot[:, None]) / self._norm[:, None]
        if self.kind == EUCLIDEAN:
            c = c / (2.0 * self._dist)
        centred = self._centred
        return 2.0 * (xp.sum(c, axis=1)[:, None] * centred - c @ centred)


class Mining:
    """What a miner found in one batch.

    ``loss`` and ``active`` are 0-d device arrays, ``grad`` = dE/dD (B, B);
    ``anchor``/``positive``/``negative``/``valid`` are the explicit triplets
    (index arrays and a mask of one shape) for every miner but BATCH_ALL,
    whose triplets stay implicit (``batch_all_triplets`` lists them)."""

    def __init__(self, loss, active, grad, triplets=None):
        self.loss, self.active, self.grad = loss, active, grad
        self.triplets = triplets


def triplet_terms(xp, v, soft):
    """(loss, dloss/dv) of the hinge max(0, v) or the soft margin
    softplus(v) = max(v, 0) + log(1 + exp(-|v|)), slope sigmoid(v)."""
    if soft:
        return (xp.maximum(v, 0) + xp.log1p(xp.exp(-xp.abs(v))),
                0.5 * (1.0 + xp.tanh(0.5 * v)))
    return xp.maximum(v, 0), (v > 0).astype(v.dtype)


def _as(xp, count, dtype):
    return xp.asarray(count).astype(dtype)


def _explicit(xp, dist, anchor, positive, negative, valid, units, margin, soft):
    """Loss, active fraction and dE/dD of explicit triplets: mean over the
    valid (mined) ones; active = mined with a non-zero loss / ``units``."""
    b = dist.shape[0]
    dtype = dist.dtype
    v = dist[anchor, positive] - dist[anchor, negative]
    if not soft:
        v = v + margin
    loss, slope = triplet_terms(xp, v, soft)
    loss = xp.where(valid, loss, 0.0)
    mined = _as(xp, xp.maximum(xp.sum(valid), 1), dtype)
    weight = (xp.where(valid, slope, 0.0) / mined).ravel()
    grad = (xp.bincount((anchor * b + positive).ravel(), weights=weight, minlength=b * b)
            - xp.bincount((anchor * b + negative).ravel(), weights=weight, minlength=b * b))
    active = (_as(xp, xp.sum(valid & (loss > 0)), dtype)
              / _as(xp, xp.maximum(units, 1), dtype))
    return Mining(xp.sum(loss) / mined, active, grad.reshape(b, b).astype(dtype),
                  (anchor, positive, negative, valid))


def _batch_all(xp, dist, pos, neg, margin, soft):
    """Every valid triplet, in chunks of anchors (see CHUNK_ELEMENTS)."""
    b = dist.shape[0]
    dtype = dist.dtype
    grad = xp.zeros((b, b), dtype=dtype)
    total = xp.zeros((), dtype=dtype)
    nonzero = xp.zeros((), dtype=np.int64)
    valid_count = xp.zeros((), dtype=np.int64)
    step = max(1, CHUNK_ELEMENTS // max(b * b, 1))
    for start in range(0, b, step):
        rows = slice(start, min(b, start + step))
        d = dist[rows]
        valid = pos[rows][:, :, None] & neg[rows][:, None, :]   # (c, p, n)
        v = d[:, :, None] - d[:, None, :]
        if not soft:
            v = v + margin
        loss, slope = triplet_terms(xp, v, soft)
        loss = xp.where(valid, loss, 0.0)
        live = valid & (loss > 0)
        slope = xp.where(live, slope, 0.0)
        total = total + xp.sum(loss)
        nonzero = nonzero + xp.sum(live)
        valid_count = valid_count + xp.sum(valid)
        grad[rows] += xp.sum(slope, axis=2) - xp.sum(slope, axis=1)
    mined = _as(xp, xp.maximum(nonzero, 1), dtype)
    active = _as(xp, nonzero, dtype) / _as(xp, xp.maximum(valid_count, 1), dtype)
    return Mining(total / mined, active, grad / mined)


def batch_all_triplets(xp, dist, pos, neg, margin, soft):
    """The (M, 3) triplets BATCH_ALL keeps (valid, non-zero loss), as NumPy
    rows (a, p, n) in lexicographic order.  Materialises B^3 booleans: for
    inspection and tests, not the training path."""
    v = dist[:, :, None] - dist[:, None, :]
    if not soft:
        v = v + margin
    loss, _ = triplet_terms(xp, v, soft)
    keep = pos[:, :, None] & neg[:, None, :] & (loss > 0)
    from ..backend import to_numpy
    return np.argwhere(to_numpy(keep))


def mine_triplets(xp, miner, dist, pos, neg, margin, soft, uniform=None):
    """Run ``miner`` on the distance matrix (see OnlineTripletLoss for the
    definitions).  ``uniform`` (B, B) in [0, 1) drives RANDOM_HARD_NEGATIVE."""
    b = dist.shape[0]
    rows = xp.arange(b)
    if miner == BATCH_ALL:
        return _batch_all(xp, dist, pos, neg, margin, soft)
    has_negative = xp.any(neg, axis=1)
    if miner == BATCH_HARD:
        valid = xp.any(pos, axis=1) & has_negative
        hardest_pos = xp.argmax(xp.where(pos, dist, -xp.inf), axis=1)
        hardest_neg = xp.argmin(xp.where(neg, dist, xp.inf), axis=1)
        return _explicit(xp, dist, rows, hardest_pos, hardest_neg, valid, xp.sum(valid),
                         margin, soft)
    # per positive pair (a, p): one triplet (a, p, n_ap) at most
    anchor = xp.broadcast_to(rows[:, None], (b, b))
    positive = xp.broadcast_to(rows[None, :], (b, b))
    pairs = pos & has_negative[:, None]
    units = xp.sum(pairs)
    if miner == HARDEST_NEGATIVE:
        closest = xp.argmin(xp.where(neg, dist, xp.inf), axis=1)
        negative = xp.broadcast_to(closest[:, None], (b, b))
        return _explicit(xp, dist, anchor, positive, negative, pairs, units, margin, soft)
    neg_dist = xp.where(neg, dist, xp.inf)
    order = stable_argsort(xp, neg_dist)          # each anchor's negatives, closest first
    n_neg = xp.sum(neg, axis=1)[:, None]
    if miner == SEMI_HARD:
        # the first negative (in sorted order) farther than d(a, p) ...
        not_farther = count_at_most(xp, neg_dist, dist, strict=False)
        at = xp.minimum(not_farther, b - 1)
        candidate = neg_dist[rows[:, None], order[rows[:, None], at]]
        # ... kept when it is also inside the margin
        valid = pairs & (not_farther < n_neg) & (candidate < dist + margin)
        return _explicit(xp, dist, anchor, positive, order[rows[:, None], at], valid, units,
                         margin, soft)
    if miner == RANDOM_HARD_NEGATIVE:
        if uniform is None:
            raise ValueError("RANDOM_HARD_NEGATIVE needs uniform draws")
        violating = count_at_most(xp, neg_dist, dist + margin, strict=True)
        pick = xp.floor(uniform * violating).astype(np.int64)
        pick = xp.minimum(pick, xp.maximum(violating - 1, 0))
        valid = pairs & (violating > 0)
        return _explicit(xp, dist, anchor, positive, order[rows[:, None], pick], valid, units,
                         margin, soft)
    raise ValueError(f"unknown miner {miner!r}")


def reshape_batch_loss(layer, bottom, top):
    """The shapes every loss on one batch of embeddings checks: bottoms
    (B, ...) embeddings and (B,) or (B, 1) labels; scalar tops (the loss and
    the optional active fraction)."""
    x, label = bottom
    if x.num_axes < 1:
        raise layer.shape_error(f"embeddings must be (B, ...), got {x.shape}")
    n = x.shape[0]
    if label.num_axes == 0 or label.shape[0] != n or label.count != n:
        raise layer.shape_error(
            f"labels {label.shape} must be (B,) or (B, 1) for embeddings {x.shape}")
    for t in top:
        t.reshape(())
