"""ContrastiveLoss: the siamese pair loss (Hadsell, Chopra & LeCun 2006).

Bottoms
    a      (N, D)  features of the first item of each pair (any (N, ...) shape;
                   flattened to (N, D))
    b      (N, D)  features of the second item, same shape as ``a``
    label  (N,) or (N, 1): similarity y = [int(label) != 0] (the label is
           truncated to an integer as in Caffe, so 0.5 means dissimilar), or
           (N, 2): the two class labels of the pair (MyCaffe's data layer with
           ``output_all_labels``), y = [label_0 == label_1].
           A label bottom: it never receives a gradient.
Tops
    loss     ()   the scalar loss
    matches  (N,) optional (``contrastive_loss_param.output_matches`` or simply a
                  second top): 1.0 where the pair is judged correctly, else 0.0.
                  Its loss_weight defaults to 0; it has no gradient.

Distance (``contrastive_loss_param.distance``)
    EUCLIDEAN (default)  d = ||a - b||_2
    MANHATTAN            d = sum_k |a_k - b_k|
In both cases the loss is a function of the same d:

    similar pair (y = 1):     l = d^2
    dissimilar, default:      l = max(margin - d, 0)^2
    dissimilar, legacy:       l = max(margin - d^2, 0)       (legacy_version)

    E = sum_i l_i / (2N)      (loss_param.normalization NONE: sum_i l_i / 2)

Gradient (g = top diff / (2N)), with dl/dd:
    similar 2d; dissimilar default -2 (margin - d) [margin > d];
    dissimilar legacy -2d [margin > d^2]
    EUCLIDEAN:  dd/da = (a - b) / d, so dE/da = g * dl/dd * (a - b) / d; the
                division only remains for the default dissimilar term, where d is
                clamped to eps = 1e-12 (at d = 0, a - b = 0 and the gradient is 0).
    MANHATTAN:  dd/da = sign(a - b)  (0 where a_k = b_k)
    dE/db = -dE/da.
The kernel path (GPU and its emulation) runs kernels/contrastive_loss.cu: one
fused forward kernel (distances, loss terms, the reduction to the scalar loss,
the matches top, each pair's gradient coefficient) and one backward kernel
(both bottom diffs).  It is tested against the NumPy path below, so the two
cannot drift apart (Caffe's legacy GPU gradient was wrong for years).

Matches rule (second top): the quantity the margin is compared with, q = d
(default) or q = d^2 (legacy), against the threshold margin / 2, halfway between
"identical" and "at the margin": a similar pair is correct when q < margin / 2,
a dissimilar pair when q >= margin / 2.  (MyCaffe uses the margin itself as
the threshold, so a similar pair anywhere inside the margin counts as correct,
which says little about the embedding.)

Example::

    layer {
      name: "loss" type: "ContrastiveLoss"
      bottom: "feat" bottom: "feat_p" bottom: "sim"
      top: "loss" top: "match" loss_weight: 1 loss_weight: 0
      contrastive_loss_param { margin: 2 output_matches: true }
    }
"""
from ..layer import Layer, register_layer
from ..proto import pb

_EPS = 1e-12


