"""Blob: an N-d array (``data``) with its gradient (``diff``).

Storage is backend-neutral: ``data`` and ``diff`` are NumPy or CuPy arrays of
the blob's dtype (float32 by default, like Caffe).  Parameter diffs accumulate
(``+=``) during backward, which is what makes weight sharing work: layers that
share a parameter hold the very same Blob object.  Bottom diffs are
overwritten.
"""
import math
import os

import numpy as np

from .backend import DEFAULT_DTYPE
from .errors import ShapeError


class Blob:
    __slots__ = ("name", "_data", "_diff", "dtype", "xp", "learnable", "active")

    def __init__(self, shape=(), dtype=DEFAULT_DTYPE, xp=np, name=""):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.learnable = True  # parameters only: False keeps the solver off it
        self._data = xp.zeros(tuple(int(d) for d in shape), dtype=self.dtype)
        self._diff = None
        #: During a backward pass: the items (indices along axis 0, ascending)
        #: outside of which the diff is known to be all zero; None when not
        #: known.  Set by layers with ``tracks_active_items`` as they write a
        #: bottom gradient, cleared by the Net otherwise (see Net.backward).
        self.active = None

    # ------------------------------------------------------------ arrays --
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        value = self.xp.asarray(value, dtype=self.dtype)
        if value.shape != self._data.shape:
            self._data = value.copy()
            self._diff = None
        else:
            self._data[...] = value

    @property
    def diff(self):
        if self._diff is None:
            self._diff = self.xp.zeros_like(self._data)
        return self._diff

    @diff.setter
    def diff(self, value):
        value = self.xp.asarray(value, dtype=self.dtype)
        if value.shape != self._data.shape:
            raise ShapeError(
                f"blob '{self.name}': diff of shape {value.shape} does not fit data {self.shape}")
        self.diff[...] = value

    # ------------------------------------------------------------- shape --
    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def count(self):
        return int(self._data.size)

    @property
    def num_axes(self):
        return self._data.ndim

    def count_range(self, start, end=None):
        return math.prod(self._data.shape[start:end])   # (Python ints: no overflow)

    def canonical_axis(self, axis):
        """Map a possibly negative axis to [0, num_axes) (Caffe's CanonicalAxisIndex)."""
        n = self.num_axes
        if not -n <= axis < max(n, 1):
            raise ShapeError(f"blob '{self.name}': axis {axis} out of range for shape {self.shape}")
        return axis + n if axis < 0 else axis

    def reshape(self, *shape):
        """Resize to ``shape`` (a tuple, or dims as arguments like pycaffe);
        contents are kept when the shape is unchanged, otherwise the arrays are
        reallocated (zero-filled)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ShapeError(f"blob '{self.name}': negative dimension in {shape}")
        if shape != self._data.shape:
            nbytes = self.dtype.itemsize
            for d in shape:
                nbytes *= d
            limit, where = memory_limit(self.xp)
            if nbytes > limit:
                raise BlobSizeError(f"blob '{self.name}' of shape {shape} needs "
                                    f"{human_bytes(nbytes)}, more than the "
                                    f"{human_bytes(limit)} of {where}")
            try:
                self._data = self.xp.zeros(shape, dtype=self.dtype)
            except (MemoryError, ValueError) as e:
                raise BlobSizeError(f"blob '{self.name}' of shape {shape} needs "
                                    f"{human_bytes(nbytes)}, which cannot be allocated "
                                    f"({' '.join(str(e).split())[:120]})") from None
            self._diff = None
        return self

    def reshape_like(self, other):
        return self.reshape(other.shape)

    def zero_diff(self):
        if self._diff is not None:
            self._diff.fill(0)

    def share_data(self, other):
        """Alias ``other``'s arrays (used by Reshape/Flatten-like views)."""
        self._data = other._data
        self._diff = other._diff

    def to(self, xp):
        """Move the arrays to another backend (numpy or cupy)."""
        if xp is self.xp:
            return self
        from .backend import to_numpy
        host = to_numpy(self._data)
        self._data = xp.asarray(host)
        if self._diff is not None:
            self._diff = xp.asarray(to_numpy(self._diff))
        self.xp = xp
        return self

    # ------------------------------------------------------------ protos --
    def to_proto(self, proto=None, write_diff=False):
        from .backend import to_numpy
        from .proto import pb
        proto = pb.BlobProto() if proto is None else proto
        proto.shape.dim.extend(self.shape)
        if self.dtype == np.float64:
            proto.double_data.extend(to_numpy(self._data).ravel().tolist())
            if write_diff:
                proto.double_diff.extend(to_numpy(self.diff).ravel().tolist())
        else:
            proto.data.extend(to_numpy(self._data).astype(np.float32).ravel().tolist())
            if write_diff:
                proto.diff.extend(to_numpy(self.diff).astype(np.float32).ravel().tolist())
        return proto

    def from_proto(self, proto, reshape=True):
        shape = proto_shape(proto)
        if reshape:
            self.reshape(shape)
        elif int(np.prod(shape, dtype=np.int64)) != self.count:
            raise ShapeError(f"blob '{self.name}': stored shape {shape} does not fit {self.shape}")
        values = proto.double_data if len(proto.double_data) else proto.data
        if len(values) != self.count:
            raise ShapeError(
                f"blob '{self.name}': stored {len(values)} values for shape {self.shape}")
        arr = np.asarray(values, dtype=self.dtype).reshape(self.shape)
        self._data[...] = self.xp.asarray(arr)
        return self

    def __repr__(self):
        return f"Blob({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class BlobSizeError(ShapeError):
    """A blob would not fit in memory (the Net adds the layer's name)."""


_memory = {}


def memory_limit(xp):
    """(bytes, description) that one array may at most take: this machine's
    physical memory for NumPy, the device's memory for CuPy."""
    key = xp.__name__
    if key not in _memory:
        if key == "numpy":
            try:
                total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            except (ValueError, OSError, AttributeError):  # pragma: no cover
                total = 1 << 50
            _memory[key] = (total, "memory this machine has")
        else:
            free, total = xp.cuda.runtime.memGetInfo()
            _memory[key] = (total, "memory the GPU has")
    return _memory[key]


def human_bytes(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024.0


def proto_shape(proto):
    """The shape a BlobProto describes (new ``shape`` or legacy num/c/h/w)."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if proto.num or proto.channels or proto.height or proto.width:
        return (proto.num, proto.channels, proto.height, proto.width)
    n = len(proto.double_data) or len(proto.data)
    return (n,) if n else ()
