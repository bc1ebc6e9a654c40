"""Dataset creators: MNIST-style IDX files, copies of a dataset, image folders.

Every creator validates its input first and then writes through
:class:`~layergraph.imagedb.store.DatasetWriter`, so a bad file or an
interruption never leaves a half-written dataset in the catalog.
"""
import gzip
import hashlib
import os
import sys
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
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
              ".pgm", ".pbm")
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

def copy_dataset(source, output, max_per_label=None, seed=0, auto_label=None, root=None,
                 overwrite=False, labels=None, exclude_labels=None):
    """Copy dataset ``source`` to ``output``.

    ``labels`` (an iterable of ints) keeps only the images of those labels,
    ``exclude_labels`` drops those labels' images -- in both splits; every
    label named must occur in the source (either split).  This makes the
    splits of the unseen-label protocol: ``labels=range(5)`` and
    ``exclude_labels=range(5)`` are complements.

    ``max_per_label`` then keeps at most that many images of each label in
    each split (a random subset drawn with ``seed``, kept in the source's
    order).  The subset of one label does not depend on which other labels
    are kept: ``labels=[0, 1]`` with ``max_per_label=30, seed=s`` copies the
    same images of 0 and 1 as ``max_per_label=30, seed=s`` alone.

    ``auto_label`` (MyCaffe's COPY creator) renumbers the labels kept to
    0..L-1 in sorted order (label 5, 6, ..., 9 become 0, ..., 4, as a net
    with ``label_count: 5`` needs); the default (None) renumbers when
    ``labels`` or ``exclude_labels`` is given and not otherwise.  When
    renumbered, the catalog records the mapping: ``label_names`` {new: the
    old label's name (its number when it had none)} and ``source_labels``
    {new: the old label number}.
    """
    check_name(output)
    src_info = dataset_info(source, root)
    if output == source:
        raise DataError(f"copy: the output dataset must differ from the source '{source}'")
    if max_per_label is not None and max_per_label < 1:
        raise DataError(f"copy: --max-per-label must be at least 1, got {max_per_label}")
    if labels is not None and exclude_labels is not None:
        raise DataError("copy: give --labels or --exclude-labels, not both")
    present = sorted({int(k) for split in SPLITS
                      for k in src_info["sources"][split]["label_counts"]})
    wanted = _select_labels(source, present, labels, exclude_labels)
    filtered = wanted is not None
    if auto_label is None:
        auto_label = filtered
    selected = {}  # split -> (positions kept, their labels); pixels are read per chunk
    for split_no, split in enumerate(SPLITS):
        src = open_source(f"{source}.{split}", "IMAGEDB", root)
        try:
            split_labels = src.labels()
            keep = []
            rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, split_no]))
            for label in np.unique(split_labels):
                members = np.flatnonzero(split_labels == label)
                # draw for every label, kept or not, so that a label's subset
                # is the same whichever labels are selected
                if max_per_label is not None and len(members) > max_per_label:
                    members = rng.choice(members, max_per_label, replace=False)
                if not filtered or int(label) in wanted:
                    keep.append(members)
            keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
            selected[split] = (keep, split_labels[keep])
            shape = src.shape
        finally:
            src.close()
    if filtered and not len(selected["training"][0]):
        raise DataError(f"copy: dataset '{source}' has no training images of label(s) "
                        f"{format_labels(wanted)} (they occur only in its testing split)")
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
                    images, chunk_labels = src.read(keep[start:start + step])
                    if mapping is not None:
                        chunk_labels = np.array([mapping[int(v)] for v in chunk_labels],
                                                np.int64)
                    writer.add(split, images, chunk_labels)
            finally:
                src.close()
        names = src_info.get("label_names")
        if mapping is not None:
            writer.label_names = {new: (names or {}).get(str(old), str(old))
                                  for old, new in mapping.items()}
            writer.meta["source_labels"] = {str(new): old for old, new in mapping.items()}
        elif names:
            kept = {int(v) for s in SPLITS for v in selected[s][1].tolist()}
            writer.label_names = {int(k): v for k, v in names.items()
                                  if not filtered or int(k) in kept}
        parts = [f"copy of '{source}'"]
        if filtered:
            parts.append(f"labels {format_labels(wanted)}")
        if max_per_label:
            parts.append(f"at most {max_per_label} per label (seed {seed})")
        if auto_label:
            parts.append("labels renumbered 0..L-1")
        writer.meta["origin"] = ", ".join(parts)
    return writer.info


