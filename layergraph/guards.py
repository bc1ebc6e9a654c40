r"""Training guards: solver callbacks that watch a run and warn about a known
failure in plain words (see :meth:`layergraph.solver.Solver.add_callback`).

:class:`CollapseGuard` watches metric-learning losses for an embedding
collapse: every embedding goes to (nearly) one point and the loss sits at the
margin with every triplet active.  Classification accuracy can still read
87-91% while the embedding is collapsed (issue 9), so the guard judges from
the embedding itself.

Watched layers: every TripletLoss, OnlineTripletLoss, ContrastiveLoss and
OnlineContrastiveLoss of ``solver.net`` (found by type).  For each, every
``every`` iterations (one device-to-host read for all of them):

spread
    S = (1 / M) sum_i ||x_i - xbar||_2 over the M rows x_i of its embedding
    bottoms (TripletLoss: anchor, positive and negative together;
    ContrastiveLoss: both items; the online losses: the one embedding), xbar
    their mean.  The reference S0 is the largest S of the first
    ``baseline_checks`` checks.
active fraction and loss
    the layer's second top when it is an active fraction (TripletLoss,
    OnlineTripletLoss, OnlineContrastiveLoss) and its loss top.

The guard fires when, for ``patience`` consecutive checks of one layer,

(a) S < ``ratio`` * S0 (the spread fell by a factor 1 / ratio: 100 by default;
    the issue's collapsed runs went from 0.045 to 1e-4), or
(b) after the baseline checks, every triplet is active (fraction >= 0.999),
    the loss is within ``loss_tolerance`` (relative) of its collapsed value
    (OnlineTripletLoss: the margin, log 2 with soft_margin; TripletLoss:
    alpha / 2 per triplet) and S <= S0 (the embedding is not spreading).

It then logs ONE warning through ``solver.log`` (once per guard, i.e. per
run), naming the layer, the numbers and the likely causes, and keeps
``fired_at`` (the iteration) and ``message``.  A resumed run takes a new
baseline from its first checks.

Wiring::

    from layergraph.guards import CollapseGuard
    solver.add_callback(CollapseGuard())
"""
import math

import numpy as np

from .backend import to_numpy

#: layer type -> indices of its embedding bottoms
WATCHED = {
    "TripletLoss": (0, 1, 2),
    "ContrastiveLoss": (0, 1),
    "OnlineTripletLoss": (0,),
    "OnlineContrastiveLoss": (0,),
}
#: types whose optional second top is the fraction of active triplets/pairs
ACTIVE_TOP = ("TripletLoss", "OnlineTripletLoss", "OnlineContrastiveLoss")


def collapsed_loss(layer, batch):
    """The loss value of ``layer`` when every embedding is the same point and
    every triplet is active, or None when that does not identify a collapse."""
    if layer.type == "OnlineTripletLoss":
        return math.log(2.0) if layer.soft else layer.margin
    if layer.type == "TripletLoss":
        return layer.alpha / 2.0 * (1 if layer.per_batch else batch)
    return None


class _Watch:
    """One watched layer and its history."""

    def __init__(self, name, layer, bottoms, tops):
        self.name, self.layer, self.bottoms, self.tops = name, layer, bottoms, tops
        self.active_top = tops[1] if layer.type in ACTIVE_TOP and len(tops) > 1 else None
        self.baseline = 0.0
        self.checks = 0
        self.streak = 0


