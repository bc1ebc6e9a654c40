"""RNN: Caffe's simple recurrent layer (time-major, cont markers)."""
from ..layer import register_layer
from ._recurrent import RecurrentLayer


@register_layer("RNN")
class RNNLayer(RecurrentLayer):
    r"""A simple (Elman) recurrent net as Caffe's RNNLayer; time-major blobs
    and ``cont`` markers as described in :mod:`layergraph.layers._recurrent`.
    With H = num_output, for each time step t:

        h_t = \tanh( W_hh (cont_t h_{t-1}) + W_xh x_t + b_h + W_xh_static x_static )
        o_t = \tanh( W_ho h_t + b_o )

    Parameters, in Caffe's order: W_xh (H, D), b_h (H,), W_xh_static
    (H, D_static) (only with x_static), W_hh (H, H), W_ho (H, H), b_o (H,).
    ``recurrent_param``: num_output, weight_filler, bias_filler,
    expose_hidden (bottom h_0, top h_T, each (1, N, H)).

    Bottoms: x (T, N, ...), cont (T, N), [x_static (N, ...)], [h_0].
    Tops: o (T, N, H), [h_T].
    """

    state_names = ("h",)
    gate_factor = 1

    def _make_recurrent_params(self, p):
        h = self.num_output
        return [self.make_blob((h, h), p.weight_filler),    # W_hh
                self.make_blob((h, h), p.weight_filler),    # W_ho
                self.make_blob((h,), p.bias_filler)]        # b_o

    def _run(self, projection, cont, initial):
        xp = self.xp
        w_hh, w_ho, b_o = (b.data for b in self.blobs[-3:])
        h = initial[0]
        hidden = xp.empty((self.T, self.N, self.num_output), dtype=self.dtype)
        conted = []
        for t in range(self.T):
            h_conted = cont[t] * h
            h = xp.tanh(projection[t] + xp.dot(h_conted, w_hh.T))
            conted.append(h_conted)
            hidden[t] = h
        output = xp.tanh(xp.dot(hidden.reshape(-1, self.num_output), w_ho.T) + b_o)
        output = output.reshape(self.T, self.N, self.num_output)
        self._cache = (conted, hidden, output)
        return output, [h]

    def _backprop(self, output_diff, final_diffs, cont):
        xp = self.xp
        w_hh, w_ho, b_o = self.blobs[-3:]
        conted, hidden, output = self._cache
        width = self.num_output
        d_out = (output_diff * (1 - output * output)).reshape(-1, width)
        w_ho.diff[...] += xp.dot(d_out.T, hidden.reshape(-1, width))
        b_o.diff[...] += d_out.sum(axis=0)
        d_hidden = xp.dot(d_out, w_ho.data).reshape(self.T, self.N, width)
        dh_next = final_diffs[0]
        d_pre = xp.empty((self.T, self.N, width), dtype=self.dtype)
        for t in reversed(range(self.T)):
            dh = d_hidden[t] + dh_next
            d_pre[t] = dh * (1 - hidden[t] * hidden[t])
            w_hh.diff[...] += xp.dot(d_pre[t].T, conted[t])
            dh_next = xp.dot(d_pre[t], w_hh.data) * cont[t]
        return d_pre, [dh_next]
