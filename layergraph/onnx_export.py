"""Export the deploy (RUN) net to ONNX (``layergraph export``).

The graph is written with the ``onnx`` package's helper API (no framework in
between), opset 13, IR version 7, float32.  The input keeps its shape with a
symbolic batch axis ``batch``; every layer becomes a few standard operators,
its parameters initializers named ``<layer>/<what>``.  Each blob becomes the
tensor of its name; a blob computed in place (ReLU on ``ip1``) gets one
tensor per version, the last one carrying the blob's name.  The outputs are
the RUN net's outputs, plus the embedding (the Decode layer's bottom) when
the net ends in a Decode layer, or the blobs given in ``outputs``.

Mappings (x the bottom, y the top; Caffe's formulas in the layer modules):

Convolution     Conv(x, w, b): kernel, stride, pad (both sides), dilation,
                group as the layer has them; Deconvolution -> ConvTranspose.
InnerProduct    y = x w^T + b over the matrix x (M, K) of the axes before and
                from ``axis``: axis 1 -> Flatten(axis=1) + Gemm(transB=1,
                or 0 with ``transpose``); axis > 1 -> Reshape to
                (N, ..., K) + MatMul + Add (the leading axes kept).
Pooling         Caffe rounds the output size up (``Ho = ceil((H + 2p - k)/s)
                + 1``, minus one when the last window would start in the
                padding) and keeps windows that start past the image when
                the stride exceeds the kernel.  ONNX's ``ceil_mode`` drops
                those (kernel 1, stride 3 on 5x5: Caffe 3x3, onnxruntime 2x2)
                and its rule changed across opsets, so the export never uses
                it: the head pads are Caffe's p, the tail pads
                ``t = (Ho - 1) s + k - H - p`` (at least 0) make a floor-mode
                pool give exactly Ho windows.  Pads of at least the kernel
                (which onnxruntime refuses) become a Pad node in front
                (value -FLT_MAX for MAX, 0 for AVE).
                MAX: padding never wins, a window over padding only gives
                -FLT_MAX, as our layer (AVE: 0).  AVE: Caffe divides by
                ``(min(hs + k, H + p) - hs)`` per axis (hs = r s - p): the
                head padding counts, the overhang of the last window does
                not.  The export pools with ``count_include_pad=1`` over the
                explicit pads (every window then divides by kh kw) and, when
                some window overhangs, multiplies by the constant map
                kh kw / divisor[r, s].
ReLU            Relu, or LeakyRelu(alpha = negative_slope); PReLU -> PRelu
                with the slopes shaped (C, 1, ..); ELU -> Elu(alpha);
                Sigmoid, TanH, AbsVal -> Sigmoid, Tanh, Abs;
                BNLL -> Relu(x) + Log(1 + Exp(-|x|)) (never overflows);
                Swish -> x Sigmoid(beta x); Clip; Threshold -> x > t as float;
                Power -> Pow(shift + scale x, p); Exp -> outer Exp(inner x);
                Log -> Log(shift + scale x) / ln(base).
Normalize       y = x / sqrt(sum_i x_i^2 + eps) over every axis but the first:
                ReduceSumSquare + Add(eps) + Sqrt + Div (LpNormalization has
                no eps).
Softmax         Softmax(axis) (opset 13: along that one axis, as Caffe).
LRN             ACROSS_CHANNELS -> LRN(size, alpha, beta, bias=k) (the same
                formula); WITHIN_CHANNEL -> x (1 + alpha AveragePool_n(x^2))^-beta.
Concat, Slice   Concat(axis); Split(axis, the slice sizes) (on the batch axis:
                one Slice per top, open-ended last, so the batch stays free).
Eltwise         SUM: Sum of Mul(x_j, c_j); PROD: Mul; MAX: Max.
Flatten,        Reshape with the batch axis copied (0) or, when the merged
Reshape         axes include it, inferred (-1); the other dims are the net's.
Dropout, Split  identity (the RUN net does not drop; a Split top is its bottom).
BatchNorm       (x - mu) / sqrt(var + eps) with the stored statistics
                (mu = S_mu / s, var = S_v / s): Sub + Mul by constants.
Scale, Bias     Mul / Add with the operand shaped to broadcast from ``axis``
                (a second bottom is unsqueezed the same way).
Decode          CENTROID: distances[n, l] = ||x_n - c_l||_2 to the stored
                centroids (Unsqueeze, Sub, ReduceSumSquare, Sqrt), 1e30 where a
                class is not ready (Where over a constant mask); KNN: the mean
                of the min(k, fill_l) smallest distances to the cached
                embeddings of class l (TopK, largest=0).  A second top (the
                centroids) is a constant.
Input, Silence  graph inputs; nothing.

A layer type without a mapping is a one-line LayergraphError naming the
layer and its type.  The model is checked with ``onnx.checker``.
"""
import collections

