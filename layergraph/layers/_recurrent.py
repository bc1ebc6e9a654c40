"""Shared machinery of Caffe's recurrent layers (RNN, LSTM) and the LSTM cell
(LSTMUnit).

Caffe's RecurrentLayer builds an unrolled net (Slice, InnerProduct, Scale,
Eltwise, LSTMUnit/TanH, Concat layers, one set per time step) and runs it;
here the same function is computed directly: one matrix product for the
input projection of every time step, then a loop over time, and
backpropagation through time in reverse.  Parameters, their order and
shapes, and the outputs are Caffe's (a ``.caffemodel`` trained by Caffe
loads as is).

Blob layout (time-major, as Caffe):

* bottom[0] ``x`` (T, N, ...): T time steps of N independent streams;
  the features are everything after axis 1 (flattened).
* bottom[1] ``cont`` (T, N): sequence continuation markers.  cont_t = 0
  starts a new sequence in that stream (the previous state is multiplied
  by 0), 1 continues it.  It takes no gradient.
* optional ``x_static`` (N, ...): an input seen at every time step.
* with ``recurrent_param.expose_hidden``: the initial states as bottoms
  and the final states as tops (RNN: h_0 / h_T; LSTM: h_0, c_0 / h_T,
  c_T), each (1, N, num_output).  Without it the final states of one
  forward are the initial states of the next (zero at first, and again
  when N changes; :meth:`RecurrentLayer.reset` zeroes them), as Caffe's
  layer carries them across batches; no gradient crosses batches.

Gradients: exact backpropagation through time, to x, x_static and every
parameter.  Where Caffe's unrolled net leaves gradients out -- it shares
only the data, not the diff, of the exposed h_0/c_0 bottoms and h_T/c_T
tops -- this layer gives the exact gradient: the diffs of h_T/c_T tops
count, and h_0/c_0 bottoms receive theirs.  With those tops unused (zero
diff) everything Caffe computes is identical.
"""
from ..layer import Layer


def sigmoid(xp, x):
    """1 / (1 + e^{-x}), written with tanh so that no exp overflows."""
    return 0.5 * (1 + xp.tanh(0.5 * x))


def lstm_cell_forward(xp, gates, c_prev, cont):
    r"""One LSTM step, Caffe's LSTMUnit.  ``gates`` (..., 4H) holds the
    pre-activations in Caffe's order [i, f, o, g]; ``cont`` broadcasts
    against (..., H).

        i = \sigma(i'),  f = \sigma(f'),  o = \sigma(o'),  g = \tanh(g')
        c = cont f c_prev + i g,          h = o \tanh(c)

    Returns (c, h, cache for :func:`lstm_cell_backward`)."""
    hidden = c_prev.shape[-1]
    i = sigmoid(xp, gates[..., :hidden])
    f = sigmoid(xp, gates[..., hidden:2 * hidden])
    o = sigmoid(xp, gates[..., 2 * hidden:3 * hidden])
    g = xp.tanh(gates[..., 3 * hidden:])
    c = cont * f * c_prev + i * g
    tanh_c = xp.tanh(c)
    return c, o * tanh_c, (i, f, o, g, tanh_c)


def lstm_cell_backward(xp, cache, c_prev, cont, dc, dh):
    r"""Gradients of one LSTM step: given dE/dc and dE/dh (from the next step
    and from the outputs), returns (dE/dgates (..., 4H) in [i, f, o, g]
    order, dE/dc_prev).

        dc~ = dc + dh o (1 - \tanh^2 c)
        di' = dc~ g i(1-i)          df' = dc~ cont c_prev f(1-f)
        do' = dh \tanh(c) o(1-o)    dg' = dc~ i (1 - g^2)
        dc_prev = dc~ cont f

    Caffe's LSTMUnit writes f for cont * f in df'; the two agree for the
    usual binary cont, and this is the exact derivative for any cont."""
    i, f, o, g, tanh_c = cache
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    d_i = dc_total * g * i * (1 - i)
    d_f = dc_total * cont * c_prev * f * (1 - f)
    d_o = dh * tanh_c * o * (1 - o)
    d_g = dc_total * i * (1 - g * g)
    return xp.concatenate([d_i, d_f, d_o, d_g], axis=-1), dc_total * cont * f


