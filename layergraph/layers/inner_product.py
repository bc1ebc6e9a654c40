"""InnerProduct: a fully connected layer (Caffe semantics).

The bottom is viewed as a matrix x (M, K): M = product of the axes before
``axis`` (default 1), K = product of the rest.  Weight w (O, K), or (K, O)
with ``transpose: true``; bias b (O,).  Top y has shape
bottom.shape[:axis] + (O,):

    y = x w^T + b                (w^T read as w when transposed)

Backward:

    dw += dy^T x  (transpose: x^T dy),   db += sum_m dy[m],   dx = dy w  (transpose: dy w^T)

On the CPU, with the compiled loops available (layergraph.cpu_kernels), a
layer with enough work is cut into one part per core, each run on a thread
of its own with the BLAS at one thread: columns of y and rows of dw by
parts of the output units, rows of dx by parts of the batch, so no part
adds into another's.

On the kernel path (GPU and its emulation) the forward pass is the same GEMM
+ broadcast bias add (2 launches; a hand-written kernel would not save one).
Backward accumulates straight into the parameter diffs: dw with one GEMM
(beta = 1 on cuBLAS), db as ones (1, M) @ dy with another, dx with a third --
3 launches instead of the NumPy path's temporaries, adds and copies.
"""
import numpy as np

from .. import cpu_kernels
from ..layer import Layer, register_layer
from ._im2col import matmul_accumulate


#: Multiply-adds of a pass below which the batch is not split (the threads'
#: hand-off would cost more than the second core gains).
SPLIT_WORK = 4_000_000


