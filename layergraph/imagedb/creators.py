"""Dataset creators: MNIST-style IDX files, copies of a dataset, image folders.

Every creator validates its input first and then writes through
:class:`~layergraph.imagedb.store.DatasetWriter`, so a bad file or an
interruption never leaves a half-written dataset in the catalog.
"""
import gzip
import hashlib
import os
import urllib.request
import zlib

import numpy as np

from ..errors import DataError
from .store import (SPLITS, DatasetWriter, available_memory, check_name, check_space,
                    dataset_info, db_root, format_bytes, open_source, record_bytes)

# IDX magic numbers: 0x00000803 (ubyte, 3 dims) and 0x00000801 (ubyte, 1 dim)
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

MNIST_FILES = {  # role -> file stem (".gz" optional)
    ("training", "images"): "train-images-idx3-ubyte",
    ("training", "labels"): "train-labels-idx1-ubyte",
    ("testing", "images"): "t10k-images-idx3-ubyte",
    ("testing", "labels"): "t10k-labels-idx1-ubyte",
}
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_sample")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_CHUNK = 8192             # images per write transaction at most ...
_CHUNK_BYTES = 64 << 20   # ... and about this many pixel bytes (a few large images)
# Largest image side of a dataset.  One 4096x4096 RGB record is 48 MiB and its
# mean image (float64 while summed) 400 MiB; a Datum must stay far below
# protobuf's 2 GiB message limit, and the nets of this engine work on small
# images.  Anything bigger is almost certainly a typo (100000x100000 would be
# 28 GiB per image).
MAX_SIDE = 4096


