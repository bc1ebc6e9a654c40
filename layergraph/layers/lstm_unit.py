"""LSTMUnit: one step of an LSTM cell (Caffe's LSTMUnitLayer)."""
from ..layer import Layer, register_layer
from ._recurrent import lstm_cell_backward, lstm_cell_forward


@register_layer("LSTMUnit")
class LSTMUnitLayer(Layer):
    r"""One LSTM time step from gate pre-activations, as Caffe's LSTMUnit
    (the building block of its unrolled LSTM):

        [i', f', o', g'] = X                (gate order i, f, o, g; each D wide)
        i = \sigma(i'), f = \sigma(f'), o = \sigma(o'), g = \tanh(g')
        c = cont f c_prev + i g,     h = o \tanh(c)

    Bottoms: c_prev (1, N, D), X (1, N, 4D), cont (1, N) (the continuation
    markers; no gradient).  Tops: c (1, N, D), h (1, N, D).  Backward gives
    dE/dc_prev and dE/dX from dE/dc and dE/dh (see
    :func:`~layergraph.layers._recurrent.lstm_cell_backward`).
    """

    exact_bottoms = 3
    exact_tops = 2
    label_bottoms = (2,)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        c_prev, gates, cont = bottom
        if c_prev.num_axes != 3 or c_prev.shape[0] != 1:
            raise self.shape_error(f"c_prev {c_prev.shape} must be (1, N, D)")
        n, d = c_prev.shape[1:]
        if gates.shape != (1, n, 4 * d):
            raise self.shape_error(f"gate input {gates.shape} must be (1, {n}, {4 * d}) for "
                                   f"c_prev {c_prev.shape}")
        if cont.shape != (1, n):
            raise self.shape_error(f"cont {cont.shape} must be (1, {n})")
        top[0].reshape(c_prev.shape)
        top[1].reshape(c_prev.shape)

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        cont = bottom[2].data[..., None]
        c, h, self._cell = lstm_cell_forward(self.xp, bottom[1].data, bottom[0].data, cont)
        top[0].data[...] = c
        top[1].data[...] = h

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            bottom[2].diff[...] = 0   # the markers take no gradient
        if not (propagate_down[0] or propagate_down[1]):
            return
        cont = bottom[2].data[..., None]
        d_gates, dc_prev = lstm_cell_backward(self.xp, self._cell, bottom[0].data, cont,
                                              top[0].diff, top[1].diff)
        if propagate_down[0]:
            bottom[0].diff[...] = dc_prev
        if propagate_down[1]:
            bottom[1].diff[...] = d_gates
