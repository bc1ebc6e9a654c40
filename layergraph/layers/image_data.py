"""ImageData: batches of image files named in a list file (Caffe's ImageData)."""
import zlib

import numpy as np

from ..errors import DataError
from ..layer import Layer, register_layer
from ..proto import pb

EPOCH_TAG = 0x45504F43   # "EPOC": the stream of epoch permutations
SKIP_TAG = 0x534B4950    # "SKIP": the rand_skip draw


def read_image_list(path):
    """Caffe's list file: one ``path label`` per line, split at the last
    space (paths may contain spaces); blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read().splitlines()
    except OSError as e:
        raise DataError(f"image list {path}: cannot read it ({e.strerror or e})") from None
    entries = []
    for number, line in enumerate(raw, 1):
        line = line.rstrip()
        if not line.strip():
            continue
        name, sep, label = line.rpartition(" ")
        try:
            if not sep or not name:
                raise ValueError
            entries.append((name, int(label)))
        except ValueError:
            raise DataError(f"image list {path} line {number}: expected 'path label' "
                            f"(an integer label after the last space), got {line!r}") from None
    if not entries:
        raise DataError(f"image list {path} lists no images")
    return entries


def resize_bilinear(image, height, width):
    """``image`` (H, W, C) uint8 resized as OpenCV's INTER_LINEAR (Caffe's
    cv::resize): the source coordinate of output pixel x is
    (x + 0.5) * in/out - 0.5, clamped to the image, interpolated linearly
    between its two neighbours, without antialiasing.  Computed in floating
    point and rounded (OpenCV's fixed-point result may differ by 1)."""
    def taps(n_in, n_out):
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo)
    y0, y1, wy = taps(image.shape[0], height)
    x0, x1, wx = taps(image.shape[1], width)
    img = image.astype(np.float64)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class _ListSource:
    """What data.py's transformer needs to know of a source of one shape."""

    color_order = "BGR"   # as Caffe (OpenCV) loads images

    def __init__(self, name, shape):
        self.name = name
        self.shape = shape

    @staticmethod
    def mean():
        return None


