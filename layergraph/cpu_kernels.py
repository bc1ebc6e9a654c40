"""The CPU's compiled loops: sliding windows (``kernels/cpu/window_ops.cpp``),
the fused SGD/Adam updates (``kernels/cpu/solver_ops.cpp``) and a split
layer's whole pass in one call (``kernels/cpu/layer_parts.cpp``, see
:func:`native_parts`).

NumPy runs each array loop on one core, and a sliding window costs it
several passes.  Convolution (im2col, col2im, the layout changes around its
matrix product) and Pooling therefore call these C++ loops on the ``cpu``
backend when they can: one pass each, split over the cores with OpenMP.
The NumPy code in the layers stays the reference they are tested against
(``tests/test_cpu_kernels.py``) and the path taken when

- no C++ compiler with OpenMP is found (``CXX``, default ``g++``; the
  library is built once per source version and cached under
  ``~/.cache/layergraph/cpu``), or
- ``LAYERGRAPH_CPU_KERNELS=0`` is set (``layergraph time`` shows which path
  ran), or the arrays are not float32/float64.

Threads: ``OMP_NUM_THREADS`` if set, else ``OPENBLAS_NUM_THREADS`` (the
matrix products' count), else every core.  OpenMP's idle threads wait
passively (``OMP_WAIT_POLICY=passive`` unless set), so they do not hold a
core for long after the last loop, but first spin for about half a
millisecond (``GOMP_SPINCOUNT=30000`` unless set): a step's loops follow
each other closer than that, and waking a sleeping thread costs 12-30 us
a loop on these machines, more when the host is busy (an empty two-thread
region: 1.3 us with the spin; the LeNet step of bench_triplet.py, 2 threads: 4%
faster, separate processes alternating).

>>> from layergraph import cpu_kernels
>>> cpu_kernels.status()[0] in (True, False)
True
"""
import contextlib
import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading

import numpy as np

_lock = threading.Lock()
_library = None
_error = None
SOURCE = os.path.join("cpu", "window_ops.cpp")
SOURCES = [SOURCE, os.path.join("cpu", "solver_ops.cpp"), os.path.join("cpu", "layer_parts.cpp"),
           os.path.join("cpu", "data_sequence.cpp")]
HEADERS = [os.path.join("cpu", "parallel_for.h")]   # in the cache key, not compiled alone
#: -ffp-contract=off: no fused multiply-adds, so the solver updates round as
#: the NumPy path's separate float32 operations do (bit for bit);
#: -fno-math-errno lets sqrt vectorise (it changes no result)
FLAGS = ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-fopenmp", "-w"]

_I64, _INT, _PTR = ctypes.c_longlong, ctypes.c_int, ctypes.c_void_p
#: argument types after the pointer arguments, per function
_SIGNATURES = {
    "im2col": [_PTR, _I64] + [_INT] * 13 + [_PTR],
    "col2im": [_PTR, _I64] + [_INT] * 13 + [_PTR],
    "rows_to_nchw": [_PTR, _PTR, _I64, _INT, _I64, _PTR],
    "nchw_to_rows": [_PTR, _I64, _INT, _I64, _PTR, _PTR],
    "max_pool_forward": [_PTR, _I64] + [_INT] * 10 + [_PTR, _PTR],
    "max_pool_backward": [_PTR, _PTR, _I64] + [_INT] * 4 + [_PTR, _I64, _PTR],
    "ave_pool_forward": [_PTR, _I64] + [_INT] * 10 + [_PTR],
    "ave_pool_backward": [_PTR, _I64] + [_INT] * 10 + [_PTR, _I64, _PTR],
    "active_items": [_PTR, _I64, _I64, _PTR],
}
_RESTYPES = {"active_items": _I64}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "layergraph", "cpu")


def _threads():
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def _build():
    from .kernels import kernel_dir
    return load(compile_sources(kernel_dir()))


