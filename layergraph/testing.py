"""Test helpers: build a single layer from a prototxt snippet, run it, and
check its backward pass against central differences (Caffe's GradientChecker).

>>> layer, tops = run_layer('type: "ReLU"', [np.array([[-1.0, 2.0]])])
>>> tops[0]
array([[0., 2.]])
"""
import contextlib
import numpy as np

from .blob import Blob
from .layer import layer_class
from .prototxt import parse_layer
from .proto import pb


def make_layer(spec, phase=pb.TRAIN, seed=0, dtype=np.float64, name="layer", backend=None):
    """A layer built from a LayerParameter prototxt snippet (or message)."""
    param = parse_layer(spec) if isinstance(spec, str) else spec
    if not param.name:
        param.name = name
    return layer_class(param.type)(param, phase=phase, seed=seed, dtype=dtype, backend=backend)


def _blobs(arrays, dtype, prefix, xp=np):
    out = []
    for i, a in enumerate(arrays):
        b = Blob(np.shape(a), dtype=dtype, name=f"{prefix}{i}", xp=xp)
        b.data[...] = xp.asarray(np.asarray(a))
        out.append(b)
    return out


def setup_layer(layer, bottom_arrays, num_tops=None):
    """Create bottom/top blobs, run setup + reshape; returns (bottom, top)."""
    bottom = _blobs(bottom_arrays, layer.dtype, "bottom", layer.xp)
    n = num_tops if num_tops is not None else max(len(layer.param.top), 1)
    top = [Blob((), dtype=layer.dtype, name=f"top{i}", xp=layer.xp) for i in range(n)]
    layer.check_blob_counts(bottom, top)
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    return bottom, top


def run_layer(spec, bottom_arrays, num_tops=None, **kw):
    """Build, set up and forward a layer; returns (layer, [top arrays])."""
    layer = make_layer(spec, **kw)
    bottom, top = setup_layer(layer, bottom_arrays, num_tops)
    layer.forward(bottom, top)
    return layer, [t.data.copy() for t in top]


def check_gradient(layer, bottom, top, check_bottom=None, check_params=True,
                   stepsize=1e-2, threshold=1e-3, kink=0.0, kink_range=-1.0,
                   top_index=None, seed=1701):
    """Compare ``layer.backward`` with central differences.

    The objective is E = sum_i w_i * top_i with fixed random weights w (so every
    top element gets a distinct gradient).  For every element x of each
    checked bottom and parameter blob:

        dE/dx ~ (E(x + h) - E(x - h)) / (2h)

    and the analytic value must agree within ``threshold`` relative to
    max(|analytic|, |numeric|, 1).  Elements within ``kink_range`` of ``kink``
    (e.g. 0 for ReLU) are skipped: the derivative does not exist there.
    ``check_bottom`` lists bottom indices to check (default: all);
    ``top_index`` restricts the objective to one top.
    Raises AssertionError naming the first mismatch.
    """
    rng = np.random.default_rng(seed)
    state0 = layer.state_dict()
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    tops = range(len(top)) if top_index is None else [top_index]
    weights = {i: rng.standard_normal(top[i].shape) for i in tops}

    def objective():
        layer.load_state_dict(state0)  # stochastic layers: the same draws
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        return sum(float(np.sum(weights[i] * top[i].data)) for i in tops)

    objective()
    for i in range(len(top)):
        top[i].diff[...] = weights[i] if i in weights else 0.0
    for b in layer.blobs:
        b.zero_diff()
    if check_bottom is None:
        check_bottom = list(range(len(bottom)))
    propagate = [i in check_bottom for i in range(len(bottom))]
    for j, b in enumerate(bottom):
        if propagate[j]:
            b.diff[...] = 0.0
    layer.backward(top, propagate, bottom)

    targets = [(f"bottom[{j}]", bottom[j], bottom[j].diff.copy()) for j in check_bottom]
    if check_params:
        targets += [(f"param[{k}]", b, b.diff.copy()) for k, b in enumerate(layer.blobs)]
    checked = 0
    for label, blob, analytic in targets:
        flat = blob.data.reshape(-1)
        for idx in range(flat.size):
            x = flat[idx]
            if kink_range > 0 and abs(x - kink) < kink_range:
                continue
            flat[idx] = x + stepsize
            plus = objective()
            flat[idx] = x - stepsize
            minus = objective()
            flat[idx] = x
            numeric = (plus - minus) / (2 * stepsize)
            a = float(analytic.reshape(-1)[idx])
            scale = max(abs(a), abs(numeric), 1.0)
            if abs(a - numeric) > threshold * scale:
                raise AssertionError(
                    f"{layer.type} '{layer.name}': gradient mismatch at {label} element "
                    f"{np.unravel_index(idx, blob.shape)}: analytic {a:.6g}, "
                    f"numeric {numeric:.6g}")
            checked += 1
    objective()
    return checked


