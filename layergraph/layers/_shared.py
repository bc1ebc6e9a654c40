"""Small helpers shared by layers (Flatten, Reshape, Split, Softmax, Accuracy, ...)."""


def alias_data(blob, array):
    """Make ``blob.data`` be ``array`` itself (a view of another blob's data:
    no copy, as Caffe's ShareData).  ``blob`` must already have the shape of
    ``array``; its diff stays its own.  Blob's ``data`` setter copies, hence
    the direct assignment."""
    if tuple(array.shape) != blob.shape:  # pragma: no cover - layer bug
        raise ValueError(f"alias_data: {array.shape} does not fit blob {blob.shape}")
    blob._data = array


def canonical_axis(layer, blob, axis, name="axis"):
    """``axis`` (possibly negative) as an index into ``blob``'s axes, or a
    ShapeError naming the layer, the parameter and the shape."""
    n = blob.num_axes
    if not -n <= axis < n:
        raise layer.shape_error(f"{name} {axis} is out of range for bottom shape {blob.shape}")
    return axis + n if axis < 0 else axis
