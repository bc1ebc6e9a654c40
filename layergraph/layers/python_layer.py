"""Python: a layer implemented by a user class, named in the prototxt.

    layer { type: "Python" name: "mine" bottom: "x" top: "y"
            python_param { module: "my_layers" layer: "Square" param_str: "{'k': 2}" } }

The class follows pycaffe's contract: ``setup(bottom, top)``,
``reshape(bottom, top)``, ``forward(bottom, top)`` and
``backward(top, propagate_down, bottom)`` over lists of blobs with ``.data``,
``.diff`` and ``.reshape(*shape)``; ``self.param_str`` holds the string and
``self.phase`` the phase.  The module is imported from ``sys.path`` (the
working directory and the prototxt's directory are tried as well).

The user's code always sees NumPy arrays, as pycaffe's Python layers do.  On
a device backend (CuPy) each blob is handed over as a host copy, fetched from
the device when the code first touches its ``data`` or ``diff`` and written
back after the call (Caffe's SyncedMemory): tops' data after setup, reshape
and forward, bottoms' diffs after backward, parameters' data and diffs.
Parameter blobs the code creates in setup (NumPy Blobs) are moved to the
device after it, so the solver updates them there.
"""
import importlib
import os
import sys

import numpy as np

from ..backend import to_numpy
from ..layer import Layer, register_layer


class HostBlob:
    """A NumPy view of a device Blob for user Python code: ``data`` and
    ``diff`` are host copies, fetched on first use; :meth:`write_back` copies
    the ones that were fetched back to the device.  ``reshape`` reshapes the
    device blob at once."""

    xp = np

    def __init__(self, blob):
        self.blob = blob
        self._data = None
        self._diff = None

    name = property(lambda self: self.blob.name)
    dtype = property(lambda self: self.blob.dtype)
    shape = property(lambda self: self.blob.shape)
    count = property(lambda self: self.blob.count)
    num_axes = property(lambda self: self.blob.num_axes)

    def count_range(self, start, end=None):
        return self.blob.count_range(start, end)

    def canonical_axis(self, axis):
        return self.blob.canonical_axis(axis)

    @property
    def data(self):
        if self._data is None:
            self._data = np.array(to_numpy(self.blob.data), copy=True)
        return self._data

    @data.setter
    def data(self, value):
        value = np.asarray(value, dtype=self.dtype)
        if value.shape != self.shape:
            self.blob.reshape(value.shape)
            self._diff = None
        self._data = value.copy()

    @property
    def diff(self):
        if self._diff is None:
            self._diff = np.array(to_numpy(self.blob.diff), copy=True)
        return self._diff

    @diff.setter
    def diff(self, value):
        value = np.asarray(value, dtype=self.dtype)
        if value.shape != self.shape:
            self.blob.diff = value  # raises the Blob's ShapeError
        self._diff = value.copy()

    def reshape(self, *shape):
        before = self.shape
        self.blob.reshape(*shape)
        if self.shape != before:
            self._data = self._diff = None
        return self

    def reshape_like(self, other):
        return self.reshape(other.shape)

    def zero_diff(self):
        self.diff.fill(0)

    def write_back(self, data=False, diff=False):
        """Copy the fetched host arrays named back to the device blob."""
        if data and self._data is not None:
            self.blob.data[...] = self.blob.xp.asarray(self._data)
        if diff and self._diff is not None:
            self.blob.diff[...] = self.blob.xp.asarray(self._diff)

    def __repr__(self):
        return f"HostBlob({self.name!r}, shape={self.shape}, dtype={self.dtype})"


@register_layer("Python")
class PythonLayer(Layer):

    #: hand the user's code host copies (None: exactly when the arrays are
    #: not NumPy arrays, i.e. on the GPU)
    host_copies = None

    @property
    def _host(self):
        return self.xp is not np if self.host_copies is None else bool(self.host_copies)

    def _call(self, method, bottom, top, *, top_data=False, bottom_diff=False,
              param_data=False, param_diff=False, args=()):
        """Call the user's ``method`` with host views on a device backend."""
        if not self._host:
            return method(*args)
        views = {}

        def view(blob):
            if id(blob) not in views:
                views[id(blob)] = HostBlob(blob)
            return views[id(blob)]
        host_bottom = [view(b) for b in bottom]
        host_top = [view(t) for t in top]
        self.impl.blobs = [HostBlob(b) for b in self.blobs]
        result = method(*[host_bottom if a is bottom else host_top if a is top else a
                           for a in args])
        for t in host_top:
            t.write_back(data=top_data)
        for b in host_bottom:
            b.write_back(diff=bottom_diff)
        for p in self.impl.blobs:
            p.write_back(data=param_data, diff=param_diff)
        return result

    def setup(self, bottom, top):
        p = self.param.python_param
        if not p.module or not p.layer:
            raise self.error("python_param needs both 'module' and 'layer'")
        for path in (os.getcwd(),):
            if path not in sys.path:
                sys.path.insert(0, path)
        try:
            module = importlib.import_module(p.module)
        except ImportError as e:
            raise self.error(f"cannot import module '{p.module}': {e}") from None
        cls = getattr(module, p.layer, None)
        if cls is None:
            raise self.error(f"module '{p.module}' has no class '{p.layer}'")
        self.impl = cls()
        self.impl.param_str = p.param_str
        self.impl.phase = self.phase
        self.impl.blobs = self.blobs
        if hasattr(self.impl, "setup"):
            if self._host:  # parameters created here are NumPy Blobs: move them over
                host_top = [HostBlob(t) for t in top]
                self.impl.setup([HostBlob(b) for b in bottom], host_top)
                for t in host_top:
                    t.write_back(data=True)
                for b in self.blobs:
                    b.to(self.xp)
            else:
                self.impl.setup(bottom, top)

    def reshape(self, bottom, top):
        self._call(self.impl.reshape, bottom, top, top_data=True, args=(bottom, top))

    def forward(self, bottom, top):
        self._call(self.impl.forward, bottom, top, top_data=True, param_data=True,
                   args=(bottom, top))

    def backward(self, top, propagate_down, bottom):
        if hasattr(self.impl, "backward"):
            self._call(self.impl.backward, bottom, top, bottom_diff=True, param_diff=True,
                       args=(top, propagate_down, bottom))
