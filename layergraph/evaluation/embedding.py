"""Run a dataset split through the RUN net and collect a blob.

``load_split``      the images and labels of ``DATASET.training|testing``;
``run_net``         the RUN-phase net of a train_val (or deploy) prototxt;
``data_transform``  the Data layer's transform_param, taken from the
                    train_val (TEST phase, else TRAIN), so the RUN net sees
                    its inputs scaled as in training; None for a deploy
                    file (no Data layer: the transform is not known);
``resolve_transform``  the same with the user's choices: the transform of
                    another file (``--train-val``), ``--scale``, ``--mean``;
``transform_override``  a block within which data_transform answers with
                    those choices (the CLI wraps the reports in it);
``preprocess``      its deterministic part, (x - mean) * scale;
``embed``           forward a split in batches, stacking the chosen blobs;
                    warns once per net (stderr) when raw 0-255 pixels go
                    into a net whose transform is not known;
``resolve_blob``    a blob name or a layer name (its first top) to a blob;
``embedding_blob``  the default embedding: the Decode layer's bottom, else
                    the RUN net's last output.
"""
import contextlib
import contextvars
import math
import os
import sys
import weakref

import numpy as np

from ..backend import to_numpy
from ..errors import LayergraphError
from ..net import DATA_LAYER_TYPES, Net, filter_net
from ..proto import pb
from ..prototxt import read_net


#: what ``embed`` prints (once per net) for raw pixels into a net whose
#: input transform is not known
RAW_PIXELS_WARNING = ("warning: feeding raw 0-255 pixels: the model file has no "
                      "transform_param; give --train-val or --scale")

_OVERRIDE = contextvars.ContextVar("layergraph_transform_override", default=None)
_WARNED = weakref.WeakSet()


def _file_transform(net_param):
    """The TEST-phase (else TRAIN) data layer's transform_param, or None."""
    for phase in (pb.TEST, pb.TRAIN):
        for lp in filter_net(net_param, pb.NetState(phase=phase)).layer:
            if lp.type in DATA_LAYER_TYPES:
                return lp.transform_param
    return None


def data_transform(net_param):
    """The transform the RUN net's input gets: the TEST-phase (else TRAIN)
    data layer's transform_param; None when the file has no data layer (a
    deploy prototxt), i.e. the transform is not known.  Inside
    ``transform_override`` the user's choices apply (resolve_transform)."""
    options = _OVERRIDE.get()
    if options is not None:
        return resolve_transform(net_param, **options)
    return _file_transform(net_param)


def parse_mean(text):
    """``--mean``: one value, one per channel ("104,117,123"), or a mean
    file (a .binaryproto BlobProto); returns (mean values, mean file)."""
    if os.path.exists(text):
        return [], text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise LayergraphError(f"--mean '{text}' is neither numbers (e.g. 127.5 or "
                              f"104,117,123) nor an existing mean file") from None
    if not all(math.isfinite(v) for v in values):
        raise LayergraphError(f"--mean '{text}' must be finite")
    return values, ""


def resolve_transform(net_param, train_val=None, scale=None, mean=None):
    """The input transform with the user's choices: the transform_param of
    ``train_val``'s data layer (a path or NetParameter) instead of
    ``net_param``'s, then ``scale`` and ``mean`` (a number, per-channel
    numbers or a mean file, as ``parse_mean``) replacing its fields.  None
    when nothing is known (a deploy file and no choice given)."""
    if train_val is not None:
        source = train_val if isinstance(train_val, pb.NetParameter) else read_net(train_val)
        transform = _file_transform(source)
        if transform is None:
            raise LayergraphError(f"{train_val}: has no data layer, so no transform_param to "
                                  f"take (give the train_val file the net was trained with)")
    else:
        transform = _file_transform(net_param)
    if scale is None and mean is None:
        return transform
    out = pb.TransformationParameter()
    if transform is not None:
        out.CopyFrom(transform)
    if scale is not None:
        if not math.isfinite(scale) or scale == 0:
            raise LayergraphError(f"--scale must be a finite non-zero number, got {scale:g}")
        out.scale = scale
    if mean is not None:
        values, mean_file = parse_mean(mean) if isinstance(mean, str) else (
            [float(v) for v in np.atleast_1d(mean)], "")
        del out.mean_value[:]
        out.mean_value.extend(values)
        out.mean_file = mean_file
        out.use_imagedb_mean = False
    return out