def format_labels(values):
    """Sorted label numbers as ranges: [0, 1, 2, 4, 6, 7] -> '0-2,4,6-7'."""
    values = sorted(set(int(v) for v in values))
    runs = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def _select_labels(source, present, labels, exclude_labels):
    """The set of labels ``copy_dataset`` keeps (None: all), after checking
    that every label named occurs in the source."""
    named = labels if labels is not None else exclude_labels
    if named is None:
        return None
    flag = "--labels" if labels is not None else "--exclude-labels"
    try:
        named = {int(v) for v in named}
    except (TypeError, ValueError):
        raise DataError(f"copy: {flag} must be label numbers, got {named!r}") from None
    if not named:
        raise DataError(f"copy: {flag} names no label")
    missing = named - set(present)
    if missing:
        raise DataError(f"copy: dataset '{source}' has no label {format_labels(missing)} "
                        f"({flag}); its labels: {format_labels(present)}")
    wanted = named if labels is not None else set(present) - named
    if not wanted:
        raise DataError(f"copy: --exclude-labels {format_labels(named)} leaves no label of "
                        f"dataset '{source}'")
    return wanted


# ------------------------------------------------------------------ images --
#
# Three ways users hold their images, all ending in one (training, testing)
# list of (file, label) entries that is decoded and written chunk by chunk:
#   * one folder of label sub-folders, split per label by a test fraction;
#   * a folder already split: train/<label>/... and test/<label>/...
#     (found by name inside --dir, or given as --train-dir/--test-dir);
#   * Caffe convert_imageset list files, one "path label" a line.

#: label folder names -> the split they hold, for a --dir that is already split
SPLIT_FOLDER_NAMES = {"train": "training", "training": "training",
                      "test": "testing", "testing": "testing",
                      "val": "testing", "validation": "testing"}
#: how an image whose aspect ratio differs from the target's is fitted
RESIZE_MODES = ("squash", "crop", "pad")
BAD_FILE_MODES = ("error", "skip")
_NAMED_BAD_FILES = 20  # bad files named one a line; the rest are counted


def _stderr_warning(message):
    """Print ``layergraph: warning: ...`` on stderr without breaking a tqdm bar."""
    from tqdm import tqdm
    tqdm.write(f"layergraph: warning: {message}", file=sys.stderr)


