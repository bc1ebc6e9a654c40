"""Reduction: sum, absolute sum, sum of squares or mean over trailing axes."""
from ..layer import Layer, register_layer
from ..proto import pb
from ._shared import canonical_axis


@register_layer("Reduction")
class ReductionLayer(Layer):
    r"""Reduce every axis from ``reduction_param.axis`` (default 0) onward.

    With x viewed as (M, D) (M = product of the axes before ``axis``, D of
    the rest) and c = ``coeff`` (default 1):

        SUM   (default): y_m = c \sum_d x_{md}          dE/dx_{md} = c g_m
        ASUM:            y_m = c \sum_d |x_{md}|        dE/dx_{md} = c sign(x_{md}) g_m
        SUMSQ:           y_m = c \sum_d x_{md}^2        dE/dx_{md} = 2 c x_{md} g_m
        MEAN:            y_m = c/D \sum_d x_{md}        dE/dx_{md} = c/D g_m

    (g = dE/dy).  Top shape: the bottom shape up to ``axis`` (axis 0: a
    scalar, shape ()).  sign(0) = 0, as Caffe's.
    """

    exact_bottoms = 1
    exact_tops = 1

    _OPS = {1: "SUM", 2: "ASUM", 3: "SUMSQ", 4: "MEAN"}

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.reduction_param
        self.operation = int(p.operation)
        if self.operation not in self._OPS:
            raise self.error(f"unknown reduction_param.operation {self.operation}")
        self.axis_param = int(p.axis)
        self.coeff_param = float(p.coeff)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], self.axis_param, "reduction_param.axis")
        self.num = bottom[0].count_range(0, self.axis)
        self.dim = bottom[0].count_range(self.axis)
        self.coeff = self.coeff_param
        if self.operation == pb.ReductionParameter.MEAN:
            self.coeff /= max(self.dim, 1)
        top[0].reshape(bottom[0].shape[:self.axis])

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        xp = self.xp
        x = bottom[0].data.reshape(self.num, self.dim)
        op = self.operation
        if op == pb.ReductionParameter.ASUM:
            y = xp.abs(x).sum(axis=1)
        elif op == pb.ReductionParameter.SUMSQ:
            y = (x * x).sum(axis=1)
        else:  # SUM, MEAN
            y = x.sum(axis=1)
        top[0].data[...] = (y * self.coeff).reshape(top[0].shape)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp
        g = top[0].diff.reshape(self.num, 1) * self.coeff
        op = self.operation
        if op == pb.ReductionParameter.ASUM:
            grad = xp.sign(bottom[0].data.reshape(self.num, self.dim)) * g
        elif op == pb.ReductionParameter.SUMSQ:
            grad = 2 * bottom[0].data.reshape(self.num, self.dim) * g
        else:
            grad = xp.broadcast_to(g, (self.num, self.dim))
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)