class RecurrentLayer(Layer):
    """Base of RNN and LSTM (Caffe's RecurrentLayer); see the module
    docstring.  A subclass sets ``state_names``, ``gate_factor`` (gate
    pre-activations per hidden unit: 4 for LSTM, 1 for RNN) and implements
    :meth:`_make_recurrent_params`, :meth:`_run` and :meth:`_backprop`."""

    min_bottoms = 2
    min_tops = 1
    label_bottoms = (1,)
    state_names = ("h",)
    gate_factor = 1

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.recurrent_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.error("recurrent_param.num_output must be > 0")
        self.expose_hidden = bool(p.expose_hidden)
        exposed = len(self.state_names) if self.expose_hidden else 0
        self._check_sequence(bottom)
        extra = len(bottom) - 2 - exposed
        if extra not in (0, 1):
            states = ", ".join(f"{s}_0" for s in self.state_names)
            raise self.error(f"takes bottoms x, cont, optional x_static"
                             f"{', then ' + states if exposed else ''}; got {len(bottom)}")
        self.static_input = extra == 1
        if len(top) != 1 + exposed:
            finals = ", ".join(f"{s}_T" for s in self.state_names)
            raise self.error(f"needs {1 + exposed} top(s) (the output"
                             f"{', then ' + finals if exposed else ''}), got {len(top)}")
        self.x_dim = bottom[0].count_range(2)
        self.static_dim = bottom[2].count_range(1) if self.static_input else 0
        gates = self.gate_factor * self.num_output
        # Caffe's order: W_x, b (x_transform), W_static, then the recurrent ones
        self.blobs = [self.make_blob((gates, self.x_dim), p.weight_filler),
                      self.make_blob((gates,), p.bias_filler)]
        if self.static_input:
            self.blobs.append(self.make_blob((gates, self.static_dim), p.weight_filler))
        self.blobs += self._make_recurrent_params(p)
        self._carried = None   # final states of the last forward (not exposed)
        self._cache = None

    def _make_recurrent_params(self, p):
        raise TypeError(f"{type(self).__name__} must define _make_recurrent_params()")

    def _check_sequence(self, bottom):
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2:
            raise self.shape_error(f"x {x.shape} needs at least 2 axes (time steps, streams, ...)")
        if cont.shape != x.shape[:2]:
            raise self.shape_error(f"cont {cont.shape} must be (time steps, streams) = "
                                   f"{x.shape[:2]}, as x {x.shape}")

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        self._check_sequence(bottom)
        x = bottom[0]
        self.T, self.N = x.shape[:2]
        if x.count_range(2) != self.x_dim:
            raise self.shape_error(f"x {x.shape} has {x.count_range(2)} features per step; "
                                   f"the weights expect {self.x_dim}")
        if self.static_input:
            s = bottom[2]
            if s.num_axes < 1 or s.shape[0] != self.N or s.count_range(1) != self.static_dim:
                raise self.shape_error(f"x_static {s.shape} must be ({self.N}, ...) with "
                                       f"{self.static_dim} features")
        state_shape = (1, self.N, self.num_output)
        if self.expose_hidden:
            for name, b in zip(self.state_names, bottom[self._state_offset():]):
                if b.shape != state_shape:
                    raise self.shape_error(f"{name}_0 {b.shape} must be {state_shape}")
            for t in top[1:]:
                t.reshape(state_shape)
        top[0].reshape((self.T, self.N, self.num_output))

    def _state_offset(self):
        return 2 + int(self.static_input)

    def reset(self):
        """Zero the carried hidden state (Caffe's RecurrentLayer::Reset)."""
        self._carried = None

    # ------------------------------------------------------------- forward --
    def _initial_states(self, bottom):
        xp = self.xp
        if self.expose_hidden:
            off = self._state_offset()
            return [b.data.reshape(self.N, self.num_output) for b in bottom[off:]]
        carried = self._carried
        if carried is None or carried[0].shape != (self.N, self.num_output):
            carried = [xp.zeros((self.N, self.num_output), dtype=self.dtype)
                       for _ in self.state_names]
        return carried

    def _input_projection(self, bottom):
        """W_x x_t + b (+ W_static x_static) for every t: (T, N, gates)."""
        xp = self.xp
        x = bottom[0].data.reshape(self.T * self.N, self.x_dim)
        proj = xp.dot(x, self.blobs[0].data.T) + self.blobs[1].data
        proj = proj.reshape(self.T, self.N, -1)
        if self.static_input:
            s = bottom[2].data.reshape(self.N, self.static_dim)
            proj = proj + xp.dot(s, self.blobs[2].data.T)[None]
        return proj

    def forward(self, bottom, top):
        cont = bottom[1].data.reshape(self.T, self.N, 1)
        initial = self._initial_states(bottom)
        output, finals = self._run(self._input_projection(bottom), cont, initial)
        top[0].data[...] = output
        if self.expose_hidden:
            for t, state in zip(top[1:], finals):
                t.data[...] = state.reshape(t.shape)
        else:
            self._carried = [s.copy() for s in finals]

    def _run(self, projection, cont, initial):
        """Forward over time; returns (output (T, N, H), final states) and
        keeps what backward needs in ``self._cache``."""
        raise TypeError(f"{type(self).__name__} must define _run()")

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        zeros = xp.zeros((self.N, self.num_output), dtype=self.dtype)
        final_diffs = [t.diff.reshape(self.N, self.num_output) for t in top[1:]] \
            if self.expose_hidden else [zeros for _ in self.state_names]
        cont = bottom[1].data.reshape(self.T, self.N, 1)
        d_proj, initial_diffs = self._backprop(top[0].diff, final_diffs, cont)
        # the input projection: W_x, b, x, and the static input
        flat = d_proj.reshape(self.T * self.N, -1)
        x = bottom[0].data.reshape(self.T * self.N, self.x_dim)
        self.blobs[0].diff[...] += xp.dot(flat.T, x)
        self.blobs[1].diff[...] += flat.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = xp.dot(flat, self.blobs[0].data).reshape(bottom[0].shape)
        if self.static_input:
            d_static = d_proj.sum(axis=0)
            s = bottom[2].data.reshape(self.N, self.static_dim)
            self.blobs[2].diff[...] += xp.dot(d_static.T, s)
            if propagate_down[2]:
                bottom[2].diff[...] = xp.dot(d_static, self.blobs[2].data).reshape(
                    bottom[2].shape)
        if propagate_down[1]:
            bottom[1].diff[...] = 0   # the markers take no gradient
        if self.expose_hidden:
            off = self._state_offset()
            for j, d in enumerate(initial_diffs):
                if propagate_down[off + j]:
                    bottom[off + j].diff[...] = d.reshape(bottom[off + j].shape)

    def _backprop(self, output_diff, final_diffs, cont):
        """Backward through time; returns (dE/dprojection (T, N, gates),
        dE/d initial states)."""
        raise TypeError(f"{type(self).__name__} must define _backprop()")