def _fit(im, size, resize):
    """Resize a Pillow image to ``size`` (height, width).

    ``squash``: both sides scaled independently to the target (Caffe's
    convert_imageset ``--resize_height/--resize_width``; SSD-Caffe's WARP).
    ``crop``: scaled by :math:`s = \\max(H/h, W/w)` so the short side fits,
    keeping the aspect ratio, then the centre :math:`H \\times W` cut out.
    ``pad``: scaled by :math:`s = \\min(H/h, W/w)` so the whole image fits,
    keeping the aspect ratio, then centred on a zero (black) canvas.
    Resampling is Pillow's bilinear filter; an image already of the target
    size is returned untouched (so are, under ``crop`` and ``pad``, images
    that only need cutting or padding: their pixels are copied exactly).
    """
    from PIL import Image
    h, w = size
    iw, ih = im.size
    if (iw, ih) == (w, h):
        return im
    if resize == "squash":
        return im.resize((w, h), Image.BILINEAR)
    if resize == "crop":
        scale = max(w / iw, h / ih)
        nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
    else:
        scale = min(w / iw, h / ih)
        nw, nh = min(w, max(1, round(iw * scale))), min(h, max(1, round(ih * scale)))
    if (nw, nh) != (iw, ih):
        im = im.resize((nw, nh), Image.BILINEAR)
    if resize == "crop":
        left, top = (nw - w) // 2, (nh - h) // 2
        return im.crop((left, top, left + w, top + h))
    canvas = Image.new(im.mode, (w, h), 0)
    canvas.paste(im, ((w - nw) // 2, (h - nh) // 2))
    return canvas


def _load_image(path, size, channels, resize="squash"):
    """Decode one image file to uint8 (C, H, W): EXIF orientation applied (as
    OpenCV's imread does for Caffe), converted to gray (``channels`` 1) or RGB
    (3), fitted to ``size`` (height, width; None: kept) by ``resize``.  An
    unreadable or undecodable file is a one-line DataError naming it."""
    from PIL import ImageOps
    im = _open_image(path)
    try:
        with im:
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a damaged EXIF block leaves the pixels usable
                pass
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None:
                im = _fit(im, size, resize)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # truncated data, bad tiles, ...
        raise _decode_error(path, e) from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _subfolders(directory):
    return sorted(e.name for e in os.scandir(directory)
                  if e.is_dir() and not e.name.startswith("."))


def _label_folders(directory):
    """{label folder name: [image paths]} of a folder of label sub-folders.
    Files without an image extension are returned apart (ignored)."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such directory")
    folders = _subfolders(directory)
    if not folders:
        raise DataError(f"{directory}: no label sub-folders (expected one folder per label, "
                        f"e.g. {os.path.join(directory, '0', 'a.png')})")
    files, ignored = {}, []
    for folder in folders:
        path = os.path.join(directory, folder)
        found = []
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            (found if entry.name.lower().endswith(IMAGE_EXTS) else ignored).append(entry.path)
        if not found:
            raise DataError(f"{path}: no PNG/JPEG images in this label folder (image files "
                            f"end in {', '.join(IMAGE_EXTS)})")
        files[folder] = found
    return files, ignored


def _folder_label_values(names):
    """Label folder names -> label values: folders all named by integers keep
    those values; otherwise the sorted names are numbered 0..L-1."""
    names = sorted(set(names))
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(names)}


def find_split_folders(directory):
    """(training folder, testing folder) when ``directory`` holds exactly one
    training folder (``train``/``training``) and one testing folder
    (``test``/``testing``/``val``/``validation``) and nothing else; None when
    it holds label folders.  Only split names but not such a pair (train,
    val and test; train alone) is an error: which to use is the user's call."""
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: no such directory")
    folders = _subfolders(directory)
    roles = [SPLIT_FOLDER_NAMES.get(f.lower()) for f in folders]
    if not folders or None in roles:
        return None
    if sorted(roles) == ["testing", "training"]:
        by_role = dict(zip(roles, folders))
        return (os.path.join(directory, by_role["training"]),
                os.path.join(directory, by_role["testing"]))
    raise DataError(f"{directory}: holds the split folders {', '.join(folders)} but not "
                    "exactly one training and one testing folder; give --train-dir and "
                    "--test-dir")


def read_list_file(path, root=None):
    """Entries ``[(image path, label), ...]`` of a Caffe convert_imageset list
    file: one ``relative/path label`` a line, the label the integer after the
    last blank (paths may hold spaces), paths relative to ``root`` (default:
    the list file's folder; an absolute path stays as it is).  Blank lines
    and ``#`` comments are skipped; anything else is a one-line error naming
    the file and line."""
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read the list file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text list file (expected 'path label' lines in "
                        "UTF-8)") from None
    entries = []
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'PATH LABEL', got {text!r}")
        name, label = parts
        try:
            value = int(label)
        except ValueError:
            raise DataError(f"{path}:{lineno}: the label {label!r} is not an integer") from None
        if not -2 ** 31 <= value < 2 ** 31:
            raise DataError(f"{path}:{lineno}: the label {value} does not fit a Datum's "
                            "int32 label")
        entries.append((os.path.join(root, name), value))
    if not entries:
        raise DataError(f"{path}: no 'path label' lines in the list file")
    return entries


def _split_by_fraction(entries, test_fraction, rng):
    """Per label, a ``test_fraction`` share drawn with ``rng`` goes to testing
    (at least one image stays in training); each split keeps the entries'
    order.  Returns {split: [entry, ...]}."""
    positions = {}
    for i, (_, label) in enumerate(entries):
        positions.setdefault(label, []).append(i)
    chosen = {s: [] for s in SPLITS}
    for label in sorted(positions):
        members = np.asarray(positions[label])
        n = len(members)
        n_test = min(int(round(n * test_fraction)), n - 1)
        order = rng.permutation(n)
        chosen["testing"].extend(members[np.sort(order[:n_test])].tolist())
        chosen["training"].extend(members[np.sort(order[n_test:])].tolist())
    return {s: [entries[i] for i in chosen[s]] for s in SPLITS}


def _gather(directory, train_dir, test_dir, list_file, test_list, list_root, test_fraction,
            seed, rng, warn):
    """The entries of each split, the label names and a description of the
    source; see :func:`import_images`."""
    given = [what for what, value in (("a folder", directory),
                                      ("split folders", train_dir or test_dir),
                                      ("a list file", list_file or test_list)) if value]
    if len(given) != 1:
        raise DataError("images: give one source: --dir DIR, or --train-dir and --test-dir, "
                        "or --list FILE" + (f" (got {' and '.join(given)})" if given else ""))
    if (train_dir is None) != (test_dir is None):
        raise DataError("images: --train-dir and --test-dir go together")
    if test_list is not None and list_file is None:
        raise DataError("images: --test-list needs --list (the training list)")
    if list_root is not None and list_file is None:
        raise DataError("images: --root applies to --list files")
    if directory is not None:
        pair = find_split_folders(directory)
        if pair is not None:
            train_dir, test_dir = pair
    pre_split = train_dir is not None or test_list is not None
    if pre_split and test_fraction is not None:
        raise DataError("images: --test-fraction splits a source that is not split already; "
                        "these images come with their testing split")
    test_fraction = 0.2 if test_fraction is None else test_fraction
    if not 0 <= test_fraction < 1:
        raise DataError(f"images: the test fraction must be in [0, 1), got {test_fraction}")
    ignored, names = [], None
    if list_file is not None:
        entries = read_list_file(list_file, list_root)
        if test_list is not None:
            parts = {"training": entries, "testing": read_list_file(test_list, list_root)}
            origin = (f"list files {os.path.abspath(list_file)} (training) and "
                      f"{os.path.abspath(test_list)} (testing)")
        else:
            parts = _split_by_fraction(entries, test_fraction, rng)
            origin = (f"list file {os.path.abspath(list_file)} (test fraction "
                      f"{test_fraction}, seed {seed})")
    elif train_dir is not None:
        files = {}
        for split, folder in (("training", train_dir), ("testing", test_dir)):
            files[split], skipped = _label_folders(folder)
            ignored += skipped
        labels = _folder_label_values(list(files["training"]) + list(files["testing"]))
        parts = {s: [(p, labels[f]) for f in sorted(files[s]) for p in files[s][f]]
                 for s in SPLITS}
        names = {v: k for k, v in labels.items()}
        origin = (f"split folders {os.path.abspath(train_dir)} (training) and "
                  f"{os.path.abspath(test_dir)} (testing)")
    else:
        files, ignored = _label_folders(directory)
        labels = _folder_label_values(files)
        entries = [(p, labels[f]) for f in sorted(files) for p in files[f]]
        parts = _split_by_fraction(entries, test_fraction, rng)
        names = {v: k for k, v in labels.items()}
        origin = (f"images in {os.path.abspath(directory)} (test fraction {test_fraction}, "
                  f"seed {seed})")
    if ignored:
        shown = ", ".join(ignored[:3]) + (f" and {len(ignored) - 3} more" if len(ignored) > 3
                                          else "")
        warn(f"ignored {len(ignored)} file{'s' * (len(ignored) != 1)} without an image "
             f"extension: {shown}")
    return parts, names, origin


def import_images(directory, name, size=None, channels=1, test_fraction=None, seed=0,
                  root=None, overwrite=False, *, train_dir=None, test_dir=None,
                  list_file=None, test_list=None, list_root=None, resize="squash",
                  shuffle=None, on_bad="error", warn=None, progress=False):
    """Create dataset ``name`` from image files, as users hold them:

    * ``directory`` with one sub-folder per label: per label, a
      ``test_fraction`` share (default 0.2) chosen with ``seed`` goes to the
      testing split (at least one image stays in training);
    * ``directory`` holding exactly ``train``/``training`` and
      ``test``/``testing``/``val`` folders of label sub-folders, or the two
      given as ``train_dir`` and ``test_dir``: the split is kept;
    * ``list_file`` (Caffe's convert_imageset list: ``path label`` a line,
      paths relative to ``list_root``, default the list's folder; see
      :func:`read_list_file`), with ``test_list`` for the testing split or
      else split by ``test_fraction``.

    Label folders all named by integers give those labels; otherwise the
    sorted folder names (of both splits) are numbered 0..L-1 and the names
    kept in the catalog (``label_names``).  List files give their integers.

    Images (PNG, JPEG, BMP, GIF, TIFF, WebP, PNM) are converted to
    ``channels`` (1 gray, 3 RGB) and fitted to ``size`` (height, width;
    default: the first image's size) by ``resize``: ``squash``, ``crop`` or
    ``pad`` (see :func:`_fit`).  ``shuffle`` stores each split's records in
    an order drawn with ``seed``; None shuffles folders (whose order, label
    after label, must not reach a sequential reader) and keeps a list file's
    order, as Caffe does.  A file that cannot be read or decoded raises a
    one-line DataError (``on_bad="error"``) or, with ``on_bad="skip"``, is
    named through ``warn`` (default: a line on stderr) and left out.
    ``progress`` shows a tqdm bar on stderr (None: when stderr is a terminal).
    Nothing is written unless the whole dataset is.
    """
    check_name(name)
    if channels not in (1, 3):
        raise DataError(f"images: --channels must be 1 or 3, got {channels}")
    if resize not in RESIZE_MODES:
        raise DataError(f"images: unknown resize mode {resize!r}; use "
                        f"{', '.join(RESIZE_MODES)}")
    if on_bad not in BAD_FILE_MODES:
        raise DataError(f"images: on_bad must be one of {BAD_FILE_MODES}, got {on_bad!r}")
    if size is not None:
        _check_size(size)
    warn = warn or _stderr_warning
    # the split and the order are drawn before any pixel is read, then images
    # are decoded and written chunk by chunk: memory stays at one chunk
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF]))
    parts, names, origin = _gather(directory, train_dir, test_dir, list_file, test_list,
                                   list_root, test_fraction, seed, rng, warn)
    if shuffle is None:
        shuffle = list_file is None
    bad = []

    def skip(error):
        if on_bad == "error":
            raise error
        bad.append(str(error))
        if len(bad) <= _NAMED_BAD_FILES:
            warn(f"skipped {error}")

    if size is None:
        for path, _ in parts["training"] + parts["testing"]:
            try:
                size = _image_size(path)
                break
            except DataError as e:
                skip(e)  # decoding it again later must not name it twice
                parts = {s: [(p, y) for p, y in parts[s] if p != path] for s in SPLITS}
        if size is None:
            raise DataError(f"dataset '{name}': none of the images can be decoded")
        if max(size) > MAX_SIDE:
            raise DataError(f"{path}: the first image is {size[0]}x{size[1]}, but dataset "
                            f"images are at most {MAX_SIDE}x{MAX_SIDE}; give --size "
                            "HEIGHTxWIDTH to resize")
    size = tuple(int(v) for v in size)
    shape = (channels,) + size
    total = sum(len(parts[sp]) for sp in SPLITS)
    _check_budget(f"dataset '{name}'", total, shape, root)
    step = _chunk_len(int(np.prod(shape)))
    from tqdm import tqdm
    bar = tqdm(total=total, desc=f"dataset {name}", unit="img", file=sys.stderr,
               disable=None if progress is None else not progress)
    written = {s: 0 for s in SPLITS}
    try:
        with DatasetWriter(name, root, overwrite) as writer:
            for split in SPLITS:
                entries = parts[split]
                order = rng.permutation(len(entries)) if shuffle else np.arange(len(entries))
                for start in range(0, len(entries), step):
                    images, labels = [], []
                    for i in order[start:start + step]:
                        path, label = entries[i]
                        try:
                            images.append(_load_image(path, size, channels, resize))
                            labels.append(label)
                        except DataError as e:
                            skip(e)
                        bar.update(1)
                    if images:
                        writer.add(split, np.stack(images), np.asarray(labels, np.int64))
                        written[split] += len(images)
                if not written[split]:  # an empty split still has the shape
                    writer.add(split, np.zeros((0,) + shape, np.uint8), np.zeros(0, np.int64))
            if not written["training"]:
                raise DataError(f"dataset '{name}': no training image could be decoded "
                                f"({len(bad)} bad files)")
            if names:
                writer.label_names = names
            notes = [f"{channels} channel{'s' * (channels != 1)}", f"resize {resize}",
                     f"shuffled with seed {seed}" if shuffle else "order kept"]
            if bad:
                notes.append(f"{len(bad)} bad file{'s' * (len(bad) != 1)} skipped")
                writer.meta["skipped_files"] = bad[:100]
            writer.meta["origin"] = f"{origin}; " + ", ".join(notes)
    finally:
        bar.close()
    if len(bad) > _NAMED_BAD_FILES:
        warn(f"skipped {len(bad)} files that are not decodable images in all (the first "
             f"{_NAMED_BAD_FILES} named above)")
    for split in SPLITS:
        lost = sorted({y for _, y in parts[split]} - {int(k) for k in
                                                      writer.info["sources"][split]
                                                      ["label_counts"]})
        if lost:
            warn(f"label{'s' * (len(lost) != 1)} {', '.join(map(str, lost))} lost every "
                 f"{split} image to bad files")
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


def _open_image(path):
    """Pillow's lazy open of an image file; a missing, unreadable or
    unrecognised file is a one-line DataError naming it."""
    from PIL import Image
    try:
        return Image.open(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except Exception as e:  # Pillow raises many types for bad data
        raise _decode_error(path, e) from None


def _decode_error(path, exc):
    from PIL import UnidentifiedImageError
    if isinstance(exc, UnidentifiedImageError):  # its message repeats the path
        return DataError(f"{path}: cannot decode image (not an image format Pillow knows)")
    return DataError(f"{path}: cannot decode image ({type(exc).__name__}: "
                     f"{' '.join(str(exc).split())})")


def _image_size(path):
    """(height, width) of an image file as decoded (EXIF orientation applied),
    from its header (no pixels decoded)."""
    im = _open_image(path)
    try:
        with im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
    except Exception as e:  # a damaged header
        raise _decode_error(path, e) from None
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