@register_layer("InnerProduct")
class InnerProduct(Layer):
    exact_bottoms = 1
    exact_tops = 1
    tracks_active_items = True

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.inner_product_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.error("num_output must be > 0")
        if top[0] is bottom[0]:
            raise self.error("in-place computation is not supported")
        self.axis = self._axis(bottom[0])
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        k = bottom[0].count_range(self.axis)
        shape = (k, self.num_output) if self.transpose else (self.num_output, k)
        self.blobs = [self.make_blob(shape, p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.make_blob((self.num_output,), p.bias_filler))
        self._ones = None  # kernel path: (1, M) ones for the bias gradient GEMM
        self._dw = None    # NumPy path: the weight gradient of one pass, reused
        self._split_key = None   # what reshape decided the batch split for

    def _axis(self, blob):
        axis = self.param.inner_product_param.axis
        if not -blob.num_axes <= axis < blob.num_axes:
            raise self.shape_error(f"axis {axis} is out of range for bottom shape {blob.shape}")
        return axis % blob.num_axes

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        self.axis = self._axis(bottom[0])
        k = bottom[0].count_range(self.axis)
        expected = self.blobs[0].shape[0 if self.transpose else 1]
        if k != expected:
            raise self.shape_error(
                f"bottom shape {bottom[0].shape} flattens to {k} inputs from axis {self.axis}, "
                f"but the weight {self.blobs[0].shape} expects {expected}")
        self.rows = bottom[0].count_range(0, self.axis)
        top[0].reshape(bottom[0].shape[:self.axis] + (self.num_output,))
        key = (self.rows, k, cpu_kernels.batch_threads(), cpu_kernels.available(self.dtype))
        if key == self._split_key:   # the split below is decided
            return
        self._split_key = key
        self._parts = self._out_parts = None
        # compiled-loop CPU path: skip all-zero rows of dy in backward, and
        # split the work over the cores when there is enough of it -- the
        # split pass in one call where it can (cpu_kernels.native_parts)
        self._skips = (self.xp is np and not self.use_kernels and not self.transpose
                       and cpu_kernels.available(self.dtype))
        self._native = False
        if self._skips and self.rows * k * self.num_output >= SPLIT_WORK:
            parts = cpu_kernels.batch_parts(self.rows)
            if len(parts) > 1:
                self._parts = parts
                self._out_parts = cpu_kernels.batch_parts(self.num_output)
                self._native = cpu_kernels.native_parts(self.dtype)
                n = max(len(parts), len(self._out_parts))
                # (output-unit begins/ends; backward's, padded to n, and row ones)
                self._forward_bounds = self._bounds(self._out_parts)
                self._backward_bounds = self._bounds(self._out_parts, n) + self._bounds(parts, n)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.rows, -1)
        w = self.blobs[0].data
        y = top[0].data.reshape(self.rows, self.num_output)
        if self._parts is not None and x.flags.c_contiguous and y.flags.c_contiguous:
            if self._native:   # the parts in one call
                lo, hi = self._forward_bounds
                cpu_kernels.ip_forward_parts(x, w, self.blobs[1].data if self.bias_term else None,
                                             lo, hi, y)
                return
            # by output columns, so each part reads its rows of w only (by
            # batch rows both parts read all of w: ip1 of the templates on
            # 128 rows, 2 threads: 1.03 -> 0.91 ms)
            def part(i):
                a, b = self._out_parts[i]
                np.matmul(x, w[a:b].T, out=y[:, a:b])
                if self.bias_term:
                    y[:, a:b] += self.blobs[1].data[a:b]
            cpu_kernels.run_parts(part, len(self._out_parts))
            return
        self.xp.dot(x, w if self.transpose else w.T, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff.reshape(self.rows, self.num_output)
        x = bottom[0].data.reshape(self.rows, -1)
        weight = self.blobs[0]
        if self.use_kernels:
            self._backward_gemms(dy, x, propagate_down[0], bottom[0].diff)
            return
        # rows of the batch: a zero top gradient row gives a zero bottom one
        # (only with a bottom gradient to describe)
        propagate = propagate_down[0]
        if propagate:
            bottom[0].active = top[0].active if self.axis == 1 else None
        if self._skips and self.axis == 1 and dy.flags.c_contiguous and x.flags.c_contiguous:
            active = cpu_kernels.top_active(top[0], dy)
            if propagate:
                bottom[0].active = active
            if cpu_kernels.skip_inactive(active, self.rows):
                self._backward_active(dy, x, propagate_down[0], bottom[0].diff, active)
                return
        if self._parts is not None and x.flags.c_contiguous:
            self._backward_parts(dy, x, propagate_down[0], bottom[0].diff)
            return
        if self.transpose:
            xp.dot(x.T, dy, out=self._weight_buffer())
        else:
            xp.dot(dy.T, x, out=self._weight_buffer())
        weight.diff += self._dw
        if self.bias_term:
            self.blobs[1].diff += dy.sum(axis=0)
        if propagate_down[0]:
            w = weight.data.T if self.transpose else weight.data
            dx = bottom[0].diff
            if dx.flags.c_contiguous:
                xp.dot(dy, w, out=dx.reshape(self.rows, -1))
            else:  # a strided view: reshape would copy
                dx[...] = xp.dot(dy, w).reshape(dx.shape)

    def _backward_active(self, dy, x, propagate, dx, active):
        """Backward over the rows of dy that are not all zero (a triplet
        that meets its margin gives zero rows): the others add nothing to
        dw and db and get dx = 0 (cpu_kernels.skip_inactive)."""
        w_diff = self.blobs[0].diff
        b_diff = self.blobs[1].diff if self.bias_term else None
        if propagate:
            dx[...] = 0
        if len(active) == 0:
            return
        m = len(active)
        dya, xa = dy[active], x[active]
        parts = cpu_kernels.batch_parts(m)
        if self._parts is not None and len(parts) > 1 and \
                m * xa.shape[1] * self.num_output >= SPLIT_WORK:
            dxa = np.empty_like(xa) if propagate else None
            self._backward_parts(dya, xa, propagate, dxa, parts)
            if propagate:
                dx.reshape(self.rows, -1)[active] = dxa
            return
        np.dot(dya.T, xa, out=self._weight_buffer())   # (no fresh temporary per step)
        w_diff += self._dw
        if b_diff is not None:
            b_diff += dya.sum(axis=0)
        if propagate:
            dx.reshape(self.rows, -1)[active] = np.dot(dya, self.blobs[0].data)

    def _backward_parts(self, dy, x, propagate, dx, parts=None):
        """The split backward: part i computes rows out_parts[i] of dw (and
        db) and rows parts[i] of dx -- disjoint, so nothing is added across
        parts.  ``parts``: the row parts of dy and x (default: the batch's)."""
        parts = self._parts if parts is None else parts
        # Blob.diff allocates on first use: take the arrays here, not in
        # the parts (two threads allocating at once would lose a part)
        w, w_diff = self.blobs[0].data, self.blobs[0].diff
        b_diff = self.blobs[1].diff if self.bias_term else None
        dx2 = dx.reshape(len(x), -1) if propagate and dx.flags.c_contiguous else None

        if self._native and (dx2 is not None or not propagate):
            if parts is self._parts:                    # the parts in one call
                out_lo, out_hi, row_lo, row_hi = self._backward_bounds
            else:
                n = max(len(parts), len(self._out_parts))
                out_lo, out_hi = self._bounds(self._out_parts, n)
                row_lo, row_hi = self._bounds(parts, n)
            cpu_kernels.ip_backward_parts(dy, x, w, out_lo, out_hi, row_lo, row_hi, w_diff,
                                          b_diff, dx2)
            return

        dw = self._weight_buffer()

        def part(i):
            a, b = self._out_parts[i] if i < len(self._out_parts) else (0, 0)
            if b > a:
                np.dot(dy[:, a:b].T, x, out=dw[a:b])
                w_diff[a:b] += dw[a:b]
                if b_diff is not None:
                    b_diff[a:b] += dy[:, a:b].sum(axis=0)
            if dx2 is not None and i < len(parts):
                lo, hi = parts[i]
                np.dot(dy[lo:hi], w, out=dx2[lo:hi])
        cpu_kernels.run_parts(part, max(len(parts), len(self._out_parts)))
        if propagate and dx2 is None:  # a strided view: reshape would copy
            dx[...] = np.dot(dy, w).reshape(dx.shape)

    def _weight_buffer(self):
        """The weight gradient of one pass before it is added to the diff
        (the NumPy and thread-pool paths; the one-call pass adds in the
        product), made on first use and reused."""
        if self._dw is None:
            self._dw = self.xp.empty(self.blobs[0].shape, dtype=self.dtype)
        return self._dw

    @staticmethod
    def _bounds(parts, n=None):
        """(begins, ends) of ``parts`` as int64 arrays, padded with empty
        parts to ``n``."""
        parts = list(parts) + [(0, 0)] * ((n or len(parts)) - len(parts))
        bounds = np.array(parts, dtype=np.int64).reshape(-1, 2)
        return np.ascontiguousarray(bounds[:, 0]), np.ascontiguousarray(bounds[:, 1])

    def _backward_gemms(self, dy, x, propagate, dx):
        """The kernel path's backward: every product accumulates or writes in
        place (one cuBLAS call each on the GPU)."""
        weight = self.blobs[0]
        if self.transpose:
            matmul_accumulate(x.T, dy, weight.diff)
        else:
            matmul_accumulate(dy.T, x, weight.diff)
        if self.bias_term:
            if self._ones is None or self._ones.shape[1] != self.rows:
                self._ones = self.xp.ones((1, self.rows), dtype=self.dtype)
            matmul_accumulate(self._ones, dy, self.blobs[1].diff.reshape(1, -1))
        if propagate:
            w = weight.data.T if self.transpose else weight.data
            if dx.flags.c_contiguous:
                self.xp.dot(dy, w, out=dx.reshape(self.rows, -1))
            else:  # a strided view: reshape would copy
                dx[...] = self.xp.dot(dy, w).reshape(dx.shape)
