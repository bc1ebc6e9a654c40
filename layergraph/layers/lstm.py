"""LSTM: Caffe's long short-term memory layer (time-major, cont markers)."""
from ..layer import register_layer
from ._recurrent import RecurrentLayer, lstm_cell_backward, lstm_cell_forward


@register_layer("LSTM")
class LSTMLayer(RecurrentLayer):
    r"""Long short-term memory (Hochreiter & Schmidhuber 1997) as Caffe's
    LSTMLayer; time-major blobs and ``cont`` markers as described in
    :mod:`layergraph.layers._recurrent`.  With H = num_output, for each
    time step t (cont_t per stream):

        [i', f', o', g'] = W_xc x_t + b_c + W_xc_static x_static + W_hc (cont_t h_{t-1})
        i = \sigma(i'), f = \sigma(f'), o = \sigma(o'), g = \tanh(g')
        c_t = cont_t f c_{t-1} + i g
        h_t = o \tanh(c_t)

    Parameters, in Caffe's order: W_xc (4H, D), b_c (4H,), W_xc_static
    (4H, D_static) (only with x_static), W_hc (4H, H); gate rows in the
    order i, f, o, g.  ``recurrent_param``: num_output, weight_filler (all
    weights), bias_filler, expose_hidden (bottoms h_0, c_0 after x_static,
    tops h_T, c_T after h; each (1, N, H)).

    Bottoms: x (T, N, ...), cont (T, N), [x_static (N, ...)], [h_0, c_0].
    Tops: h (T, N, H), [h_T, c_T].
    """

    state_names = ("h", "c")
    gate_factor = 4

    def _make_recurrent_params(self, p):
        h = self.num_output
        return [self.make_blob((4 * h, h), p.weight_filler)]   # W_hc

    @property
    def _w_hc(self):
        return self.blobs[-1]

    def _run(self, projection, cont, initial):
        xp = self.xp
        w = self._w_hc.data
        h, c = initial
        steps = []
        output = xp.empty((self.T, self.N, self.num_output), dtype=self.dtype)
        for t in range(self.T):
            h_conted = cont[t] * h
            gates = projection[t] + xp.dot(h_conted, w.T)
            c_prev = c
            c, h, cell = lstm_cell_forward(xp, gates, c_prev, cont[t])
            steps.append((h_conted, c_prev, cell))
            output[t] = h
        self._cache = steps
        return output, [h, c]

    def _backprop(self, output_diff, final_diffs, cont):
        xp = self.xp
        w = self._w_hc
        dh_next, dc_next = final_diffs
        d_gates = xp.empty((self.T, self.N, 4 * self.num_output), dtype=self.dtype)
        for t in reversed(range(self.T)):
            h_conted, c_prev, cell = self._cache[t]
            dh = output_diff[t] + dh_next
            d_gates[t], dc_next = lstm_cell_backward(xp, cell, c_prev, cont[t], dc_next, dh)
            w.diff[...] += xp.dot(d_gates[t].T, h_conted)
            dh_next = xp.dot(d_gates[t], w.data) * cont[t]
        return d_gates, [dh_next, dc_next]
