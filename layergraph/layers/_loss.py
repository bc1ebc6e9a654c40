"""Helpers of the Caffe loss layers (HingeLoss, InfogainLoss,
MultinomialLogisticLoss, SigmoidCrossEntropyLoss).

Integer labels: Caffe casts each label to int (truncation toward zero) and
requires it in [0, C); :func:`int_labels` does the same and reports the first
label out of range in one line.

Normalisation (LossLayer::get_normalizer), for the losses that honour
``loss_param.normalization`` (SigmoidCrossEntropyLoss, InfogainLoss):

    FULL:       Z = outer * inner      (every position)
    VALID:      Z = number of positions whose label is not ignore_label
    BATCH_SIZE: Z = outer
    NONE:       Z = 1

and Z is clamped to at least 1 (a batch with every label ignored gives loss
0, not NaN).
"""
from ..proto import pb


def normalization_mode(layer, default, allow_normalize=True):
    """The layer's normalisation mode: ``loss_param.normalization`` when set,
    else the legacy ``normalize`` (true: VALID, false: BATCH_SIZE) when set
    and allowed, else ``default`` (Caffe's per-layer default)."""
    lp = layer.param.loss_param
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        if not allow_normalize:
            raise layer.error('loss_param.normalize is deprecated and refused by this layer '
                              '(as in Caffe); use loss_param.normalization')
        return pb.LossParameter.VALID if lp.normalize else pb.LossParameter.BATCH_SIZE
    return default


def normalizer(xp, layer, mode, outer, inner, valid_count, dtype):
    """Z for ``mode`` as a 0-d array (``valid_count`` may be a device array,
    so VALID never reads back to the host)."""
    if mode == pb.LossParameter.VALID:
        return xp.maximum(xp.asarray(valid_count, dtype=dtype), 1)
    if mode == pb.LossParameter.FULL:
        z = outer * inner
    elif mode == pb.LossParameter.BATCH_SIZE:
        z = outer
    elif mode == pb.LossParameter.NONE:
        z = 1
    else:
        raise layer.error(f"unknown loss_param.normalization {mode}")
    return xp.asarray(max(z, 1), dtype=dtype)


def int_labels(layer, labels, classes, valid=None):
    """``labels`` cast to int64 as Caffe's static_cast<int>; a LayerError
    naming the first label outside [0, classes) among the ``valid`` ones."""
    xp = layer.xp
    ints = labels.astype(xp.int64)
    bad = (ints < 0) | (ints >= classes)
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        first = int(ints[bad].ravel()[0])
        raise layer.error(f"label {first} out of range [0, {classes}) for {classes} classes")
    return ints


def check_label_count(layer, scores, labels):
    """Caffe's LossLayer::Reshape check plus one label per sample."""
    n = scores.shape[0] if scores.num_axes else 1
    if labels.count != n or (labels.num_axes and labels.shape[0] != n):
        raise layer.shape_error(f"label shape {labels.shape} does not fit prediction shape "
                                f"{scores.shape}: one label per sample ({n}) is needed")
