"""TripletLoss: the hinge triplet loss (Schroff et al. 2015, FaceNet).

Bottoms
    anchor    (N, D)  (any (N, ...) shape; flattened to (N, D))
    positive  (N, D)  same class as the anchor; same shape as anchor
    negative  (N, D)  another class; same shape as anchor
    label     optional 4th bottom with N rows (MyCaffe's DataSequence ``lbl``).
              Accepted so MyCaffe's nets load; it does not enter the math and
              never receives a gradient.
Tops
    loss    ()  the scalar loss
    active  ()  optional: fraction of active triplets (h_i > 0) in the batch;
                loss_weight 0 by default, no gradient.

With alpha = ``triplet_loss_param.alpha`` (MyCaffe's default 1.1):

    h_i = ||a_i - p_i||^2 - ||a_i - n_i||^2 + alpha
    E   = sum_i max(0, h_i) / (2N)     (loss_param.normalization NONE: / 2)

Gradient on the active triplets (h_i > 0; zero elsewhere), g = top diff / (2N):

    dE/da_i = g * 2 (n_i - p_i)
    dE/dp_i = g * -2 (a_i - p_i)
    dE/dn_i = g *  2 (a_i - n_i)

A batch without active triplets gives E = 0 and zero gradients.
``triplet_loss_param.pregen_label_start`` only matters for MyCaffe's fifth
(pre-generated centroid) bottom, which this layer does not accept.

The kernel path (GPU and its emulation) runs kernels/triplet_loss.cu: one fused
forward kernel (both distances, the hinge, the sum to the scalar loss and the
active fraction) and one backward kernel writing the three bottom diffs.
"""
from ..layer import Layer, register_layer
from ..proto import pb


@register_layer("TripletLoss")
class TripletLoss(Layer):
    min_bottoms = 3
    max_bottoms = 4
    min_tops = 1
    max_tops = 2
    is_loss = True
    label_bottoms = (3,)

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.alpha = float(self.param.triplet_loss_param.alpha)
        lp = self.param.loss_param
        if lp.HasField("ignore_label"):
            raise self.error("loss_param.ignore_label is not supported (every triplet counts)")
        self.per_batch = lp.normalization != pb.LossParameter.NONE
        self._active_rows = None  # kernel path: 1.0 per active triplet, else 0.0

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        anchor = bottom[0]
        if anchor.num_axes < 1:
            raise self.shape_error(f"anchor must be (N, ...), got {anchor.shape}")
        for j, what in ((1, "positive"), (2, "negative")):
            if bottom[j].shape != anchor.shape:
                raise self.shape_error(
                    f"{what} bottom[{j}] {bottom[j].shape} must have the anchor's shape "
                    f"{anchor.shape}")
        if len(bottom) > 3:
            label = bottom[3]
            if label.num_axes == 0 or label.shape[0] != anchor.shape[0]:
                raise self.shape_error(
                    f"label bottom[3] {label.shape} needs one row per anchor of {anchor.shape}")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(())

    # ---------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        n = bottom[0].shape[0]
        if self.use_kernels:  # kernels/triplet_loss.cu
            if self._active_rows is None or self._active_rows.shape != (n,):
                self._active_rows = xp.empty((n,), dtype=xp.float32)
            out_active = len(top) > 1
            block = self.backend.block
            self.launch("triplet_loss_forward", n, bottom[0].count_range(1), bottom[0].data,
                        bottom[1].data, bottom[2].data, self.alpha, 2.0 * self._normalizer(n),
                        self._active_rows, top[0].data, out_active,
                        top[1].data if out_active else self._active_rows, grid=1, shared=8 * block)
            return
        a = bottom[0].data.reshape(n, -1)
        p = bottom[1].data.reshape(n, -1)
        neg = bottom[2].data.reshape(n, -1)
        ap = a - p
        an = a - neg
        h = xp.sum(ap * ap, axis=1) - xp.sum(an * an, axis=1) + self.alpha
        self._active = h > 0
        top[0].data[...] = xp.sum(xp.where(self._active, h, 0)) / (2.0 * self._normalizer(n))
        if len(top) > 1:
            top[1].data[...] = xp.sum(self._active) / max(n, 1)

    def _normalizer(self, n):
        return max(n, 1) if self.per_batch else 1

    # --------------------------------------------------------- backward --
    def backward(self, top, propagate_down, bottom):
        if not any(propagate_down[:3]):
            return
        n = bottom[0].shape[0]
        if self.use_kernels:
            if bottom[0].count:
                self.launch("triplet_loss_backward", bottom[0].count, bottom[0].count_range(1),
                            bottom[0].data, bottom[1].data, bottom[2].data, self._active_rows,
                            top[0].diff, 2.0 * self._normalizer(n), bool(propagate_down[0]),
                            bool(propagate_down[1]), bool(propagate_down[2]), bottom[0].diff,
                            bottom[1].diff, bottom[2].diff, n=bottom[0].count)
            return
        a = bottom[0].data.reshape(n, -1)
        p = bottom[1].data.reshape(n, -1)
        neg = bottom[2].data.reshape(n, -1)
        scale = top[0].diff.reshape(()) / (2.0 * self._normalizer(n))
        w = (2.0 * scale * self._active)[:, None]  # 2 g on active triplets, 0 elsewhere
        shape = bottom[0].shape
        if propagate_down[0]:
            bottom[0].diff[...] = (w * (neg - p)).reshape(shape)
        if propagate_down[1]:
            bottom[1].diff[...] = (w * (p - a)).reshape(shape)
        if propagate_down[2]:
            bottom[2].diff[...] = (w * (a - neg)).reshape(shape)
