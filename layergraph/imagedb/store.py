"""The image database: named datasets of labelled images stored in LMDB.

Layout (one folder per dataset under the database root)::

    <root>/<DATASET>/catalog.json        sources, image shape, counts per label
    <root>/<DATASET>/training/           LMDB: Datum records, keys 00000000, ...
    <root>/<DATASET>/testing/            LMDB: the test split
    <root>/<DATASET>/mean.binaryproto    BlobProto (1, C, H, W): training mean

A dataset has two sources, ``<DATASET>.training`` and ``<DATASET>.testing``
(MyCaffe's names, the ones its templates use).  Records are Caffe ``Datum``
messages (uint8 CHW pixels + label), so each split folder is also a valid
BVLC Caffe LMDB.  Colour images are stored in RGB order.

The root is, in order of precedence: an explicit ``root`` argument, the
environment variable ``LAYERGRAPH_DB`` (the CLI's ``--db`` sets it), or
``~/.layergraph/imagedb``.

Creating a dataset is all-or-nothing: :class:`DatasetWriter` writes into a
hidden temporary folder and renames it into place only when everything has been
written; a failure or Ctrl-C removes the temporary folder, and a hard kill
leaves only a hidden ``.tmp-*`` folder that no listing shows and the next
creation removes.

A source is opened with :func:`open_source`: a dataset source name (backend
IMAGEDB) or the path of an LMDB folder written by BVLC Caffe's convert tools
(backend LMDB: arbitrary keys, raw or PNG/JPEG-encoded Datums).  LevelDB is not
supported (convert it to LMDB).
"""
import io
import json
import os
import re
import shutil
import threading
import time
import uuid

import lmdb
import numpy as np

from ..errors import DataError, DatasetNotFoundError
from ..proto import pb

ENV_VAR = "LAYERGRAPH_DB"
DEFAULT_ROOT = os.path.join("~", ".layergraph", "imagedb")
SPLITS = ("training", "testing")
CATALOG = "catalog.json"
MEAN_FILE = "mean.binaryproto"
FORMAT_VERSION = 1
KEY_DIGITS = 8  # Caffe's convert tools write "%08d" keys

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-]*$")


# ---------------------------------------------------------------- catalog --