def _chunk_len(image_bytes):
    """Images per write chunk: at most _CHUNK, and about _CHUNK_BYTES of pixels."""
    return max(1, min(_CHUNK, _CHUNK_BYTES // max(1, image_bytes)))


def _check_budget(what, count, shape, root):
    """Refuse before writing anything when a dataset of ``count`` images of
    ``shape`` (C, H, W) cannot fit: on the disk of the database ``root``, or in
    memory (a write chunk in a few copies plus the float64 mean)."""
    c, h, w = shape
    image_bytes = c * h * w
    disk = count * record_bytes(image_bytes) + 4 * image_bytes + (1 << 16)
    check_space(db_root(root), disk, f"{what} ({count:,} images of {c}x{h}x{w})")
    memory = 4 * _chunk_len(image_bytes) * image_bytes + 16 * image_bytes
    available = available_memory()
    if available is not None and memory > available:
        raise DataError(f"{what}: images of {c}x{h}x{w} need about {format_bytes(memory)} of "
                        f"memory to write but only {format_bytes(available)} are available")


# --------------------------------------------------------------- IDX files --

def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return raw


def read_idx(path, kind):
    """Read an IDX file (gzip or plain): ``kind`` "images" -> uint8 (N, H, W),
    "labels" -> uint8 (N,).  Magic number, dimensions and size are checked."""
    expected = IDX_IMAGES_MAGIC if kind == "images" else IDX_LABELS_MAGIC
    other = IDX_LABELS_MAGIC if kind == "images" else IDX_IMAGES_MAGIC
    raw = _read_bytes(path)
    header = 16 if kind == "images" else 8
    if len(raw) < 4:
        raise DataError(f"{path}: short data: {len(raw)} bytes, not even an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected:
        hint = f" (this looks like an IDX {'label' if kind == 'images' else 'image'} file)" \
            if magic == other else ""
        raise DataError(f"{path}: wrong magic number {magic}, expected {expected} for an IDX "
                        f"{kind[:-1]} file{hint}")
    if len(raw) < header:
        raise DataError(f"{path}: short data: header truncated ({len(raw)} of {header} bytes)")
    dims = [int.from_bytes(raw[i:i + 4], "big") for i in range(4, header, 4)]
    if any(d <= 0 for d in dims):
        raise DataError(f"{path}: invalid dimensions {dims} in the IDX header")
    size = int(np.prod(dims, dtype=np.int64))
    body = len(raw) - header
    if body < size:
        what = f"{dims[0]} images of {dims[1]}x{dims[2]}" if kind == "images" \
            else f"{dims[0]} labels"
        raise DataError(f"{path}: short data: the header announces {what} ({size} bytes) but "
                        f"the file holds {body}")
    if body > size:
        raise DataError(f"{path}: wrong count: {body - size} bytes beyond the {dims[0]} "
                        f"{kind} the header announces")
    return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(dims)


def _find_idx(source_dir, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(source_dir, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{source_dir}: missing {stem}[.gz] (expected the four MNIST IDX files "
                    f"{', '.join(MNIST_FILES.values())}, gzip or plain)")


def read_idx_dataset(source_dir):
    """The four IDX files of an MNIST-layout folder, checked:
    ``{split: (images (N,1,H,W) uint8, labels (N,))}``."""
    if not os.path.isdir(source_dir):
        raise DataError(f"{source_dir}: no such directory")
    data, shape = {}, None
    for split in SPLITS:
        img_path = _find_idx(source_dir, MNIST_FILES[(split, "images")])
        lbl_path = _find_idx(source_dir, MNIST_FILES[(split, "labels")])
        images = read_idx(img_path, "images")
        labels = read_idx(lbl_path, "labels")
        if len(images) != len(labels):
            raise DataError(f"{img_path}: wrong count: {len(images)} images but {lbl_path} "
                            f"holds {len(labels)} labels")
        if shape is not None and images.shape[1:] != shape:
            raise DataError(f"{img_path}: images of {images.shape[1:]} differ from the "
                            f"training images {shape}")
        shape = images.shape[1:]
        data[split] = (images[:, None], labels)
    return data


# ------------------------------------------------------------------- MNIST --

def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_mnist(root=None, timeout=3.0):
    """Fetch the official MNIST files (SHA-256 checked) into
    ``<root>/.downloads/mnist``; returns (folder, None) or (None, reason)."""
    cache = os.path.join(db_root(root), ".downloads", "mnist")
    for fname, sha in MNIST_SHA256.items():
        dest = os.path.join(cache, fname)
        if os.path.isfile(dest) and _sha256(dest) == sha:
            continue
        reason = None
        for mirror in MNIST_MIRRORS:
            try:
                with urllib.request.urlopen(mirror + fname, timeout=timeout) as response:
                    data = response.read()
            except (OSError, ValueError) as e:  # URLError, timeouts, refused, ...
                reason = f"{mirror}{fname}: {getattr(e, 'reason', e)}"
                continue
            if hashlib.sha256(data).hexdigest() != sha:
                reason = f"{mirror}{fname}: SHA-256 mismatch"
                continue
            os.makedirs(cache, exist_ok=True)
            tmp = f"{dest}.part{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
            reason = None
            break
        if reason is not None:
            return None, reason
    return cache, None


def create_mnist(source_dir=None, name="MNIST", root=None, overwrite=False, download=None,
                 timeout=3.0):
    """Create dataset ``name`` from MNIST-layout IDX files (MNIST, Fashion-MNIST).

    ``source_dir`` None: download the official MNIST files when the network
    allows (``download``; default: unless $LAYERGRAPH_OFFLINE is set), else
    use the 10,000-image MNIST sample shipped in the package.  Returns the
    dataset's catalog dict with ``origin`` saying which files were used.
    """
    check_name(name)
    if source_dir is not None:
        origin = f"IDX files in {os.path.abspath(source_dir)}"
    else:
        if download is None:
            download = not os.environ.get("LAYERGRAPH_OFFLINE")
        reason = "downloading disabled"
        if download:
            source_dir, reason = download_mnist(root, timeout)
        if source_dir is not None:
            origin = "official MNIST files (downloaded, SHA-256 verified)"
        else:
            source_dir = SAMPLE_DIR
            origin = (f"MNIST sample shipped with layergraph (10,000 real MNIST digits; "
                      f"download not possible: {reason})")
    data = read_idx_dataset(source_dir)
    _check_budget(f"dataset '{name}'", sum(len(data[sp][0]) for sp in SPLITS),
                  data["training"][0].shape[1:], root)
    with DatasetWriter(name, root, overwrite) as writer:
        for split in SPLITS:
            images, labels = data[split]
            for start in range(0, len(images), _CHUNK):
                writer.add(split, images[start:start + _CHUNK], labels[start:start + _CHUNK])
        writer.meta["origin"] = origin
    return writer.info  # as written (a concurrent overwrite may already replace it)


# -------------------------------------------------------------------- copy --

def copy_dataset(source, output, max_per_label=None, seed=0, auto_label=False, root=None,
                 overwrite=False):
    """Copy dataset ``source`` to ``output``, keeping at most ``max_per_label``
    images of each label in each split (a random subset drawn with ``seed``,
    kept in the source's order).  ``auto_label`` (MyCaffe's COPY creator)
    renumbers the labels found in either split to 0..L-1 in sorted order."""
    check_name(output)
    src_info = dataset_info(source, root)
    if output == source:
        raise DataError(f"copy: the output dataset must differ from the source '{source}'")
    if max_per_label is not None and max_per_label < 1:
        raise DataError(f"copy: --max-per-label must be at least 1, got {max_per_label}")
    selected = {}  # split -> (positions kept, their labels); pixels are read per chunk
    for split_no, split in enumerate(SPLITS):
        src = open_source(f"{source}.{split}", "IMAGEDB", root)
        try:
            labels = src.labels()
            keep = []
            rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, split_no]))
            for label in np.unique(labels):
                members = np.flatnonzero(labels == label)
                if max_per_label is not None and len(members) > max_per_label:
                    members = rng.choice(members, max_per_label, replace=False)
                keep.append(members)
            keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
            selected[split] = (keep, labels[keep])
            shape = src.shape
        finally:
            src.close()
    mapping = None
    if auto_label:
        found = np.unique(np.concatenate([selected[s][1] for s in SPLITS]))
        mapping = {int(old): new for new, old in enumerate(found.tolist())}
    _check_budget(f"dataset '{output}'", sum(len(selected[sp][0]) for sp in SPLITS), shape,
                  root)
    step = _chunk_len(int(np.prod(shape)))
    with DatasetWriter(output, root, overwrite) as writer:
        for split in SPLITS:
            keep, _ = selected[split]
            src = open_source(f"{source}.{split}", "IMAGEDB", root)
            try:
                for start in range(0, len(keep), step):
                    images, labels = src.read(keep[start:start + step])
                    if mapping is not None:
                        labels = np.array([mapping[int(v)] for v in labels], np.int64)
                    writer.add(split, images, labels)
            finally:
                src.close()
        names = src_info.get("label_names")
        if mapping is not None:
            writer.label_names = {new: (names or {}).get(str(old), str(old))
                                  for old, new in mapping.items()}
        elif names:
            writer.label_names = {int(k): v for k, v in names.items()}
        cap = f", at most {max_per_label} per label (seed {seed})" if max_per_label else ""
        writer.meta["origin"] = (f"copy of '{source}'{cap}"
                                 + (", labels renumbered 0..L-1" if auto_label else ""))
    return writer.info


# ------------------------------------------------------------------ images --

def _load_image(path, size, channels):
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # Pillow raises many types for bad data
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: "
                        f"{' '.join(str(e).split())})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def import_images(directory, name, size=None, channels=1, test_fraction=0.2, seed=0,
                  root=None, overwrite=False):
    """Create dataset ``name`` from a folder with one sub-folder per label.

    Sub-folders named by integers give those labels; otherwise the sorted
    folder names are numbered 0..L-1 (names kept in the catalog).  Images
    (PNG/JPEG) are converted to ``channels`` (1 gray, 3 RGB) and resized to
    ``size`` (height, width; default: the first image's size).  Per label, a
    ``test_fraction`` share chosen with ``seed`` goes to the testing split
    (at least one image stays in training); records are stored shuffled.
    """
    check_name(name)
    if channels not in (1, 3):
        raise DataError(f"images: --channels must be 1 or 3, got {channels}")
    if not 0 <= test_fraction < 1:
        raise DataError(f"images: the test fraction must be in [0, 1), got {test_fraction}")
    if size is not None:
        _check_size(size)
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such directory")
    folders = sorted(d for d in os.listdir(directory)
                     if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))
    if not folders:
        raise DataError(f"{directory}: no label sub-folders (expected one folder per label, "
                        f"e.g. {os.path.join(directory, '0', 'a.png')})")
    if all(f.isdigit() for f in folders):
        labels = {f: int(f) for f in folders}
    else:
        labels = {f: i for i, f in enumerate(folders)}
    files = {}
    for folder in folders:
        path = os.path.join(directory, folder)
        found = sorted(f for f in os.listdir(path)
                       if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."))
        if not found:
            raise DataError(f"{path}: no PNG/JPEG images in this label folder")
        files[folder] = [os.path.join(path, f) for f in found]
    if size is None:
        first = files[folders[0]][0]
        size = _image_size(first)
        if max(size) > MAX_SIDE:
            raise DataError(f"{first}: the first image is {size[0]}x{size[1]}, but dataset "
                            f"images are at most {MAX_SIDE}x{MAX_SIDE}; give --size "
                            "HEIGHTxWIDTH to resize")
    size = tuple(int(v) for v in size)
    # the split and the order are drawn before any pixel is read, then images
    # are decoded and written chunk by chunk: memory stays at one chunk
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF]))
    parts = {s: ([], []) for s in SPLITS}
    for folder in folders:
        paths = np.array(files[folder], dtype=object)
        n = len(paths)
        n_test = min(int(round(n * test_fraction)), n - 1)
        order = rng.permutation(n)
        for split, idx in (("testing", np.sort(order[:n_test])),
                           ("training", np.sort(order[n_test:]))):
            parts[split][0].extend(paths[idx].tolist())
            parts[split][1].extend([labels[folder]] * len(idx))
    shape = (channels,) + size
    _check_budget(f"dataset '{name}'", sum(len(parts[sp][0]) for sp in SPLITS), shape, root)
    step = _chunk_len(int(np.prod(shape)))
    with DatasetWriter(name, root, overwrite) as writer:
        for split in SPLITS:
            paths, lab = parts[split]
            shuffle = rng.permutation(len(paths))
            if not len(paths):
                writer.add(split, np.zeros((0,) + shape, np.uint8), np.zeros(0, np.int64))
            for start in range(0, len(paths), step):
                chunk = shuffle[start:start + step]
                writer.add(split, np.stack([_load_image(paths[i], size, channels)
                                            for i in chunk]),
                           np.asarray([lab[i] for i in chunk], np.int64))
        writer.label_names = {v: k for k, v in labels.items()}
        writer.meta["origin"] = (f"images in {os.path.abspath(directory)} "
                                 f"(test fraction {test_fraction}, seed {seed})")
    return writer.info


