r"""OnlineTripletLoss: triplets mined inside one batch of embeddings
(Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss"; Schroff et
al. 2015, FaceNet; pytorch-metric-learning's TripletMarginLoss and miners).

Bottoms
    embeddings  (B, D)  (any (B, ...) shape; flattened to (B, D))
    labels      (B,) or (B, 1): the class of each row; a label bottom (no gradient)
Tops
    loss    ()  the scalar loss E
    active  ()  optional: the fraction of active triplets (below); its
                loss_weight defaults to 0, it has no gradient.

Parameters: ``online_triplet_loss_param { miner margin soft_margin distance
warmup_iterations warmup_miner }``.

Notation.  D is the (B, B) distance matrix (``distance``: EUCLIDEAN
sqrt(||x_a - x_j||^2 + 1e-12), SQUARED_EUCLIDEAN, or COSINE 1 - cos, the
layer L2-normalising internally: see ``_mining``).  P(a) = {p != a : y_p = y_a}
are a's positives, N(a) = {n : y_n != y_a} its negatives; a valid triplet has
p in P(a), n in N(a).  With m = ``margin``, a triplet's loss is

    hinge (default)   l(a, p, n) = max(0, D_ap - D_an + m)
    soft_margin       l(a, p, n) = softplus(D_ap - D_an) = log(1 + exp(D_ap - D_an))

(with soft_margin, m only bounds the SEMI_HARD and RANDOM_HARD_NEGATIVE windows).

Miners: each picks a set T of triplets out of a set U of candidate "units"::

    BATCH_ALL             U = all valid triplets; T = those with l > 0
    BATCH_HARD            U = anchors a with P(a), N(a) non-empty;
                          T = {(a, argmax_{p in P(a)} D_ap, argmin_{n in N(a)} D_an)}
    HARDEST_NEGATIVE      U = positive pairs (a, p) with N(a) non-empty;
                          T = {(a, p, argmin_{n in N(a)} D_an)}
    SEMI_HARD             U = as HARDEST_NEGATIVE;
                          T = {(a, p, argmin_{n in S(a,p)} D_an) : S(a,p) non-empty},
                          S(a, p) = {n in N(a) : D_ap < D_an < D_ap + m}
    RANDOM_HARD_NEGATIVE  U = as HARDEST_NEGATIVE;
                          T = {(a, p, n) : n drawn uniformly from V(a,p) non-empty},
                          V(a, p) = {n in N(a) : D_an < D_ap + m}

Ties (equal distances) go to the lowest index.  SEMI_HARD's negative is the
hardest of the semi-hard ones (FaceNet; TensorFlow's triplet_semihard_loss);
pairs without a semi-hard negative contribute nothing.  RANDOM_HARD_NEGATIVE
sorts V(a, p) by (D_an, n) and takes element floor(u_ap |V(a, p)|), u being one
(B, B) uniform draw from ``self.rng()`` per forward pass (reproducible, and
resumed exactly: the draw counter is in state_dict).

Loss (one rule): the mean over the mined triplets,

    E = (1 / |T|) sum_{(a,p,n) in T} l(a, p, n)        (E = 0 when T is empty)

so BATCH_ALL averages over the triplets with a non-zero loss (Hermans'
"BA != 0": the many easy triplets would otherwise dilute it), BATCH_HARD over
anchors, HARDEST_NEGATIVE over positive pairs, and SEMI_HARD /
RANDOM_HARD_NEGATIVE over the pairs that found a negative in their window
(every one of which has a non-zero hinge loss by construction, as in
pytorch-metric-learning's AvgNonZeroReducer).

Active fraction (second top): |{t in T : l(t) > 0}| / |U| (0 when U is empty):
the share of the candidate triplets that still produce a gradient.  A
collapsed embedding (all D equal) shows up as loss = m with active = 1 for
BATCH_ALL, BATCH_HARD, HARDEST_NEGATIVE and RANDOM_HARD_NEGATIVE; SEMI_HARD
then mines nothing (loss 0, active 0).

Gradient: the exact gradient of E with the mining held constant,

    dE/dD_ap += l'(v) / |T|,   dE/dD_an -= l'(v) / |T|    for each (a, p, n) in T

(l' = [v > 0] for the hinge with v = D_ap - D_an + m, sigmoid(v) for the soft
margin with v = D_ap - D_an), carried back to the embeddings through D and
scaled by the top's diff.  No valid triplet gives E = 0 and a zero gradient.

Memory is O(B^2): per-anchor and per-pair miners work on (B, B) arrays
(SEMI_HARD and RANDOM_HARD_NEGATIVE find their negatives with row-wise stable
sorts, never a (B, B, B) comparison); BATCH_ALL, whose triplets are B^3 by
nature, walks them in chunks of anchors.

Warm-up: the first ``warmup_iterations`` forward passes in the TRAIN phase mine
with ``warmup_miner`` (e.g. SEMI_HARD before BATCH_HARD, against an early
collapse); the pass counter is in state_dict, so a resumed run switches at
the same iteration.  TEST and RUN nets always use ``miner``.

Example::

    layer { name: "loss" type: "OnlineTripletLoss" bottom: "embedding" bottom: "label"
            top: "loss" top: "active" loss_weight: 1 loss_weight: 0
            online_triplet_loss_param { miner: BATCH_HARD margin: 0.3
              warmup_iterations: 100 warmup_miner: SEMI_HARD } }
"""
from ..layer import Layer, register_layer
from ..proto import pb
from . import _mining


