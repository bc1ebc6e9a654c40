"""Run a dataset split through the RUN net and collect a blob.

``load_split``      the images and labels of ``DATASET.training|testing``;
``run_net``         the RUN-phase net of a train_val (or deploy) prototxt;
``data_transform``  the Data layer's transform_param, taken from the
                    train_val (TEST phase, else TRAIN), so the RUN net sees
                    its inputs scaled as in training;
``preprocess``      its deterministic part, (x - mean) * scale;
``embed``           forward a split in batches, stacking the chosen blobs;
``resolve_blob``    a blob name or a layer name (its first top) to a blob;
``embedding_blob``  the default embedding: the Decode layer's bottom, else
                    the RUN net's last output.
"""
import numpy as np

from ..backend import to_numpy
from ..errors import LayergraphError
from ..net import DATA_LAYER_TYPES, Net, filter_net
from ..proto import pb
from ..prototxt import read_net


def data_transform(net_param):
    """The TEST-phase (else TRAIN) data layer's transform_param."""
    for phase in (pb.TEST, pb.TRAIN):
        for lp in filter_net(net_param, pb.NetState(phase=phase)).layer:
            if lp.type in DATA_LAYER_TYPES:
                return lp.transform_param
    return pb.TransformationParameter()


def preprocess(images, transform, source=None):
    """Apply a Data layer's deterministic transform (mean, scale) to uint8
    images (n, C, H, W): (x - mean) * scale, as Caffe's DataTransformer.
    The random parts (crop, mirror, augmentation) are training-only and are
    not applied."""
    x = images.astype(np.float32)
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
    """Forward ``images`` in batches; returns {blob name: stacked data (float64)}."""
    outs = {name: [] for name in blob_names}
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
