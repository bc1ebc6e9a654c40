"""Net: a graph of layers built from a NetParameter (Caffe's Net).

Building a net (``Net(model, phase)``) does, in order:

0. upgrade an old file (V0/V1 layers, ``input`` fields) to the current
   format, as Caffe's UpgradeNetAsNeeded (upgrade.py);
1. filter the layers by the NetState (phase, level, stages) against each
   layer's include/exclude rules;
2. in the RUN (deploy) phase, derive the deploy net from a train_val file:
   data layers are gone, so the image blob becomes an Input, label bottoms a
   layer can do without are dropped, loss layers are left out, and layers
   that still miss a bottom (accuracies) are left out;
3. insert Split layers for blobs consumed more than once (so each consumer
   writes its own diff and the Split sums them);
4. create each layer through the registry, connect bottoms and tops (a top
   named like its bottom is computed in place), run setup + reshape;
5. share parameters by ParamSpec name (the same Blob object, so data is shared
   and gradients accumulate), checking shapes and lr_mult/decay_mult;
6. record loss weights, and work out which layers need backward (Caffe's
   analysis with propagate_down and force_backward).

The net knows nothing about specific layer types.
"""
import collections
import contextlib
import os
import warnings

import numpy as np

from .backend import CPU, DEFAULT_DTYPE, get_backend
from .blob import Blob
from .blob import BlobSizeError
from .errors import NetError, ShapeError, SnapshotError
from .layer import layer_class
from .proto import pb
from .prototxt import atomic_write, read_binary, read_net
from .upgrade import upgrade_net

#: layer types that read data from outside the net (left out of RUN nets)
DATA_LAYER_TYPES = {"Data", "ImageData", "MemoryData", "DummyData", "HDF5Data", "WindowData"}


# ------------------------------------------------------------ filtering ----

def state_meets_rule(state, rule):
    """Caffe's StateMeetsRule: does the NetState satisfy one NetStateRule?"""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(net_param, state):
    """A copy of ``net_param`` with only the layers the NetState includes."""
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    for lp in net_param.layer:
        if lp.include and lp.exclude:
            raise NetError(f"layer '{lp.name}' ({lp.type}): specify include or exclude rules, "
                           f"not both")
        if lp.include:
            keep = any(state_meets_rule(state, r) for r in lp.include)
        else:
            keep = not any(state_meets_rule(state, r) for r in lp.exclude)
        if keep:
            out.layer.add().CopyFrom(lp)
    return out


def upgrade_legacy_inputs(net_param):
    """The NetParameter in the current format: V0/V1 layers upgraded and the
    deprecated ``input``/``input_shape``/``input_dim`` fields turned into an
    Input layer (Caffe's UpgradeNetAsNeeded; see upgrade.py)."""
    return upgrade_net(net_param)


# --------------------------------------------------------- split layers ----

def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(net_param):
    """Caffe's InsertSplits: a blob read by several layers (or read and also
    weighted as a loss) gets a Split layer whose tops feed one consumer each."""
    producer = {}                     # blob name -> (layer index, top index)
    consumers = collections.Counter()  # (layer index, top index) -> count
    bottom_src = {}                   # (layer index, bottom index) -> producer key
    loss_tops = set()
    for i, lp in enumerate(net_param.layer):
        for j, name in enumerate(lp.bottom):
            if name not in producer:
                continue  # reported (with the layer) when the net is built
            key = producer[name]
            bottom_src[(i, j)] = key
            consumers[key] += 1
        for j, name in enumerate(lp.top):
            producer[name] = (i, j)
            if j < len(lp.loss_weight) and lp.loss_weight[j] != 0:
                loss_tops.add((i, j))
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split = collections.Counter()
    for i, lp in enumerate(net_param.layer):
        layer = out.layer.add()
        layer.CopyFrom(lp)
        for j, name in enumerate(lp.bottom):
            key = bottom_src.get((i, j))
            if key is None:
                continue
            n = consumers[key] + (1 if key in loss_tops else 0)
            if n > 1:
                src_layer = net_param.layer[key[0]].name
                layer.bottom[j] = split_blob_name(src_layer, name, key[1], next_split[key])
                next_split[key] += 1
        for j, name in enumerate(lp.top):
            key = (i, j)
            n = consumers[key] + (1 if key in loss_tops else 0)
            if n <= 1 or consumers[key] == 0:
                continue
            split = out.layer.add(name=f"{name}_{lp.name}_{j}_split", type="Split")
            split.bottom.append(name)
            for k in range(n):
                split.top.append(split_blob_name(lp.name, name, j, k))
            if key in loss_tops:
                # the loss moves to the split's last top, which nothing reads
                while len(split.loss_weight) < n - 1:
                    split.loss_weight.append(0.0)
                split.loss_weight.append(lp.loss_weight[j])
                layer.loss_weight[j] = 0.0
    return out