def compile_sources(root):
    """Compile the loops of ``root`` (a kernels/ folder) into the cache,
    once per content of the sources and flags; returns the library's path.
    (benchmarks/ab_kernels.py compiles another revision's this way.)"""
    paths = [os.path.join(root, name) for name in SOURCES]
    sources = []
    for path in paths + [os.path.join(root, name) for name in HEADERS]:
        with open(path, encoding="utf-8") as f:
            sources.append(f.read())
    compiler = os.environ.get("CXX", "g++")
    key = hashlib.sha256("\0".join(sources + [compiler] + FLAGS).encode()).hexdigest()[:20]
    out_dir = _cache_dir()
    lib_path = os.path.join(out_dir, f"window_ops-{key}.so")
    if not os.path.exists(lib_path):
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            tmp_lib = os.path.join(tmp, "k.so")
            try:
                proc = subprocess.run([compiler, *FLAGS, *paths, "-o", tmp_lib],
                                      capture_output=True, text=True)
            except OSError as exc:
                raise RuntimeError(f"no C++ compiler '{compiler}' ({exc.strerror})") from None
            if proc.returncode != 0:
                first = next((line for line in proc.stderr.splitlines() if "error" in line),
                             proc.stderr.strip()[:200])
                raise RuntimeError(f"kernels/cpu did not compile: {first}")
            os.replace(tmp_lib, f"{lib_path}.{os.getpid()}")
            os.replace(f"{lib_path}.{os.getpid()}", lib_path)
    return lib_path


def load(lib_path):
    """The compiled loops at ``lib_path``, their signatures declared."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")   # (libgomp: g++'s OpenMP)
    lib = ctypes.CDLL(lib_path)
    for name, argtypes in _SIGNATURES.items():
        for suffix in _SUFFIX.values():
            fn = getattr(lib, f"lg_{name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, _RESTYPES.get(name)
    for suffix in _SUFFIX.values():
        fn = getattr(lib, f"lg_sgd_update_many_{suffix}")
        fn.argtypes, fn.restype = [_INT] + [_PTR] * 6, None
        fn = getattr(lib, f"lg_adam_update_many_{suffix}")
        fn.argtypes, fn.restype = [_INT] + [_PTR] * 7, None
        fn = getattr(lib, f"lg_zero_many_{suffix}")
        fn.argtypes, fn.restype = [_INT, _PTR, _PTR], None
    lib.lg_row_hash_f32.argtypes, lib.lg_row_hash_f32.restype = [_PTR, _I64, _I64, _PTR], None
    lib.lg_data_sequence_f32.argtypes = ([_I64, _I64] + [_PTR] * 3 + [_I64, _I64] + [_PTR] * 4
                                         + [_INT, _INT, _I64] + [_PTR] * 7)
    lib.lg_data_sequence_f32.restype = _I64
    lib.lg_direct_conv_f32.argtypes = [_PTR, _I64] + [_INT] * 8 + [_PTR] * 4
    lib.lg_direct_conv_f32.restype = None
    lib.lg_direct_conv_available.argtypes, lib.lg_direct_conv_available.restype = [], _INT
    lib.lg_direct_conv_dw_f32.argtypes = [_PTR, _PTR, _PTR, _I64] + [_INT] * 8 + [_PTR] * 4
    lib.lg_direct_conv_dw_f32.restype = None
    lib.lg_set_sgemm.argtypes, lib.lg_set_sgemm.restype = [_PTR, _INT], None
    lib.lg_conv_forward_parts_f32.argtypes = ([_PTR] * 4 + [_INT, _PTR, _PTR, _INT] + [_PTR] * 3
                                              + [_I64, _PTR])
    lib.lg_conv_backward_parts_f32.argtypes = ([_PTR] * 5 + [_INT] + [_PTR] * 7 + [_I64, _INT]
                                               + [_PTR] * 5 + [_I64, _I64, _PTR, _PTR])
    lib.lg_ip_forward_parts_f32.argtypes = [_PTR] * 3 + [_I64] * 3 + [_INT] + [_PTR] * 3
    lib.lg_ip_backward_parts_f32.argtypes = [_PTR] * 3 + [_I64] * 3 + [_INT] + [_PTR] * 7
    lib.lg_direct_conv_dw_parts_f32.argtypes = [_PTR, _PTR, _INT] + [_PTR] * 10
    for name in ("conv_forward", "conv_backward", "ip_forward", "ip_backward",
                 "direct_conv_dw"):
        getattr(lib, f"lg_{name}_parts_f32").restype = None
    lib.lg_set_threads.argtypes, lib.lg_set_threads.restype = [_INT], None
    lib.lg_get_threads.argtypes, lib.lg_get_threads.restype = [], _INT
    lib.lg_set_threads(_threads())
    return lib


def library():
    """The loaded library, or None when it cannot be used (see :func:`status`)."""
    global _library, _error
    if _library is None and _error is None:
        with _lock:
            if _library is None and _error is None:
                if os.environ.get("LAYERGRAPH_CPU_KERNELS", "1").strip() in ("0", "off", "no"):
                    _error = "disabled by LAYERGRAPH_CPU_KERNELS=0"
                else:
                    try:
                        _library = _build()
                    except Exception as exc:  # no compiler, no OpenMP, read-only cache...
                        _error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _library


def status():
    """(usable, a line saying which path the sliding-window layers take)."""
    lib = library()
    if lib is None:
        return False, f"NumPy (compiled CPU loops unavailable: {_error})"
    return True, f"compiled CPU loops (kernels/{SOURCE}, {lib.lg_get_threads()} OpenMP threads)"


_disabled = threading.local()


def available(dtype):
    """True when the compiled loops serve arrays of ``dtype`` (layers ask
    when they size their buffers, in reshape)."""
    if getattr(_disabled, "depth", 0):
        return False
    return np.dtype(dtype) in _SUFFIX and library() is not None


@contextlib.contextmanager
def disabled():
    """Layers set up (reshaped) inside take their NumPy path -- the
    reference the compiled loops are compared with."""
    _disabled.depth = getattr(_disabled, "depth", 0) + 1
    try:
        yield
    finally:
        _disabled.depth -= 1


def set_threads(n):
    """Set the OpenMP thread count of the compiled loops."""
    lib = library()
    if lib is not None:
        lib.lg_set_threads(int(n))


def suffix(dtype):
    """The loops' name suffix for ``dtype`` (f32 or f64)."""
    return _SUFFIX[np.dtype(dtype)]


