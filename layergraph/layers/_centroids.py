"""Shared math of the metric-learning evaluation layers (Decode,
AccuracyDecode, AccuracyEncoding, Debug): label layouts, per-label
centroids, ring-buffer caches and distance matrices.

Not a layer module: it registers nothing (the registry imports it, harmlessly).

Label layouts
-------------
A label bottom holds one row per item: ``(N,)``, ``(N, 1)`` or ``(N, C)``.
Column 0 is the label of the item itself: MyCaffe's DataSequence ``lbl`` top
is (anchor, positive, negative) and its pair data with ``output_all_labels``
is (first image, second image), so in both layouts column 0 belongs to the
anchor / first image, which is the embedding these layers look at.

Centroid update (the rule Decode and AccuracyEncoding share)
------------------------------------------------------------
For label ``l`` with count ``n_l`` (items averaged so far) and ``m_l`` items of
that label in the batch (mean ``x̄_l``), with ``M = cache_size * N``:

    n_l <  M:  c_l <- (n_l c_l + sum_batch x) / (n_l + m_l),  n_l <- min(n_l + m_l, M)
    n_l >= M:  c_l <- (1 - beta) c_l + beta x̄_l,  beta = m_l / M

i.e. the exact running mean of everything seen until ``M`` items were
averaged, then an exponential moving average computed from the batch as a
whole.  (MyCaffe scales the first item by 1/M and applies its EMA item by
item, so the result depended on the order inside a batch; neither happens
here.)  ``n_l`` saturates at ``M``: past that point only "n_l >= M" matters.

Kernel path
-----------
On the GPU (and its CPU emulation) the layers run kernels/decode.cu and
kernels/accuracy.cu instead of the array code below; :func:`ignored_mask_array`
and :func:`label_columns` give the kernels their view of the ignore list and of
the label rows.  All state stays in the layers' blobs, on the device.  The
kernels do not check the label range (that would pull the labels to the host
on every batch): an item whose label is outside [0, L) updates nothing and
counts as wrong, where the NumPy path raises.
"""
import numpy as np

#: distance reported for a label that has no centroid / cached item yet, or is
#: ignored: large but finite (fits float32), so sums of it stay finite.
NOT_READY = 1e30
#: a distance at or above this is "not ready" (robust to float32 rounding).
NOT_READY_THRESHOLD = 0.5 * NOT_READY


# ------------------------------------------------------------- labels ----
def check_embedding(layer, x, dim):
    """The embedding bottom must keep the item size the layer was set up with."""
    if x.num_axes < 1 or x.count_range(1) != dim:
        raise layer.shape_error(
            f"embedding {x.shape} does not have the {dim} features per item "
            f"the layer was set up with")


def label_rows(layer, label, embedding_shape):
    """The label blob as an (N, C) array; its first axis must be N."""
    n = embedding_shape[0] if embedding_shape else 1
    shape = label.shape
    if len(shape) == 0 or shape[0] != n:
        raise layer.shape_error(
            f"label bottom of shape {shape} does not match bottom[0] of shape "
            f"{embedding_shape}: it needs one row per item ({n})")
    cols = label.count // n if n else 1
    return label.data.reshape(n, cols)


def item_labels(layer, label, embedding_shape):
    """Integer label of each item (column 0 of the label rows), shape (N,)."""
    xp = layer.xp
    rows = label_rows(layer, label, embedding_shape)
    return xp.rint(rows[:, 0]).astype(xp.int64)


def check_label_range(layer, labels, num_labels, valid=None):
    """Raise when a (valid) label is outside [0, num_labels)."""
    xp = layer.xp
    sel = labels if valid is None else labels[valid]
    if sel.size == 0:
        return
    lo, hi = int(xp.min(sel)), int(xp.max(sel))
    if lo < 0 or hi >= num_labels:
        bad = lo if lo < 0 else hi
        raise layer.error(
            f"label {bad} is outside [0, {num_labels}) (the label count, "
            f"decode_param.pregen_label_count)")