# ------------------------------------------------------------ deploy net ----

def derive_run_net(net_param, input_shape=None):
    """The RUN (deploy) net of a train_val NetParameter already filtered for
    the RUN phase (see the module docstring).  ``input_shape`` gives the image
    input's shape, e.g. (1, 1, 28, 28); the batch size is changed freely later
    by ``Net.forward``."""
    produced = set()
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    inputs = []
    dropped = []
    for lp in net_param.layer:
        if lp.type in DATA_LAYER_TYPES:
            continue
        cls = layer_class(lp.type)
        if cls.is_loss:
            dropped.append(lp.name)
            continue
        optional = getattr(cls, "optional_bottoms", ())
        keep_bottoms, missing_required = [], []
        for j, name in enumerate(lp.bottom):
            if name in produced:
                keep_bottoms.append(name)
            elif j in optional:
                continue
            elif not inputs and not produced:
                inputs.append(name)      # the image blob: becomes the net input
                produced.add(name)
                keep_bottoms.append(name)
            else:
                missing_required.append(name)
        if missing_required:
            dropped.append(lp.name)
            continue
        layer = out.layer.add()
        layer.CopyFrom(lp)
        del layer.bottom[:]
        layer.bottom.extend(keep_bottoms)
        if len(layer.propagate_down) and len(layer.propagate_down) != len(keep_bottoms):
            del layer.propagate_down[:]
        produced.update(lp.top)
    if inputs:
        if input_shape is None:
            raise NetError(f"the RUN net needs the shape of its input '{inputs[0]}' "
                           f"(pass input_shape, e.g. (1, 1, 28, 28))")
        data = pb.LayerParameter(name="input", type="Input")
        data.top.extend(inputs)
        data.input_param.shape.add().dim.extend(int(d) for d in input_shape)
        layers = list(out.layer)
        del out.layer[:]
        out.layer.add().CopyFrom(data)
        out.layer.extend(layers)
    out.state.phase = pb.RUN
    return out


def _data_layer_param(net_param, state):
    """The data layer a train_val file feeds the net with: the first of
    DATA_LAYER_TYPES in the TEST phase, else in the TRAIN phase (None if
    there is none, as in a deploy prototxt)."""
    for phase in (pb.TEST, pb.TRAIN):
        probe = pb.NetState(phase=phase, level=state.level)
        probe.stage.extend(state.stage)
        for lp in net_param.layer:
            if lp.type not in DATA_LAYER_TYPES or (lp.include and lp.exclude):
                continue
            rules_ok = (any(state_meets_rule(probe, r) for r in lp.include) if lp.include
                        else not any(state_meets_rule(probe, r) for r in lp.exclude))
            if rules_ok:
                return lp
    return None


# ------------------------------------------------------------------ Net ----

