"""HDF5Data: batches read from HDF5 files (h5py, an optional extra)."""
import os
import zlib

import numpy as np

from ..errors import DataError
from ..layer import Layer, register_layer

FILE_TAG = 0x46494C45   # "FILE": the file order of each pass
ROW_TAG = 0x524F5753    # "ROWS": the row order of each file load


def import_h5py(layer):
    """h5py, or a one-line LayerError saying how to get it."""
    try:
        import h5py
    except ImportError:
        raise layer.error(f"{layer.type} needs h5py: pip install h5py") from None
    return h5py


def read_file_list(path):
    """Caffe's HDF5 source: the file names, whitespace-separated (one a line)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = f.read().split()
    except OSError as e:
        raise DataError(f"HDF5 file list {path}: cannot read it ({e.strerror or e})") from None
    if not names:
        raise DataError(f"HDF5 file list {path} lists no file (need at least one)")
    return names


@register_layer("HDF5Data")
class HDF5DataLayer(Layer):
    r"""Rows of HDF5 datasets, Caffe's HDF5Data layer.

    ``hdf5_data_param``: ``source`` (a text file listing HDF5 file names,
    one a line), ``batch_size`` (> 0), ``shuffle`` (default false).  A
    relative file name is taken from the working folder, as Caffe does, or,
    when it is not there, from the list file's folder.

    Each top reads the dataset named like the top (``top: "data"`` reads
    dataset ``data``).  In a file every dataset must have the same number
    of rows (first dimension); top i is (batch_size,) + the dataset's other
    dimensions, converted to the net's dtype.  Rows are taken in order,
    file after file, wrapping around to the first file; a file is loaded
    whole when reached (as in Caffe).  With ``shuffle`` the file order is
    a fresh permutation on every pass, and the rows of a file a fresh
    permutation every time it is loaded (or, with a single file, on every
    pass through it) -- Caffe's scheme, drawn reproducibly from (seed,
    layer name, pass or load number).  The position is part of
    :meth:`state_dict` (a resumed run continues with the same rows).

    Needs h5py (an optional extra: ``pip install h5py``); without it set up
    fails with a one-line message.  No bottoms, no backward.
    """

    exact_bottoms = 0
    min_tops = 1
    has_backward = False

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        self.h5py = import_h5py(self)
        p = self.param.hdf5_data_param
        if not p.source:
            raise self.error("hdf5_data_param.source (the list of HDF5 files) is required")
        self.batch_size = int(p.batch_size)
        if self.batch_size < 1:
            raise self.error("hdf5_data_param.batch_size must be given and positive")
        self.shuffle = bool(p.shuffle)
        try:
            names = read_file_list(p.source)
        except DataError as e:
            raise self.error(str(e), DataError) from None
        base = os.path.dirname(os.path.abspath(p.source))
        # names as written (Caffe opens them relative to the working folder);
        # a name that does not exist there is looked up beside the list file
        self.files = [n if os.path.exists(n) or os.path.isabs(n) else
                      (os.path.join(base, n) if os.path.exists(os.path.join(base, n)) else n)
                      for n in names]
        self.top_names = list(self.param.top) or [f"top{i}" for i in range(len(top))]
        self.crc = zlib.crc32(self.name.encode())
        self._seed = self.seed & 0xFFFFFFFF
        self._restart()
        self._row_shapes = [a.shape[1:] for a in self._arrays]

    # --------------------------------------------------------------- files --
    def _rng(self, *key):
        return np.random.default_rng(np.random.SeedSequence([self._seed, self.crc, *key]))

    def _restart(self, cursor=None):
        """Go to ``cursor`` = (pass, file position, loads, row): the pass
        through the file list, the position in its order, the number of
        file loads so far, and the row position in the loaded file."""
        self._pass, self._file_pos, self._loads, self._row = cursor or (0, 0, 0, 0)
        self._load_file()

    def _file_order(self):
        n = len(self.files)
        if self.shuffle:
            return self._rng(FILE_TAG, self._pass).permutation(n)
        return np.arange(n)

    def _load_file(self):
        path = self.files[int(self._file_order()[self._file_pos])]
        arrays = []
        try:
            with self.h5py.File(path, "r") as f:
                for name in self.top_names:
                    if name not in f:
                        raise self.error(f"HDF5 file {path} has no dataset '{name}' (datasets: "
                                         f"{', '.join(sorted(f.keys())) or 'none'}); each top "
                                         "reads the dataset of its name", DataError)
                    arrays.append(np.asarray(f[name][()], dtype=self.dtype))
        except OSError as e:
            raise self.error(f"cannot read HDF5 file {path} ({' '.join(str(e).split())})",
                             DataError) from None
        for name, a in zip(self.top_names, arrays):
            if a.ndim < 1 or a.shape[0] == 0:
                raise self.error(f"dataset '{name}' of {path} has shape {a.shape}: at least "
                                 "one row is needed", DataError)
            if a.shape[0] != arrays[0].shape[0]:
                raise self.error(f"datasets of {path} differ in rows: '{self.top_names[0]}' "
                                 f"has {arrays[0].shape[0]}, '{name}' {a.shape[0]}", DataError)
            if hasattr(self, "_row_shapes"):
                expected = self._row_shapes[self.top_names.index(name)]
                if a.shape[1:] != expected:
                    raise self.error(f"dataset '{name}' of {path} has rows of shape "
                                     f"{a.shape[1:]}, the first file's have {expected}",
                                     DataError)
        self._arrays = arrays
        rows = arrays[0].shape[0]
        if self.shuffle:
            self._rows = self._rng(ROW_TAG, self._loads).permutation(rows)
        else:
            self._rows = np.arange(rows)
        self._loads += 1

    def _next_row(self):
        """Advance one row (Caffe's HDF5DataLayer::Next)."""
        self._row += 1
        if self._row < len(self._rows):
            return
        self._row = 0
        if len(self.files) > 1:
            self._file_pos += 1
            if self._file_pos == len(self.files):
                self._file_pos = 0
                self._pass += 1
            self._load_file()
        elif self.shuffle:   # one file: a fresh row order on every pass
            self._rows = self._rng(ROW_TAG, self._loads).permutation(len(self._rows))
            self._loads += 1

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        for t, shape in zip(top, self._row_shapes):
            t.reshape((self.batch_size,) + tuple(shape))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        batches = [np.empty((self.batch_size,) + tuple(s), dtype=self.dtype)
                   for s in self._row_shapes]
        for i in range(self.batch_size):
            r = int(self._rows[self._row])
            for out, a in zip(batches, self._arrays):
                out[i] = a[r]
            self._next_row()
        for t, b in zip(top, batches):
            t.data[...] = self.xp.asarray(b)

    # ------------------------------------------------------------ state --
    def state_dict(self):
        state = super().state_dict()
        # loads counts the current file's load: it is redone on restore
        state["cursor"] = [self._pass, self._file_pos, self._loads - 1, self._row]
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        cursor = state.get("cursor")
        if cursor is not None and list(cursor) != [self._pass, self._file_pos,
                                                   self._loads - 1, self._row]:
            self._restart(tuple(int(c) for c in cursor))
