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
creation removes.  A full disk is reported as such, naming the dataset's path.
Replacing a dataset (overwrite) happens under an flock of the root folder and,
on Linux, as one atomic exchange of the two folders, so concurrent creators all
succeed (the last one wins) and a reader never finds the name missing.

Before LMDB maps a data file, its two meta pages are read and the file size is
checked against the last page they record: a truncated or empty file is a
one-line DataError instead of a SIGBUS.  A record that does not parse as a
Datum names its source and key.

A source is opened with :func:`open_source`: a dataset source name (backend
IMAGEDB) or the path of an LMDB folder written by BVLC Caffe's convert tools
(backend LMDB: arbitrary keys, raw or PNG/JPEG-encoded Datums).  LevelDB is not
supported (convert it to LMDB).
"""
import contextlib
import errno
import io
import json
import os
import re
import shutil
import struct
import sys
import threading
import time
import uuid

import lmdb
import numpy as np

from google.protobuf.message import DecodeError

from ..errors import DataError, DatasetNotFoundError
from ..proto import pb

try:  # POSIX: the replace step of a dataset is serialized with flock on the root
    import fcntl
except ImportError:  # pragma: no cover - Windows: the retry loop alone
    fcntl = None

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


def _check_root(root):
    """A root that exists must be a readable folder (``--db`` naming a file is a
    mistake, not an empty database)."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"image database {root} is not a folder (--db / ${ENV_VAR} must name "
                        "a folder; it is created when missing)")