import numpy as np

from .backend import to_numpy
from .errors import LayergraphError
from .proto import pb

#: the ONNX operator set and IR version written (onnxruntime >= 1.8 runs them)
OPSET = 13
IR_VERSION = 7
#: Decode's distance for a class that has no centroid yet (layers/_centroids.py)
NOT_READY = 1e30
_LOWEST = float(np.finfo(np.float32).min)


def require_onnx():
    """The ``onnx`` module, or a one-line error saying how to install it."""
    try:
        import onnx  # noqa: F401
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError:
        raise LayergraphError("ONNX export needs the 'onnx' package: pip install "
                              "'layergraph[onnx]' (or pip install onnx onnxruntime)") from None
    return onnx


def require_onnxruntime():
    """The ``onnxruntime`` module, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise LayergraphError("running ONNX models needs the 'onnxruntime' package: pip "
                              "install 'layergraph[onnx]' (or pip install onnxruntime)") from None
    return onnxruntime


# --------------------------------------------------------------- graph ----

class _Graph:
    """Nodes and initializers being written, with unique tensor names."""

    def __init__(self, onnx, reserved):
        self.onnx = onnx
        self.nodes, self.initializers = [], []
        self.used = set(reserved)

    def fresh(self, name):
        """``name``, or ``name_2``, ``name_3``... if already taken."""
        candidate, k = name, 1
        while candidate in self.used:
            k += 1
            candidate = f"{name}_{k}"
        self.used.add(candidate)
        return candidate

    def const(self, name, array, dtype=np.float32):
        """An initializer holding ``array``; returns its tensor name."""
        name = self.fresh(name)
        array = np.ascontiguousarray(np.asarray(array, dtype=dtype))
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def ints(self, name, values):
        return self.const(name, np.asarray(values, np.int64), np.int64)

    def node(self, op, inputs, outputs, name=None, **attrs):
        """Add a node; ``outputs`` are names (already unique) or a count of
        fresh names derived from ``name``.  Returns the output name(s)."""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{name}/{op}") for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(
            op, list(inputs), list(outputs), name=self.fresh(f"{name}/{op}" if name else op),
            **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


class _Layer:
    """What an exporter gets: the layer, its bottom/top tensor names and
    the blob shapes (batch-1 shapes of the net as built)."""

    def __init__(self, layer, bottoms, tops, bottom_shapes, top_shapes):
        self.layer, self.name, self.type = layer, layer.name, layer.type
        self.x, self.y = bottoms, tops
        self.bshape, self.tshape = bottom_shapes, top_shapes

    def blob(self, k):
        return to_numpy(self.layer.blobs[k].data).astype(np.float32)

    def fail(self, why):
        return LayergraphError(f"layer '{self.name}' ({self.type}): {why}")


EXPORTERS = {}


def exporter(*types):
    """Register ``fn(graph, L)`` as the ONNX mapping of the layer types."""
    def wrap(fn):
        for t in types:
            EXPORTERS[t] = fn
        return fn
    return wrap


def _broadcast_shape(shape, axis, ndim):
    """``shape`` (an operand starting at ``axis``) padded with trailing 1s to
    broadcast against an ``ndim``-axis tensor (NumPy/ONNX align the right)."""
    return tuple(shape) + (1,) * (ndim - axis - len(shape))


def _reshape_target(top_shape, keep_batch):
    """The Reshape target of a static ``top_shape`` with a free batch: copy
    axis 0 (``0``) when it is the bottom's batch axis, else infer it (-1)."""
    return [0 if keep_batch else -1] + [int(d) for d in top_shape[1:]]


# ------------------------------------------------------------- layers ----

@exporter("Convolution", "Deconvolution")
def _convolution(g, L):
    layer = L.layer
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (layer.kernel, layer.stride, layer.pad,
                                              layer.dilation)
    inputs = [L.x[0], g.const(f"{L.name}/weight", L.blob(0))]
    if layer.bias_term:
        inputs.append(g.const(f"{L.name}/bias", L.blob(1)))
    op = "Conv" if L.type == "Convolution" else "ConvTranspose"
    g.node(op, inputs, L.y, name=L.name, kernel_shape=[kh, kw], strides=[sh, sw],
           pads=[ph, pw, ph, pw], dilations=[dh, dw], group=layer.group)