class CollapseGuard:
    """Warn once when a metric-learning embedding collapses (module docstring).

    ``every``: check every that many iterations; ``ratio``: spread / initial
    spread below which (a) holds; ``patience``: consecutive checks needed;
    ``baseline_checks``: checks that set the initial spread;
    ``loss_tolerance``: relative closeness of the loss to its collapsed value
    for (b)."""

    def __init__(self, every=10, ratio=1e-2, patience=3, baseline_checks=3,
                 loss_tolerance=0.01):
        if every < 1 or patience < 1 or baseline_checks < 1 or not 0 < ratio < 1:
            raise ValueError("CollapseGuard needs every, patience, baseline_checks >= 1 "
                             "and 0 < ratio < 1")
        self.every, self.ratio, self.patience = int(every), float(ratio), int(patience)
        self.baseline_checks = int(baseline_checks)
        self.loss_tolerance = float(loss_tolerance)
        self.fired_at = None
        self.message = None
        self._net = None
        self._watches = []

    @property
    def watched(self):
        """Watched layer name -> the names of its embedding bottoms."""
        return {w.name: [b.name for b in w.bottoms] for w in self._watches}

    # ------------------------------------------------------------ events --
    def on_start(self, solver):
        net = solver.net
        if net is self._net:
            return
        self._net = net
        self._watches = [
            _Watch(name, layer, [bottom[j] for j in WATCHED[layer.type] if j < len(bottom)], top)
            for name, layer, bottom, top in zip(net.layer_names, net.layers, net.bottom_vecs,
                                                net.top_vecs)
            if layer.type in WATCHED]

    def on_iteration(self, solver, record):
        if self.fired_at is not None or record["iter"] % self.every:
            return
        if self._net is not solver.net:
            self.on_start(solver)
        if not self._watches:
            return
        values = self._read(solver.net.xp)
        for i, watch in enumerate(self._watches):
            spread, active, loss = values[3 * i: 3 * i + 3]
            if self._check(watch, spread, active, loss, record["iter"]):
                solver.log(self.message)
                return

    # ----------------------------------------------------------- helpers --
    def _read(self, xp):
        """Spread, active fraction (NaN if none) and loss of every watched
        layer, in one device-to-host transfer."""
        out = []
        for watch in self._watches:
            rows = [b.data.reshape(b.shape[0], -1) for b in watch.bottoms
                    if b.num_axes and b.shape[0]]
            if rows:
                x = xp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
                centred = x - xp.mean(x, axis=0)
                spread = xp.mean(xp.sqrt(xp.sum(centred * centred, axis=1)))
            else:
                spread = xp.asarray(np.nan)
            active = (watch.active_top.data.reshape(()) if watch.active_top is not None
                      else xp.asarray(np.nan))
            out += [xp.asarray(spread, dtype=np.float64), xp.asarray(active, dtype=np.float64),
                    xp.asarray(watch.tops[0].data.reshape(()), dtype=np.float64)]
        return [float(v) for v in to_numpy(xp.stack(out))]

    def _check(self, watch, spread, active, loss, it):
        if not math.isfinite(spread):
            return False
        watch.checks += 1
        if watch.checks <= self.baseline_checks:
            watch.baseline = max(watch.baseline, spread)
        shrunk = watch.baseline > 0 and spread < self.ratio * watch.baseline
        at_margin = False
        target = collapsed_loss(watch.layer, watch.bottoms[0].shape[0] if watch.bottoms else 1)
        if (target is not None and math.isfinite(active) and watch.checks > self.baseline_checks
                and target > 0):
            at_margin = (active >= 0.999 and abs(loss - target) <= self.loss_tolerance * target
                         and spread <= watch.baseline)
        watch.streak = watch.streak + 1 if (shrunk or at_margin) else 0
        if watch.streak < self.patience:
            return False
        self.fired_at = it
        what = [f"embedding spread {spread:.3g}, {spread / watch.baseline:.1e} of its initial "
                f"{watch.baseline:.3g}" if watch.baseline > 0 else f"embedding spread {spread:.3g}"]
        if at_margin:
            what.append(f"loss {loss:.4g} = its collapsed value {target:.4g} with "
                        f"{active:.1%} of triplets active")
        self.message = (
            f"WARNING: embedding collapse at iteration {it} (layer '{watch.name}', "
            f"{watch.layer.type}: {'; '.join(what)}): the embeddings have gone to nearly one "
            f"point, so retrieval is meaningless even if accuracy still looks fine. Likely "
            f"causes: the learning rate is too high (lower base_lr); the margin is too large "
            f"for the embedding's scale (lower it, or L2-normalise the embedding); the miner is "
            f"too hard early (BATCH_HARD from the start: set warmup_iterations: 100 with "
            f"warmup_miner: SEMI_HARD, or mine SEMI_HARD); weight decay too strong for the "
            f"loss.")
        return True