class Net:
    """A net built from a prototxt (path) or a NetParameter.

    >>> net = Net("lenet.prototxt", phase=pb.TEST, weights="lenet.caffemodel")
    >>> out = net.forward(data=images)       # dict: output blob name -> array
    >>> net.blobs["ip1"].data, net.params["conv1"][0].data

    Attributes mirror pycaffe: ``blobs`` (name -> Blob), ``params`` (layer
    name -> list of parameter Blobs), ``layers``, ``inputs``, ``outputs``.

    ``db``: the image database root the Data layers read (default:
    $LAYERGRAPH_DB, else ~/.layergraph/imagedb); ``self.db`` (absolute, or
    None for the default).  A RUN net built from a train_val file feeds on
    what its Data layer produced in training: :meth:`transform` applies that
    scaling to raw images.
    """

    def __init__(self, model, phase=pb.TRAIN, weights=None, level=0, stages=(),
                 seed=0, dtype=DEFAULT_DTYPE, xp=np, input_shape=None, backend=None,
                 batch_branches=True, db=None):
        if isinstance(model, pb.NetParameter):
            param, self.source = model, "<NetParameter>"
        else:
            param, self.source = read_net(model), os.fspath(model)
        param = upgrade_net(param, self.source)
        if phase not in (pb.TRAIN, pb.TEST, pb.RUN):
            raise NetError(f"phase must be TRAIN ({pb.TRAIN}), TEST ({pb.TEST}) or RUN "
                           f"({pb.RUN}), got {phase!r}")
        self.phase = phase
        self.dtype = np.dtype(dtype)
        if backend is None:
            backend = CPU if xp is np else "gpu"
        #: cpu (NumPy), gpu (CuPy + kernels/) or emu (kernels on the CPU)
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.seed = int(seed)
        self.name = param.name
        state = pb.NetState(phase=phase, level=level)
        state.stage.extend(stages)
        if param.HasField("state"):
            state.level = param.state.level if not level else level
            if not stages:
                state.stage.extend(param.state.stage)
        self.state = state
        #: the image database root of the Data layers (layers/data.py reads it)
        self.db = None if db is None else os.path.abspath(os.path.expanduser(os.fspath(db)))
        #: the train_val's data layer (TEST phase, else TRAIN): Net.transform
        self.data_layer_param = _data_layer_param(param, state)
        param_had_layers = bool(param.layer)
        param = filter_net(param, state)
        if phase == pb.RUN:
            param = derive_run_net(param, input_shape)
        if not param.layer:
            raise NetError(f"{self.source}: the net has no layers"
                           + (f" in phase {pb.Phase.Name(phase)}" if param_had_layers else ""))
        #: the layers as the user wrote them (after filtering), without Split
        #: layers: what to_proto() writes
        self.user_param = param
        param = insert_splits(param)
        self.param = param
        self._build(param)
        self._user_layer_params = self._match_user_layers()
        # the execution plan: weight-shared branches run as one batch (plan.py)
        from .plan import build_schedule, find_chains
        self.chains = find_chains(self) if batch_branches else []
        self.schedule = build_schedule(self, self.chains)
        if weights:
            self.copy_from(weights)

    # ------------------------------------------------------------ build --
    def _match_user_layers(self):
        """Per built layer, the user's LayerParameter it came from (its own
        bottoms, not split blob names), or None for a Split layer that
        insert_splits added.  Both lists keep the user's order, the inserted
        splits sitting right after their producers."""
        user = list(self.user_param.layer)
        out, k = [], 0
        for name, layer in zip(self.layer_names, self.layers):
            if k < len(user) and user[k].name == name and user[k].type == layer.type:
                out.append(user[k])
                k += 1
            else:
                out.append(None)
        return out

    def _build(self, param):
        self.layers = []
        self.layer_names = []
        self.blobs = collections.OrderedDict()
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_names, self.top_names = [], []
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self.loss_weights = []          # per layer: list of (top index, weight)
        self.learnable_params = []      # unique learnable Blobs, in order
        self._zeroing = None            # their diffs' addresses (clear_param_diffs)
        self.params_lr = []
        self.params_weight_decay = []
        self._param_owner = {}          # ParamSpec name -> (blob, spec)
        self.inputs = []
        blob_need_backward = {}
        consumed = set()

        for lp in param.layer:
            if not lp.name:
                raise NetError(f"{self.source}: a layer of type '{lp.type}' has no name")
            if lp.name in self.layer_names:
                # Caffe accepts it (BVLC's MNIST autoencoder has two 'loss'
                # layers); lookups by name then find the first one
                warnings.warn(f"{self.source}: two layers are named '{lp.name}'; lookups "
                              f"and weight copies by name use the first", stacklevel=3)
            cls = layer_class(lp.type)
            layer = cls(lp, phase=self.phase, seed=self.seed, dtype=self.dtype,
                        backend=self.backend)
            layer.net = self
            bottoms, need_bw = [], []
            for j, name in enumerate(lp.bottom):
                if name not in self.blobs:
                    raise NetError(
                        f"layer '{lp.name}' ({lp.type}): unknown bottom blob '{name}' "
                        f"(no earlier layer produces it; known blobs: "
                        f"{', '.join(self.blobs) or 'none'})")
                bottoms.append(self.blobs[name])
                consumed.add(name)
                nb = blob_need_backward.get(name, False)
                if len(lp.propagate_down):
                    if len(lp.propagate_down) != len(lp.bottom):
                        raise NetError(f"layer '{lp.name}' ({lp.type}): propagate_down has "
                                       f"{len(lp.propagate_down)} entries for "
                                       f"{len(lp.bottom)} bottoms")
                    nb = nb and lp.propagate_down[j]
                need_bw.append(nb and cls.has_backward and j not in cls.label_bottoms)
            tops = []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and lp.bottom[j] == name:
                    tops.append(self.blobs[name])          # in place
                elif name in self.blobs:
                    raise NetError(f"layer '{lp.name}' ({lp.type}): top blob '{name}' is "
                                   f"already produced by an earlier layer (only in-place "
                                   f"reuse, top named like the same-index bottom, is allowed)")
                else:
                    blob = Blob((), dtype=self.dtype, xp=self.xp, name=name)
                    self.blobs[name] = blob
                    tops.append(blob)
            layer.check_blob_counts(bottoms, tops)
            try:
                layer.setup(bottoms, tops)
                layer.reshape(bottoms, tops)
            except BlobSizeError as e:
                raise ShapeError(f"layer '{lp.name}' ({lp.type}): {e}") from None
            if lp.type == "Input":
                for name, blob in zip(lp.top, tops):
                    if 0 in blob.shape:
                        raise ShapeError(f"layer '{lp.name}' (Input): top '{name}' has shape "
                                         f"{blob.shape}; every dimension must be > 0")
            if lp.type == "Input":
                self.inputs.extend(lp.top)
            if lp.blobs:
                self._load_layer_blobs(layer, lp.blobs, lp.name)
            layer_need_bw = any(need_bw)
            layer_need_bw |= self._append_params(layer, lp)
            layer_need_bw = layer_need_bw and cls.has_backward
            # loss weights
            if len(lp.loss_weight) and len(lp.loss_weight) != len(tops):
                raise NetError(f"layer '{lp.name}' ({lp.type}): loss_weight must be given "
                               f"once per top ({len(tops)}), got {len(lp.loss_weight)}")
            weights = list(lp.loss_weight) or ([1.0] + [0.0] * (len(tops) - 1)
                                               if cls.is_loss and tops else [])
            self.loss_weights.append([(j, w) for j, w in enumerate(weights) if w != 0])
            for name in lp.top:
                blob_need_backward[name] = layer_need_bw
            self.layers.append(layer)
            self.layer_names.append(lp.name)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_names.append(list(lp.bottom))
            self.top_names.append(list(lp.top))
            self.bottom_need_backward.append(need_bw)
            self.layer_need_backward.append(layer_need_bw)

        self._prune_backward(param)
        self.outputs = [n for n in self.blobs if n not in consumed]
        self._mark_unread_tops()
        self.params = collections.OrderedDict(
            (name, layer.blobs) for name, layer in zip(self.layer_names, self.layers)
            if layer.blobs)
        self._layer_index = {}
        for i, name in enumerate(self.layer_names):
            self._layer_index.setdefault(name, i)   # the first of duplicate names

    def _mark_unread_tops(self):
        """Tell each layer which of its tops only Silence layers read (no
        work anybody needs: Decode's distances in a TRAIN net, say).  A top
        read by nothing is a net output, and is read."""
        readers = collections.defaultdict(list)   # id(blob) -> reader layer types
        for i, bottoms in enumerate(self.bottom_vecs):
            for b in bottoms:
                readers[id(b)].append(self.layers[i].type)
        for layer, tops in zip(self.layers, self.top_vecs):
            layer.unread_tops = frozenset(
                j for j, t in enumerate(tops)
                if readers[id(t)] and all(kind == "Silence" for kind in readers[id(t)]))

    def _append_params(self, layer, lp):
        """Register the layer's parameter blobs; share them by ParamSpec name.
        Returns True if any parameter is learned (lr_mult != 0)."""
        if len(lp.param) > len(layer.blobs):
            raise NetError(f"layer '{lp.name}' ({lp.type}): {len(lp.param)} param specs "
                           f"given for {len(layer.blobs)} parameter blob(s)")
        learns = False
        for i, blob in enumerate(layer.blobs):
            spec = lp.param[i] if i < len(lp.param) else pb.ParamSpec()
            if spec.name and spec.name in self._param_owner:
                owner, owner_spec = self._param_owner[spec.name]
                strict = spec.share_mode != pb.ParamSpec.PERMISSIVE
                if (strict and owner.shape != blob.shape) or owner.count != blob.count:
                    raise NetError(
                        f"layer '{lp.name}' ({lp.type}): shared parameter '{spec.name}' has "
                        f"shape {blob.shape} here but {owner.shape} where it was first defined")
                for field in ("lr_mult", "decay_mult"):
                    if (spec.HasField(field) and owner_spec.HasField(field)
                            and getattr(spec, field) != getattr(owner_spec, field)):
                        raise NetError(
                            f"layer '{lp.name}' ({lp.type}): shared parameter '{spec.name}' "
                            f"has {field} {getattr(spec, field):g} here but "
                            f"{getattr(owner_spec, field):g} where it was first defined")
                if not strict and owner.shape != blob.shape:
                    raise NetError(f"layer '{lp.name}' ({lp.type}): PERMISSIVE sharing of "
                                   f"'{spec.name}' with a different shape is not supported")
                layer.blobs[i] = owner
                learns |= owner.learnable and owner_spec.lr_mult != 0
                continue
            if spec.name:
                self._param_owner[spec.name] = (blob, spec)
            if blob.learnable:
                self.learnable_params.append(blob)
                self.params_lr.append(spec.lr_mult)
                self.params_weight_decay.append(spec.decay_mult)
                learns |= spec.lr_mult != 0
        return learns

    def _prune_backward(self, param):
        """Caffe's need-backward pass from the losses back: a layer that
        contributes to no loss needs no backward; force_backward overrides."""
        under_loss = set()
        for i in reversed(range(len(self.layers))):
            contributes = bool(self.loss_weights[i]) or any(
                n in under_loss for n in self.top_names[i])
            if not contributes:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_vecs[i])
            if contributes:
                under_loss.update(self.bottom_names[i])
        if param.force_backward:
            for i, layer in enumerate(self.layers):
                if not layer.has_backward:
                    continue
                self.layer_need_backward[i] = True
                lp = layer.param
                self.bottom_need_backward[i] = [
                    (j not in layer.label_bottoms)
                    and (not len(lp.propagate_down) or lp.propagate_down[j])
                    for j in range(len(self.bottom_vecs[i]))]

    # ---------------------------------------------------------- running --
    def _index_of(self, name):
        try:
            return self._layer_index[name]
        except (KeyError, TypeError):
            raise NetError(f"no layer named {name!r} in the net; layers: "
                           f"{', '.join(self.layer_names)}") from None

    def layer(self, name):
        try:
            return self.layers[self._layer_index[name]]
        except KeyError:
            raise NetError(f"no layer named '{name}' in the net; layers: "
                           f"{', '.join(self.layer_names)}") from None

    def set_input(self, name, array):
        if name not in self.blobs:
            raise NetError(f"no blob named '{name}' to feed; inputs: "
                           f"{', '.join(self.inputs) or 'none'}")
        if name not in self.inputs:
            raise NetError(f"blob '{name}' is not an input of the net (a layer computes it, "
                           f"so a fed value would be overwritten); inputs: "
                           f"{', '.join(self.inputs) or 'none'}")
        array = self.xp.asarray(array, dtype=self.dtype)
        blob = self.blobs[name]
        if blob.shape != array.shape:
            blob.reshape(array.shape)
        blob.data[...] = array

    def forward(self, start=None, end=None, **inputs):
        """Run the layers (optionally feeding inputs by blob name); returns a
        dict of output blob name -> data array (pycaffe's Net.forward)."""
        for name, array in inputs.items():
            self.set_input(name, array)
        self.forward_prefilled(start, end)
        return {name: self.blobs[name].data for name in self.outputs}

    def forward_prefilled(self, start=None, end=None, clock=None):
        """Forward with the inputs already in place; returns the weighted loss.
        ``clock(layer index)``, a context manager, times each layer (the
        ``time`` command); a batched chain's stage counts for its first layer."""
        if start is None and end is None:
            steps = self.schedule        # the plan: chains run as one batch
        else:
            i0 = 0 if start is None else self._index_of(start)
            i1 = len(self.layers) - 1 if end is None else self._index_of(end)
            steps = range(i0, i1 + 1)
        self._ran_batched = {}
        with self._threads():
            return self._forward_steps(steps, clock)

    def _threads(self):
        """On the CPU, the BLAS at one thread for the pass: the layers split
        their batch over the cores themselves (cpu_kernels.one_blas_thread)."""
        if self.xp is np and self.backend.kernels is None:
            from . import cpu_kernels
            return cpu_kernels.one_blas_thread()
        return contextlib.nullcontext()

    def _forward_steps(self, steps, clock):
        loss = 0.0
        for step in steps:
            if not isinstance(step, int):
                batched = step.forward(clock)
                self._ran_batched[id(step)] = batched
                if not batched:  # branch inputs differ in shape: one by one
                    for i in sorted(step.layer_indices):
                        self._forward_layer(i, clock)
                continue
            loss += self._forward_layer(step, clock)
        self.last_loss = loss
        return loss

    def _forward_layer(self, i, clock=None):
        layer, bottom, top = self.layers[i], self.bottom_vecs[i], self.top_vecs[i]
        if clock is None:
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
        else:
            with clock(i):
                layer.reshape(bottom, top)
                layer.forward(bottom, top)
        loss = 0.0
        for j, w in self.loss_weights[i]:
            loss += w * float(top[j].data.sum())
        return loss

    def backward(self, clock=None):
        """Back-propagate from every loss top (its diff set to its weight).

        Each blob's ``active`` (the batch items whose gradient may be
        nonzero) starts the pass unknown; a layer that tracks it sets it on
        the bottoms it writes, and the Net clears it after any other layer's
        backward, so it never outlives the gradient it describes."""
        for blob in self._gradient_blobs():
            blob.active = None
        with self._threads():
            self._backward_steps(clock)

    def _gradient_blobs(self):
        blobs = getattr(self, "_all_blobs", None)
        if blobs is None:
            blobs = {id(b): b for vec in self.top_vecs + self.bottom_vecs for b in vec}
            for chain in getattr(self, "chains", ()):
                for b in chain.tops + chain.bottoms + [chain.batched_input]:
                    blobs[id(b)] = b
            blobs = self._all_blobs = list(blobs.values())
        return blobs

    def _backward_steps(self, clock):
        ran_batched = getattr(self, "_ran_batched", {})
        for step in reversed(self.schedule):
            if not isinstance(step, int):
                if ran_batched.get(id(step)):
                    step.backward(clock)
                else:
                    for i in sorted(step.layer_indices, reverse=True):
                        self._backward_layer(i, clock)
                continue
            self._backward_layer(step, clock)

    def _backward_layer(self, i, clock=None):
        top = self.top_vecs[i]
        for j, w in self.loss_weights[i]:
            top[j].diff[...] = w
            top[j].active = None
        if self.layer_need_backward[i]:
            layer, need, bottom = self.layers[i], self.bottom_need_backward[i], self.bottom_vecs[i]
            if clock is None:
                layer.backward(top, need, bottom)
            else:
                with clock(i):
                    layer.backward(top, need, bottom)
            layer.forget_untracked_hints(need, bottom)

    def transform(self, images):
        """Raw images as the train_val's data layer fed them in training:

            y = scale * crop(x - mean)

        ``images``: (N, C, H, W) or one image (C, H, W), uint8 0-255 as stored
        in the image database; returns float32 (N, C, H', W') for
        ``forward``.  The transform is the transform_param of the data layer
        of the file the net was built from (its TEST-phase one, else its
        TRAIN-phase one; Caffe's DataTransformer, the deterministic part):
        mean_file, mean_value (one, or one per channel) or use_imagedb_mean
        (the dataset's training mean, from ``db``); crop_size as a centre
        crop; scale.  Random crops, mirroring and augmentation are training
        draws and are not applied.  A deploy prototxt has no data layer, so
        there is nothing to apply: the images only become float32 (scale
        them yourself, e.g. by 1/256 for the MNIST templates).

        >>> net = lg.Net("train_val.prototxt", lg.RUN, weights="w.caffemodel",
        ...              input_shape=(1, 1, 28, 28))
        >>> out = net.forward(images=net.transform(raw_uint8))
        """
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ShapeError(f"transform takes images (N, C, H, W) or one image (C, H, W), "
                             f"got shape {x.shape}")
        x = x.astype(np.float32)
        lp = self.data_layer_param
        if lp is None:
            return x
        tp, dp = lp.transform_param, lp.data_param
        where = f"Net.transform (layer '{lp.name}')"
        if tp.force_color or tp.force_gray or dp.force_encoded_color or \
                tp.color_order == pb.TransformationParameter.BGR:
            raise NetError(f"{where}: force_color, force_gray and color_order BGR are not "
                           f"applied here; convert the images' channels yourself")
        c, h, w = x.shape[1:]
        mean_file = tp.mean_file or dp.mean_file
        mean = None
        if mean_file:
            from .imagedb.store import read_mean_file
            mean = read_mean_file(mean_file)
        elif len(tp.mean_value):
            values = np.asarray(tp.mean_value, np.float32)
            if len(values) not in (1, c):
                raise ShapeError(f"{where}: {len(values)} mean_value(s) for {c} channels")
            mean = np.broadcast_to(values, (c,)).reshape(c, 1, 1)
        elif tp.use_imagedb_mean:
            from .imagedb.store import read_mean, split_source_name
            parts = split_source_name(dp.source)
            if parts is None:
                raise NetError(f"{where}: use_imagedb_mean, but source '{dp.source}' is not "
                               f"an image database dataset")
            mean = read_mean(parts[0], self.db)
        if mean is not None:
            mean = np.asarray(mean, np.float32)
            mean = mean[None] if mean.ndim == 2 else mean
            if mean.shape[1:] != (1, 1) and mean.shape != (c, h, w):
                raise ShapeError(f"{where}: the mean has shape {mean.shape}; the images "
                                 f"are {(c, h, w)}")
            x = x - mean
        crop = int(tp.crop_size or dp.crop_size)
        if crop:
            if crop > h or crop > w:
                raise ShapeError(f"{where}: crop_size {crop} exceeds the image size {h}x{w}")
            top, left = (h - crop) // 2, (w - crop) // 2
            x = x[:, :, top:top + crop, left:left + crop]
        scale = tp.scale if tp.HasField("scale") or not dp.HasField("scale") else dp.scale
        if scale != 1:
            x = x * np.float32(scale)
        return np.ascontiguousarray(x, dtype=np.float32)

    def describe_plan(self):
        """Lines saying how the net runs (``layergraph time`` prints them)."""
        if not self.chains:
            return ["plan: every layer on its own (no weight-shared branches to batch)"]
        return [f"plan: {chain.describe()}" for chain in self.chains]

    def forward_backward(self):
        loss = self.forward_prefilled()
        self.backward()
        return loss

    def clear_param_diffs(self):
        params = self.learnable_params
        if params and self.xp is np and self.backend.kernels is None:
            from . import cpu_kernels   # on the CPU: every diff in one parallel call
            diffs = [blob._diff for blob in params]
            if (all(d is not None and d.dtype == diffs[0].dtype and d.flags.c_contiguous
                    for d in diffs) and cpu_kernels.available(diffs[0].dtype)):
                if self._zeroing is None:
                    self._zeroing = cpu_kernels.ArraySet()
                cpu_kernels.zero_many(diffs, self._zeroing)
                return
        for blob in params:
            blob.zero_diff()

    # ------------------------------------------------------------ weights --
    def _load_layer_blobs(self, layer, protos, where):
        if len(protos) != len(layer.blobs):
            raise SnapshotError(f"{where}: layer '{layer.name}' ({layer.type}) has "
                                f"{len(layer.blobs)} parameter blob(s), the weights file has "
                                f"{len(protos)}")
        from .blob import proto_shape
        for k, (blob, proto) in enumerate(zip(layer.blobs, protos)):
            shape = tuple(proto_shape(proto))
            # Caffe's Blob::ShapeEquals: a legacy 4-D num/channels/height/width
            # (V1 files) matches the net's shape padded with leading 1s
            legacy = (not proto.HasField("shape") and len(blob.shape) <= 4
                      and (1,) * (4 - len(blob.shape)) + blob.shape == shape)
            if shape != blob.shape and not legacy:
                raise SnapshotError(
                    f"{where}: layer '{layer.name}' parameter {k} has shape "
                    f"{blob.shape} in the net but {shape} in the weights file")
            blob.from_proto(proto, reshape=False)

    def copy_from(self, weights, allow_missing=False):
        """Copy trained parameters from a .caffemodel (path) or NetParameter,
        matching layers by name; returns the names of the layers copied.

        Layers of the file that the net lacks are ignored (Caffe's rule); a
        name the net holds twice receives the weights in its first layer (as
        Caffe's CopyTrainedLayersFrom).  A layer of the net with parameters
        that the file lacks is an error -- a truncated file or the wrong net
        -- unless ``allow_missing`` (for fine-tuning, where new layers keep
        their fillers' values).  Old (V0/V1) files are upgraded first."""
        if isinstance(weights, pb.NetParameter):
            param, where = weights, "<NetParameter>"
        else:
            where = os.fspath(weights)
            param = read_binary(where, pb.NetParameter(), "weights file (.caffemodel)")
        param = upgrade_net(param, where)
        copied = []
        for lp in param.layer:
            if lp.name in self._layer_index and lp.blobs:
                self._load_layer_blobs(self.layer(lp.name), lp.blobs, where)
                if lp.name not in copied:
                    copied.append(lp.name)
        wanted = [layer.name for layer in self.layers if layer.blobs]
        if not copied and wanted:
            raise SnapshotError(f"{where}: no layer name matches this net; nothing was loaded")
        missing = [name for name in wanted if name not in set(copied)]
        if missing and not allow_missing:
            raise SnapshotError(
                f"{where}: holds no weights for layer(s) {', '.join(missing)} of this net "
                f"(a truncated file, or another net?); to keep their initial values when "
                f"fine-tuning, allow missing layers (train --allow-missing)")
        self.last_copied, self.last_missing = copied, missing
        return copied

    def share_weights_from(self, other):
        """Use ``other``'s parameter blobs (same objects) for layers of the same
        name — how a TEST net sees the TRAIN net's weights (Caffe's
        ShareTrainedLayersWith)."""
        for name, layer in zip(self.layer_names, self.layers):
            if name not in other._layer_index:
                continue
            src = other.layer(name)
            if len(src.blobs) != len(layer.blobs):
                continue
            for k, blob in enumerate(src.blobs):
                if blob.shape != layer.blobs[k].shape:
                    raise NetError(f"layer '{name}': parameter {k} has shape "
                                   f"{layer.blobs[k].shape} here but {blob.shape} in the "
                                   f"training net")
                layer.blobs[k] = blob
        self.params = collections.OrderedDict(
            (name, layer.blobs) for name, layer in zip(self.layer_names, self.layers)
            if layer.blobs)

    def to_proto(self, write_diff=False):
        """A NetParameter with the layers' definitions and parameter blobs
        (the .caffemodel content): the user's layers with their own bottoms,
        without the Split layers the net inserted, so the definition is
        self-consistent (every bottom is some earlier layer's top)."""
        out = pb.NetParameter(name=self.name)
        for layer, user_lp in zip(self.layers, self._user_layer_params):
            if user_lp is None:
                continue
            lp = out.layer.add()
            lp.CopyFrom(user_lp)
            del lp.blobs[:]
            for blob in layer.blobs:
                blob.to_proto(lp.blobs.add(), write_diff=write_diff)
        return out

    def save(self, path, write_diff=False):
        """Write the weights as a binary .caffemodel, atomically."""
        atomic_write(path, self.to_proto(write_diff).SerializeToString())

    def state_dict(self):
        """Per-layer non-parameter state (counters, caches) for exact resume."""
        return {name: layer.state_dict() for name, layer in zip(self.layer_names, self.layers)}

    def load_state_dict(self, state):
        for name, layer_state in state.items():
            if name in self._layer_index:
                self.layer(name).load_state_dict(layer_state)

    def close(self):
        """Release resources held by layers (prefetch threads, databases)."""
        for layer in self.layers:
            close = getattr(layer, "close", None)
            if callable(close):
                close()

    def __repr__(self):
        return f"<Net '{self.name}' phase={pb.Phase.Name(self.phase)} layers={len(self.layers)}>"