def db_root(root=None):
    """The database root folder (absolute): ``root``, $LAYERGRAPH_DB or the default."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def check_name(name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise DataError(f"invalid dataset name {name!r}: use letters, digits and _ . + - "
                        "(not starting with '.' or '-')")
    return name


def _catalog_path(root, name):
    return os.path.join(root, name, CATALOG)


def list_datasets(root=None):
    """Sorted names of the complete datasets under the root."""
    root = db_root(root)
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root)
                  if not n.startswith(".") and os.path.isfile(_catalog_path(root, n)))


def _missing(what, root):
    names = list_datasets(root)
    listing = ", ".join(names) if names else "(none; create one with 'layergraph data mnist')"
    return DatasetNotFoundError(f"{what} not found in the image database {root}; "
                                f"datasets: {listing}")


def dataset_info(name, root=None):
    """The catalog of dataset ``name`` (a dict), plus its ``path``."""
    root = db_root(root)
    path = _catalog_path(root, name) if isinstance(name, str) and _NAME.match(name) else None
    if path is None or not os.path.isfile(path):
        raise _missing(f"dataset '{name}'", root)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable dataset catalog ({e})") from None
    info["path"] = os.path.dirname(path)
    return info


def dataset_exists(name, root=None):
    return isinstance(name, str) and bool(_NAME.match(name)) and \
        os.path.isfile(_catalog_path(db_root(root), name))


def read_mean(name, root=None):
    """The training-set image mean of dataset ``name``: float32 (C, H, W)."""
    info = dataset_info(name, root)
    return read_mean_file(os.path.join(info["path"], info.get("mean_file", MEAN_FILE)))


def read_mean_file(path):
    """A mean image from a Caffe .binaryproto BlobProto: float32 array of its shape
    with a leading 1 removed ((1,C,H,W) -> (C,H,W))."""
    from ..blob import proto_shape
    from ..prototxt import read_binary
    from ..errors import PrototxtError
    try:
        proto = read_binary(path, pb.BlobProto(), "mean BlobProto (.binaryproto)")
    except PrototxtError as e:
        raise DataError(str(e)) from None
    shape = proto_shape(proto)
    values = proto.double_data if len(proto.double_data) else proto.data
    if int(np.prod(shape, dtype=np.int64)) != len(values) or not len(values):
        raise DataError(f"{path}: mean BlobProto holds {len(values)} values for shape {shape}")
    arr = np.asarray(values, dtype=np.float32).reshape(shape)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def delete_dataset(name, root=None):
    """Remove dataset ``name`` (first out of the catalog, then from disk)."""
    root = db_root(root)
    dataset_info(name, root)  # raises DatasetNotFoundError with the listing
    trash = os.path.join(root, f".trash-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(os.path.join(root, name), trash)
    shutil.rmtree(trash, ignore_errors=True)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(root):
    """Remove temporary/trash folders left by processes that no longer run."""
    if not os.path.isdir(root):
        return
    for entry in os.listdir(root):
        m = re.match(r"^\.(tmp|trash)-.*-(\d+)-[0-9a-f]{8}$", entry)
        if m and not _pid_alive(int(m.group(2))):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


# ----------------------------------------------------------------- writer --

def encode_datum(image, label):
    """One Datum record: ``image`` uint8 (C, H, W)."""
    c, h, w = image.shape
    return pb.Datum(channels=c, height=h, width=w, data=image.tobytes(),
                    label=int(label)).SerializeToString()


class DatasetWriter:
    """Writes a new dataset atomically.

    >>> with DatasetWriter("TOY", root) as w:          # doctest: +SKIP
    ...     w.add("training", images, labels)         # uint8 (N, C, H, W), ints
    ...     w.add("testing", test_images, test_labels)
    ...     w.meta["origin"] = "made by hand"

    Nothing is visible under ``<root>/TOY`` until the ``with`` block ends
    without an exception.  ``add`` may be called several times per split
    (chunks are appended).
    """

    def __init__(self, name, root=None, overwrite=False):
        self.name = check_name(name)
        self.root = db_root(root)
        self.overwrite = overwrite
        self.final = os.path.join(self.root, name)
        self._check_free()
        os.makedirs(self.root, exist_ok=True)
        _remove_stale(self.root)
        self.tmp = os.path.join(self.root, f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.tmp)
        self.shape = None
        self.meta = {}
        self.label_names = None
        self._envs = {}
        self._written = {s: 0 for s in SPLITS}
        self._bytes = {s: 0 for s in SPLITS}
        self._counts = {s: {} for s in SPLITS}
        self._mean_sum = None
        self._done = False

    def _check_free(self):
        if dataset_exists(self.name, self.root) and not self.overwrite:
            raise DataError(f"dataset '{self.name}' already exists in {self.root}; "
                            "use --overwrite (overwrite=True) to replace it")
        if os.path.exists(self.final) and not os.path.isfile(_catalog_path(self.root, self.name)):
            raise DataError(f"{self.final} exists and is not a dataset; remove it first")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def _env(self, split, extra_bytes):
        env = self._envs.get(split)
        need = 2 * (self._bytes[split] + extra_bytes) + (32 << 20)
        if env is None:
            env = lmdb.open(os.path.join(self.tmp, split), map_size=need, subdir=True,
                            sync=False, metasync=False, meminit=False, map_async=True)
            self._envs[split] = env
        elif env.info()["map_size"] < need:
            env.set_mapsize(need)
        return env

    def add(self, split, images, labels):
        """Append ``images`` (uint8 (N, C, H, W) or (N, H, W)) with ``labels``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(f"dataset '{self.name}': images must be uint8 (N, C, H, W), "
                            f"got {images.dtype} {images.shape}")
        labels = np.asarray(labels).astype(np.int64).ravel()
        if len(labels) != len(images):
            raise DataError(f"dataset '{self.name}': {len(images)} images but {len(labels)} labels")
        if self.shape is None:
            self.shape = tuple(int(d) for d in images.shape[1:])
        elif tuple(images.shape[1:]) != self.shape:
            raise DataError(f"dataset '{self.name}': image shape {tuple(images.shape[1:])} "
                            f"differs from {self.shape}")
        if not len(images):
            return
        start = self._written[split]
        if start + len(images) > 10 ** KEY_DIGITS:
            raise DataError(f"dataset '{self.name}': more than {10 ** KEY_DIGITS} images")
        env = self._env(split, images.nbytes + 64 * len(images))
        items = [(b"%08d" % (start + i), encode_datum(images[i], labels[i]))
                 for i in range(len(images))]
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(items, append=True)
        self._written[split] += len(images)
        self._bytes[split] += images.nbytes + 64 * len(images)
        values, counts = np.unique(labels, return_counts=True)
        table = self._counts[split]
        for v, c in zip(values.tolist(), counts.tolist()):
            table[v] = table.get(v, 0) + c
        if split == "training":
            s = images.sum(axis=0, dtype=np.float64)
            self._mean_sum = s if self._mean_sum is None else self._mean_sum + s

    def commit(self):
        if self._done:
            return
        try:
            if not self._written["training"]:
                raise DataError(f"dataset '{self.name}': the training split is empty")
            for split in SPLITS:  # an empty split still gets its (empty) LMDB
                self._env(split, 0)
            mean = (self._mean_sum / self._written["training"]).astype(np.float32)
            proto = pb.BlobProto()
            proto.shape.dim.extend((1,) + self.shape)
            proto.data.extend(mean.ravel().tolist())
            with open(os.path.join(self.tmp, MEAN_FILE), "wb") as f:
                f.write(proto.SerializeToString())
            c, h, w = self.shape
            catalog = {
                "format": FORMAT_VERSION,
                "name": self.name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "channels": c, "height": h, "width": w,
                "color_order": "RGB" if c == 3 else "GRAY" if c == 1 else "NONE",
                "mean_file": MEAN_FILE,
                "sources": {
                    split: {"name": f"{self.name}.{split}", "path": split,
                            "count": self._written[split],
                            "label_counts": {str(k): v for k, v in
                                             sorted(self._counts[split].items())}}
                    for split in SPLITS},
            }
            if self.label_names:
                catalog["label_names"] = {str(k): str(v) for k, v in
                                          sorted(self.label_names.items())}
            catalog.update(self.meta)
            with open(os.path.join(self.tmp, CATALOG), "w", encoding="utf-8") as f:
                json.dump(catalog, f, indent=1)
                f.write("\n")
            for env in self._envs.values():
                env.sync(True)
                env.close()
            self._envs = {}
            self._check_free()
            trash = None
            if os.path.exists(self.final):
                trash = os.path.join(self.root,
                                     f".trash-{self.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                os.rename(self.final, trash)
            os.rename(self.tmp, self.final)
            self._done = True
            if trash:
                shutil.rmtree(trash, ignore_errors=True)
        except BaseException:
            self.abort()
            raise

    def abort(self):
        for env in self._envs.values():
            try:
                env.close()
            except lmdb.Error:  # pragma: no cover
                pass
        self._envs = {}
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True


# ---------------------------------------------------------------- sources --

def split_source_name(source):
    """``"MNIST.30.training"`` -> ``("MNIST.30", "training")``; None if not a source name."""
    if not isinstance(source, str):
        return None
    dataset, dot, split = source.rpartition(".")
    if dot and dataset and split in SPLITS:
        return dataset, split
    return None


def _is_lmdb_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "data.mdb"))