def call(name, dtype, *args):
    """Run ``lg_<name>_<f32|f64>``; arrays are passed by pointer (they must be
    C-contiguous -- the callers own the buffers and guarantee it)."""
    fn = getattr(library(), f"lg_{name}_{_SUFFIX[np.dtype(dtype)]}")
    c_args = []
    for a in args:
        if a is None:                  # an optional pointer
            c_args.append(None)
        elif isinstance(a, np.ndarray):
            if not a.flags.c_contiguous:
                raise ValueError(f"lg_{name}: an array argument is not C-contiguous")
            c_args.append(a.ctypes.data)
        else:
            c_args.append(a)
    fn(*c_args)


#: Largest C*kh*kw a convolution computes directly (see direct_conv)
DIRECT_CONV_TAPS = 64


def direct_conv_available():
    """Whether :func:`direct_conv` can run here (compiled loops, AVX-512F)."""
    lib = library()
    return lib is not None and bool(lib.lg_direct_conv_available())


def _check_taps(channels, kh, kw):
    if channels * kh * kw > DIRECT_CONV_TAPS:
        raise ValueError(f"direct_conv: {channels}x{kh}x{kw} values per window, at most "
                         f"{DIRECT_CONV_TAPS}")


def _check_arrays(arrays):
    for a in arrays:
        if not a.flags.c_contiguous or a.dtype != np.float32:
            raise ValueError("direct_conv: arrays must be C-contiguous float32")


def direct_conv_scratch(out_ch, ho, width):
    """The scratch :func:`direct_conv` needs: one wide plane per thread."""
    return np.empty(max(_threads(), 1) * out_ch * ho * width, np.float32)


