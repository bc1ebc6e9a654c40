"""Execution plan: weight-shared branches run as one batch.

A siamese or triplet net applies the same chain of layers, on the same
parameter blobs (shared by ParamSpec name), to two or three inputs -- three
passes of 64 images where one pass of 192 would do, with one im2col and one
GEMM per layer instead of three (and a third of the GPU kernel launches).
The user's prototxt keeps its towers; the Net derives the plan:

1. **Branch heads.**  Layers with the same type and parameters (names,
   bottoms, tops and phase rules aside), the *same* parameter blobs, one
   bottom and one top each, whose bottoms are distinct blobs of one shape.
2. **Chains.**  From the heads, each branch is followed while its top is
   read by exactly one layer (in-place layers continue the chain), the
   next layers of all branches again match, and the layer type is
   *batch-independent*: each sample's output depends on that sample alone,
   with no random draws or running state (Convolution, Pooling,
   InnerProduct, the activations, Normalize, Flatten; a layer class can
   declare ``batch_independent = True``).
3. **Blobs.**  Stage s of the chain computes into one batched blob of
   ``k * N`` rows; every branch's own blob (``net.blobs['conv1_p']``) is a
   view of its rows -- data and diff -- so every named top still shows its
   values, consumers outside the chain read and write the views, and
   nothing is copied.  The branch inputs are bound the same way, so the
   layer producing them (DataSequence) writes straight into the batch;
   should a producer reallocate its top, the chain copies it in.
4. **Order.**  The chain runs where its first head stood, provided every
   branch input is ready there; backward runs at the same place in
   reverse.  Losses and gradients equal the unbatched run's to float32
   rounding (parameter gradients come from one GEMM instead of a sum of
   three).  ``Net(..., batch_branches=False)`` turns it off.
"""
import collections

from .blob import Blob
from .proto import pb

#: layer types whose samples are computed independently (no RNG, no batch
#: statistics, no state that depends on how many rows a call sees)
BATCH_INDEPENDENT = {"Convolution", "Deconvolution", "Pooling", "InnerProduct", "ReLU",
                     "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp",
                     "Log", "Normalize", "Flatten", "Scale", "Bias"}


def batch_independent(layer):
    if getattr(type(layer), "batch_independent", None) is not None:
        return bool(type(layer).batch_independent)
    if layer.type not in BATCH_INDEPENDENT:
        return False
    # layers that flatten or multiply from an axis must keep axis 0 apart
    axis = getattr(layer, "axis", 1)
    return isinstance(axis, int) and axis >= 1


class BranchChain:
    """k weight-shared branches of S stages, run as one batch.

    ``stages[s][b]`` is the layer index of stage s in branch b.  The layer
    objects of branch 0 compute every stage on the batched blobs."""

    def __init__(self, net, stages):
        self.net = net
        self.stages = stages
        self.k = len(stages[0])
        self.first = stages[0][0]
        heads = stages[0]
        self.input_names = [net.bottom_names[h][0] for h in heads]
        self.inputs = [net.bottom_vecs[h][0] for h in heads]
        dtype, xp = net.dtype, net.xp
        self.batched_input = Blob((), dtype=dtype, xp=xp, name="+".join(self.input_names))
        # one batched top per stage; in-place stages share the previous one
        self.tops, self.bottoms = [], []
        previous = self.batched_input
        for s, stage in enumerate(stages):
            lead = stage[0]
            in_place = net.top_vecs[lead][0] is net.bottom_vecs[lead][0]
            top = previous if in_place else Blob(
                (), dtype=dtype, xp=xp, name="+".join(net.top_names[j][0] for j in stage))
            self.bottoms.append(previous)
            self.tops.append(top)
            previous = top
        self._bound = {}  # id(branch blob) -> the data view bound to it

    # ------------------------------------------------------------- views --
    def _bind(self, batched, blobs):
        """Make each branch blob a view of its rows of ``batched``."""
        n = batched.shape[0] // self.k
        diff = batched.diff
        for b, blob in enumerate(blobs):
            rows = slice(b * n, (b + 1) * n)
            blob._data = batched.data[rows]
            blob._diff = diff[rows]
            self._bound[id(blob)] = blob._data

    def _is_bound(self, blob):
        return self._bound.get(id(blob)) is blob._data

    def _gather_inputs(self):
        """The batched input: the branch inputs' rows, bound as views when
        their producer let them be; False if the shapes differ."""
        shape = self.inputs[0].shape
        if not shape or any(x.shape != shape for x in self.inputs):
            return False
        want = (self.k * shape[0],) + shape[1:]
        batched = self.batched_input
        if batched.shape == want and all(self._is_bound(x) for x in self.inputs):
            return True
        old = [x.data for x in self.inputs]
        batched.reshape(want)
        self._bind(batched, self.inputs)
        for x, data in zip(self.inputs, old):
            if data is not x._data:
                x._data[...] = data
        return True

    # ----------------------------------------------------------- running --
    def forward(self, clock=None):
        """Run every stage on the batch; False (nothing run) when the branch
        inputs differ in shape this time (the caller runs them unbatched).
        ``clock(layer index)`` is a context manager timing each stage."""
        if not self._gather_inputs():
            return False
        for s, stage in enumerate(self.stages):
            if clock is not None:
                with clock(stage[0]):
                    self._forward_stage(s, stage)
            else:
                self._forward_stage(s, stage)
        return True

    def _forward_stage(self, s, stage):
        net = self.net
        lead = stage[0]
        layer, bottom, top = net.layers[lead], [self.bottoms[s]], [self.tops[s]]
        before = top[0]._data
        layer.reshape(bottom, top)
        if top[0] is not bottom[0] and (
                top[0]._data is not before or not self._all_bound(s)):
            self._bind(top[0], [net.top_vecs[j][0] for j in stage])
        layer.forward(bottom, top)

    def _all_bound(self, s):
        return all(self._is_bound(self.net.top_vecs[j][0]) for j in self.stages[s])

    def backward(self, clock=None):
        net = self.net
        for s in reversed(range(len(self.stages))):
            lead = self.stages[s][0]
            if net.layer_need_backward[lead]:
                layer, need = net.layers[lead], net.bottom_need_backward[lead]
                if clock is None:
                    layer.backward([self.tops[s]], need, [self.bottoms[s]])
                else:
                    with clock(lead):
                        layer.backward([self.tops[s]], need, [self.bottoms[s]])
                layer.forget_untracked_hints(need, [self.bottoms[s]])  # see Net.backward

    @property
    def layer_indices(self):
        return [j for stage in self.stages for j in stage]

    def describe(self):
        names = self.net.layer_names
        first = " -> ".join(names[stage[0]] for stage in self.stages)
        others = ["(" + ", ".join(names[stage[b]] for stage in self.stages) + ")"
                  for b in range(1, self.k)]
        stages = len(self.stages)
        return (f"{self.k} weight-shared branches as one batch ({stages} "
                f"stage{'s' if stages > 1 else ''}): {first}; also runs {'; '.join(others)}")