def _is_leveldb_dir(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "CURRENT")) and \
        any(n.startswith("MANIFEST-") for n in os.listdir(path))


def leveldb_error(source):
    return DataError(f"data source '{source}': backend LEVELDB is not supported; convert the "
                     "database to LMDB (Caffe: convert_imageset/convert_mnist_data "
                     "--backend=lmdb) or create a dataset with 'layergraph data' and use "
                     "backend IMAGEDB")


def open_source(source, backend=None, root=None):
    """Open a data source for reading.

    ``backend``: "IMAGEDB" (a ``<DATASET>.training``/``.testing`` name),
    "LMDB" (an LMDB folder path; a source name is accepted too), "LEVELDB"
    (refused), or None (unset: whichever of the two the source is).
    """
    root = db_root(root)
    if backend == "LEVELDB":
        raise leveldb_error(source)
    path = os.path.expanduser(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else ""
    if path and os.path.isfile(path) and os.path.basename(path) == "data.mdb":
        path = os.path.dirname(path) or "."
    if path and _is_lmdb_dir(path):
        parent = os.path.dirname(os.path.abspath(path))
        split = os.path.basename(os.path.abspath(path))
        catalog = None
        if split in SPLITS and os.path.isfile(os.path.join(parent, CATALOG)):
            catalog = dataset_info(os.path.basename(parent), os.path.dirname(parent))
        return Source(path, str(source), catalog=catalog)
    if path and backend is None and _is_leveldb_dir(path):
        raise leveldb_error(source)
    parts = split_source_name(source)
    if parts and dataset_exists(parts[0], root):
        info = dataset_info(parts[0], root)
        return Source(os.path.join(info["path"], info["sources"][parts[1]]["path"]),
                      source, catalog=info)
    if parts:
        raise _missing(f"data source '{source}' (dataset '{parts[0]}')", root)
    if backend == "IMAGEDB":
        raise _missing(f"data source '{source}' (expected '<DATASET>.training' or "
                       "'<DATASET>.testing')", root)
    raise _missing(f"data source '{source}' (neither an LMDB folder nor a dataset source name)",
                   root)


def decode_image(data, what):
    """Decode PNG/JPEG bytes to uint8 (C, H, W); colour images in BGR order, as
    Caffe's OpenCV decoding gives them."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            im = im.convert("L" if gray else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as e:  # Pillow raises many types for bad data
        raise DataError(f"{what}: cannot decode the encoded image ({type(e).__name__}: "
                        f"{' '.join(str(e).split())})") from None
    if arr.ndim == 2:
        return arr[None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[::-1])


# LMDB refuses to open the same files twice in one process: readers share one
# read-only Environment per data file, reference-counted.
_ENVS = {}
_ENVS_LOCK = threading.Lock()


def _acquire_env(path, name):
    st = os.stat(os.path.join(path, "data.mdb"))
    key = (st.st_dev, st.st_ino)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            try:
                env = lmdb.open(path, readonly=True, lock=False, subdir=True)
            except lmdb.Error as e:
                raise DataError(f"data source '{name}': cannot open LMDB {path} ({e})") from None
            entry = _ENVS[key] = [env, 0]
        entry[1] += 1
        return key, entry[0]


def _release_env(key):
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _ENVS[key]
            entry[0].close()


class Source:
    """A readable source: ``count`` records of shape ``shape`` (C, H, W).

    ``read(indices)`` returns ``(images, labels)`` for record positions in key
    order; ``read_all()`` the whole source.  Each call opens its own read
    transaction, so a source may be read from any one thread at a time.
    """

    def __init__(self, path, name, catalog=None):
        self.path = path
        self.name = name
        self.catalog = catalog
        self.backend = "IMAGEDB" if catalog is not None else "LMDB"
        self._env_key, self.env = _acquire_env(path, name)
        try:
            with self.env.begin() as txn:
                self.keys = list(txn.cursor().iternext(keys=True, values=False))
                if not self.keys:
                    raise DataError(f"data source '{name}' ({path}) is empty")
                first = self._decode(txn.get(self.keys[0]), self.keys[0], check=False)[0]
        except BaseException:
            self.close()
            raise
        self.shape = tuple(first.shape)
        self.dtype = first.dtype
        self.count = len(self.keys)
        # stored channel order of colour images: ours RGB, Caffe's tools BGR
        self.color_order = "RGB" if catalog is not None else "BGR"
        self._labels = None

    def _decode(self, raw, key, check=True):
        try:
            d = pb.Datum.FromString(raw)
        except Exception:
            raise DataError(f"data source '{self.name}': record {key!r} is not a Datum") from None
        if d.encoded:
            img = decode_image(d.data, f"data source '{self.name}' record {key!r}")
        elif len(d.data):
            n = d.channels * d.height * d.width
            if len(d.data) != n or n == 0:
                raise DataError(f"data source '{self.name}': record {key!r} holds {len(d.data)} "
                                f"bytes for {d.channels}x{d.height}x{d.width}")
            img = np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)
        elif len(d.float_data):
            img = np.asarray(d.float_data, np.float32).reshape(d.channels, d.height, d.width)
        else:
            raise DataError(f"data source '{self.name}': record {key!r} has no image data")
        if check and img.shape != self.shape:
            raise DataError(f"data source '{self.name}': record {key!r} has shape {img.shape}, "
                            f"expected {self.shape} (all images of a source must be one size)")
        return img, d.label

    def _assemble(self, records):
        """Images and labels from (key, raw Datum) pairs.  Raw uint8 Datums of the
        source's size take a fast path (one join of the pixel bytes)."""
        c, h, w = self.shape
        nbytes = c * h * w
        fast = self.dtype == np.uint8
        parse = pb.Datum.FromString
        pixels, labels = [], []
        for key, raw in records:
            d = parse(raw) if fast else None
            if fast and not d.encoded and len(d.data) == nbytes and d.height == h:
                pixels.append(d.data)
                labels.append(d.label)
            else:
                img, label = self._decode(raw, bytes(key))
                pixels.append(img.astype(self.dtype, copy=False).tobytes())
                labels.append(label)
        out = np.frombuffer(b"".join(pixels), self.dtype).reshape((len(labels),) + self.shape)
        return out, np.asarray(labels, np.int64).reshape(len(labels))

    def read(self, indices):
        """Images (n, C, H, W) (a read-only array) and int64 labels of the records
        at ``indices``."""
        keys = self.keys
        with self.env.begin(buffers=True) as txn:
            get = txn.get
            return self._assemble(
                (keys[i], get(keys[i])) for i in np.asarray(indices, np.int64).ravel().tolist())

    def read_all(self):
        """All images (count, C, H, W) and labels, in key order."""
        with self.env.begin(buffers=True) as txn:
            out, labels = self._assemble(txn.cursor())
        if self._labels is None:
            self._labels = labels.copy()
        return out, labels

    def labels(self):
        """The labels of all records (int64, key order); read once, then cached."""
        if self._labels is None:
            labels = np.empty(self.count, np.int64)
            parse = pb.Datum.FromString
            with self.env.begin(buffers=True) as txn:
                for j, (key, raw) in enumerate(txn.cursor()):
                    labels[j] = parse(raw).label
            self._labels = labels
        return self._labels

    def mean(self):
        """The dataset's training mean (float32 (C, H, W)); None outside the image database."""
        if self.catalog is None:
            return None
        return read_mean_file(os.path.join(self.catalog["path"],
                                           self.catalog.get("mean_file", MEAN_FILE)))

    def close(self):
        """Release the LMDB environment (idempotent)."""
        if getattr(self, "env", None) is not None:
            self.env = None
            _release_env(self._env_key)

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self):
        return f"<Source '{self.name}' {self.backend} {self.count}x{self.shape}>"