@exporter("InnerProduct")
def _inner_product(g, L):
    layer = L.layer
    axis, ndim = layer.axis, len(L.bshape[0])
    w = L.blob(0)
    bias = L.blob(1) if layer.bias_term else None
    if axis == 1:
        x = L.x[0] if ndim == 2 else g.node("Flatten", [L.x[0]], 1, name=L.name, axis=1)
        inputs = [x, g.const(f"{L.name}/weight", w)]
        if bias is not None:
            inputs.append(g.const(f"{L.name}/bias", bias))
        g.node("Gemm", inputs, L.y, name=L.name, transB=0 if layer.transpose else 1)
        return
    # axis > 1: the leading axes kept, MatMul broadcasts over them; axis 0:
    # one row of every value, reshaped back to (O,) at the end
    target = [1, -1] if axis == 0 else [0] + [int(d) for d in L.bshape[0][1:axis]] + [-1]
    y = g.node("Reshape", [L.x[0], g.ints(f"{L.name}/shape", target)], 1, name=L.name)
    steps = [("MatMul", g.const(f"{L.name}/weight", w if layer.transpose else w.T))]
    if bias is not None:
        steps.append(("Add", g.const(f"{L.name}/bias", bias)))
    if axis == 0:
        steps.append(("Reshape", g.ints(f"{L.name}/out_shape", L.tshape[0])))
    for k, (op, operand) in enumerate(steps):
        y = g.node(op, [y, operand], L.y if k == len(steps) - 1 else 1, name=L.name)


def pooling_geometry(size, kernel, pad, stride, out):
    """(tail pad, divisor, empty) per output position of one axis of a Caffe
    pooling: the tail pad makes a floor-mode pool give ``out`` windows; the
    divisor is Caffe's AVE divisor min(hs + k, size + pad) - hs, hs =
    r*stride - pad; ``empty`` marks windows starting past the image."""
    tail = max(0, (out - 1) * stride + kernel - size - pad)
    starts = np.arange(out) * stride - pad
    divisor = np.minimum(starts + kernel, size + pad) - starts
    return tail, divisor, starts >= size


@exporter("Pooling")
def _pooling(g, L):
    layer = L.layer
    is_max = layer.method == pb.PoolingParameter.MAX
    if len(L.y) > 1:
        raise L.fail("the mask top (argmax indices) has no ONNX mapping")
    (_, _, h, w), (_, _, ho, wo) = L.bshape[0], L.tshape[0]
    (kh, kw), (ph, pw), (sh, sw) = layer.kernel, layer.pad, layer.stride
    tail_h, div_h, empty_h = pooling_geometry(h, kh, ph, sh, ho)
    tail_w, div_w, empty_w = pooling_geometry(w, kw, pw, sw, wo)
    pads = [ph, pw, tail_h, tail_w]
    x = L.x[0]
    if max(ph, tail_h) >= kh or max(pw, tail_w) >= kw:   # onnxruntime: pad < kernel
        x = g.node("Pad", [x, g.ints(f"{L.name}/pads", [0, 0, ph, pw, 0, 0, tail_h, tail_w]),
                           g.const(f"{L.name}/pad_value", _LOWEST if is_max else 0.0)],
                   1, name=L.name, mode="constant")
        pads = [0, 0, 0, 0]
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=pads)
    if is_max:
        g.node("MaxPool", [x], L.y, name=L.name, **attrs)
        return
    # a window that starts past the image (stride > kernel) sees only padding
    # and gives 0, as our layer (whose divisor there may be 0 or negative)
    empty = np.logical_or.outer(empty_h, empty_w)
    divisor = np.where(empty, 1, np.outer(div_h, div_w)).astype(np.float64)
    correction = np.where(empty, 0, (kh * kw) / divisor).astype(np.float32)
    uniform = bool(np.all(correction == 1))
    y = g.node("AveragePool", [x], L.y if uniform else 1, name=L.name, count_include_pad=1,
               **attrs)
    if not uniform:  # the overhang of the last window(s) does not count
        g.node("Mul", [y, g.const(f"{L.name}/divisor", correction[None, None])], L.y,
               name=L.name)


def _unary(op, **attrs):
    def export(g, L):
        g.node(op, [L.x[0]], L.y, name=L.name, **attrs)
    return export