def ignore_mask(xp, labels, ignore_labels):
    """True for items whose label is NOT in ``ignore_labels``."""
    keep = xp.ones(labels.shape, dtype=bool)
    for value in ignore_labels:
        keep &= labels != int(value)
    return keep


def ignored_mask_array(xp, num_labels, ignore_labels):
    """(L,) uint8, 1 for the labels in ``ignore_labels``: the kernels' view of
    :func:`ignore_mask` (a label outside [0, L) matches no class anyway)."""
    mask = np.zeros(num_labels, dtype=np.uint8)
    for value in ignore_labels:
        if 0 <= int(value) < num_labels:
            mask[int(value)] = 1
    return xp.asarray(mask)


def label_columns(xp, label, n):
    """The label blob as the kernels read it: (contiguous float32 data,
    columns per row); column 0 of row i is element ``i * columns``."""
    cols = label.count // n if n else 1
    return xp.ascontiguousarray(label.data, dtype=xp.float32), cols


# ---------------------------------------------------------- distances ----
def pairwise_distances(xp, x, y, max_elements=1 << 22):
    """Euclidean distances ||x_i - y_j||_2, shape (len(x), len(y)).

    Computed from explicit differences (no |x|^2 + |y|^2 - 2 x.y expansion, whose
    cancellation is poor in float32 for near points), in chunks of rows so the
    (rows, len(y), D) temporary stays under ``max_elements``.
    """
    n, d = x.shape
    m = y.shape[0]
    out = xp.empty((n, m), dtype=x.dtype)
    step = max(1, max_elements // max(m * d, 1))
    for start in range(0, n, step):
        diff = x[start:start + step, None, :] - y[None, :, :]
        # (einsum's sum of products: no squared temporary, and a third
        # faster than sum(axis=-1) over a short last axis)
        out[start:start + step] = xp.sqrt(xp.einsum("nld,nld->nl", diff, diff))
    return out


def centroid_distances(xp, x, centroids, ready):
    """(N, L) distances of each embedding to each centroid; NOT_READY where a
    label's centroid is not ready."""
    dist = pairwise_distances(xp, x, centroids)
    return xp.where(ready[None, :], dist, xp.asarray(NOT_READY, dtype=dist.dtype))


def knn_distances(xp, x, cache, fill, k):
    """(N, L) mean distance of each embedding to the min(k, fill_l) nearest
    cached embeddings of each label; NOT_READY where a label's cache is empty.

    cache: (L, C, D); fill: (L,) integer number of valid slots (0..C).
    """
    num_labels, cap, d = cache.shape
    n = x.shape[0]
    dist = pairwise_distances(xp, x, cache.reshape(num_labels * cap, d))
    dist = dist.reshape(n, num_labels, cap)
    slot = xp.arange(cap)
    valid = slot[None, :] < fill[:, None]                      # (L, C)
    dist = xp.where(valid[None], dist, xp.asarray(np.inf, dtype=dist.dtype))
    kk = min(int(k), cap)
    nearest = xp.sort(dist, axis=-1)[:, :, :kk]               # (N, L, kk)
    used = xp.minimum(fill, kk)                                # (L,)
    take = slot[:kk][None, :] < used[:, None]                  # (L, kk)
    total = xp.sum(xp.where(take[None], nearest, 0), axis=-1)  # (N, L)
    mean = total / xp.maximum(used, 1)[None, :].astype(dist.dtype)
    return xp.where((used > 0)[None, :], mean, xp.asarray(NOT_READY, dtype=dist.dtype))


# ----------------------------------------------------------- updates ----
def batch_label_sums(xp, x, labels, valid, num_labels):
    """Per-label sums (L, D) and item counts (L,) of the valid batch items."""
    onehot = (labels[:, None] == xp.arange(num_labels)[None, :]) & valid[:, None]
    onehot = onehot.astype(x.dtype)
    return onehot.T @ x, xp.sum(onehot, axis=0)


def update_centroids(xp, centroids, counts, x, labels, valid, max_count):
    """Apply the module's centroid rule in place.

    centroids (L, D) and counts (L,) are blob arrays (float); x (N, D);
    labels (N,) int; valid (N,) bool; max_count = M.
    """
    num_labels = centroids.shape[0]
    sums, m = batch_label_sums(xp, x, labels, valid, num_labels)
    present = m > 0
    running = present & (counts < max_count)
    moving = present & (counts >= max_count)
    n = counts[:, None]
    mean_all = (centroids * n + sums) / xp.maximum(counts + m, 1)[:, None]
    beta = (m / float(max_count))[:, None]
    batch_mean = sums / xp.maximum(m, 1)[:, None]
    ema = (1 - beta) * centroids + beta * batch_mean
    new = xp.where(running[:, None], mean_all, xp.where(moving[:, None], ema, centroids))
    centroids[...] = new
    counts[...] = xp.where(running, xp.minimum(counts + m, max_count), counts)


def refit_centroids(xp, centroids, counts, sums, n, max_count):
    """Replace the running state by a one-pass refit, in place.

    sums (L, D) and n (L,) are the per-label sums and item counts of the
    embeddings of a whole source under the current weights.  For each label
    with n_l > 0:

        c_l <- sums_l / n_l,   counts_l <- min(n_l, M)

    so the running rule above continues from the refit as if those n_l items
    had been averaged (an exact mean below M items, the moving average from
    M on).  Labels the source lacks keep their centroid and count.
    """
    present = n > 0
    mean = (sums / xp.maximum(n, 1)[:, None]).astype(centroids.dtype)
    centroids[...] = xp.where(present[:, None], mean, centroids)
    counts[...] = xp.where(present, xp.minimum(n, max_count), counts)


def push_ring(xp, cache, fill, cursor, x, labels, valid):
    """Append the valid items to per-label ring buffers, in batch order.

    cache (L, C, D) float; fill, cursor (L,) float arrays holding integers
    (updated in place).  Only the last C items of a label in this batch can
    survive, so only those are written (no two writes hit one slot).
    """
    num_labels, cap, _ = cache.shape
    idx = xp.nonzero(valid)[0]
    if idx.size == 0:
        return
    lab = labels[idx]
    order = xp.argsort(lab, kind="stable")
    lab, rows = lab[order], x[idx[order]]
    first = xp.searchsorted(lab, lab, side="left")
    rank = xp.arange(lab.size) - first                        # rank within its label
    per_label = xp.bincount(lab, minlength=num_labels)
    cur = cursor.astype(xp.int64)
    keep = rank >= per_label[lab] - cap
    pos = (cur[lab] + rank) % cap
    cache[lab[keep], pos[keep]] = rows[keep]
    cursor[...] = (cur + per_label) % cap
    fill[...] = xp.minimum(fill + per_label, cap)


# ---------------------------------------------------------- accuracy ----
def nearest_label_accuracy(xp, dist, labels, valid, num_labels):
    """Accuracy of argmin_l dist[i, l] against labels over the valid items.

    An item whose true label's distance is NOT_READY counts as wrong, as does
    one whose argmin is a NOT_READY label.  Returns (accuracy (), per-label
    accuracy (L,)); 0 where no item is counted.
    """
    n = dist.shape[0]
    pred = xp.argmin(dist, axis=1)
    safe = xp.clip(labels, 0, max(num_labels - 1, 0))
    own = dist[xp.arange(n), safe]
    correct = (pred == labels) & (own < NOT_READY_THRESHOLD) & valid
    counted = xp.sum(valid)
    accuracy = xp.sum(correct) / xp.maximum(counted, 1)
    lab = xp.where(valid, labels, 0)
    per_total = xp.bincount(lab, weights=valid.astype(dist.dtype), minlength=num_labels)
    per_right = xp.bincount(lab, weights=correct.astype(dist.dtype), minlength=num_labels)
    per_label = per_right / xp.maximum(per_total, 1)
    return accuracy, per_label[:num_labels]