@contextlib.contextmanager
def transform_override(train_val=None, scale=None, mean=None):
    """Within the block, ``data_transform(param)`` is
    ``resolve_transform(param, train_val, scale, mean)``: how test-many,
    inspect and evaluate take ``--train-val``, ``--scale`` and ``--mean``."""
    token = _OVERRIDE.set({"train_val": train_val, "scale": scale, "mean": mean})
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def preprocess(images, transform, source=None):
    """Apply a Data layer's deterministic transform (mean, scale) to uint8
    images (n, C, H, W): (x - mean) * scale, as Caffe's DataTransformer.
    The random parts (crop, mirror, augmentation) are training-only and are
    not applied.  ``transform`` None (not known): the pixels as they are."""
    x = images.astype(np.float32)
    if transform is None:
        return x
    if transform.use_imagedb_mean and source is not None:
        mean = source.mean()
        if mean is not None:
            x -= mean
    elif transform.mean_file:
        from ..imagedb.store import read_mean_file
        x -= read_mean_file(transform.mean_file)
    elif len(transform.mean_value):
        mv = np.asarray(transform.mean_value, np.float32)
        x -= mv.reshape(-1, 1, 1) if mv.size > 1 else mv[0]
    return x * transform.scale


def warn_raw_pixels(net, images, transform, stream=None):
    """Print RAW_PIXELS_WARNING (once per net) when the transform is not
    known and the pixels go beyond 1: the net may well expect [0, 1] (as
    BVLC's LeNet, trained with scale 0.00390625) and would get 0-255."""
    if transform is not None or net in _WARNED or not len(images):
        return False
    if float(images.max()) <= 1:
        return False
    _WARNED.add(net)
    print(RAW_PIXELS_WARNING, file=stream or sys.stderr)
    return True


def load_split(dataset, split="testing", count=None, seed=0):
    """(images uint8 (n,C,H,W), labels int64 (n,), source) of a dataset split;
    ``count`` draws that many at random (reproducibly), None takes all."""
    from ..imagedb.store import open_source
    name = dataset if dataset.endswith((".training", ".testing")) else f"{dataset}.{split}"
    source = open_source(name)
    images, labels = source.read_all()
    if count is not None and count < len(labels):
        pick = np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))
        images, labels = images[pick], labels[pick]
    return images, labels, source


def run_net(model, weights, image_shape, backend=None):
    """(RUN net with ``weights``, its NetParameter) for images of ``image_shape``."""
    param = model if isinstance(model, pb.NetParameter) else read_net(model)
    net = Net(param, pb.RUN, weights=weights, input_shape=(1,) + tuple(image_shape),
              backend=backend)
    if not net.inputs:
        raise LayergraphError(f"{model}: the RUN net has no input blob")
    return net, param


def embed(net, images, transform, source, blob_names, batch_size=256):
    """Forward ``images`` in batches; returns {blob name: stacked data (float64)}.
    ``transform`` None: the raw pixels (with a warning, see warn_raw_pixels)."""
    outs = {name: [] for name in blob_names}
    warn_raw_pixels(net, images, transform)
    for name in blob_names:
        if name not in net.blobs:
            raise LayergraphError(f"the RUN net has no blob '{name}'; blobs: "
                                  f"{', '.join(net.blobs)}")
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size], transform, source)
        net.forward(**{net.inputs[0]: x})
        for name in blob_names:
            outs[name].append(to_numpy(net.blobs[name].data).astype(np.float64))
    return {name: np.concatenate(v) for name, v in outs.items()}


def decision(net):
    """(blob, 'argmin'|'argmax', embedding blob or None) used to classify."""
    for i, layer in enumerate(net.layers):
        if layer.type == "Decode":
            return net.top_names[i][0], "argmin", net.bottom_names[i][0]
    if not net.outputs:
        raise LayergraphError("the RUN net has no output to classify with")
    return net.outputs[-1], "argmax", None


def resolve_blob(net, name):
    """A blob name, or a layer name standing for its first top."""
    if name in net.blobs:
        return name
    if name in net.layer_names and net.top_names[net.layer_names.index(name)]:
        return net.top_names[net.layer_names.index(name)][0]
    raise LayergraphError(f"no layer or blob '{name}' in the RUN net; layers: "
                          f"{', '.join(net.layer_names)}")


def embedding_blob(net):
    """The blob a retrieval evaluation uses by default: the embedding the
    Decode layer classifies (its bottom), else the RUN net's last output."""
    for i, layer in enumerate(net.layers):
        if layer.type == "Decode":
            return net.bottom_names[i][0]
    if not net.outputs:
        raise LayergraphError("the RUN net has no output; name the embedding with --layer")
    return net.outputs[-1]
