r"""OnlineContrastiveLoss: the contrastive loss (Hadsell, Chopra & LeCun 2006)
on every pair of one batch, with optional hardest-negative mining
(pytorch-metric-learning's ContrastiveLoss with its AvgNonZeroReducer, and a
batch-hard choice of negatives).

Bottoms
    embeddings  (B, D)  (any (B, ...) shape; flattened to (B, D))
    labels      (B,) or (B, 1): a label bottom (no gradient)
Tops
    loss    ()  the scalar loss E
    active  ()  optional: the fraction of active pairs (below); loss_weight 0
                by default, no gradient.

Parameters: ``online_contrastive_loss_param { margin pos_margin distance
hardest_negatives }``; D_ij is the distance of rows i and j (``distance``,
as in OnlineTripletLoss: EUCLIDEAN with a safe square root, SQUARED_EUCLIDEAN,
or COSINE 1 - cos on internally L2-normalised rows).

Pairs are ordered (i, j), i != j.  Positive pairs P = {(i, j) : y_i = y_j};
the negative pairs used are

    hardest_negatives: true (default)   N = {(i, argmin_{j : y_j != y_i} D_ij)}, one per
                                        anchor i that has a negative (ties: lowest j)
    hardest_negatives: false            N = {(i, j) : y_i != y_j}

with the pair losses (m = ``margin``, m+ = ``pos_margin``)

    l+(i, j) = max(0, D_ij - m+)^2        for (i, j) in P
    l-(i, j) = max(0, m - D_ij)^2         for (i, j) in N

Loss: each term is the mean over its pairs with a non-zero loss (the
same rule as OnlineTripletLoss's BATCH_ALL: satisfied pairs do not dilute
the gradient of the others), and the two terms add:

    E = sum_P l+ / max(1, |{l+ > 0}|)  +  sum_N l- / max(1, |{l- > 0}|)

A term without a non-zero pair is 0; a batch with no pair at all gives E = 0
and a zero gradient.  Active fraction = (|{l+ > 0}| + |{l- > 0}|) / (|P| + |N|).

Gradient (mining held constant), carried back through D as in
OnlineTripletLoss and scaled by the top's diff:

    dE/dD_ij = 2 (D_ij - m+) / |{l+ > 0}|   on active positive pairs
    dE/dD_ij = -2 (m - D_ij) / |{l- > 0}|   on active negative pairs

Example::

    layer { name: "loss" type: "OnlineContrastiveLoss" bottom: "embedding" bottom: "label"
            top: "loss" top: "active" loss_weight: 1 loss_weight: 0
            online_contrastive_loss_param { margin: 1 pos_margin: 0.1 } }
"""
from ..layer import Layer, register_layer
from . import _mining


@register_layer("OnlineContrastiveLoss")
class OnlineContrastiveLoss(Layer):
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True
    label_bottoms = (1,)

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.online_contrastive_loss_param
        self.margin = float(p.margin)
        self.pos_margin = float(p.pos_margin)
        self.hardest = bool(p.hardest_negatives)
        if self.pos_margin < 0 or self.margin <= self.pos_margin:
            raise self.error(f"online_contrastive_loss_param needs 0 <= pos_margin < margin, "
                             f"got pos_margin {self.pos_margin:g}, margin {self.margin:g}")
        if self.param.loss_param.HasField("ignore_label"):
            raise self.error("loss_param.ignore_label is not supported (every row is paired)")
        self.distance = _mining.PairwiseDistance(self.xp, p.distance)
        self._grad = None

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        _mining.reshape_batch_loss(self, bottom, top)

    # ---------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        n = bottom[0].shape[0]
        dist = self.distance.forward(bottom[0].data.reshape(n, -1))
        dtype = dist.dtype
        pos, neg = _mining.label_masks(xp, bottom[1].data.reshape(n))
        if self.hardest:
            closest = xp.argmin(xp.where(neg, dist, xp.inf), axis=1)
            neg = neg & (xp.arange(n)[None, :] == closest[:, None])
        pull = xp.where(pos, xp.maximum(dist - self.pos_margin, 0.0), 0.0)
        push = xp.where(neg, xp.maximum(self.margin - dist, 0.0), 0.0)
        live_pos, live_neg = pull > 0, push > 0
        n_pos = xp.maximum(xp.sum(live_pos), 1).astype(dtype)
        n_neg = xp.maximum(xp.sum(live_neg), 1).astype(dtype)
        loss = xp.sum(pull * pull) / n_pos + xp.sum(push * push) / n_neg
        self._grad = 2.0 * pull / n_pos - 2.0 * push / n_neg
        top[0].data[...] = loss
        if len(top) > 1:
            pairs = xp.maximum(xp.sum(pos) + xp.sum(neg), 1).astype(dtype)
            live = (xp.sum(live_pos) + xp.sum(live_neg)).astype(dtype)
            top[1].data[...] = live / pairs

    # --------------------------------------------------------- backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        grad = self.distance.backward(self._grad * top[0].diff.reshape(()))
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)

