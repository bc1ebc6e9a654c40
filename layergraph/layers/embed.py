"""Embed: a learned lookup table (one-hot input times a weight matrix)."""
from ..layer import Layer, register_layer


@register_layer("Embed")
class EmbedLayer(Layer):
    r"""Rows of a (input_dim, num_output) weight table W, indexed by the
    integer values of the bottom, plus an optional bias b:

        y_{m,:} = W_{x_m,:} + b
        dE/dW_{k,:} += \sum_{m : x_m = k} dE/dy_{m,:}     dE/db += \sum_m dE/dy_{m,:}

    ``embed_param``: ``input_dim`` K (the vocabulary size, > 0),
    ``num_output`` (> 0), ``bias_term`` (default true), ``weight_filler``,
    ``bias_filler``.  Shapes: bottom any, holding integers in [0, K) (stored
    as floats; a non-integer or out-of-range value is an error); top =
    bottom shape + (num_output,).  No gradient reaches the bottom (an index
    input), only the parameters.
    """

    exact_bottoms = 1
    exact_tops = 1
    label_bottoms = (0,)

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.embed_param
        self.num_output = int(p.num_output)
        self.input_dim = int(p.input_dim)
        if self.num_output <= 0:
            raise self.error("embed_param.num_output must be > 0")
        if self.input_dim <= 0:
            raise self.error("embed_param.input_dim (the vocabulary size) must be > 0")
        self.bias_term = bool(p.bias_term)
        self.blobs = [self.make_blob((self.input_dim, self.num_output), p.weight_filler)]
        if self.bias_term:
            self.blobs.append(self.make_blob((self.num_output,), p.bias_filler))

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def _indices(self, bottom):
        xp = self.xp
        values = bottom[0].data.reshape(-1)
        index = values.astype(xp.int64)
        bad = (index < 0) | (index >= self.input_dim) | (index != values)
        if bool(bad.any()):
            first = float(values[bad][0])
            raise self.error(f"input {first:g} is not an integer index in [0, {self.input_dim})")
        return index

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        y = self.blobs[0].data[self._indices(bottom)]
        if self.bias_term:
            y = y + self.blobs[1].data
        top[0].data[...] = y.reshape(top[0].shape)

    # ------------------------------------------------------------ backward --
    def backward(self, top, propagate_down, bottom):
        xp = self.xp
        dy = top[0].diff.reshape(-1, self.num_output)
        index = self._indices(bottom)
        weight = self.blobs[0]
        if xp.__name__ == "numpy":
            xp.add.at(weight.diff, index, dy)
        else:  # CuPy: scatter_add is its unbuffered add.at
            import cupyx
            cupyx.scatter_add(weight.diff, index, dy)
        if self.bias_term:
            self.blobs[1].diff[...] += dy.sum(axis=0)