@register_layer("ContrastiveLoss")
class ContrastiveLoss(Layer):
    exact_bottoms = 3
    min_tops = 1
    max_tops = 2
    is_loss = True
    label_bottoms = (2,)

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)
        self.manhattan = p.distance == pb.ContrastiveLossParameter.MANHATTAN
        if p.output_matches and len(top) < 2:
            raise self.error("output_matches needs a second top (matches)")
        self.output_matches = len(top) > 1
        lp = self.param.loss_param
        if lp.HasField("ignore_label"):
            raise self.error("loss_param.ignore_label is not supported (every pair counts)")
        self.per_batch = lp.normalization != pb.LossParameter.NONE
        self._coef = None  # kernel path: per-pair gradient coefficients

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        a, b, label = bottom
        if a.shape != b.shape or a.num_axes < 1:
            raise self.shape_error(
                f"bottom[0] {a.shape} and bottom[1] {b.shape} must have the same (N, ...) shape")
        n = a.shape[0]
        if label.num_axes == 0 or label.shape[0] != n or label.count not in (n, 2 * n):
            raise self.shape_error(
                f"label bottom {label.shape} must be (N,), (N, 1) or (N, 2) for "
                f"features of shape {a.shape}")
        top[0].reshape(())
        if self.output_matches:
            top[1].reshape((n,))

    # ---------------------------------------------------------- forward --
    def _similar(self, label, n):
        rows = label.data.reshape(n, -1) if n else label.data.reshape(0, 1)
        if rows.shape[1] == 2:
            return rows[:, 0] == rows[:, 1]
        # Caffe casts the label to an integer: 0.5 means dissimilar
        return self.xp.trunc(rows[:, 0]) != 0

    def forward(self, bottom, top):
        xp = self.xp
        a, b, label = bottom
        n = a.shape[0]
        if self.use_kernels:  # kernels/contrastive_loss.cu
            if self._coef is None or self._coef.shape[0] != n:
                self._coef = xp.empty((n,), dtype=xp.float32)
            labels = xp.ascontiguousarray(label.data, dtype=xp.float32)
            matches = top[1].data if self.output_matches else self._coef
            block = self.backend.block
            self.launch("contrastive_loss_forward", n, a.count_range(1), a.data, b.data, labels,
                        label.count // n if n else 1, self.margin, self.legacy, self.manhattan,
                        2.0 * self._normalizer(n), self._coef, top[0].data,
                        self.output_matches, matches, grid=1, shared=8 * block)
            return
        diff = (a.data - b.data).reshape(n, -1)
        if self.manhattan:
            dist = xp.sum(xp.abs(diff), axis=1)
            dist_sq = dist * dist
        else:
            dist_sq = xp.sum(diff * diff, axis=1)
            dist = xp.sqrt(dist_sq)
        similar = self._similar(label, n)
        if self.legacy:
            hinge = xp.maximum(self.margin - dist_sq, 0)
            dissimilar_loss = hinge
        else:
            hinge = xp.maximum(self.margin - dist, 0)
            dissimilar_loss = hinge * hinge
        per_pair = xp.where(similar, dist_sq, dissimilar_loss)
        self._diff, self._dist, self._similar_mask, self._hinge = diff, dist, similar, hinge
        top[0].data[...] = xp.sum(per_pair) / (2.0 * self._normalizer(n))
        if self.output_matches:
            q = dist_sq if self.legacy else dist
            inside = q < 0.5 * self.margin
            top[1].data[...] = xp.where(similar, inside, ~inside)

    def _normalizer(self, n):
        return max(n, 1) if self.per_batch else 1

    # --------------------------------------------------------- backward --
    def backward(self, top, propagate_down, bottom):
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = self.xp
        a = bottom[0]
        n = a.shape[0]
        if self.use_kernels:
            if a.count:
                self.launch("contrastive_loss_backward", a.count, a.count_range(1), a.data,
                            bottom[1].data, self._coef, top[0].diff, 2.0 * self._normalizer(n),
                            self.manhattan, bool(propagate_down[0]), bool(propagate_down[1]),
                            bottom[0].diff, bottom[1].diff, n=a.count)
            return
        scale = top[0].diff.reshape(()) / (2.0 * self._normalizer(n))
        dist, similar, diff = self._dist, self._similar_mask, self._diff
        active = self._hinge > 0
        if self.manhattan:
            # dl/dd times dd/da = sign(a - b)
            if self.legacy:
                dissimilar = -2.0 * dist * active
            else:
                dissimilar = -2.0 * self._hinge
            coef = xp.where(similar, 2.0 * dist, dissimilar)
            grad = coef[:, None] * xp.sign(diff)
        else:
            # dl/d(d^2) times d(d^2)/da = 2 (a - b)
            if self.legacy:
                dissimilar = -1.0 * active
            else:
                dissimilar = -self._hinge / xp.maximum(dist, _EPS)
            coef = xp.where(similar, 1.0, dissimilar)
            grad = 2.0 * coef[:, None] * diff
        grad = (scale * grad).reshape(a.shape)
        if propagate_down[0]:
            bottom[0].diff[...] = grad
        if propagate_down[1]:
            bottom[1].diff[...] = -grad
