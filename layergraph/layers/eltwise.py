"""Eltwise: combine bottoms of equal shape element by element.

``eltwise_param { operation: PROD | SUM | MAX  coeff: ...  stable_prod_grad }``

    PROD:  y = prod_j x_j          dx_j = dy * prod_{k != j} x_k
                                   (stable_prod_grad: false uses dy * y / x_j)
    SUM:   y = sum_j c_j x_j       dx_j = c_j dy        (c_j = coeff, default 1)
    MAX:   y = max_j x_j           dx_j = dy where bottom j holds the max, else 0

MAX ties follow Caffe: bottom 1 wins a tie with bottom 0; a later bottom must
be strictly greater to win.  In-place use (top is one of the bottoms) works.

Kernel path (kernels/eltwise.cu): one launch per pass for every operation and
any number of bottoms (their addresses travel in one small table); MAX keeps
an int32 argmax.
"""
import numpy as np

from ..layer import Layer, register_layer
from ..proto import pb
from ._pointer_table import PointerTable, address

_E = pb.EltwiseParameter


@register_layer("Eltwise")
class Eltwise(Layer):
    min_bottoms = 2
    exact_tops = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.eltwise_param
        self.operation = p.operation
        coeff = [float(c) for c in p.coeff]
        if coeff and self.operation != _E.SUM:
            raise self.error("coeff is only allowed with operation: SUM")
        if coeff and len(coeff) != len(bottom):
            raise self.error(f"{len(coeff)} coeff values given for {len(bottom)} bottoms")
        self.coeff = coeff or [1.0] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)
        self.in_place = [b is top[0] for b in bottom]
        self._saved = None
        self._argmax = None
        if self.use_kernels:
            self._coeff = self.xp.asarray(np.asarray(self.coeff, np.float32))
            self._forward_table = PointerTable(self.xp)
            self._backward_table = PointerTable(self.xp)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for j, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise self.shape_error(
                    f"bottom[{j}] shape {b.shape} differs from bottom[0] shape {shape}")
        top[0].reshape(shape)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        if self.use_kernels:
            self._forward_kernels(bottom, top)
            return
        xs = [b.data for b in bottom]
        if self.operation == _E.PROD:
            # In place, the product overwrites a bottom backward still needs.
            self._saved = [x.copy() if aliased else None for x, aliased in zip(xs, self.in_place)]
            result = xs[0] * xs[1]
            for x in xs[2:]:
                result *= x
        elif self.operation == _E.SUM:
            result = xs[0] * self.coeff[0]
            for c, x in zip(self.coeff[1:], xs[1:]):
                result += c * x if c != 1.0 else x
        else:
            result, self._argmax = self._max(xs)
        top[0].data[...] = result

    def _forward_kernels(self, bottom, top):  # kernels/eltwise.cu
        xp, y = self.xp, top[0].data
        data = [address(b.data) for b in bottom]
        if self.operation == _E.PROD:
            if self._saved is None or any(s is not None and s.shape != y.shape
                                          for s in self._saved):
                self._saved = [xp.empty_like(y) if aliased else None
                               for aliased in self.in_place]
            table = self._forward_table(data + [address(s) for s in self._saved])
            self.launch("eltwise_prod_forward", y.size, len(bottom), table, y, n=y.size)
        elif self.operation == _E.SUM:
            table = self._forward_table(data)
            self.launch("eltwise_sum_forward", y.size, len(bottom), table, self._coeff, y,
                        n=y.size)
        else:
            if self._argmax is None or self._argmax.shape != y.shape:
                self._argmax = xp.empty(y.shape, xp.int32)
            table = self._forward_table(data)
            self.launch("eltwise_max_forward", y.size, len(bottom), table, y, self._argmax,
                        n=y.size)

    def _backward_kernels(self, top, propagate_down, bottom):
        if not any(propagate_down):
            return
        dy = top[0].diff
        diffs = [address(b.diff) if propagate_down[j] else 0 for j, b in enumerate(bottom)]
        if self.operation == _E.PROD:
            data = [address(self._bottom_data(bottom, j)) for j in range(len(bottom))]
            table = self._backward_table(data + diffs)
            self.launch("eltwise_prod_backward", dy.size, len(bottom), table, top[0].data, dy,
                        int(self.stable_prod_grad), n=dy.size)
        elif self.operation == _E.SUM:
            table = self._backward_table([0] * len(bottom) + diffs)
            self.launch("eltwise_sum_backward", dy.size, len(bottom), table, self._coeff, dy,
                        n=dy.size)
        else:
            table = self._backward_table([0] * len(bottom) + diffs)
            self.launch("eltwise_max_backward", dy.size, len(bottom), table, self._argmax, dy,
                        n=dy.size)

    def _max(self, xs):
        xp = self.xp
        idx_type = np.int8 if len(xs) <= 127 else np.int32
        # Caffe: bottom 0 wins over bottom 1 only when strictly greater.
        argmax = 1 - (xs[0] > xs[1]).astype(idx_type)
        result = xp.maximum(xs[0], xs[1])
        for j, x in enumerate(xs[2:], 2):
            greater = x > result
            argmax -= (argmax - j) * greater
            xp.maximum(result, x, out=result)
        return result, argmax

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if self.use_kernels:
            self._backward_kernels(top, propagate_down, bottom)
            return
        dy = top[0].diff
        # The bottom sharing its blob with the top goes last: its diff is dy.
        for j in sorted(range(len(bottom)), key=lambda k: self.in_place[k]):
            if not propagate_down[j]:
                continue
            if self.operation == _E.PROD:
                if self.stable_prod_grad:
                    others = [self._bottom_data(bottom, k) for k in range(len(bottom)) if k != j]
                    grad = others[0] * dy
                    for x in others[1:]:
                        grad *= x
                else:
                    grad = dy * top[0].data / self._bottom_data(bottom, j)
            elif self.operation == _E.SUM:
                grad = dy * self.coeff[j] if self.coeff[j] != 1.0 else dy.copy()
            else:
                grad = dy * (self._argmax == j)
            bottom[j].diff[...] = grad

    def _bottom_data(self, bottom, j):
        saved = self._saved[j] if self._saved else None
        return saved if saved is not None else bottom[j].data