def list_datasets(root=None):
    """Sorted names of the complete datasets under the root (a dataset whose
    catalog is corrupt is listed too; :func:`dataset_info` says what is wrong)."""
    root = db_root(root)
    _check_root(root)
    if not os.path.isdir(root):
        return []
    try:
        entries = os.listdir(root)
    except OSError as e:
        raise DataError(f"image database {root}: cannot list ({e.strerror or e})") from None
    return sorted(n for n in entries
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
        raise DataError(f"{path}: unreadable dataset catalog "
                        f"({getattr(e, 'strerror', None) or e})") from None
    _check_catalog(info, path)
    info["path"] = os.path.dirname(path)
    return info


def _check_catalog(info, path):
    """The fields every reader relies on, so that a damaged catalog is one clear
    error here instead of a KeyError somewhere else."""
    def bad(what):
        return DataError(f"{path}: corrupt dataset catalog ({what}); recreate the dataset")

    if not isinstance(info, dict):
        raise bad(f"a JSON object expected, found {type(info).__name__}")
    if not isinstance(info.get("name"), str):
        raise bad("'name' is missing")
    for key in ("channels", "height", "width"):
        value = info.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(f"'{key}' is {value!r}, not a positive integer")
    sources = info.get("sources")
    if not isinstance(sources, dict):
        raise bad("'sources' is missing")
    for split in SPLITS:
        src = sources.get(split)
        if not isinstance(src, dict):
            raise bad(f"'sources.{split}' is missing")
        if not isinstance(src.get("name"), str) or not isinstance(src.get("count"), int) or \
                not isinstance(src.get("label_counts"), dict):
            raise bad(f"'sources.{split}' lacks name, count or label_counts")
        sub = src.get("path")
        if not isinstance(sub, str) or sub in ("", ".", "..") or "/" in sub or os.sep in sub:
            raise bad(f"'sources.{split}.path' is {sub!r}, not a folder name")


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
    """Remove dataset ``name`` (first out of the catalog, then from disk).  A
    dataset with a corrupt catalog can be deleted too."""
    root = db_root(root)
    if not dataset_exists(name, root):
        dataset_info(name, root)  # raises DatasetNotFoundError with the listing
    trash = _trash_path(root, name)
    with _root_lock(root):
        try:
            os.rename(os.path.join(root, name), trash)
        except OSError as e:
            raise DataError(f"cannot delete dataset '{name}' in {root} "
                            f"({e.strerror or e})") from None
    shutil.rmtree(trash, ignore_errors=True)


def _trash_path(root, name):
    return os.path.join(root, f".trash-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2 = None


def _exchange(a, b):
    """Atomically exchange the paths ``a`` and ``b`` (Linux renameat2 with
    RENAME_EXCHANGE, through the C library); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                func = libc.renameat2
                func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p, ctypes.c_uint]
                func.restype = ctypes.c_int
                _renameat2 = func
            except (OSError, AttributeError):  # an old C library
                pass
    if not _renameat2:
        return False
    at_fdcwd = -100
    return _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                      _RENAME_EXCHANGE) == 0


LOCK_TIMEOUT = 60.0  # seconds to wait for another process's replace step


@contextlib.contextmanager
def _root_lock(root, timeout=LOCK_TIMEOUT):
    """Exclusive lock on the root folder itself (flock on its descriptor: no lock
    file to leave behind; the kernel releases it when a holder dies).  Held only
    for the rename steps, so waiting for it is short."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError as e:
        raise DataError(f"image database {root}: cannot open ({e.strerror or e})") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    break  # a file system without flock: rely on the retry loop
                if time.monotonic() > deadline:
                    raise DataError(f"image database {root}: another process has been "
                                    f"replacing a dataset for over {timeout:.0f} s; try "
                                    "again") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


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


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_mean(mean):
    """A float32 (C, H, W) mean as a serialized BlobProto of shape (1, C, H, W).
    The packed ``data`` field (number 5, wire type 2) is written as raw
    little-endian floats: the same bytes protobuf writes, without a Python
    float per pixel (a 4096x4096x3 mean would be 50 million of them)."""
    proto = pb.BlobProto()
    proto.shape.dim.extend((1,) + tuple(mean.shape))
    values = np.ascontiguousarray(mean, "<f4").tobytes()
    # field order as protobuf writes it: data (5) before shape (7)
    return b"\x2a" + _varint(len(values)) + values + proto.SerializeToString()


def free_bytes(path):
    """Bytes free for this process on the file system of ``path`` (its nearest
    existing folder); None where unknown."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs
        return None
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def available_memory():
    """Bytes of memory available to a new allocation (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def format_bytes(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_space(root, nbytes, what):
    """Refuse up front when the estimated ``nbytes`` of a new dataset exceed the
    free disk space of the database ``root`` (``what`` names the dataset)."""
    free = free_bytes(root)
    if free is not None and nbytes > free:
        raise DataError(f"{what} needs about {format_bytes(nbytes)} but only "
                        f"{format_bytes(free)} are free on the file system of {root}")


def record_bytes(image_bytes, page=4096):
    """Estimated bytes one Datum of ``image_bytes`` pixels takes in LMDB: small
    records share leaf pages, large ones take whole overflow pages."""
    raw = image_bytes + 64
    if raw > page // 2:
        return -(-(raw + 16) // page) * page
    return raw * 5 // 4


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _is_no_space(exc, path):
    """Did a write fail because the disk is full?  py-lmdb raises a plain
    lmdb.Error carrying strerror text, and LMDB reports a short write as EIO, so
    a nearly full file system counts too."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return True
    text = str(exc)
    if any(os.strerror(code) in text for code in _NO_SPACE):
        return True
    free = free_bytes(path)
    return free is not None and free < (1 << 20) and \
        (isinstance(exc, lmdb.Error) or getattr(exc, "errno", None) == errno.EIO)


class DatasetWriter:
    """Writes a new dataset atomically.

    >>> with DatasetWriter("TOY", root) as w:          # doctest: +SKIP
    ...     w.add("training", images, labels)         # uint8 (N, C, H, W), ints
    ...     w.add("testing", test_images, test_labels)
    ...     w.meta["origin"] = "made by hand"

    Nothing is visible under ``<root>/TOY`` until the ``with`` block ends
    without an exception.  ``add`` may be called several times per split
    (chunks are appended).  A write that fails (disk full, I/O error) raises
    DataError naming the dataset's path, after the temporary folder is gone.
    """

    def __init__(self, name, root=None, overwrite=False):
        self.name = check_name(name)
        self.root = db_root(root)
        self.overwrite = overwrite
        self.final = os.path.join(self.root, name)
        _check_root(self.root)
        self._check_free()
        self._envs = {}
        self._done = False
        self.tmp = None
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise self._write_error(e, f"cannot create the image database folder {self.root}")
        _remove_stale(self.root)
        tmp = os.path.join(self.root, f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.makedirs(tmp)
        except OSError as e:
            raise self._write_error(e)
        self.tmp = tmp
        self.shape = None
        self.meta = {}
        self.label_names = None
        self.info = None  # the catalog (with its path) once committed
        self._written = {s: 0 for s in SPLITS}
        self._bytes = {s: 0 for s in SPLITS}
        self._counts = {s: {} for s in SPLITS}
        self._mean_sum = None

    def _check_free(self):
        if dataset_exists(self.name, self.root) and not self.overwrite:
            raise DataError(f"dataset '{self.name}' already exists in {self.root}; "
                            "use --overwrite (overwrite=True) to replace it")
        if os.path.lexists(self.final) and \
                not os.path.isfile(_catalog_path(self.root, self.name)):
            raise DataError(f"{self.final} exists and is not a dataset; remove it first")

    def _write_error(self, exc, what=None):
        """DataError for a failed write: disk full is said as such, with the path."""
        if _is_no_space(exc, self.root):
            return DataError(f"no space left on device writing {self.final} (dataset "
                             f"'{self.name}' not created; free some space and run the "
                             "command again)")
        detail = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        if isinstance(exc, lmdb.MapFullError):
            detail = "the LMDB map is full"
        return DataError(f"{what or 'cannot write ' + self.final} ({detail}); "
                         f"dataset '{self.name}' not created")

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
        items = [(b"%08d" % (start + i), encode_datum(images[i], labels[i]))
                 for i in range(len(images))]
        try:
            env = self._env(split, images.nbytes + 64 * len(images))
            with env.begin(write=True) as txn:
                txn.cursor().putmulti(items, append=True)
        except (lmdb.Error, OSError) as e:
            raise self._write_error(e) from None
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
            try:
                self._write_files()
            except (lmdb.Error, OSError) as e:
                raise self._write_error(e) from None
            self._replace()
            self._done = True
        except BaseException:
            self.abort()
            raise

    def _write_files(self):
        for split in SPLITS:  # an empty split still gets its (empty) LMDB
            self._env(split, 0)
        mean = (self._mean_sum / self._written["training"]).astype(np.float32)
        with open(os.path.join(self.tmp, MEAN_FILE), "wb") as f:
            f.write(encode_mean(mean))
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
        self.info = dict(catalog, path=self.final)
        for env in self._envs.values():
            env.sync(True)
            env.close()
        self._envs = {}

    def _replace(self, attempts=5):
        """Move the finished temporary folder into place, under the root lock.
        An existing dataset (overwrite) is swapped out atomically where the
        system can (renameat2 RENAME_EXCHANGE: a reader never finds the name
        missing), else renamed to a trash folder first.  Should another process
        slip a dataset in between (a file system without flock), the swap is
        retried.  On failure the previous dataset is put back."""
        moved, done = [], False
        try:
            with _root_lock(self.root):
                for attempt in range(attempts):
                    self._check_free()
                    if os.path.lexists(self.final):
                        if _exchange(self.tmp, self.final):
                            done = True  # self.tmp now holds the previous dataset
                            moved.append(self.tmp)
                            return
                        trash = _trash_path(self.root, self.name)
                        try:
                            os.rename(self.final, trash)
                            moved.append(trash)
                        except FileNotFoundError:  # removed meanwhile: nothing to move
                            pass
                        except OSError as e:
                            raise self._write_error(
                                e, f"cannot move the previous {self.final} aside") from None
                    try:
                        os.rename(self.tmp, self.final)
                        done = True
                        return
                    except OSError as e:
                        taken = e.errno in (errno.ENOTEMPTY, errno.EEXIST)
                        if taken and attempt < attempts - 1:
                            continue
                        if taken:
                            raise DataError(
                                f"cannot replace dataset '{self.name}' at {self.final}: "
                                "another process keeps writing it; run the command again "
                                "when it has finished") from None
                        raise self._write_error(e) from None
        finally:
            if not done and moved and not os.path.lexists(self.final):
                try:  # put the previous dataset back
                    os.rename(moved.pop(), self.final)
                except OSError:  # pragma: no cover
                    pass
            for path in moved:
                shutil.rmtree(path, ignore_errors=True)

    def abort(self):
        for env in self._envs.values():
            try:
                env.close()
            except lmdb.Error:  # pragma: no cover
                pass
        self._envs = {}
        if self.tmp:
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


# LMDB's file header (mdb.c, LMDB 0.9, 64-bit builds): pages 0 and 1 are meta
# pages.  Each starts with the page header (mp_pgno u64, mp_pad u16, mp_flags
# u16, mp_lower u16, mp_upper u16: 16 bytes) followed by MDB_meta: mm_magic u32,
# mm_version u32, mm_address ptr, mm_mapsize size_t, mm_dbs[2] (MDB_db: md_pad
# u32 -- mm_psize for the free DB --, md_flags u16, md_depth u16, three pgno_t
# page counts, md_entries size_t, md_root pgno_t: 48 bytes each), mm_last_pg
# pgno_t, mm_txnid u64.  The live meta is the one with the larger txnid; every
# page up to its mm_last_pg must lie inside the file, else reading the mapping
# past the end of the file kills the process with SIGBUS.
LMDB_MAGIC = 0xBEEFC0DE
LMDB_DATA_VERSION = 1
_META = struct.Struct("<QHH4xIIQQI")  # mp_pgno, mp_pad, mp_flags, (mp_lower, mp_upper),
#                                    # mm_magic, mm_version, mm_address, mm_mapsize, mm_psize
_META_TAIL = struct.Struct("<QQ")        # mm_last_pg, mm_txnid at offset 136
_META_TAIL_OFFSET = 16 + 4 + 4 + 8 + 8 + 2 * 48
P_META = 0x08


def lmdb_file_pages(data_file):
    """Check the header of an LMDB ``data.mdb`` against its size; returns
    (page size, pages in use).  Raises ValueError with the reason (empty, not
    LMDB, truncated)."""
    try:
        size = os.path.getsize(data_file)
        with open(data_file, "rb") as f:
            head = f.read(_META_TAIL_OFFSET + _META_TAIL.size)
            if size == 0:
                raise ValueError("is empty (0 bytes)")
            if len(head) < _META_TAIL_OFFSET + _META_TAIL.size:
                raise ValueError(f"is too short for an LMDB file ({size} bytes)")
            pgno, _, flags, magic, _, _, _, psize = _META.unpack_from(head)
            if magic != LMDB_MAGIC or pgno != 0 or not flags & P_META:
                raise ValueError("has no valid LMDB header (corrupt, or not an LMDB file)")
            if psize < 512 or psize > (1 << 16) or psize & (psize - 1):
                raise ValueError("has no valid LMDB header (corrupt, or not an LMDB file)")
            f.seek(psize)
            second = f.read(_META_TAIL_OFFSET + _META_TAIL.size)
    except OSError as e:
        raise ValueError(f"cannot be read ({e.strerror or e})") from None
    if size < 2 * psize:
        raise ValueError(f"is truncated: {size:,} bytes, shorter than its two {psize}-byte "
                         "header pages")
    metas = []
    for page_no, page in enumerate((head, second)):
        pgno, _, flags, magic, version, _, _, _ = _META.unpack_from(page)
        last_pg, txnid = _META_TAIL.unpack_from(page, _META_TAIL_OFFSET)
        if magic != LMDB_MAGIC or not flags & P_META or pgno != page_no:
            raise ValueError("has no valid LMDB header (corrupt, or not an LMDB file)")
        if version != LMDB_DATA_VERSION:
            raise ValueError(f"has LMDB format version {version}; this LMDB reads version "
                             f"{LMDB_DATA_VERSION}")
        metas.append((txnid, last_pg))
    live = metas[1] if metas[1][0] > metas[0][0] else metas[0]  # mdb_env_pick_meta
    pages = live[1] + 1
    if pages < 2 or pages * psize > (1 << 46):
        raise ValueError(f"has a corrupt LMDB header (last page number {live[1]})")
    if size < pages * psize:
        raise ValueError(f"is truncated: {size:,} bytes, but its header records {pages:,} "
                         f"pages of {psize} bytes ({pages * psize:,} bytes)")
    return psize, pages


def _acquire_env(path, name):
    data_file = os.path.join(path, "data.mdb")
    try:
        st = os.stat(data_file)
    except OSError as e:
        raise DataError(f"data source '{name}': {data_file} is missing "
                        f"({e.strerror or e}); the database is damaged") from None
    if not os.path.isfile(data_file):
        raise DataError(f"data source '{name}': {data_file} is not a regular file")
    try:
        lmdb_file_pages(data_file)
    except ValueError as e:
        raise DataError(f"data source '{name}': LMDB file {data_file} {e}; the database is "
                        "damaged (recreate it)") from None
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
            with self._reading(), self.env.begin() as txn:
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

    @contextlib.contextmanager
    def _reading(self):
        """LMDB's own errors (a damaged page, a bad page number) as DataError."""
        try:
            yield
        except lmdb.Error as e:
            raise DataError(f"data source '{self.name}': the LMDB file "
                            f"{os.path.join(self.path, 'data.mdb')} is corrupt "
                            f"({' '.join(str(e).split())}); the database is damaged "
                            "(recreate it)") from None

    def _record(self, key):
        """How a message names record ``key``: its key text and the data file."""
        key = bytes(key).decode("utf-8", "backslashreplace")
        return f"record '{key}' of {os.path.join(self.path, 'data.mdb')}"

    def _parse(self, raw, key):
        """A Datum from stored bytes; a corrupt record names the source and key."""
        try:
            return pb.Datum.FromString(raw)
        except (DecodeError, TypeError, ValueError, RuntimeError):
            raise DataError(f"data source '{self.name}': {self._record(key)} is corrupt (not a "
                            "valid Datum); the database is damaged (recreate it)") from None

    def _decode(self, raw, key, check=True):
        if raw is None:
            raise DataError(f"data source '{self.name}': {self._record(key)} is missing")
        d = self._parse(raw, key)
        if d.encoded:
            img = decode_image(d.data, f"data source '{self.name}' {self._record(key)}")
        elif len(d.data):
            n = d.channels * d.height * d.width
            if len(d.data) != n or n <= 0 or min(d.channels, d.height, d.width) <= 0:
                raise DataError(f"data source '{self.name}': {self._record(key)} holds "
                                f"{len(d.data)} bytes for {d.channels}x{d.height}x{d.width} "
                                "(corrupt)")
            img = np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)
        elif len(d.float_data):
            n = d.channels * d.height * d.width
            if len(d.float_data) != n or min(d.channels, d.height, d.width) <= 0:
                raise DataError(f"data source '{self.name}': {self._record(key)} holds "
                                f"{len(d.float_data)} floats for "
                                f"{d.channels}x{d.height}x{d.width} (corrupt)")
            img = np.asarray(d.float_data, np.float32).reshape(d.channels, d.height, d.width)
        else:
            raise DataError(f"data source '{self.name}': {self._record(key)} has no image data")
        if check and img.shape != self.shape:
            raise DataError(f"data source '{self.name}': {self._record(key)} has shape "
                            f"{img.shape}, expected {self.shape} (all images of a source must "
                            "be one size)")
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
            try:
                d = parse(raw) if fast else None
            except (DecodeError, TypeError, ValueError, RuntimeError):
                d = self._parse(raw, key)  # raises, naming the source and key
            if fast and not d.encoded and len(d.data) == nbytes and d.height == h \
                    and d.width == w:
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
        with self._reading(), self.env.begin(buffers=True) as txn:
            get = txn.get
            return self._assemble(
                (keys[i], get(keys[i])) for i in np.asarray(indices, np.int64).ravel().tolist())

    def read_all(self):
        """All images (count, C, H, W) and labels, in key order."""
        with self._reading(), self.env.begin(buffers=True) as txn:
            out, labels = self._assemble(txn.cursor())
        if self._labels is None:
            self._labels = labels.copy()
        return out, labels

    def labels(self):
        """The labels of all records (int64, key order); read once, then cached."""
        if self._labels is None:
            labels = np.empty(self.count, np.int64)
            parse = pb.Datum.FromString
            with self._reading(), self.env.begin(buffers=True) as txn:
                j = -1
                for j, (key, raw) in enumerate(txn.cursor()):
                    if j >= self.count:
                        break
                    try:
                        labels[j] = parse(raw).label
                    except (DecodeError, TypeError, ValueError, RuntimeError):
                        self._parse(raw, key)  # raises, naming the source and key
                if j + 1 != self.count:
                    raise DataError(f"data source '{self.name}': the LMDB file "
                                    f"{os.path.join(self.path, 'data.mdb')} changed while "
                                    "it was read")
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
