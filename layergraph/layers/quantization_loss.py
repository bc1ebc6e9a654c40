r"""QuantizationLoss: pulls a relaxed K-bit code to binary values (deep hashing,
e.g. DPSH / HashNet's quantisation term), with a weight that ramps up.

Bottom
    codes  (N, K)  (any (N, ...) shape): the relaxed code, the output of a TanH
                   (``relaxation: TANH``, target values -1 and +1) or a Sigmoid
                   (``relaxation: SIGMOID``, target values 0 and 1)
Top
    loss   ()      the scalar loss

Each element's loss is its squared distance to the nearest target value,
q(b) = (b - t(b))^2, averaged over all N K elements and scaled by the ramp r:

    TANH     t(b) = sign(b) (+1 at 0):   q(b) = (|b| - 1)^2,           dq/db = 2 (b - t(b))
    SIGMOID  t(b) = [b >= 1/2]:          q(b) = (b - round(b))^2 = min(b, 1 - b)^2 on [0, 1]

    E = r / (N K) * sum_{n,k} q(b_nk)

The two forms are the same loss under b_tanh = 2 b_sigmoid - 1 (up to a factor
4): squared distance to the nearest corner of the hypercube.  The gradient
has a kink where the nearest target switches (b = 0, resp. 1/2), where the
relaxed bit is least decided; it is taken with the +1 (resp. 1) target.

Ramp: with R = ``ramp_iterations`` and t the number of TRAIN forward passes
before this one, r = min(1, t / R) (r = 1 when R = 0): the first pass has
weight 0 and the prototxt's loss_weight is fully reached after R passes.
The pass counter is in state_dict, so a resumed run continues the ramp.  TEST
and RUN nets report the unramped value (r = 1): the quantisation error
itself.

Example::

    layer { name: "code" type: "TanH" bottom: "fc_code" top: "code" }
    layer { name: "quant" type: "QuantizationLoss" bottom: "code" top: "quant"
            loss_weight: 0.1 quantization_loss_param { relaxation: TANH ramp_iterations: 1000 } }
"""
from ..layer import Layer, register_layer
from ..proto import pb


@register_layer("QuantizationLoss")
class QuantizationLoss(Layer):
    exact_bottoms = 1
    exact_tops = 1
    is_loss = True

    # ------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.quantization_loss_param
        self.sigmoid = p.relaxation == pb.QuantizationLossParameter.SIGMOID
        self.ramp_iterations = int(p.ramp_iterations)
        self.train_passes = 0
        self._scaled_residual = None

    # ----------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        if bottom[0].num_axes < 1:
            raise self.shape_error(f"codes must be (N, K), got {bottom[0].shape}")
        top[0].reshape(())

    # ---------------------------------------------------------- forward --
    def ramp(self):
        """The weight factor r of the next forward pass."""
        if self.phase != pb.TRAIN or self.ramp_iterations == 0:
            return 1.0
        return min(1.0, self.train_passes / self.ramp_iterations)

    def forward(self, bottom, top):
        xp = self.xp
        r = self.ramp()
        if self.phase == pb.TRAIN:
            self.train_passes += 1
        b = bottom[0].data
        if self.sigmoid:
            target = (b >= 0.5).astype(b.dtype)
        else:
            target = xp.where(b >= 0, 1.0, -1.0).astype(b.dtype)
        residual = b - target
        scale = r / max(b.size, 1)
        top[0].data[...] = scale * xp.sum(residual * residual)
        self._scaled_residual = (2.0 * scale) * residual

    # --------------------------------------------------------- backward --
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self._scaled_residual * top[0].diff.reshape(())

    # ------------------------------------------------------------ state --
    def state_dict(self):
        return dict(super().state_dict(), train_passes=self.train_passes)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.train_passes = int(state.get("train_passes", 0))
