"""Reading old Caffe files: V0 and V1 nets, old solvers, legacy weights.

Caffe upgrades what it reads (``UpgradeNetAsNeeded``,
``UpgradeSolverAsNeeded`` in upgrade_proto.cpp); this module does the same,
step by step, each step only where the file needs it:

1. **V0 -> V1** (``layers { layer { type: "conv" kernelsize: 5 ... } }``):
   ``padding`` layers are folded into the convolution or pooling they feed,
   and every V0 field moves to its V1 place (``kernelsize`` to
   ``convolution_param.kernel_size``, ``batchsize`` to
   ``data_param.batch_size``, ``cropsize`` to ``transform_param``, ...).
2. **data transformation**: the deprecated ``scale``, ``mean_file``,
   ``crop_size`` and ``mirror`` of Data/ImageData/WindowData parameters move
   to ``transform_param``.
3. **V1 -> current** (``layers { type: CONVOLUTION blobs_lr: 1 }``): enum
   types become strings (``CONVOLUTION`` -> ``"Convolution"``), ``blobs_lr``
   / ``weight_decay`` / ``param`` / ``blob_share_mode`` become ``param {
   lr_mult decay_mult name share_mode }``, every ``*_param`` is copied.
4. **net inputs**: ``input`` / ``input_shape`` / ``input_dim`` become an
   Input layer.
5. **BatchNorm**: a BatchNorm with three ``param`` specs (the old way of
   freezing its statistics) gets lr_mult and decay_mult 0 on each.

Solvers: the enum ``solver_type: NESTEROV`` becomes ``type: "Nesterov"``.

Weights: a V1 ``.caffemodel`` is a NetParameter like a prototxt and upgrades
the same way; its blobs keep their legacy 4-D ``num/channels/height/width``
(as Caffe keeps them), which :meth:`Net.copy_from` reads by Caffe's rule: the
net's shape, padded with leading 1s to four axes, must equal them.

``layergraph upgrade IN OUT`` writes the current format (Caffe's
upgrade_net_proto_text / upgrade_net_proto_binary / upgrade_solver_proto_text
in one command: see :func:`upgrade_file`).
"""
import os
import warnings

from google.protobuf import text_format

from .errors import NetError, PrototxtError, SolverError
from .proto import pb

# ------------------------------------------------------------ V1 types ----

#: V1 LayerType enum name -> current type string (Caffe's UpgradeV1LayerType)
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax",
    "BNLL": "BNLL", "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "DATA": "Data",
    "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# ------------------------------------------------------------ V0 types ----

#: V0 type string -> V1 LayerType enum name (Caffe's UpgradeV0LayerType)
V0_TYPE_NAMES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT", "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