# ---------------------------------------------------------------- finding --

def _signature(net, i):
    layer = net.layers[i]
    lp = pb.LayerParameter()
    lp.CopyFrom(layer.param)
    for field in ("name", "bottom", "top", "include", "exclude", "blobs", "propagate_down"):
        lp.ClearField(field)
    for spec in lp.param:
        spec.ClearField("name")
    return (lp.SerializeToString(deterministic=True), tuple(id(b) for b in layer.blobs),
            net.layer_need_backward[i], tuple(net.bottom_need_backward[i]))


def _eligible(net, i):
    return (len(net.bottom_vecs[i]) == 1 and len(net.top_vecs[i]) == 1
            and not net.loss_weights[i] and batch_independent(net.layers[i]))


def find_chains(net):
    """The BranchChains of a built Net (see the module docstring)."""
    n_layers = len(net.layers)
    readers = collections.defaultdict(list)   # blob object id -> reader layer indices
    writers = collections.defaultdict(list)   # blob object id -> writer layer indices
    for i in range(n_layers):
        for b in net.bottom_vecs[i]:
            readers[id(b)].append(i)
        for t in net.top_vecs[i]:
            writers[id(t)].append(i)

    def next_stage(j):
        """The only layer reading j's top next, or None."""
        top = net.top_vecs[j][0]
        window = []
        for m in readers[id(top)]:
            if m <= j:
                continue
            window.append(m)
            if net.top_vecs[m] and net.top_vecs[m][0] is top:
                break  # an in-place writer: later readers see its output
        later_writer = [m for m in writers[id(top)] if m > j and m not in window]
        if len(window) != 1 or (later_writer and later_writer[0] < window[0]):
            return None
        return window[0]

    used, chains = set(), []
    signatures = {i: _signature(net, i) for i in range(n_layers) if _eligible(net, i)}
    for head in range(n_layers):
        if head in used or head not in signatures:
            continue
        if net.top_vecs[head][0] is net.bottom_vecs[head][0]:
            continue  # a chain starts out of place
        shape = net.bottom_vecs[head][0].shape
        heads, inputs = [head], {id(net.bottom_vecs[head][0])}
        for j in range(head + 1, n_layers):
            if j in used or signatures.get(j) != signatures[head]:
                continue
            x = net.bottom_vecs[j][0]
            if id(x) in inputs or x.shape != shape or net.top_vecs[j][0] is x:
                continue
            # the input must be ready where the chain runs (at `head`)
            if any(head <= w < j for w in writers[id(x)]):
                continue
            heads.append(j)
            inputs.add(id(x))
        if len(heads) < 2:
            continue
        stages = [heads]
        while True:
            nxt = [next_stage(j) for j in stages[-1]]
            if any(m is None or m in used or m not in signatures for m in nxt):
                break
            if len(set(nxt)) != len(nxt) or any(signatures[m] != signatures[nxt[0]]
                                                for m in nxt):
                break
            if any(net.bottom_vecs[m][0] is not net.top_vecs[j][0]
                   for m, j in zip(nxt, stages[-1])):
                break
            stages.append(nxt)
        chain = BranchChain(net, stages)
        chains.append(chain)
        used.update(chain.layer_indices)
    return chains


def build_schedule(net, chains):
    """The run order: layer indices, with each chain in place of its layers
    (at its first head's position)."""
    at = {chain.first: chain for chain in chains}
    skip = {j for chain in chains for j in chain.layer_indices}
    schedule = []
    for i in range(len(net.layers)):
        if i in at:
            schedule.append(at[i])
        elif i not in skip:
            schedule.append(i)
    return schedule
