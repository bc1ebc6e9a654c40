"""Weight fillers (Caffe's FillerParameter types).

``fill(filler_param, shape, rng)`` returns a float64 NumPy array; layers copy
it into their blob's dtype/backend.  fan_in = count / shape[0] and fan_out =
count / shape[1], as in Caffe.
"""
import math

import numpy as np

from .errors import LayerError

FILLERS = {}


def filler(name):
    def wrap(fn):
        FILLERS[name] = fn
        return fn
    return wrap


def _fans(shape):
    count = int(np.prod(shape)) if shape else 1
    fan_in = count / shape[0] if len(shape) >= 1 and shape[0] else count
    fan_out = count / shape[1] if len(shape) >= 2 and shape[1] else count
    return fan_in, fan_out


def _n(param, shape):
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    if norm == param.FAN_OUT:
        return fan_out
    if norm == param.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


@filler("constant")
def _constant(param, shape, rng):
    return np.full(shape, param.value, dtype=np.float64)


@filler("uniform")
def _uniform(param, shape, rng):
    if not param.min <= param.max:
        raise LayerError(f"uniform filler: min ({param.min:g}) must not exceed max "
                         f"({param.max:g})")
    return rng.uniform(param.min, param.max, size=shape)


@filler("gaussian")
def _gaussian(param, shape, rng):
    if not param.std >= 0:
        raise LayerError(f"gaussian filler: std must be >= 0, got {param.std:g}")
    values = rng.normal(param.mean, param.std, size=shape)
    if param.sparse >= 0:
        # Keep on average `sparse` non-zero inputs per output (Caffe semantics).
        if len(shape) < 2:
            raise LayerError("gaussian filler: sparse needs a blob with at least 2 axes")
        num_outputs = shape[0]
        prob = param.sparse / float(num_outputs)
        values *= rng.random(size=shape) < prob
    return values


@filler("positive_unitball")
def _positive_unitball(param, shape, rng):
    values = rng.uniform(0, 1, size=shape)
    if len(shape) >= 1 and shape[0]:
        flat = values.reshape(shape[0], -1)
        flat /= flat.sum(axis=1, keepdims=True)
        values = flat.reshape(shape)
    return values


@filler("xavier")
def _xavier(param, shape, rng):
    scale = np.sqrt(3.0 / _n(param, shape))
    return rng.uniform(-scale, scale, size=shape)


@filler("msra")
def _msra(param, shape, rng):
    std = np.sqrt(2.0 / _n(param, shape))
    return rng.normal(0.0, std, size=shape)


@filler("bilinear")
def _bilinear(param, shape, rng):
    """Caffe's bilinear filler, for Deconvolution layers that upsample: each
    kh x kw kernel is the separable bilinear interpolation kernel

        w[y, x] = (1 - |x / f - c|) (1 - |y / f - c|),
        f = ceil(kw / 2),  c = (2f - 1 - f mod 2) / (2f)

    (square kernels, as Caffe requires)."""
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise LayerError(f"bilinear filler: needs a square kernel (.., k, k), got shape {shape}")
    k = shape[-1]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    line = 1 - np.abs(np.arange(k) / f - c)
    return np.broadcast_to(np.outer(line, line), shape).copy()


def fill(param, shape, rng):
    """Values for a blob of ``shape`` from a FillerParameter."""
    try:
        fn = FILLERS[param.type]
    except KeyError:
        raise LayerError(f"unknown filler type '{param.type}'; known: "
                         f"{', '.join(sorted(FILLERS))}") from None
    return np.asarray(fn(param, tuple(shape), rng), dtype=np.float64)
