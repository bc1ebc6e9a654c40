"""Arrays of array addresses for kernels that read or write several blobs in
one launch (Slice/Concat pieces, Split's top diffs, Eltwise's bottoms,
DataSequence's tops).

A kernel gets ``const long long* table`` and casts ``table[t]`` to ``float*``:
a device address on the GPU, a host address under the CPU emulation.  The
table is rebuilt (one small host-to-device copy) only when an address
changes, which for a net's blobs is at set-up and on reshape.  Address 0
means "no array" (a bottom that gets no gradient, say).
"""
import numpy as np


def address(array, dtype=np.float32):
    """The address of a C-contiguous ``dtype`` array's first element (NumPy
    or CuPy); ``None`` gives 0."""
    if array is None:
        return 0
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise ValueError(f"a kernel pointer table needs C-contiguous {np.dtype(dtype)} arrays, "
                         f"got {array.dtype} (contiguous: {array.flags.c_contiguous})")
    pointer = getattr(array.data, "ptr", None)  # cupy.cuda.MemoryPointer
    return int(pointer) if pointer is not None else int(array.ctypes.data)


class PointerTable:
    """An int64 array on the backend holding the last values asked for."""

    def __init__(self, xp):
        self.xp = xp
        self._key = None
        self._table = None

    def __call__(self, values):
        key = tuple(int(v) for v in values)
        if key != self._key:
            self._table = self.xp.asarray(np.array(key, np.int64))
            self._key = key
        return self._table