EXPORTERS.update({
    "Sigmoid": _unary("Sigmoid"), "TanH": _unary("Tanh"), "AbsVal": _unary("Abs"),
    "Dropout": _unary("Identity"),
})


@exporter("ReLU")
def _relu(g, L):
    slope = L.layer.negative_slope
    if slope == 0:
        g.node("Relu", [L.x[0]], L.y, name=L.name)
    else:
        g.node("LeakyRelu", [L.x[0]], L.y, name=L.name, alpha=slope)


@exporter("PReLU")
def _prelu(g, L):
    slope = L.blob(0)
    ndim = len(L.bshape[0])
    shape = (1,) if L.layer.channel_shared else _broadcast_shape(slope.shape, 1, ndim)
    g.node("PRelu", [L.x[0], g.const(f"{L.name}/slope", slope.reshape(shape))], L.y,
           name=L.name)


@exporter("ELU")
def _elu(g, L):
    g.node("Elu", [L.x[0]], L.y, name=L.name, alpha=L.layer.alpha)


@exporter("BNLL")
def _bnll(g, L):
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|)."""
    x = L.x[0]
    negative_abs = g.node("Neg", [g.node("Abs", [x], 1, name=L.name)], 1, name=L.name)
    one = g.const(f"{L.name}/one", 1.0)
    soft = g.node("Log", [g.node("Add", [one, g.node("Exp", [negative_abs], 1, name=L.name)],
                                 1, name=L.name)], 1, name=L.name)
    g.node("Add", [g.node("Relu", [x], 1, name=L.name), soft], L.y, name=L.name)


@exporter("Swish")
def _swish(g, L):
    x = L.x[0]
    beta = L.layer.beta
    z = x if beta == 1 else g.node("Mul", [x, g.const(f"{L.name}/beta", beta)], 1,
                                   name=L.name)
    g.node("Mul", [x, g.node("Sigmoid", [z], 1, name=L.name)], L.y, name=L.name)


@exporter("Clip")
def _clip(g, L):
    g.node("Clip", [L.x[0], g.const(f"{L.name}/min", L.layer.min),
                    g.const(f"{L.name}/max", L.layer.max)], L.y, name=L.name)


@exporter("Threshold")
def _threshold(g, L):
    above = g.node("Greater", [L.x[0], g.const(f"{L.name}/threshold", L.layer.threshold)], 1,
                   name=L.name)
    g.node("Cast", [above], L.y, name=L.name, to=g.onnx.TensorProto.FLOAT)


def _affine(g, L, x, scale, shift):
    """shift + scale * x, skipping the identity parts."""
    if scale != 1:
        x = g.node("Mul", [x, g.const(f"{L.name}/scale", scale)], 1, name=L.name)
    if shift != 0:
        x = g.node("Add", [x, g.const(f"{L.name}/shift", shift)], 1, name=L.name)
    return x


@exporter("Power")
def _power(g, L):
    layer = L.layer
    x = _affine(g, L, L.x[0], layer.scale, layer.shift)
    if layer.power == 1:
        g.node("Identity", [x], L.y, name=L.name)
    else:
        g.node("Pow", [x, g.const(f"{L.name}/power", layer.power)], L.y, name=L.name)


def _scaled_unary(g, L, op, x, factor):
    """y = factor * op(x), the Mul left out when factor is 1."""
    if factor == 1:
        g.node(op, [x], L.y, name=L.name)
    else:
        g.node("Mul", [g.node(op, [x], 1, name=L.name),
                       g.const(f"{L.name}/factor", factor)], L.y, name=L.name)


@exporter("Exp")
def _exp(g, L):
    """y = outer * exp(inner * x), inner = ln(base) scale, outer = base^shift."""
    layer = L.layer
    x = _affine(g, L, L.x[0], layer.inner_scale, 0.0)
    _scaled_unary(g, L, "Exp", x, layer.outer_scale)


@exporter("Log")
def _log(g, L):
    layer = L.layer
    x = _affine(g, L, L.x[0], layer.input_scale, layer.input_shift)
    _scaled_unary(g, L, "Log", x, layer.base_scale)


@exporter("Normalize")
def _normalize(g, L):
    """y = x / sqrt(sum over axes 1.. of x^2 + eps)."""
    ndim = len(L.bshape[0])
    x = L.x[0]
    squares = g.node("ReduceSumSquare", [x], 1, name=L.name, axes=list(range(1, ndim)),
                     keepdims=1)
    if L.layer.eps:
        squares = g.node("Add", [squares, g.const(f"{L.name}/eps", L.layer.eps)], 1,
                         name=L.name)
    g.node("Div", [x, g.node("Sqrt", [squares], 1, name=L.name)], L.y, name=L.name)


@exporter("Softmax")
def _softmax(g, L):
    g.node("Softmax", [L.x[0]], L.y, name=L.name, axis=L.layer.axis)


@exporter("LRN")
def _lrn(g, L):
    layer = L.layer
    if layer.region == pb.LRNParameter.ACROSS_CHANNELS:
        g.node("LRN", [L.x[0]], L.y, name=L.name, size=layer.size, alpha=layer.alpha,
               beta=layer.beta, bias=layer.k)
        return
    # WITHIN_CHANNEL: s = 1 + alpha/n^2 sum_{n x n window} x^2 (zero padded)
    n, p, x = layer.size, layer.pre_pad, L.x[0]
    mean = g.node("AveragePool", [g.node("Mul", [x, x], 1, name=L.name)], 1, name=L.name,
                  kernel_shape=[n, n], strides=[1, 1], pads=[p, p, p, p], count_include_pad=1)
    s = g.node("Add", [g.node("Mul", [mean, g.const(f"{L.name}/alpha", layer.alpha)], 1,
                              name=L.name), g.const(f"{L.name}/one", 1.0)], 1, name=L.name)
    power = g.node("Pow", [s, g.const(f"{L.name}/beta", -layer.beta)], 1, name=L.name)
    g.node("Mul", [x, power], L.y, name=L.name)


@exporter("Concat")
def _concat(g, L):
    g.node("Concat", L.x, L.y, name=L.name, axis=L.layer.axis)


@exporter("Slice")
def _slice(g, L):
    axis, bounds = L.layer.axis, L.layer.bounds
    if axis != 0:
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        g.node("Split", [L.x[0], g.ints(f"{L.name}/split", sizes)], L.y, name=L.name,
               axis=axis)
        return
    # the batch axis: open-ended last piece, so any batch size runs
    axes = g.ints(f"{L.name}/axes", [0])
    for k, top in enumerate(L.y):
        end = bounds[k + 1] if k + 1 < len(L.y) else np.iinfo(np.int64).max
        g.node("Slice", [L.x[0], g.ints(f"{L.name}/start", [bounds[k]]),
                         g.ints(f"{L.name}/end", [end]), axes], [top], name=L.name)


@exporter("Eltwise")
def _eltwise(g, L):
    op = L.layer.operation
    E = pb.EltwiseParameter
    if op == E.PROD:
        y = L.x[0]
        for k, x in enumerate(L.x[1:], start=1):
            y = g.node("Mul", [y, x], L.y if k == len(L.x) - 1 else 1, name=L.name)
    elif op == E.MAX:
        g.node("Max", L.x, L.y, name=L.name)
    else:
        terms = [x if c == 1 else g.node("Mul", [x, g.const(f"{L.name}/coeff", c)], 1,
                                         name=L.name)
                 for x, c in zip(L.x, L.layer.coeff)]
        g.node("Sum", terms, L.y, name=L.name)


@exporter("Flatten", "Reshape")
def _reshape(g, L):
    if L.type == "Flatten":
        keep_batch = int(L.layer.param.flatten_param.axis) % len(L.bshape[0]) != 0
    else:
        p = L.layer.param.reshape_param
        nd = len(L.bshape[0])
        start = p.axis if p.axis >= 0 else nd + p.axis + 1
        end = nd if p.num_axes == -1 else start + p.num_axes
        if start > 0:
            keep_batch = True
        elif end == 0:
            raise L.fail("reshape_param inserts axes before the batch axis; the ONNX "
                         "graph cannot keep a free batch size")
        else:  # the given dims replace the batch axis: Caffe's 0 / -1 are ONNX's
            target = [int(d) for d in p.shape.dim] + [
                int(d) for d in L.tshape[0][len(p.shape.dim):]]
            g.node("Reshape", [L.x[0], g.ints(f"{L.name}/shape", target)], L.y, name=L.name)
            return
    target = _reshape_target(L.tshape[0], keep_batch)
    g.node("Reshape", [L.x[0], g.ints(f"{L.name}/shape", target)], L.y, name=L.name)


@exporter("BatchNorm")
def _batch_norm(g, L):
    """y = (x - mu) * 1/sqrt(var + eps), the stored (global) statistics."""
    mean_sum, var_sum, factor = (L.blob(k) for k in range(3))
    scale = np.float32(0) if factor[0] == 0 else np.float32(1) / factor[0]
    mean, var = mean_sum * scale, var_sum * scale
    inv_std = (np.float32(1) / np.sqrt(var + np.float32(L.layer.eps))).astype(np.float32)
    shape = _broadcast_shape(mean.shape, 1, len(L.bshape[0])) if len(L.bshape[0]) > 1 else (1,)
    centred = g.node("Sub", [L.x[0], g.const(f"{L.name}/mean", mean.reshape(shape))], 1,
                     name=L.name)
    g.node("Mul", [centred, g.const(f"{L.name}/inv_std", inv_std.reshape(shape))], L.y,
           name=L.name)


def _operand(g, L, axis, shape, what, blob_index=None):
    """A Scale/Bias operand -- parameter blob ``blob_index``, else the second
    bottom -- shaped to broadcast against the first bottom from ``axis``."""
    ndim = len(L.bshape[0])
    if blob_index is not None:
        return g.const(f"{L.name}/{what}",
                       L.blob(blob_index).reshape(_broadcast_shape(shape, axis, ndim)))
    trailing = ndim - axis - len(shape)
    if not trailing:
        return L.x[1]
    axes = list(range(len(shape), len(shape) + trailing))
    return g.node("Unsqueeze", [L.x[1], g.ints(f"{L.name}/axes", axes)], 1, name=L.name)


def _operand_axis(L, axis_param, shape):
    if not len(shape):
        return 0  # a scalar ignores axis
    nd = len(L.bshape[0])
    return axis_param + nd if axis_param < 0 else axis_param


@exporter("Scale")
def _scale(g, L):
    layer = L.layer
    two = len(L.x) > 1
    shape = L.bshape[1] if two else layer.blobs[0].shape
    axis = _operand_axis(L, layer.param.scale_param.axis, shape)
    scale = _operand(g, L, axis, shape, "scale", None if two else 0)
    y = g.node("Mul", [L.x[0], scale], L.y if not layer.bias_term else 1, name=L.name)
    if layer.bias_term:
        bias = _operand(g, L, axis, shape, "bias", len(layer.blobs) - 1)
        g.node("Add", [y, bias], L.y, name=L.name)


@exporter("Bias")
def _bias(g, L):
    two = len(L.x) > 1
    shape = L.bshape[1] if two else L.layer.blobs[0].shape
    axis = _operand_axis(L, L.layer.param.bias_param.axis, shape)
    g.node("Add", [L.x[0], _operand(g, L, axis, shape, "bias", None if two else 0)], L.y,
           name=L.name)


@exporter("Decode")
def _decode(g, L):
    """Distances of each embedding to each class, as the Decode layer."""
    layer = L.layer
    name = L.name
    x = L.x[0]
    if len(L.bshape[0]) != 2:
        x = g.node("Flatten", [x], 1, name=name, axis=1)
    counts = L.blob(1)
    ready = counts > 0
    for label in layer.ignore_labels:
        if 0 <= label < layer.num_labels:
            ready[label] = False
    if layer.knn:
        cache, kk = L.blob(0), min(layer.k, L.blob(0).shape[1])
        fill = counts.astype(np.int64)
        xs = g.node("Unsqueeze", [x, g.ints(f"{name}/axes", [1, 2])], 1, name=name)
        diff = g.node("Sub", [xs, g.const(f"{name}/cache", cache)], 1, name=name)   # N,L,C,D
        dist = g.node("Sqrt", [g.node("ReduceSumSquare", [diff], 1, name=name, axes=[3],
                                      keepdims=0)], 1, name=name)
        valid = np.arange(cache.shape[1])[None, :] < fill[:, None]
        dist = g.node("Where", [g.const(f"{name}/valid", valid, np.bool_), dist,
                                g.const(f"{name}/inf", np.inf)], 1, name=name)
        nearest, _ = g.node("TopK", [dist, g.ints(f"{name}/k", [kk])], 2, name=name,
                            axis=-1, largest=0, sorted=1)
        used = np.minimum(fill, kk)
        take = np.arange(kk)[None, :] < used[:, None]
        nearest = g.node("Where", [g.const(f"{name}/take", take, np.bool_), nearest,
                                   g.const(f"{name}/zero", 0.0)], 1, name=name)
        total = g.node("ReduceSum", [nearest, g.ints(f"{name}/sum_axes", [2])], 1, name=name,
                       keepdims=0)
        dist = g.node("Div", [total, g.const(f"{name}/used", np.maximum(used, 1))], 1,
                      name=name)
        ready &= used > 0
    else:
        centroids = L.blob(0)
        xs = g.node("Unsqueeze", [x, g.ints(f"{name}/axes", [1])], 1, name=name)    # N,1,D
        diff = g.node("Sub", [xs, g.const(f"{name}/centroids", centroids)], 1, name=name)
        squares = g.node("ReduceSumSquare", [diff], 1, name=name, axes=[2], keepdims=0)
        dist = g.node("Sqrt", [squares], [L.y[0]] if ready.all() else 1, name=name)
    if not ready.all() or layer.knn:
        g.node("Where", [g.const(f"{name}/ready", ready, np.bool_), dist,
                         g.const(f"{name}/not_ready", NOT_READY)], [L.y[0]], name=name)
    if len(L.y) > 1:
        g.node("Identity", [g.const(f"{name}/centroid_values",
                                    to_numpy(layer._centroid_output()))], [L.y[1]], name=name)


# ---------------------------------------------------------------- net ----

def _default_outputs(net):
    """The RUN net's outputs, the embedding (Decode's bottom) first."""
    outputs = list(net.outputs)
    for layer, bottoms in zip(net.layers, net.bottom_names):
        if layer.type == "Decode" and bottoms[0] not in outputs:
            outputs.insert(0, bottoms[0])
    return outputs


def net_to_onnx(net, outputs=None, doc=""):
    """The ONNX ModelProto of a built Net (normally a RUN net): its Input
    blobs are the graph inputs (batch axis free), ``outputs`` (blob or layer
    names; default: the net's outputs and, with a Decode layer, the
    embedding) the graph outputs.  Raises a one-line LayergraphError for a
    layer without a mapping."""
    onnx = require_onnx()
    from onnx import TensorProto, helper
    if not net.inputs:
        raise LayergraphError("the net has no Input blob to export as the ONNX input")
    wanted = []
    for name in (outputs or _default_outputs(net)):
        if name not in net.blobs:
            if name in net.layer_names and net.top_names[net.layer_names.index(name)]:
                name = net.top_names[net.layer_names.index(name)][0]
            else:
                raise LayergraphError(f"no blob or layer '{name}' in the net to export as an "
                                      f"output; blobs: {', '.join(net.blobs)}")
        if name not in wanted:
            wanted.append(name)
    writes = collections.Counter(t for tops, layer in zip(net.top_names, net.layers)
                                 if layer.type != "Input" for t in tops)
    g = _Graph(onnx, net.blobs)
    inputs, current, written = [], {}, collections.Counter()
    for i, layer in enumerate(net.layers):
        tops = net.top_names[i]
        if layer.type == "Input":
            for name in tops:
                shape = ["batch"] + [int(d) for d in net.blobs[name].shape[1:]]
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
                current[name] = name
            continue
        if layer.type == "Silence":
            continue
        bottoms = [current[b] for b in net.bottom_names[i]]
        if layer.type == "Split":
            for name in tops:
                current[name] = bottoms[0]
            continue
        fn = EXPORTERS.get(layer.type)
        if fn is None:
            raise LayergraphError(f"layer '{layer.name}' ({layer.type}): no ONNX mapping for "
                                  f"this layer type (mapped: {', '.join(sorted(EXPORTERS))})")
        names = []
        for name in tops:
            written[name] += 1
            final = written[name] == writes[name] and name not in net.inputs
            names.append(name if final else g.fresh(f"{name}@{layer.name}"))
        fn(g, _Layer(layer, bottoms, names, [tuple(b.shape) for b in net.bottom_vecs[i]],
                     [tuple(t.shape) for t in net.top_vecs[i]]))
        current.update(zip(tops, names))
    graph_outputs, ranks = [], {}
    for name in wanted:
        tensor = current[name]
        if tensor != name and name not in net.inputs:  # a Split top: name it
            g.node("Identity", [tensor], [name], name=name)
            tensor = name
        graph_outputs.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
        ranks[tensor] = len(net.blobs[name].shape)
    graph = helper.make_graph(g.nodes, net.name or "layergraph", inputs, graph_outputs,
                              initializer=g.initializers)
    model = helper.make_model(graph, producer_name="layergraph", doc_string=doc,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model = _with_output_shapes(onnx, model, ranks)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:  # an exporter bug, not a user error
        raise LayergraphError(f"the exported graph fails onnx.checker: "
                              f"{str(e).splitlines()[0]}") from None
    return model


def _with_output_shapes(onnx, model, ranks):
    """Fill the graph outputs' shapes from ONNX shape inference (``ranks``:
    output name -> number of axes, for a shape inference leaves open)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        v = known.get(out.name)
        if v is not None and v.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(v.type)
        else:
            shape = out.type.tensor_type.shape
            for _ in range(ranks[out.name]):
                shape.dim.add()
    return model