_ANY = "*"
_IP, _CONV, _POOL = "innerproduct", "conv", "pool"
#: V0 field -> {V0 type (or * for any): "V1 field path"} (UpgradeV0LayerParameter)
V0_FIELDS = {
    "num_output": {_CONV: "convolution_param.num_output",
                   _IP: "inner_product_param.num_output"},
    "biasterm": {_CONV: "convolution_param.bias_term", _IP: "inner_product_param.bias_term"},
    "weight_filler": {_CONV: "convolution_param.weight_filler",
                      _IP: "inner_product_param.weight_filler"},
    "bias_filler": {_CONV: "convolution_param.bias_filler",
                    _IP: "inner_product_param.bias_filler"},
    "pad": {_CONV: "convolution_param.pad", _POOL: "pooling_param.pad"},
    "kernelsize": {_CONV: "convolution_param.kernel_size", _POOL: "pooling_param.kernel_size"},
    "group": {_CONV: "convolution_param.group"},
    "stride": {_CONV: "convolution_param.stride", _POOL: "pooling_param.stride"},
    "pool": {_POOL: "pooling_param.pool"},
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": "lrn_param.local_size"},
    "alpha": {"lrn": "lrn_param.alpha"},
    "beta": {"lrn": "lrn_param.beta"},
    "k": {"lrn": "lrn_param.k"},
    "source": {"data": "data_param.source", "hdf5_data": "hdf5_data_param.source",
               "images": "image_data_param.source", "window_data": "window_data_param.source",
               "infogain_loss": "infogain_loss_param.source"},
    "scale": {_ANY: "transform_param.scale"},
    "meanfile": {_ANY: "transform_param.mean_file"},
    "batchsize": {"data": "data_param.batch_size", "hdf5_data": "hdf5_data_param.batch_size",
                  "images": "image_data_param.batch_size",
                  "window_data": "window_data_param.batch_size"},
    "cropsize": {_ANY: "transform_param.crop_size"},
    "mirror": {_ANY: "transform_param.mirror"},
    "rand_skip": {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"},
    "shuffle_images": {"images": "image_data_param.shuffle"},
    "new_height": {"images": "image_data_param.new_height"},
    "new_width": {"images": "image_data_param.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": "window_data_param.fg_threshold"},
    "det_bg_threshold": {"window_data": "window_data_param.bg_threshold"},
    "det_fg_fraction": {"window_data": "window_data_param.fg_fraction"},
    "det_context_pad": {"window_data": "window_data_param.context_pad"},
    "det_crop_mode": {"window_data": "window_data_param.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}
#: V0 fields Caffe's upgrade does not carry over (ReshapeLayer's old form)
V0_IGNORED = {"name", "type", "blobs", "blobs_lr", "weight_decay",
              "new_num", "new_channels"}

#: data layers whose parameters once held the transformation fields
_DATA_TRANSFORM_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                          "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


class UpgradeWarning(UserWarning):
    """Part of an old file could not be carried over exactly (Caffe logs the
    same problems and goes on)."""


# ------------------------------------------------------------ queries ----

def net_needs_v0_upgrade(net_param):
    return any(layer.HasField("layer") for layer in net_param.layers)


def net_needs_v1_upgrade(net_param):
    return len(net_param.layers) > 0


def net_needs_data_upgrade(net_param):
    for layer in net_param.layers:
        name = pb.V1LayerParameter.LayerType.Name(layer.type)
        field = _DATA_TRANSFORM_PARAMS.get(name)
        if field and layer.HasField(field):
            sub = getattr(layer, field)
            if any(sub.HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def net_needs_input_upgrade(net_param):
    return len(net_param.input) > 0


def net_needs_batchnorm_upgrade(net_param):
    return any(lp.type == "BatchNorm" and len(lp.param) == 3 for lp in net_param.layer)


def net_needs_upgrade(net_param):
    """True when the NetParameter uses any deprecated form this module upgrades."""
    return (net_needs_v1_upgrade(net_param) or net_needs_input_upgrade(net_param)
            or net_needs_batchnorm_upgrade(net_param))


def solver_needs_upgrade(solver_param):
    return solver_param.HasField("solver_type")


def net_format(net_param):
    """'V0', 'V1' or 'current'."""
    if net_needs_v0_upgrade(net_param):
        return "V0"
    if net_needs_v1_upgrade(net_param):
        return "V1"
    return "current"


# ------------------------------------------------------------ V0 -> V1 ----

def _set_path(message, path, value):
    """Set ``a.b.c`` on ``message``: append to a repeated field, copy a
    message, assign a scalar."""
    *parents, leaf = path.split(".")
    for name in parents:
        message = getattr(message, name)
    field = message.DESCRIPTOR.fields_by_name[leaf]
    current = getattr(message, leaf)
    if hasattr(current, "append"):          # a repeated scalar field
        current.append(value)
    elif field.message_type is not None:
        getattr(message, leaf).CopyFrom(value)
    else:
        setattr(message, leaf, value)


def upgrade_v0_padding_layers(net_param, source):
    """Caffe's UpgradeV0PaddingLayers: drop V0 ``padding`` layers, giving their
    pad to the convolution or pooling that reads their output."""
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layers[:]
    last_producer = {name: -1 for name in net_param.input}
    for i, conn in enumerate(net_param.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_producer:
                raise NetError(f"{source}: V0 layer '{v0.name}': unknown bottom blob '{blob}'")
            k = last_producer[blob]
            if k < 0:
                continue
            src = net_param.layers[k]
            if src.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise NetError(f"{source}: V0 padding layer '{src.layer.name}' feeds "
                               f"'{v0.name}' of type '{v0.type}'; only conv and pool can "
                               f"take a padding layer's output")
            if len(conn.bottom) != 1 or len(src.bottom) != 1 or len(src.top) != 1:
                raise NetError(f"{source}: V0 padding layer '{src.layer.name}' and the "
                               f"layer it feeds must each have one bottom and one top")
            upgraded = out.layers[len(out.layers) - 1]
            upgraded.layer.pad = src.layer.pad
            upgraded.bottom[j] = src.bottom[0]
        for blob in conn.top:
            last_producer[blob] = i
    return out


def upgrade_v0_layer(conn, source, problems):
    """One V0 layer (a V1LayerParameter whose ``layer`` holds the V0 fields) as
    a V1LayerParameter (Caffe's UpgradeV0LayerParameter)."""
    out = pb.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return out
    v0 = conn.layer
    kind = v0.type
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if kind not in V0_TYPE_NAMES:
            raise NetError(f"{source}: V0 layer '{v0.name}' has the unknown type '{kind}'; "
                           f"known V0 types: {', '.join(sorted(V0_TYPE_NAMES))}")
        out.type = pb.V1LayerParameter.LayerType.Value(V0_TYPE_NAMES[kind])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, value in v0.ListFields():
        if field.name in V0_IGNORED:
            continue
        places = V0_FIELDS.get(field.name, {})
        path = places.get(kind) or places.get(_ANY)
        if path is None:
            problems.append(f"V0 layer '{v0.name}': parameter '{field.name}' has no meaning "
                            f"for type '{kind}' (dropped)")
            continue
        _set_path(out, path, value)
    return out


def upgrade_v0_net(net_param, source="<NetParameter>", problems=None):
    """A V0 NetParameter as V1 (Caffe's UpgradeV0Net)."""
    problems = [] if problems is None else problems
    padded = upgrade_v0_padding_layers(net_param, source)
    out = pb.NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    for conn in padded.layers:
        out.layers.add().CopyFrom(upgrade_v0_layer(conn, source, problems))
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    return out


# ----------------------------------------------- data transformation ----

def upgrade_data_transformation(net_param):
    """Move the deprecated transformation fields of V1 data layers into
    ``transform_param`` (Caffe's UpgradeNetDataTransformation), in place."""
    for layer in net_param.layers:
        name = pb.V1LayerParameter.LayerType.Name(layer.type)
        field = _DATA_TRANSFORM_PARAMS.get(name)
        if not field or not layer.HasField(field):
            continue
        sub = getattr(layer, field)
        for f in _TRANSFORM_FIELDS:
            if sub.HasField(f):
                setattr(layer.transform_param, f, getattr(sub, f))
                sub.ClearField(f)
    return net_param


# ------------------------------------------------------- V1 -> current ----

def upgrade_v1_layer(v1, problems):
    """One V1LayerParameter as a LayerParameter (Caffe's UpgradeV1LayerParameter)."""
    lp = pb.LayerParameter()
    lp.bottom.extend(v1.bottom)
    lp.top.extend(v1.top)
    if v1.HasField("name"):
        lp.name = v1.name
    lp.include.extend(v1.include)
    lp.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        lp.type = V1_TYPE_NAMES[pb.V1LayerParameter.LayerType.Name(v1.type)]
    lp.blobs.extend(v1.blobs)

    def spec(i):
        while len(lp.param) <= i:
            lp.param.add()
        return lp.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = (pb.ParamSpec.PERMISSIVE
                              if mode == pb.V1LayerParameter.PERMISSIVE else pb.ParamSpec.STRICT)
    for i, rate in enumerate(v1.blobs_lr):
        spec(i).lr_mult = rate
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    lp.loss_weight.extend(v1.loss_weight)
    layer_fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    for field, value in v1.ListFields():
        if field.name.endswith("_param") and field.name in layer_fields:
            getattr(lp, field.name).CopyFrom(value)
    if v1.HasField("layer"):
        problems.append(f"layer '{v1.name}': a V0 'layer' inside a V1 layer was ignored")
    return lp


def upgrade_v1_net(net_param, problems=None):
    """A V1 NetParameter (``layers``) as the current format (``layer``)."""
    problems = [] if problems is None else problems
    if len(net_param.layer):
        problems.append("the file has both 'layer' and V1 'layers' fields; the 'layer' "
                        "fields were ignored (as Caffe does)")
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layers[:]
    del out.layer[:]
    for v1 in net_param.layers:
        out.layer.add().CopyFrom(upgrade_v1_layer(v1, problems))
    return out


# --------------------------------------------------- inputs, BatchNorm ----

def upgrade_net_input(net_param):
    """The deprecated ``input``/``input_shape``/``input_dim`` fields as an Input
    layer placed first (Caffe's UpgradeNetInput)."""
    if not net_param.input:
        return net_param
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.input[:]
    del out.input_shape[:]
    del out.input_dim[:]
    del out.layer[:]
    if net_param.input_dim and len(net_param.input_dim) != 4 * len(net_param.input):
        raise NetError(f"input_dim must give 4 values per input ({len(net_param.input)} "
                       f"input(s)), got {len(net_param.input_dim)}")
    if net_param.input_shape and len(net_param.input_shape) not in (1, len(net_param.input)):
        raise NetError(f"input_shape must be given once or once per input "
                       f"({len(net_param.input)}), got {len(net_param.input_shape)}")
    layer = out.layer.add(name="input", type="Input")
    for i, name in enumerate(net_param.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if net_param.input_shape:
            shape.CopyFrom(net_param.input_shape[min(i, len(net_param.input_shape) - 1)])
        elif net_param.input_dim:
            shape.dim.extend(net_param.input_dim[4 * i:4 * i + 4])
    out.layer.extend(net_param.layer)
    return out


def upgrade_net_batchnorm(net_param):
    """BatchNorm layers with three ``param`` specs: lr_mult and decay_mult 0 on
    each (Caffe's UpgradeNetBatchNorm; its statistics are not learned), in place."""
    for lp in net_param.layer:
        if lp.type == "BatchNorm" and len(lp.param) == 3:
            for spec in lp.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return net_param


# ----------------------------------------------------------- entry points --

def upgrade_net_with_problems(net_param, source="<NetParameter>"):
    """(NetParameter in the current format, list of problems Caffe would log
    and go on with).  The argument itself is returned when nothing needs
    upgrading; what cannot be upgraded at all raises NetError."""
    if not net_needs_upgrade(net_param):
        return net_param, []
    problems = []
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    if net_needs_v0_upgrade(out):
        out = upgrade_v0_net(out, source, problems)
    if net_needs_data_upgrade(out):
        upgrade_data_transformation(out)
    if net_needs_v1_upgrade(out):
        out = upgrade_v1_net(out, problems)
    if net_needs_input_upgrade(out):
        out = upgrade_net_input(out)
    upgrade_net_batchnorm(out)
    return out, problems


def upgrade_net(net_param, source="<NetParameter>"):
    """The NetParameter in the current format (Caffe's UpgradeNetAsNeeded);
    problems Caffe logs and goes on with are warned about (UpgradeWarning)."""
    out, problems = upgrade_net_with_problems(net_param, source)
    for problem in problems:
        warnings.warn(f"{source}: {problem}", UpgradeWarning, stacklevel=2)
    return out


#: SolverType enum name -> type string (Caffe's UpgradeSolverType)
SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                     "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def upgrade_solver(solver_param, source="<SolverParameter>"):
    """The SolverParameter with ``solver_type`` (enum) replaced by ``type``
    (string), and its inline nets upgraded; a new message.  Both fields given
    is an error, as in Caffe."""
    out = pb.SolverParameter()
    out.CopyFrom(solver_param)
    if out.HasField("solver_type"):
        if out.HasField("type"):
            raise SolverError(f"{source}: give either the old 'solver_type' (enum) or 'type' "
                              f"(string), not both")
        out.type = SOLVER_TYPE_NAMES[pb.SolverParameter.SolverType.Name(out.solver_type)]
        out.ClearField("solver_type")
    for field in ("net_param", "train_net_param"):
        if out.HasField(field):
            getattr(out, field).CopyFrom(upgrade_net(getattr(out, field), source))
    for i, net in enumerate(out.test_net_param):
        out.test_net_param[i].CopyFrom(upgrade_net(net, source))
    return out


# ------------------------------------------------------------- files ------

def read_any(path):
    """(kind, message, binary) for a net or solver file of any format and
    version: kind is 'net' or 'solver'; the format is told by the content (a
    NUL byte or invalid UTF-8 near the start means binary), not the name."""
    from .prototxt import parse_text, read_binary
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PrototxtError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4096)
    binary = b"\x00" in head
    if not binary:
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except UnicodeDecodeError:
            binary = True
    if binary:
        return "net", read_binary(path, pb.NetParameter(), "binary net (.caffemodel)"), True
    try:
        return "net", parse_text(text, pb.NetParameter(), path), False
    except PrototxtError as net_error:
        try:
            return "solver", parse_text(text, pb.SolverParameter(), path), False
        except PrototxtError:
            raise net_error from None


def upgrade_file(src, dst):
    """Read ``src`` (a net prototxt, a .caffemodel or a solver prototxt, of
    any version) and write it to ``dst`` in the current format: text stays
    text, binary stays binary.  Returns a one-line report."""
    from .prototxt import atomic_write
    kind, message, binary = read_any(src)
    if kind == "solver":
        before = "old (solver_type enum)" if solver_needs_upgrade(message) else "current"
        upgraded, problems = upgrade_solver(message, os.fspath(src)), []
    else:
        before = net_format(message)
        if before == "current" and net_needs_upgrade(message):
            before = "current with deprecated fields"
        upgraded, problems = upgrade_net_with_problems(message, os.fspath(src))
    if binary:
        atomic_write(dst, upgraded.SerializeToString())
    else:
        atomic_write(dst, text_format.MessageToString(upgraded).encode())
    what = f"{'binary' if binary else 'text'} {kind}"
    return f"{src}: {what} in {before} format -> {dst}", problems