@register_layer("OnlineTripletLoss")
class OnlineTripletLoss(Layer):
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True
    label_bottoms = (1,)

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.online_triplet_loss_param
        self.miner = p.miner
        self.warmup_miner = p.warmup_miner
        self.warmup_iterations = int(p.warmup_iterations)
        self.margin = float(p.margin)
        self.soft = bool(p.soft_margin)
        self.distance_kind = p.distance
        if self.margin < 0:
            raise self.error(f"online_triplet_loss_param.margin must be >= 0, got {self.margin:g}")
        windowed = {_mining.SEMI_HARD, _mining.RANDOM_HARD_NEGATIVE}
        used = {self.miner} | ({self.warmup_miner} if self.warmup_iterations else set())
        if self.margin == 0 and used & windowed:
            raise self.error(f"miner {_mining.miner_name(min(used & windowed))} needs "
                             f"margin > 0 (it mines negatives within the margin)")
        if self.param.loss_param.HasField("ignore_label"):
            raise self.error("loss_param.ignore_label is not supported (every row is mined)")
        self.distance = _mining.PairwiseDistance(self.xp, self.distance_kind)
        self.train_passes = 0
        self._mining = None

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        _mining.reshape_batch_loss(self, bottom, top)

    # ---------------------------------------------------------- forward --
    def current_miner(self):
        """The miner of the next forward pass (warm-up counts TRAIN passes)."""
        if self.phase == pb.TRAIN and self.train_passes < self.warmup_iterations:
            return self.warmup_miner
        return self.miner

    def forward(self, bottom, top):
        xp = self.xp
        miner = self.current_miner()
        if self.phase == pb.TRAIN:
            self.train_passes += 1
        n = bottom[0].shape[0]
        x = bottom[0].data.reshape(n, -1)
        dist = self.distance.forward(x)
        pos, neg = _mining.label_masks(xp, bottom[1].data.reshape(n))
        uniform = None
        if miner == _mining.RANDOM_HARD_NEGATIVE:
            uniform = xp.asarray(self.rng().random((n, n)), dtype=dist.dtype)
        self._mining = _mining.mine_triplets(xp, miner, dist, pos, neg, self.margin, self.soft,
                                             uniform)
        self._last = (miner, dist, pos, neg)
        top[0].data[...] = self._mining.loss
        if len(top) > 1:
            top[1].data[...] = self._mining.active

    def mined_triplets(self):
        """The triplets of the last forward pass as a NumPy (M, 3) array of
        rows (anchor, positive, negative), lexicographically sorted."""
        import numpy as np

        from ..backend import to_numpy
        if self._mining is None:
            return np.zeros((0, 3), dtype=np.int64)
        miner, dist, pos, neg = self._last
        if miner == _mining.BATCH_ALL:
            return _mining.batch_all_triplets(self.xp, dist, pos, neg, self.margin, self.soft)
        a, p, n, valid = (to_numpy(t) for t in self._mining.triplets)
        a, p, n = (np.broadcast_to(t, valid.shape)[valid] for t in (a, p, n))
        out = np.stack([a, p, n], axis=1).astype(np.int64)
        return out[np.lexsort(out.T[::-1])]

    # --------------------------------------------------------- backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        grad = self.distance.backward(self._mining.grad * top[0].diff.reshape(()))
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)

    # ------------------------------------------------------------ state --
    def state_dict(self):
        return dict(super().state_dict(), train_passes=self.train_passes)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.train_passes = int(state.get("train_passes", 0))