def deploy_net(model, weights, input_shape=None, backend=None):
    """The RUN net of a train_val or deploy prototxt with ``weights``;
    ``input_shape`` (e.g. (1, 1, 28, 28)) sets the input's shape, also for a
    deploy file that declares its own."""
    from .net import Net
    from .prototxt import read_net
    from .upgrade import upgrade_net
    param = model if isinstance(model, pb.NetParameter) else read_net(model)
    param = upgrade_net(param, str(model) if not isinstance(model, pb.NetParameter) else "")
    if input_shape is not None:
        for lp in param.layer:
            if lp.type == "Input" and len(lp.top) == 1:
                del lp.input_param.shape[:]
                lp.input_param.shape.add().dim.extend(int(d) for d in input_shape)
    try:
        return Net(param, pb.RUN, weights=weights, input_shape=input_shape, backend=backend)
    except LayergraphError as e:
        if input_shape is None and "needs the shape of its input" in str(e):
            raise LayergraphError(f"{model}: the file does not give the RUN net's input "
                                  f"shape; give --input-shape, e.g. 1,1,28,28") from None
        raise


def input_transform(model):
    """{'scale': s, 'mean_value': [...]} of the model's Data layer
    transform_param (what the input expects), or {} when it has none."""
    from .evaluation.embedding import data_transform
    from .prototxt import read_net
    param = model if isinstance(model, pb.NetParameter) else read_net(model)
    transform = data_transform(param)
    if transform is None:
        return {}
    out = {"scale": float(transform.scale)}
    if len(transform.mean_value):
        out["mean_value"] = [float(v) for v in transform.mean_value]
    if transform.mean_file:
        out["mean_file"] = transform.mean_file
    return out