def _check_size(size):
    """An image size (height, width): positive and at most MAX_SIDE a side."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"images: invalid size {size!r}; expected (height, width)") from None
    if h < 1 or w < 1:
        raise DataError(f"images: invalid size {h}x{w}; height and width must be at least 1")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise DataError(f"images: size {h}x{w} is too large; at most {MAX_SIDE}x{MAX_SIDE} "
                        "(each image is stored whole in one LMDB record and read whole into "
                        "memory)")


def _image_size(path):
    """(height, width) of an image file, from its header (no pixels decoded)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # Pillow raises many types for bad data
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: "
                        f"{' '.join(str(e).split())})") from None
    return h, w


# -------------------------------------------------------------------- show --

def show(name, out=None, per_label=8, root=None, max_labels=40):
    """Save a PNG: ``per_label`` training images per label (one row each, with
    its training/testing counts) and the dataset's mean image.  Returns
    ``(path, info)``."""
    from PIL import Image, ImageDraw
    from .store import read_mean
    info = dataset_info(name, root)
    out = out or f"{name}.png"
    src = open_source(f"{name}.training", "IMAGEDB", root)
    try:
        labels = src.labels()
        shown = np.unique(labels)[:max_labels]
        picks = [np.flatnonzero(labels == v)[:per_label] for v in shown]
        images = [src.read(p)[0] for p in picks]
    finally:
        src.close()
    mean = read_mean(name, root)
    c, h, w = mean.shape
    zoom = max(1, 56 // max(h, w))
    cell_h, cell_w = h * zoom + 4, w * zoom + 4
    margin = 150
    counts = {s: info["sources"][s]["label_counts"] for s in SPLITS}
    rows = len(shown) + 1
    canvas = Image.new("RGB", (margin + per_label * cell_w, rows * cell_h + 20), "white")
    draw = ImageDraw.Draw(canvas)

    def tile(arr):
        arr = np.clip(np.asarray(arr, np.float32), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr[0]) if arr.shape[0] != 3 else \
            Image.fromarray(arr.transpose(1, 2, 0), "RGB")
        return im.resize((w * zoom, h * zoom), Image.NEAREST)

    names = info.get("label_names", {})
    for r, (value, imgs) in enumerate(zip(shown.tolist(), images)):
        label = f"{value}" + (f" {names[str(value)]}" if names.get(str(value), str(value))
                              != str(value) else "")
        text = (f"{label[:14]}  {counts['training'].get(str(value), 0)}/"
                f"{counts['testing'].get(str(value), 0)}")
        draw.text((4, r * cell_h + cell_h // 2 - 6), text, fill="black")
        for col, img in enumerate(imgs):
            canvas.paste(tile(img), (margin + col * cell_w + 2, r * cell_h + 2))
    r = len(shown)
    draw.text((4, r * cell_h + cell_h // 2 - 6), "mean image", fill="black")
    canvas.paste(tile(mean), (margin + 2, r * cell_h + 2))
    draw.text((4, rows * cell_h + 4), f"{name}: label  training/testing counts", fill="gray")
    canvas.save(out)
    return out, info