@register_layer("ImageData")
class ImageDataLayer(Layer):
    r"""Batches of images listed in a text file, Caffe's ImageData layer.

    ``image_data_param``:

    * ``source``: the list file, one ``path label`` per line (split at the
      last space); paths are relative to ``root_folder`` (prepended as is,
      as Caffe does: end it with a slash).
    * ``batch_size`` (default 1), ``shuffle`` (default false: list order),
      ``rand_skip`` (skip a random number in [0, rand_skip) of images at
      the start).
    * ``new_height`` / ``new_width`` (both or neither): resize every image
      (bilinear, as OpenCV's INTER_LINEAR, see :func:`resize_bilinear`).
    * ``is_color`` (default true): 3 channels in Caffe's BGR order (OpenCV
      loads BGR; a gray file is expanded), false: 1 gray channel (ITU-R 601
      luma).  The deprecated scale / mean_file / crop_size / mirror fields
      are ignored, as by Caffe; use ``transform_param``.

    ``transform_param`` is applied by the same transformer as the Data
    layer's (mean_file / mean_value, crop_size (random in TRAIN, centre
    otherwise), mirror, scale, force_color / force_gray; color_order BGR
    reverses the channels of the stored BGR images as for Caffe's LMDBs).

    Tops: data (B, C, H', W') and optionally label (B,).  The image shape
    is read from the first image of each batch, so images of varying size
    work with batch_size 1 (as in Caffe); within a batch every image must
    have the first one's size.  The list wraps around; with ``shuffle``
    every pass through it is a fresh permutation.

    Determinism and resume: epoch e's order is a pure function of (seed,
    layer name, e), seed = the net's random seed; batch k's random crops
    and flips come from (seed, layer name, k); the batch counter is in
    :meth:`state_dict`, so a resumed run continues with the same batches.
    Images are decoded with Pillow in the forward pass (no prefetch thread).
    """

    exact_bottoms = 0
    min_tops = 1
    max_tops = 2
    has_backward = False

    # ---------------------------------------------------------- parameters --
    def setup(self, bottom, top):
        p = self.param.image_data_param
        if not p.source:
            raise self.error("image_data_param.source (the image list file) is required")
        self.batch_size = int(p.batch_size)
        if self.batch_size < 1:
            raise self.error(f"image_data_param.batch_size must be at least 1, got "
                             f"{self.batch_size}")
        self.new_size = (int(p.new_height), int(p.new_width))
        if (self.new_size[0] > 0) != (self.new_size[1] > 0):
            raise self.error("give both new_height and new_width, or neither")
        self.is_color = bool(p.is_color)
        self.root = p.root_folder
        self.shuffle = bool(p.shuffle)
        try:
            self.entries = read_image_list(p.source)
        except DataError as e:
            raise self.error(str(e), DataError) from None
        self.crc = zlib.crc32(self.name.encode())
        self.skip = 0
        if p.rand_skip:
            skip_rng = np.random.default_rng(np.random.SeedSequence(
                [self.seed & 0xFFFFFFFF, self.crc, SKIP_TAG]))
            self.skip = int(skip_rng.integers(p.rand_skip))
        self._transforms = {}
        self._epochs = {}
        self._batch = 0
        self._pending = None   # (k, data, labels) read by reshape for forward k

    # ------------------------------------------------------------ images --
    def _order(self, e):
        """Entry indices of pass e through the list."""
        n = len(self.entries)
        if not self.shuffle:
            return None
        perm = self._epochs.get(e)
        if perm is None:
            if len(self._epochs) >= 3:
                self._epochs.pop(min(self._epochs))
            rng = np.random.default_rng(np.random.SeedSequence(
                [self.seed & 0xFFFFFFFF, self.crc, EPOCH_TAG, e]))
            perm = self._epochs[e] = rng.permutation(n)
        return perm

    def _entry(self, position):
        """The list entry at stream position ``position`` (0, 1, ...)."""
        n = len(self.entries)
        e, i = divmod(position + self.skip, n)
        order = self._order(e)
        return self.entries[int(order[i]) if order is not None else i]

    def _load(self, name):
        """One image as uint8 (C, H, W), BGR for colour (as OpenCV loads)."""
        from PIL import Image
        path = self.root + name
        try:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im.convert("RGB" if self.is_color else "L"), dtype=np.uint8)
        except FileNotFoundError:
            raise self.error(f"could not load image {path}: no such file", DataError) from None
        except Exception as e:  # Pillow raises many types for bad data
            raise self.error(f"could not load image {path} ({type(e).__name__}: "
                             f"{' '.join(str(e).split())})", DataError) from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.new_size[0] > 0:
            arr = resize_bilinear(arr, *self.new_size)
        if self.is_color:
            arr = arr[:, :, ::-1]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def _transform_for(self, shape):
        t = self._transforms.get(shape)
        if t is None:
            from .data import _Transform
            t = _Transform(self, self.param.transform_param, pb.DataParameter(),
                           _ListSource(self.param.image_data_param.source, shape))
            self._transforms[shape] = t
        return t

    def _read_batch(self, k):
        """(data, labels) of batch k, in the net's dtype (host arrays)."""
        images, labels = [], []
        first = None
        for j in range(self.batch_size):
            name, label = self._entry(k * self.batch_size + j)
            image = self._load(name)
            if first is None:
                first = image.shape
            elif image.shape != first:
                raise self.error(f"image {self.root + name} is {image.shape[1]}x{image.shape[2]}"
                                 f"x{image.shape[0]} but the batch's first image is "
                                 f"{first[1]}x{first[2]}x{first[0]}: set new_height/new_width "
                                 "or use batch_size 1", DataError)
            images.append(image)
            labels.append(label)
        rng = np.random.default_rng(np.random.SeedSequence(
            [self.seed & 0xFFFFFFFF, self.crc, k]))
        data = self._transform_for(first)(np.stack(images), rng, self.dtype)
        return data, np.asarray(labels, dtype=self.dtype)

    # -------------------------------------------------------------- shapes --
    def reshape(self, bottom, top):
        k = self._batch
        if self._pending is None or self._pending[0] != k:
            self._pending = (k,) + self._read_batch(k)
        top[0].reshape(self._pending[1].shape)
        if len(top) > 1:
            top[1].reshape((self.batch_size,))

    # ------------------------------------------------------------- forward --
    def forward(self, bottom, top):
        k = self._batch
        if self._pending is None or self._pending[0] != k:
            self.reshape(bottom, top)
        _, data, labels = self._pending
        top[0].data[...] = self.xp.asarray(data)
        if len(top) > 1:
            top[1].data[...] = self.xp.asarray(labels)
        self._pending = None
        self._batch = k + 1

    # ------------------------------------------------------------ state --
    @property
    def batch_index(self):
        """The number of the next batch forward will output."""
        return self._batch

    def state_dict(self):
        state = super().state_dict()
        state["batch"] = self._batch
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._batch = int(state.get("batch", 0))