def export_onnx(model, weights, out, input_shape=None, outputs=None):
    """Write the RUN net of ``model`` with ``weights`` to ``out`` (.onnx);
    returns {'inputs', 'outputs', 'nodes', 'transform'}.  The input
    transform of the train_val's Data layer (if any) is recorded in the
    model's metadata (``layergraph.transform``: the input is (x - mean) *
    scale of the raw pixels) -- the graph itself takes transformed input,
    as the RUN net does."""
    import json
    from .prototxt import atomic_write
    onnx = require_onnx()
    net = deploy_net(model, weights, input_shape)
    try:
        proto = net_to_onnx(net, outputs, doc=f"RUN net of {model} with weights {weights}")
    finally:
        net.close()
    transform = input_transform(model)
    if transform:
        onnx.helper.set_model_props(proto, {"layergraph.transform": json.dumps(transform)})
    atomic_write(out, proto.SerializeToString())
    return {"inputs": [(v.name, _dims(v)) for v in proto.graph.input],
            "outputs": [(v.name, _dims(v)) for v in proto.graph.output],
            "nodes": len(proto.graph.node), "transform": transform}


def _dims(value_info):
    shape = value_info.type.tensor_type.shape
    return tuple(d.dim_param or d.dim_value for d in shape.dim)


def run_onnx(model, feeds):
    """Outputs {name: array} of an ONNX model (path, bytes or ModelProto) on
    onnxruntime's CPU provider."""
    ort = require_onnxruntime()
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.asarray(v, np.float32)
                                               for k, v in feeds.items()})))


def compare(net, proto, inputs):
    """max |ours - onnxruntime| per graph output for one batch of ``inputs``
    ({input blob: array}); returns ({name: max abs difference}, ours, theirs)."""
    ours = net.forward(**inputs)
    ours = {name: to_numpy(net.blobs[name].data) for name in
            (o.name for o in proto.graph.output) if name in net.blobs}
    theirs = run_onnx(proto, inputs)
    diffs = {name: float(np.max(np.abs(ours[name].astype(np.float64) - theirs[name])))
             if ours[name].size else 0.0 for name in ours}
    return diffs, ours, theirs

