"""MemoryData: batches from arrays handed over from Python."""
import numpy as np

from ..layer import Layer, register_layer


@register_layer("MemoryData")
class MemoryDataLayer(Layer):
    r"""Batches cut from arrays set from Python (Caffe's MemoryDataLayer;
    pycaffe's ``net.set_input_arrays``).

    ``memory_data_param``: ``batch_size`` B, ``channels`` C, ``height`` H,
    ``width`` W (all > 0).  Tops: data (B, C, H, W) and labels (B,).

    :meth:`set_data` hands over n samples (data (n, C, H, W), labels (n,)
    or (n, 1, 1, 1)), n a multiple of B.  Forward k outputs samples
    [p, p + B) with p = k B mod n, cycling through them; setting new data
    starts again from sample 0.  No transformation is applied (as Caffe's
    Reset path).  The arrays are copied (as the net's dtype, on its
    device).  The position is part of :meth:`state_dict`.  No backward.
    """

    exact_bottoms = 0
    exact_tops = 2
    has_backward = False

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.sample_shape = (int(p.channels), int(p.height), int(p.width))
        if self.batch_size <= 0 or min(self.sample_shape) <= 0:
            raise self.error("batch_size, channels, height and width must be given and positive "
                             "in memory_data_param")
        self._data = None
        self._labels = None
        self._pos = 0

    def set_data(self, data, labels):
        """Use ``data`` (n, C, H, W) and ``labels`` (n,) from now on."""
        data = np.asarray(data) if not hasattr(data, "__cuda_array_interface__") else data
        labels = np.asarray(labels) if not hasattr(labels, "__cuda_array_interface__") \
            else labels
        if tuple(data.shape[1:]) != self.sample_shape or data.ndim != 4:
            raise self.shape_error(f"data of shape {tuple(data.shape)} does not fit "
                                   f"(n, {', '.join(map(str, self.sample_shape))})")
        n = data.shape[0]
        if labels.size != n or (labels.ndim > 1 and any(d != 1 for d in labels.shape[1:])) \
                or (labels.ndim and labels.shape[0] != n):
            raise self.shape_error(f"labels of shape {tuple(labels.shape)} do not fit {n} "
                                   "samples: give (n,) or (n, 1, 1, 1)")
        if n == 0 or n % self.batch_size:
            raise self.error(f"the number of samples ({n}) must be a positive multiple of "
                             f"batch_size {self.batch_size}")
        self._data = self.xp.asarray(data, dtype=self.dtype).copy()
        self._labels = self.xp.asarray(labels, dtype=self.dtype).reshape(n).copy()
        self._pos = 0

    def set_batch_size(self, batch_size):
        """Change B (Caffe's set_batch_size); the tops follow on the next reshape."""
        batch_size = int(batch_size)
        if batch_size <= 0:
            raise self.error(f"batch_size must be positive, got {batch_size}")
        if self._data is not None and self._data.shape[0] % batch_size:
            raise self.error(f"batch_size {batch_size} does not divide the "
                             f"{self._data.shape[0]} samples set")
        self.batch_size = batch_size
        self._pos = 0

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        top[0].reshape((self.batch_size,) + self.sample_shape)
        top[1].reshape((self.batch_size,))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        if self._data is None:
            raise self.error("no data: call set_data(data, labels) on this layer first "
                             "(pycaffe's set_input_arrays)")
        n = self._data.shape[0]
        p = self._pos % n
        top[0].data[...] = self._data[p:p + self.batch_size]
        top[1].data[...] = self._labels[p:p + self.batch_size]
        self._pos = (p + self.batch_size) % n

    # ------------------------------------------------------------ state --
    def state_dict(self):
        state = super().state_dict()
        state["pos"] = self._pos
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._pos = int(state.get("pos", 0))
