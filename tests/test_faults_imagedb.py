"""Faults of the image database, tried as a user would: each runs the
``layergraph`` CLI in a subprocess and expects one line on stderr
(``layergraph: error: ...``, exit status 2; a warning and exit 0 for ``data
list``), no traceback, and nothing left behind: no temporary folder, and a
previous dataset intact.

Disk-full tests on a real file system mount a small tmpfs and are skipped
where mounting is not permitted (not root); the same paths are also driven by
patching the LMDB write to fail, which runs everywhere."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from layergraph import imagedb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATUM_HEAD = bytes([8, 1, 16, 28, 24, 28, 0x22, 0x90, 0x06])  # 1x28x28, 784 data bytes

NET = """
name: "d"
layer { name: "data" type: "Data" top: "x" top: "label"
        data_param { source: "MNIST.training" backend: IMAGEDB batch_size: 8 }
        transform_param { scale: 0.00390625 } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""
SOLVER = """
net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 1
snapshot_after_train: false
snapshot_prefix: "snap/d"
solver_mode: CPU
random_seed: 1
"""


# ----------------------------------------------------------------- helpers --

def _env():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LAYERGRAPH_DB", None)
    return env


def cli(cwd, *argv, patch=None, wait=True):
    """Run ``layergraph ARGV`` (or, with ``patch``, the same CLI after the given
    Python lines ran in the process: a simulated fault)."""
    if patch is None:
        cmd = [sys.executable, "-m", "layergraph", *map(str, argv)]
    else:
        code = textwrap.dedent(patch) + "\nfrom layergraph.cli import main\nsys.exit(main())\n"
        cmd = [sys.executable, "-c", "import sys\n" + code, *map(str, argv)]
    proc = subprocess.Popen(cmd, cwd=str(cwd), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=60)
    proc.stdout_text, proc.stderr_text = out, err
    return proc


def finish(proc):
    out, err = proc.communicate(timeout=60)
    proc.stdout_text, proc.stderr_text = out, err
    return proc


def assert_one_error(proc, *fragments):
    err = proc.stderr_text
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("layergraph: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def hidden(root):
    """Temporary/trash folders (or anything hidden) left in a database root."""
    return sorted(n for n in os.listdir(root) if n.startswith(".")) if os.path.isdir(root) else []


def tree_bytes(path):
    """Every file under ``path`` with its content, to compare before and after."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            if name == "lock.mdb":
                continue
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


@pytest.fixture(scope="module")
def mnist_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    imagedb.create_mnist(None, name="MNIST", root=str(root), download=False)
    return root


@pytest.fixture
def db(tmp_path, mnist_template):
    """A database root holding MNIST (from the shipped sample)."""
    root = tmp_path / "db"
    shutil.copytree(mnist_template, root)
    return root


def _train_project(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path / "solver.prototxt"


def run_reader(command, tmp_path, db):
    """A command that reads MNIST.training: train, data show or data copy."""
    if command == "train":
        return cli(tmp_path, "train", "--solver", _train_project(tmp_path), "--db", db,
                   "--quiet")
    if command == "show":
        return cli(tmp_path, "data", "show", "MNIST", "--out", tmp_path / "m.png", "--db", db)
    return cli(tmp_path, "data", "copy", "--source", "MNIST", "--output", "COPY", "--db", db)


def assert_nothing_left(db, before=None):
    assert hidden(db) == []
    assert not os.path.exists(os.path.join(db, "COPY"))
    if before is not None:
        assert tree_bytes(os.path.join(db, "MNIST")) == before


READERS = ["train", "show", "copy"]


# ------------------------------------------------ 1. a corrupt Datum record --

@pytest.mark.parametrize("command", READERS)
def test_corrupt_record_names_source_and_key(tmp_path, db, command):
    data = db / "MNIST" / "training" / "data.mdb"
    raw = bytearray(data.read_bytes())
    at = raw.find(DATUM_HEAD, 300 * 4096)
    raw[at:at + 6] = b"\xff" * 6  # the record's protobuf header: wire format corrupt
    data.write_bytes(bytes(raw))
    before = tree_bytes(db / "MNIST")
    proc = run_reader(command, tmp_path, db)
    line = assert_one_error(proc, "data source 'MNIST.training'", "is corrupt", str(data))
    assert "record '0000" in line  # the key, as text
    assert_nothing_left(db, before)


# ------------------------------------- 2. a truncated or empty data.mdb file --

@pytest.mark.parametrize("command", READERS)
def test_truncated_data_file_is_an_error_not_sigbus(tmp_path, db, command):
    data = db / "MNIST" / "training" / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    proc = run_reader(command, tmp_path, db)
    assert_one_error(proc, "MNIST.training", str(data), "is truncated", "pages of 4096 bytes")
    assert_nothing_left(db)


@pytest.mark.parametrize("size, fragment", [(0, "is empty (0 bytes)"),
                                            (100, "too short for an LMDB file"),
                                            (6000, "shorter than its two 4096-byte header")])
def test_empty_or_headless_data_file(tmp_path, db, size, fragment):
    data = db / "MNIST" / "training" / "data.mdb"
    os.truncate(data, size)
    proc = run_reader("show", tmp_path, db)
    assert_one_error(proc, "MNIST.training", str(data), fragment)
    assert "Bad file descriptor" not in proc.stderr_text
    assert_nothing_left(db)


def test_lmdb_header_check_agrees_with_lmdb(tmp_path):
    """The meta-page reading (mm_psize, mm_last_pg, mm_txnid) against py-lmdb's
    own numbers, for files written in several transactions and with writemap."""
    import lmdb
    from layergraph.imagedb.store import lmdb_file_pages
    for writemap in (False, True):
        path = tmp_path / f"env{writemap}"
        for round_ in range(3):
            env = lmdb.open(str(path), map_size=1 << 24, writemap=writemap)
            with env.begin(write=True) as txn:
                for i in range(40):
                    txn.put(b"%d-%d" % (round_, i), bytes(1500 + 100 * round_))
            info, psize = env.info(), env.stat()["psize"]
            env.close()
            assert lmdb_file_pages(str(path / "data.mdb")) == (psize, info["last_pgno"] + 1)


# ------------------------------------------------------------- 3. disk full --

# py-lmdb reports a full disk as a plain lmdb.Error carrying the C library's
# text; the patch makes every LMDB write transaction of the writer fail so.
FAIL_WRITES = """
import errno, os, lmdb
import layergraph.imagedb.store as store

class _Failing:
    def __init__(self, env):
        self._env = env
    def __getattr__(self, name):
        return getattr(self._env, name)
    def begin(self, write=False, **kw):
        if write:
            raise {exc}
        return self._env.begin(write=write, **kw)

class _Lmdb:
    def __getattr__(self, name):
        return getattr(lmdb, name)
    def open(self, *a, **kw):
        return _Failing(lmdb.open(*a, **kw))

store.lmdb = _Lmdb()
"""
FAILURES = {
    "lmdb-enospc": ('lmdb.Error("mdb_txn_commit: " + os.strerror(errno.ENOSPC))',
                    "no space left on device writing"),
    "oserror-enospc": ("OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))",
                       "no space left on device writing"),
    "map-full": ('lmdb.MapFullError("mdb_put: MDB_MAP_FULL")', "the LMDB map is full"),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("command", ["mnist", "copy"])
def test_write_failure_is_one_line_and_atomic(tmp_path, db, command, failure):
    exc, fragment = FAILURES[failure]
    patch = FAIL_WRITES.format(exc=exc)
    before = tree_bytes(db / "MNIST")
    if command == "mnist":  # an overwrite that fails keeps the previous dataset
        proc = cli(tmp_path, "data", "mnist", "--no-download", "--overwrite", "--db", db,
                   patch=patch)
        target = db / "MNIST"
    else:
        proc = cli(tmp_path, "data", "copy", "--source", "MNIST", "--output", "COPY",
                   "--db", db, patch=patch)
        target = db / "COPY"
    assert_one_error(proc, fragment, str(target))
    assert sorted(os.listdir(db)) == ["MNIST"]
    assert_nothing_left(db, before)


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def _image_folder(root, per_label=5, size=(6, 5)):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
                root / label / f"{i}.png")
    return root


def test_full_disk_refused_before_writing(tmp_path, small_fs):
    root = small_fs / "db"
    proc = cli(tmp_path, "data", "mnist", "--no-download", "--db", root)
    assert_one_error(proc, "dataset 'MNIST'", "needs about", "MiB", str(root))
    assert hidden(root) == [] and not (root / "MNIST").exists()


def test_full_disk_during_the_write(tmp_path, small_fs):
    """The estimate passes (patched away) but the disk fills: LMDB's short
    write is said as a full disk, and the previous dataset stays."""
    root = small_fs / "db"
    imgs = _image_folder(tmp_path / "imgs")
    proc = cli(tmp_path, "data", "images", "--dir", imgs, "--name", "P", "--db", root)
    assert proc.returncode == 0, proc.stderr_text
    before = tree_bytes(root / "P")
    patch = "import layergraph.imagedb.creators as c\nc.check_space = lambda *a: None\n"
    proc = cli(tmp_path, "data", "mnist", "--no-download", "--name", "P", "--overwrite",
               "--db", root, patch=patch)
    assert_one_error(proc, "no space left on device writing", str(root / "P"))
    assert sorted(os.listdir(root)) == ["P"]
    assert tree_bytes(root / "P") == before


# ------------------------------------------------ 4. image size and budget --

@pytest.mark.parametrize("size, fragment", [
    ("100000x100000", "at most 4096x4096"),
    ("4097x28", "at most 4096x4096"),
    ("0x5", "at least 1"),
])
def test_images_size_is_bounded(tmp_path, size, fragment):
    imgs = _image_folder(tmp_path / "imgs")
    root = tmp_path / "db"
    proc = cli(tmp_path, "data", "images", "--dir", imgs, "--name", "P", "--size", size,
               "--db", root)
    assert_one_error(proc, f"size {size}", fragment)
    assert not root.exists() or os.listdir(root) == []


def test_images_size_syntax_is_one_line(tmp_path):
    proc = cli(tmp_path, "data", "images", "--dir", tmp_path, "--name", "P", "--size", "28",
               "--db", tmp_path / "db")
    lines = [line for line in proc.stderr_text.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr_text
    assert "invalid size '28'" in lines[0]


def test_images_first_image_too_large(tmp_path):
    imgs = _image_folder(tmp_path / "imgs", per_label=2, size=(10, 4100))
    proc = cli(tmp_path, "data", "images", "--dir", imgs, "--name", "P",
               "--db", tmp_path / "db")
    assert_one_error(proc, "10x4100", "at most 4096x4096", "--size")


def test_images_memory_budget(tmp_path):
    imgs = _image_folder(tmp_path / "imgs")
    patch = "import layergraph.imagedb.creators as c\nc.available_memory = lambda: 1 << 20\n"
    proc = cli(tmp_path, "data", "images", "--dir", imgs, "--name", "P", "--size",
               "4096x4096", "--channels", "3", "--db", tmp_path / "db", patch=patch)
    assert_one_error(proc, "3x4096x4096", "of memory", "1.0 MiB are available")
    assert hidden(tmp_path / "db") == []


def test_images_disk_budget(tmp_path):
    imgs = _image_folder(tmp_path / "imgs")
    patch = "import layergraph.imagedb.store as s\ns.free_bytes = lambda path: 5 << 20\n"
    proc = cli(tmp_path, "data", "images", "--dir", imgs, "--name", "P", "--size",
               "4096x4096", "--channels", "3", "--db", tmp_path / "db", patch=patch)
    assert_one_error(proc, "dataset 'P' (10 images of 3x4096x4096) needs about",
                     "5.0 MiB are free")


# ------------------------------------- 5. catalogs and a --db that is a file --

@pytest.mark.parametrize("catalog", ["{bad json", "[]", json.dumps({"name": "MNIST"}),
                                     json.dumps({"name": "MNIST", "channels": 1,
                                                 "height": 28, "width": 28,
                                                 "sources": {"training": {}}})])
def test_corrupt_catalog_does_not_hide_healthy_datasets(tmp_path, db, catalog):
    shutil.copytree(db / "MNIST", db / "GOOD")
    (db / "MNIST" / "catalog.json").write_text(catalog)
    proc = cli(tmp_path, "data", "list", "--db", db)
    assert proc.returncode == 0, proc.stderr_text
    assert "GOOD" in proc.stdout_text and "MNIST" not in proc.stdout_text
    lines = [line for line in proc.stderr_text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr_text
    assert lines[0].startswith("layergraph: warning: ") and "'MNIST'" in lines[0]
    assert str(db / "MNIST" / "catalog.json") in lines[0]
    # using the damaged dataset is an error naming its catalog
    proc = run_reader("show", tmp_path, db)
    assert_one_error(proc, str(db / "MNIST" / "catalog.json"))


@pytest.mark.parametrize("argv", [["data", "list"], ["data", "mnist", "--no-download"],
                                  ["data", "show", "MNIST"], ["data", "delete", "MNIST"]])
def test_db_that_is_a_file(tmp_path, argv):
    path = tmp_path / "afile"
    path.write_text("not a database\n")
    proc = cli(tmp_path, *argv, "--db", path)
    assert_one_error(proc, str(path), "is not a folder")
    assert path.read_text() == "not a database\n"


def test_db_below_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = cli(tmp_path, "data", "mnist", "--no-download", "--db", tmp_path / "afile" / "db")
    assert_one_error(proc, "cannot create the image database folder",
                     str(tmp_path / "afile" / "db"))


# ---------------------------------------------- 6. concurrent overwrites --

# widens the replace step: every rename into or out of place sleeps a little
SLOW_SWAP = """
import os, time
_rename = os.rename
def _slow(src, dst, *a, **kw):
    _rename(src, dst, *a, **kw)
    time.sleep(0.2)
os.rename = _slow
import layergraph.imagedb.store as store
"""


@pytest.mark.parametrize("mode", ["exchange", "rename", "rename-no-lock"])
def test_concurrent_overwrites_both_succeed(tmp_path, db, mode):
    patch = SLOW_SWAP
    if mode != "exchange":  # the fallbacks for systems without renameat2 / flock
        patch += "store._exchange = lambda a, b: False\n"
    if mode == "rename-no-lock":
        patch += "store.fcntl = None\n"
    procs = [cli(tmp_path, "data", "mnist", "--no-download", "--overwrite", "--db", db,
                 patch=patch, wait=False) for _ in range(2)]
    for proc in map(finish, procs):
        assert proc.returncode == 0, proc.stderr_text
        assert proc.stderr_text.strip() == ""
    assert sorted(os.listdir(db)) == ["MNIST"]  # no .tmp-* / .trash-* left
    info = imagedb.dataset_info("MNIST", str(db))
    assert info["sources"]["training"]["count"] == 4998
    imagedb.open_source("MNIST.testing", root=str(db)).close()


def test_replace_that_keeps_losing_says_so(tmp_path, db):
    """Another process that slips a dataset in at every attempt (simulated: the
    rename into place always finds the name taken) gets a clear message and the
    dataset in place stays."""
    patch = """
        import errno, os
        import layergraph.imagedb.store as store
        store._exchange = lambda a, b: False
        _rename = os.rename
        def _taken(src, dst, *a, **kw):
            if ".tmp-" in os.fspath(src):
                raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), src, None, dst)
            return _rename(src, dst, *a, **kw)
        os.rename = _taken
        """
    before = tree_bytes(db / "MNIST")
    proc = cli(tmp_path, "data", "mnist", "--no-download", "--overwrite", "--db", db,
               patch=patch)
    assert_one_error(proc, "cannot replace dataset 'MNIST'", "another process",
                     str(db / "MNIST"))
    assert "Errno" not in proc.stderr_text
    assert sorted(os.listdir(db)) == ["MNIST"]
    assert tree_bytes(db / "MNIST") == before