def direct_conv(x, weight, bias, y, scratch):
    """y = conv(x, weight) + bias computed directly, without columns
    (kernels/cpu/window_ops.cpp): stride 1, no padding, no dilation, one
    group, C*kh*kw <= DIRECT_CONV_TAPS, float32 C-contiguous arrays; the
    images split over the loops' threads."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    _check_taps(c, kh, kw)
    _check_arrays((x, weight, y) + (() if bias is None else (bias,)))
    library().lg_direct_conv_f32(x.ctypes.data, n, c, h, w, o, kh, kw, y.shape[2], y.shape[3],
                                 weight.ctypes.data, None if bias is None else bias.ctypes.data,
                                 scratch.ctypes.data, y.ctypes.data)


class DirectConvGradient:
    """The weight and bias gradient of a direct convolution without columns
    (``lg_direct_conv_dw_f32``): one per thread that runs it, for one
    geometry.  ``add(x, dy, index)`` accumulates images ``index`` (None:
    all) of x (N, C, H, W) and dy (N, O, ho, wo); ``result()`` gives
    (dw (O, C*kh*kw), db (O,)) and starts again from zero."""

    def __init__(self, channels, height, width, out_ch, kh, kw, ho, wo):
        self.geometry = (channels, height, width, out_ch, kh, kw, ho, wo)
        _check_taps(channels, kh, kw)
        taps = channels * kh * kw
        chunks = -(-ho * width // 16)
        self.acc = np.zeros((out_ch, taps, 16), np.float32)
        self.dbias = np.zeros(out_ch, np.float64)
        self.dyw = np.empty(out_ch * chunks * 16, np.float32)
        self.masks = np.empty(chunks * 64, np.uint16)

    def add(self, x, dy, index=None):
        _check_arrays((x, dy))
        if index is not None:
            index = np.ascontiguousarray(index, np.int64)
        count = x.shape[0] if index is None else len(index)
        library().lg_direct_conv_dw_f32(
            x.ctypes.data, dy.ctypes.data, None if index is None else index.ctypes.data, count,
            *self.geometry, self.dyw.ctypes.data, self.masks.ctypes.data,
            self.acc.ctypes.data, self.dbias.ctypes.data)

    def result(self):
        dw = self.acc.sum(axis=2)
        db = self.dbias.astype(np.float32)
        self.acc.fill(0)
        self.dbias.fill(0)
        return dw, db


def row_hash(items):
    """DataSequence's 64-bit content hash of each row of a float32 2-D array
    (layers/data_sequence.py's ``_row_hash``, compiled); None when the
    compiled loops are unavailable or the array is not float32."""
    lib = library()
    if lib is None or items.dtype != np.float32 or items.ndim != 2:
        return None
    items = np.ascontiguousarray(items)
    out = np.empty(items.shape[0], np.uint64)
    lib.lg_row_hash_f32(items.ctypes.data, items.shape[0], items.shape[1], out.ctypes.data)
    return out


def data_sequence_step(items, hashes, rows, cache, cache_hash, count, cursor, k, balance, step,
                       pos_keys, negatives, tops, labels_top, labels, row_labels):
    """DataSequence's host step in one call (kernels/cpu/data_sequence.cpp):
    the batch into the caches (``cache`` (R, cs, d), ``cache_hash``,
    ``count``, ``cursor`` updated), the picks from the drawn keys
    (``pos_keys`` (n, cs); ``negatives`` a (keys (n, R), u (n)) pair per
    negative), and the tops written.  Returns 0, 1 + i when item i has no
    positive, -(1 + i) when it has no negative.  float32 images and tops,
    every array C-contiguous."""
    n, d = items.shape
    rows_, cs = cache.shape[0], cache.shape[1]
    typed = [(a, np.float32) for a in [items, cache, *tops] + (
        [labels_top] if labels_top is not None else [])] + [
        (hashes, np.uint64), (cache_hash, np.uint64), (rows, np.int64), (count, np.int64),
        (cursor, np.int64), (labels, np.int64), (row_labels, np.int64), (pos_keys, np.float64)]
    for a, dtype in typed:
        if a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(f"data_sequence_step: {dtype.__name__} C-contiguous arrays "
                             "(float32 images and tops)")
    if len(negatives) != max(k, 1) or len(tops) != 2 + k:
        raise ValueError("data_sequence_step: one key pair per negative, 2 + k image tops")
    shapes_ok = (
        all(t.size == n * d for t in tops) and cache.ndim == 3 and cache.shape[2] == d
        and cache_hash.shape == (rows_, cs) and count.shape == cursor.shape == (rows_,)
        and hashes.shape == rows.shape == labels.shape == (n,) and row_labels.shape == (rows_,)
        and pos_keys.shape == (n, cs) and (labels_top is None or labels_top.size == n * (2 + k))
        and all(np.shape(a) == (n, rows_) and np.shape(u) == (n,) for a, u in negatives)
        and (n == 0 or (rows.min() >= 0 and rows.max() < rows_)))
    if not shapes_ok:
        raise ValueError("data_sequence_step: arrays of inconsistent shapes")
    keys = [(np.ascontiguousarray(a, np.float64), np.ascontiguousarray(u, np.float64))
            for a, u in negatives]   # (held until the call returns)
    neg_keys, neg_u = addresses([a for a, _ in keys]), addresses([u for _, u in keys])
    top_at = addresses(list(tops))
    return int(library().lg_data_sequence_f32(
        n, d, items.ctypes.data, hashes.ctypes.data, rows.ctypes.data, rows_, cs,
        cache.ctypes.data, cache_hash.ctypes.data, count.ctypes.data, cursor.ctypes.data, k,
        int(bool(balance)), step, pos_keys.ctypes.data, neg_keys.ctypes.data, neg_u.ctypes.data,
        top_at.ctypes.data, _ptr(labels_top), labels.ctypes.data, row_labels.ctypes.data))


# ---------------------------------------------------- skipping zero rows ----
#: A backward pass skips the batch items whose top gradient is all zero when
#: at most this share of the items is active (below it, gathering the active
#: ones and recomputing their columns costs less than the products saved).
SKIP_BELOW = 0.75


def active_items(diff, items=None):
    """Indices (int64, ascending) of the items -- slices along axis 0, or
    ``items`` equal runs of the flattened array -- of ``diff`` that hold
    anything but zero (NaN counts as nonzero); None when every item does
    or the compiled loops are unavailable.

    Why: a triplet (or a pair past the contrastive margin) that meets its
    margin has an all-zero gradient, and with random triplets most do after
    a few hundred iterations -- 97% of the TripletNet_28x28 template's
    images at iteration 200.  Their bottom gradient is zero and they add
    nothing to the parameter gradients, so Convolution and InnerProduct run
    their backward products on the active items only."""
    lib = library()
    if lib is None or diff.dtype not in _SUFFIX or not diff.flags.c_contiguous:
        return None
    n = diff.shape[0] if items is None else items
    if n == 0 or diff.size == 0:
        return None
    index = np.empty(n, dtype=np.int64)
    count = getattr(lib, f"lg_active_items_{_SUFFIX[diff.dtype]}")(
        diff.ctypes.data, n, diff.size // n, index.ctypes.data)
    return None if count == n else index[:count]


def top_active(top, dy):
    """The active items of a top gradient: the hint its writer left
    (``Blob.active``, see Layer.tracks_active_items), else found by
    :func:`active_items`; None when all (or unknown)."""
    return top.active if top.active is not None else active_items(dy)


def skip_inactive(active, n):
    """Whether to run a backward pass on the ``active`` items of ``n`` only:
    when few enough are active (:data:`SKIP_BELOW`)."""
    return active is not None and len(active) <= SKIP_BELOW * n


# ------------------------------------------------------ the batch split ----
# OpenBLAS splits a matrix product over the cores well when it is square, and
# badly when it is skinny: conv1 of the templates (20 x 25 @ 25 x 110,592)
# runs *slower* on two BLAS threads than on one.  A layer that knows its
# batch can do better: cut the batch into one part per core and run each
# part -- im2col, matrix product, layout change, col2im -- on a thread of its
# own, with the BLAS and the OpenMP loops at one thread meanwhile.  NumPy and
# ctypes release the GIL in all of these, so the parts run side by side.

_pool = None
_blas = None


def batch_threads():
    """Threads a layer splits its batch over: ``LAYERGRAPH_BATCH_THREADS``
    if set (1 turns the split off), else the loops' thread count."""
    value = os.environ.get("LAYERGRAPH_BATCH_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return _threads()


def batch_parts(n, min_items=2):
    """The batch [0, n) cut into one contiguous (begin, end) per thread
    (fewer when a part would hold under ``min_items`` items); one part --
    no split -- when the compiled loops are off or one thread is asked for."""
    threads = batch_threads() if available(np.float32) else 1
    parts = max(1, min(threads, n // max(min_items, 1)))
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def _blas_controllers():
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # threadpoolctl missing or a BLAS it does not know
            _blas = []
    return _blas


def _one_thread():
    library().lg_set_threads(1)


def _forget_pool():
    """In a forked child the pool's threads do not exist: start a new one."""
    global _pool, _pinned
    _pool, _pinned = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


_pinned = 0   # 1 inside the outermost one_blas_thread() that pinned the BLAS


@contextlib.contextmanager
def one_blas_thread():
    """The BLAS at one thread while a net's pass runs with split batches
    (Net.forward_prefilled / backward enter it).  Toggling it around each
    layer instead costs more than the split gains: the BLAS's second
    thread, woken by the products between two split layers, competes with
    the parts (TripletNet_28x28 step, 2 cores: 42 ms pinned for the pass,
    60-78 ms toggled per layer, 52-57 ms without the split).  Restored on
    exit, so products outside a net keep every thread."""
    global _pinned
    if _pinned or batch_threads() < 2 or library() is None:  # nested, or no split
        yield
        return
    blas = _blas_controllers()
    saved = [c.get_num_threads() for c in blas]
    for c in blas:
        c.set_num_threads(1)
    _pinned = 1
    try:
        yield
    finally:
        _pinned = 0
        for c, n in zip(blas, saved):
            c.set_num_threads(n)


def run_parts(body, parts):
    """``body(i)`` for i in range(parts), side by side: part 0 on this
    thread, the others on a pool; BLAS and OpenMP at one thread while they
    run (the BLAS stays so inside :func:`one_blas_thread`).  An exception in
    any part is raised here."""
    if parts == 1:
        body(0)
        return
    global _pool
    if _pool is None or _pool._max_workers < parts - 1:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(parts - 1, thread_name_prefix="layergraph-batch",
                                   initializer=_one_thread)
    lib = library()
    with one_blas_thread():
        omp = lib.lg_get_threads()
        lib.lg_set_threads(1)
        try:
            futures = [_pool.submit(body, i) for i in range(1, parts)]
            try:
                body(0)
            finally:
                errors = [f.exception() for f in futures]
            for error in errors:
                if error is not None:
                    raise error
        finally:
            lib.lg_set_threads(omp)


# ------------------------------------------- a layer's pass in one call ----
# run_parts hands each part to a Python thread: tens of microseconds per
# hand-off, and each part takes the GIL again after every NumPy or ctypes
# call it makes, waiting while the other part runs its own Python.  For the
# layers that split the most (Convolution, InnerProduct) the whole split
# pass is also written in C++ (kernels/cpu/layer_parts.cpp): one call, the
# parts on OpenMP threads, the matrix products through the sgemm of the
# BLAS NumPy uses (at one thread), bit for bit the run_parts path where the
# columns are not made in chunks (Convolution's COLUMN_CHUNK_BYTES).

_sgemm = None        # (address, ilp64) once looked up; False: none usable
_sgemm_name = None   # which sgemm layer_parts.cpp calls (for `layergraph time`)


def _find_sgemm():
    """(address, ilp64) of the CBLAS sgemm of the BLAS NumPy calls, or None.
    Looked up through threadpoolctl's list of loaded BLAS libraries: the
    scipy-openblas wheels' ``scipy_cblas_sgemm64_`` (64-bit integers),
    else a plain ``cblas_sgemm`` (32-bit integers) of a BLAS that is not
    built for 64-bit ones."""
    global _sgemm_name
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    np.dot(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))  # BLAS loaded
    for info in threadpool_info():
        if info.get("user_api") != "blas" or not info.get("filepath"):
            continue
        try:
            blas = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        prefix = "scipy_" if "scipy_openblas" in (info.get("prefix") or "") else ""
        for name, ilp64 in ((f"{prefix}cblas_sgemm64_", 1), ("cblas_sgemm64_", 1),
                            (f"{prefix}cblas_sgemm", 0), ("cblas_sgemm", 0)):
            fn = getattr(blas, name, None)
            if fn is None:
                continue
            if not ilp64 and info.get("internal_api") == "openblas":
                config = getattr(blas, f"{prefix}openblas_get_config", None)
                if config is None:
                    continue
                config.restype = ctypes.c_char_p
                if b"USE64BITINT" in (config() or b""):
                    continue
            _sgemm_name = f"{name} of {os.path.basename(info['filepath'])}"
            return ctypes.cast(fn, ctypes.c_void_p).value, ilp64
    return None


def _native_off():
    return os.environ.get("LAYERGRAPH_NATIVE_PARTS", "1").strip() in ("0", "off", "no")


def native_status():
    """A line saying how split passes run: one call (and with which sgemm)
    or the Python thread pool, and why."""
    if native_parts(np.float32):
        return f"one call per split pass (kernels/cpu/layer_parts.cpp, {_sgemm_name})"
    if _native_off():
        return "split passes on the Python thread pool (LAYERGRAPH_NATIVE_PARTS=0)"
    return "split passes on the Python thread pool (no usable BLAS sgemm found)"


def _sgemm_ready():
    """Whether layer_parts.cpp has a checked sgemm to call."""
    global _sgemm
    if _sgemm is None:
        with _lock:
            if _sgemm is None:
                lib, found = library(), None
                try:
                    found = _find_sgemm() if lib is not None else None
                except Exception:  # an unknown BLAS layout: keep the Python path
                    found = None
                _sgemm = False
                if found:
                    lib.lg_set_sgemm(*found)
                    _sgemm = _check_sgemm()
                    if not _sgemm:
                        lib.lg_set_sgemm(None, 0)
    return _sgemm


def _check_sgemm():
    """One small product through layer_parts.cpp against NumPy's: a wrong
    guess of the BLAS's integer width shows here, not in a layer."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    w = rng.standard_normal((3, 7)).astype(np.float32)
    y = np.zeros((5, 3), np.float32)
    bounds = np.array([0, 3], np.int64)
    library().lg_ip_forward_parts_f32(x.ctypes.data, w.ctypes.data, None, 5, 7, 3, 1,
                                      bounds[:1].ctypes.data, bounds[1:].ctypes.data,
                                      y.ctypes.data)
    return bool(np.allclose(y, x @ w.T, rtol=1e-5, atol=1e-5))


def native_parts(dtype):
    """Whether a layer's split pass runs as one call (layer_parts.cpp):
    float32, the compiled loops and a usable sgemm present, and not
    turned off with ``LAYERGRAPH_NATIVE_PARTS=0`` (then run_parts)."""
    if _native_off():
        return False
    return np.dtype(dtype) == np.float32 and available(dtype) and bool(_sgemm_ready())


def addresses(arrays):
    """The arrays' data addresses (0 for None) as a uintp array, to pass
    per-part buffers to layer_parts.cpp."""
    for a in arrays:
        if a is not None and not a.flags.c_contiguous:
            raise ValueError("layer_parts: a part's buffer is not C-contiguous")
    return np.array([0 if a is None else a.ctypes.data for a in arrays], dtype=np.uintp)


def _ptr(a):
    return None if a is None else a.ctypes.data


def _contiguous(*arrays):
    for a in arrays:
        if a is not None and (not a.flags.c_contiguous or a.dtype != np.float32):
            raise ValueError("layer_parts: arrays must be C-contiguous float32")


def conv_forward_parts(x, geometry, weight, bias, first, count, direct, wide, col, out, chunk,
                       y):
    """Convolution forward over the parts (lg_conv_forward_parts_f32):
    ``geometry`` int32 (c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo,
    out_ch, group); ``first``/``count`` int64 per part; ``wide``, ``col``,
    ``out`` the parts' buffers as :func:`addresses`."""
    _contiguous(x, weight, bias, y)
    with one_blas_thread():
        library().lg_conv_forward_parts_f32(
            x.ctypes.data, geometry.ctypes.data, weight.ctypes.data, _ptr(bias), len(first),
            first.ctypes.data, count.ctypes.data, int(direct), wide.ctypes.data,
            col.ctypes.data, out.ctypes.data, int(chunk), y.ctypes.data)


def conv_backward_parts(x, dy, dx, geometry, weight, first, count, index, xa, dya, dxa, idle,
                        recompute, col, rows, dw_t, dbias, dcol, dcol_images, chunk, w_diff,
                        b_diff):
    """Convolution backward over the parts (lg_conv_backward_parts_f32);
    per-part buffers as :func:`addresses` (``index``, ``xa``, ``dya``,
    ``dxa`` None when no part gathers); ``idle`` (int64 or None) the images
    whose dx is set to zero (those no part gathers)."""
    _contiguous(x, dy, dx, weight, w_diff, b_diff)
    with one_blas_thread():
        library().lg_conv_backward_parts_f32(
            x.ctypes.data, dy.ctypes.data, _ptr(dx), geometry.ctypes.data, weight.ctypes.data,
            len(first), first.ctypes.data, count.ctypes.data, _ptr(index), _ptr(xa), _ptr(dya),
            _ptr(dxa), _ptr(idle), 0 if idle is None else len(idle), int(recompute),
            col.ctypes.data, rows.ctypes.data, dw_t.ctypes.data,
            dbias.ctypes.data, dcol.ctypes.data, int(dcol_images), int(chunk), w_diff.ctypes.data,
            _ptr(b_diff))


def ip_forward_parts(x, w, bias, out_lo, out_hi, y):
    """InnerProduct forward, y = x w^T + b, by parts of the output units
    (lg_ip_forward_parts_f32)."""
    _contiguous(x, w, bias, y)
    (m, k), o = x.shape, w.shape[0]
    with one_blas_thread():
        library().lg_ip_forward_parts_f32(x.ctypes.data, w.ctypes.data, _ptr(bias), m, k, o,
                                          len(out_lo), out_lo.ctypes.data, out_hi.ctypes.data,
                                          y.ctypes.data)


def ip_backward_parts(dy, x, w, out_lo, out_hi, row_lo, row_hi, w_diff, b_diff, dx):
    """InnerProduct backward by parts (lg_ip_backward_parts_f32): rows
    out_lo..out_hi of dw (and db) added into w_diff (b_diff), rows
    row_lo..row_hi of dx (None: no dx)."""
    _contiguous(dy, x, w, w_diff, b_diff, dx)
    (m, k), o = x.shape, w.shape[0]
    with one_blas_thread():
        library().lg_ip_backward_parts_f32(
            dy.ctypes.data, x.ctypes.data, w.ctypes.data, m, k, o, len(out_lo),
            out_lo.ctypes.data, out_hi.ctypes.data, row_lo.ctypes.data, row_hi.ctypes.data,
            w_diff.ctypes.data, _ptr(b_diff), _ptr(dx))


def direct_conv_dw_parts(x, dy, first, count, index, gradients, w_diff, b_diff):
    """The weight and bias gradients of a direct convolution over the parts
    (lg_direct_conv_dw_parts_f32): one :class:`DirectConvGradient` per part
    (its scratch), w_diff (O, C*kh*kw) and b_diff (or None) added into."""
    _contiguous(x, dy, w_diff, b_diff)
    g = gradients[0]
    geometry = np.array(g.geometry[:3] + (g.geometry[4], g.geometry[5], 0, 0, 1, 1, 1, 1)
                        + g.geometry[6:] + (g.geometry[3], 1), dtype=np.int32)
    # (the address arrays are held here: a temporary's memory would be
    # freed before the call reads it)
    dyw, masks, acc, dbias = (addresses([getattr(d, name) for d in gradients])
                              for name in ("dyw", "masks", "acc", "dbias"))
    with one_blas_thread():
        library().lg_direct_conv_dw_parts_f32(
            x.ctypes.data, dy.ctypes.data, len(first), first.ctypes.data, count.ctypes.data,
            _ptr(index), geometry.ctypes.data, dyw.ctypes.data, masks.ctypes.data,
            acc.ctypes.data, dbias.ctypes.data, w_diff.ctypes.data, _ptr(b_diff))


class ArraySet:
    """The addresses of a list of same-dtype arrays (parameters' data,
    diffs, histories), made again only when one of the arrays is replaced:
    the arrays are held, so none can be freed while its address is kept."""

    def __init__(self):
        self.arrays = self.table = self.counts = None

    def addresses(self, arrays):
        """(addresses, sizes) of ``arrays`` as uintp and int64 arrays."""
        if self.arrays is None or len(arrays) != len(self.arrays) or any(
                a is not b for a, b in zip(arrays, self.arrays)):
            self.arrays, self.table = list(arrays), addresses(arrays)
            self.counts = np.array([a.size for a in arrays], dtype=np.int64)
        return self.table, self.counts


def update_many(rule, columns, caches, scalars, flags):
    """SGD or Adam (``rule`` "sgd" / "adam") of every parameter in one call
    (kernels/cpu/solver_ops.cpp): ``columns`` the lists of the parameters'
    data, diff, history (and Adam's second history), each with its
    :class:`ArraySet` in ``caches``; ``scalars`` (per parameter, the
    dtype's) and ``flags`` (intc) as lg_<rule>_update_many takes them."""
    tables = [cache.addresses(c) for cache, c in zip(caches, columns)]
    counts = tables[0][1]
    fn = getattr(library(), f"lg_{rule}_update_many_{_SUFFIX[columns[0][0].dtype]}")
    fn(len(columns[0]), *[t.ctypes.data for t, _ in tables], counts.ctypes.data,
       scalars.ctypes.data, flags.ctypes.data)


def zero_many(arrays, cache):
    """Zero ``arrays`` (C-contiguous, one dtype the loops serve) in one call;
    ``cache`` an :class:`ArraySet` kept by the caller."""
    table, counts = cache.addresses(arrays)
    fn = getattr(library(), f"lg_zero_many_{_SUFFIX[arrays[0].dtype]}")
    fn(len(arrays), table.ctypes.data, counts.ctypes.data)