def check_layer_gradient(spec, bottom_arrays, num_tops=None, layer_kw=None, **kw):
    """Build a float64 layer from a snippet and run :func:`check_gradient`.
    Returns the number of elements checked (asserting it is > 0)."""
    layer = make_layer(spec, **(layer_kw or {}))
    bottom, top = setup_layer(layer, bottom_arrays, num_tops)
    checked = check_gradient(layer, bottom, top, **kw)
    assert checked > 0, "gradient check compared no element"
    return checked


def compare_backends(spec, bottom_arrays, backend="emu", num_tops=None, phase=pb.TRAIN,
                     seed=0, backward=True, propagate=None, rtol=1e-4, atol=1e-5,
                     iterations=1, top_diffs=None, reference="cpu"):
    """Run one layer on the NumPy path (``reference``) and on ``backend``
    (``emu``: the kernels on the CPU; ``gpu``: CuPy; ``cpu``: the cpu
    backend with its compiled loops; ``numpy``: the cpu backend with the
    compiled loops off, see layergraph.cpu_kernels) from the same inputs and
    the same seed, forward and backward, in float32; assert that every top,
    bottom gradient and parameter gradient agree within ``rtol`` relative
    to the largest magnitude of that array (plus ``atol``).

    ``iterations`` > 1 repeats forward/backward (layers with running state:
    centroids, caches).  Returns a dict of array name -> max abs difference.
    """
    from . import cpu_kernels
    from .backend import get_backend, to_numpy
    runs = []
    rng = np.random.default_rng(seed + 99)
    drawn = {}
    for which in (reference, backend):
        be = get_backend("cpu" if which == "numpy" else which)
        layer = make_layer(spec, phase=phase, seed=seed, dtype=np.float32, backend=be)
        with cpu_kernels.disabled() if which == "numpy" else contextlib.nullcontext():
            bottom, top = setup_layer(layer, [np.asarray(a, np.float32) for a in bottom_arrays],
                                      num_tops)
        results = {}
        for it in range(iterations):
            for b, a in zip(bottom, bottom_arrays):
                b.data[...] = be.xp.asarray(np.asarray(a, np.float32))
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            for i, t in enumerate(top):
                results[f"iter{it}.top[{i}]"] = to_numpy(t.data).copy()
            if not backward or not layer.has_backward:
                continue
            if top_diffs is not None:
                diffs = top_diffs
            else:  # drawn on the reference run, reused on the other
                if it not in drawn:
                    drawn[it] = [rng.standard_normal(t.shape).astype(np.float32) for t in top]
                diffs = drawn[it]
            for t, d in zip(top, diffs):
                t.diff[...] = be.xp.asarray(d)
            for pblob in layer.blobs:
                pblob.zero_diff()
            prop = (propagate if propagate is not None else
                    [j not in layer.label_bottoms for j in range(len(bottom))])
            for j, b in enumerate(bottom):
                if prop[j]:
                    b.diff[...] = 0
            layer.backward(top, prop, bottom)
            for j, b in enumerate(bottom):
                if prop[j]:
                    results[f"iter{it}.bottom_diff[{j}]"] = to_numpy(b.diff).copy()
            for k, pblob in enumerate(layer.blobs):
                results[f"iter{it}.param_diff[{k}]"] = to_numpy(pblob.diff).copy()
        for k, pblob in enumerate(layer.blobs):
            results[f"param[{k}]"] = to_numpy(pblob.data).copy()
        runs.append(results)
    ref, got = runs
    report = {}
    for key, expected in ref.items():
        actual = got[key]
        if expected.shape != actual.shape:
            raise AssertionError(f"{spec!r}: {key} has shape {actual.shape} on {backend}, "
                                 f"{expected.shape} on {reference}")
        exp64 = expected.astype(np.float64)
        act64 = actual.astype(np.float64)
        diff = float(np.max(np.abs(exp64 - act64))) if expected.size else 0.0
        scale = float(np.max(np.abs(exp64))) if expected.size else 0.0
        if not np.array_equal(np.isnan(exp64), np.isnan(act64)) or diff > rtol * scale + atol:
            raise AssertionError(f"{spec!r}: {key} differs between {reference} and {backend}: "
                                 f"max |diff| {diff:.3g} (scale {scale:.3g})")
        report[key] = diff
    return report
