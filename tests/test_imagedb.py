"""Image database: creators (IDX, copy, image folders), catalog, atomic creation, CLI."""
import argparse
import gzip
import json
import os

import numpy as np
import pytest
from PIL import Image

from layergraph import imagedb
from layergraph.cli.data import add_data_commands
from layergraph.errors import DataError, DatasetNotFoundError
from layergraph.imagedb import store
from layergraph.proto import pb


@pytest.fixture
def db(tmp_path, monkeypatch):
    root = tmp_path / "db"
    monkeypatch.setenv("LAYERGRAPH_DB", str(root))
    monkeypatch.setenv("LAYERGRAPH_OFFLINE", "1")
    return root


def write_idx(path, arr, magic=None, gz=True, truncate=0, extra=b""):
    arr = np.asarray(arr, np.uint8)
    magic = magic if magic is not None else (2051 if arr.ndim == 3 else 2049)
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw += arr.tobytes() + extra
    if truncate:
        raw = raw[:-truncate]
    path = str(path) + (".gz" if gz else "")
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(raw)
    return path


def make_idx_dir(folder, n_train=40, n_test=30, size=(5, 4), seed=0, gz=True):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, prefix, n in (("training", "train", n_train), ("testing", "t10k", n_test)):
        images = rng.integers(0, 256, (n,) + size, dtype=np.uint8)
        labels = rng.integers(0, 4, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=not gz)  # mixed on purpose
        data[split] = (images, labels)
    return data


def read_split(name, split):
    src = imagedb.open_source(f"{name}.{split}")
    try:
        return src.read_all()
    finally:
        src.close()


# ------------------------------------------------------------------- IDX --

def test_create_from_idx_files(db, tmp_path):
    data = make_idx_dir(tmp_path / "idx")
    info = imagedb.create_mnist(str(tmp_path / "idx"), name="TOY")
    assert imagedb.list_datasets() == ["TOY"]
    assert (info["channels"], info["height"], info["width"]) == (1, 5, 4)
    for split in ("training", "testing"):
        images, labels = data[split]
        got_images, got_labels = read_split("TOY", split)
        np.testing.assert_array_equal(got_images[:, 0], images)
        np.testing.assert_array_equal(got_labels, labels)
        values, counts = np.unique(labels, return_counts=True)
        assert info["sources"][split]["label_counts"] == {
            str(v): int(c) for v, c in zip(values, counts)}
        assert info["sources"][split]["count"] == len(labels)
        assert info["sources"][split]["name"] == f"TOY.{split}"
    # the mean is stored as a Caffe BlobProto (1, C, H, W) of the training images
    mean = imagedb.read_mean("TOY")
    np.testing.assert_allclose(mean[0], data["training"][0].mean(axis=0), rtol=1e-6)
    proto = pb.BlobProto.FromString(open(os.path.join(info["path"], "mean.binaryproto"),
                                         "rb").read())
    assert list(proto.shape.dim) == [1, 1, 5, 4]
    # Caffe-style keys: zero-padded indices
    src = imagedb.open_source("TOY.training")
    assert src.keys[:2] == [b"00000000", b"00000001"]
    src.close()


@pytest.mark.parametrize("problem, message", [
    ("wrong_magic", "wrong magic number 2049"),
    ("wrong_count", "wrong count"),
    ("short_data", "short data"),
    ("short_header", "short data"),
    ("trailing", "wrong count"),
    ("bad_gzip", "gzip"),
])
def test_corrupt_idx_files_are_one_line_errors(db, tmp_path, problem, message):
    folder = tmp_path / "idx"
    make_idx_dir(folder)
    target = folder / "train-images-idx3-ubyte.gz"
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 5, 4), dtype=np.uint8)
    os.remove(target)
    if problem == "wrong_magic":
        write_idx(folder / "train-images-idx3-ubyte", images, magic=2049)
    elif problem == "wrong_count":
        write_idx(folder / "train-images-idx3-ubyte", images[:39])
        target = folder / "train-images-idx3-ubyte.gz"
    elif problem == "short_data":
        write_idx(folder / "train-images-idx3-ubyte", images, truncate=7)
    elif problem == "short_header":
        with gzip.open(target, "wb") as f:
            f.write((2051).to_bytes(4, "big") + b"\0\0")
    elif problem == "trailing":
        write_idx(folder / "train-images-idx3-ubyte", images, extra=b"xyz")
    elif problem == "bad_gzip":
        with gzip.open(target, "wb") as f:
            f.write(b"\0" * 1000)
        raw = open(target, "rb").read()
        open(target, "wb").write(raw[:len(raw) // 2])
    with pytest.raises(DataError) as err:
        imagedb.create_mnist(str(folder), name="BAD")
    text = str(err.value)
    assert message in text and "\n" not in text
    assert "train-images-idx3-ubyte" in text
    assert imagedb.list_datasets() == []


def test_missing_idx_file(db, tmp_path):
    folder = tmp_path / "idx"
    make_idx_dir(folder)
    os.remove(folder / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        imagedb.create_mnist(str(folder), name="BAD")


def test_bundled_mnist_sample(db):
    info = imagedb.create_mnist(None, download=False)
    assert "sample" in info["origin"]
    train, test = info["sources"]["training"], info["sources"]["testing"]
    assert (train["name"], train["count"]) == ("MNIST.training", 4998)
    assert (test["name"], test["count"]) == ("MNIST.testing", 5002)
    assert [train["label_counts"][str(i)] for i in range(10)] == \
        [500, 563, 495, 516, 490, 431, 507, 535, 472, 489]
    assert [test["label_counts"][str(i)] for i in range(10)] == \
        [501, 564, 496, 516, 490, 432, 507, 535, 472, 489]
    assert (info["height"], info["width"]) == (28, 28)
    assert os.path.isfile(os.path.join(imagedb.creators.SAMPLE_DIR, "PROVENANCE.md"))


# --------------------------------------------------- overwrite / atomicity --

def test_existing_dataset_refused_unless_overwrite(db, tmp_path):
    make_idx_dir(tmp_path / "a", seed=1)
    make_idx_dir(tmp_path / "b", n_train=20, seed=2)
    imagedb.create_mnist(str(tmp_path / "a"), name="TOY")
    with pytest.raises(DataError, match="already exists.*overwrite"):
        imagedb.create_mnist(str(tmp_path / "b"), name="TOY")
    assert imagedb.dataset_info("TOY")["sources"]["training"]["count"] == 40
    imagedb.create_mnist(str(tmp_path / "b"), name="TOY", overwrite=True)
    assert imagedb.dataset_info("TOY")["sources"]["training"]["count"] == 20
    assert sorted(os.listdir(db)) == ["TOY"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_creation_is_all_or_nothing(db, tmp_path, monkeypatch, exc):
    make_idx_dir(tmp_path / "idx")
    imagedb.create_mnist(str(tmp_path / "idx"), name="KEEP")
    calls = []
    real_add = store.DatasetWriter.add

    def failing_add(self, split, images, labels):
        calls.append(split)
        if split == "testing":  # the training split is already written
            raise exc("simulated crash")
        return real_add(self, split, images, labels)

    monkeypatch.setattr(store.DatasetWriter, "add", failing_add)
    with pytest.raises(exc):
        imagedb.create_mnist(str(tmp_path / "idx"), name="HALF")
    with pytest.raises(exc):  # a failed overwrite keeps the old dataset
        imagedb.create_mnist(str(tmp_path / "idx"), name="KEEP", overwrite=True)
    assert "training" in calls
    assert imagedb.list_datasets() == ["KEEP"]
    assert sorted(os.listdir(db)) == ["KEEP"]  # no temporary folder left behind
    assert imagedb.dataset_info("KEEP")["sources"]["testing"]["count"] == 30


def test_stale_temporary_folder_is_invisible_and_cleaned(db, tmp_path):
    stale = db / ".tmp-GHOST-999999999-0123abcd"
    (stale / "training").mkdir(parents=True)
    assert imagedb.list_datasets() == []
    make_idx_dir(tmp_path / "idx")
    imagedb.create_mnist(str(tmp_path / "idx"), name="TOY")
    assert not stale.exists()


# -------------------------------------------------------------------- copy --

def _toy_dataset(name, per_label_train, per_label_test, labels=(0, 1, 2), shape=(1, 4, 4),
                 seed=0):
    rng = np.random.default_rng(seed)
    with store.DatasetWriter(name) as w:
        for split, per in (("training", per_label_train), ("testing", per_label_test)):
            lab = np.repeat(np.asarray(labels), per)
            lab = lab[rng.permutation(len(lab))]
            w.add(split, rng.integers(0, 256, (len(lab),) + shape, dtype=np.uint8), lab)


def test_copy_caps_per_label_deterministically(db):
    _toy_dataset("SRC", 12, 5)
    info = imagedb.copy_dataset("SRC", "SRC.4", max_per_label=4, seed=3)
    for split, expected in (("training", 4), ("testing", 4)):
        assert info["sources"][split]["label_counts"] == {"0": expected, "1": expected,
                                                          "2": expected}
    src_images, src_labels = read_split("SRC", "training")
    got_images, got_labels = read_split("SRC.4", "training")
    # every copied image is one of the source's, with its label, in source order
    index = {img.tobytes(): (i, y) for i, (img, y) in enumerate(zip(src_images, src_labels))}
    positions = [index[img.tobytes()][0] for img in got_images]
    assert positions == sorted(positions)
    assert [index[img.tobytes()][1] for img in got_images] == got_labels.tolist()
    again = imagedb.copy_dataset("SRC", "SRC.4b", max_per_label=4, seed=3)
    other = imagedb.copy_dataset("SRC", "SRC.4c", max_per_label=4, seed=4)
    np.testing.assert_array_equal(read_split("SRC.4b", "training")[0], got_images)
    assert not np.array_equal(read_split("SRC.4c", "training")[0], got_images)
    assert again["sources"]["testing"]["count"] == other["sources"]["testing"]["count"] == 12
    with pytest.raises(DatasetNotFoundError, match="NOPE.*datasets: SRC"):
        imagedb.copy_dataset("NOPE", "X")


def test_copy_auto_label(db):
    _toy_dataset("ODD", 3, 2, labels=(9, 3, 7))
    info = imagedb.copy_dataset("ODD", "ODD.auto", auto_label=True)
    assert info["sources"]["training"]["label_counts"] == {"0": 3, "1": 3, "2": 3}
    src_images, src_labels = read_split("ODD", "testing")
    got_images, got_labels = read_split("ODD.auto", "testing")
    np.testing.assert_array_equal(got_images, src_images)
    mapping = {3: 0, 7: 1, 9: 2}
    assert got_labels.tolist() == [mapping[v] for v in src_labels.tolist()]
    assert info["label_names"] == {"0": "3", "1": "7", "2": "9"}


# ------------------------------------------------------------------ images --

def _image_folder(root, sizes=((6, 5), (6, 5)), mode="L", per_label=5, names=("cat", "dog")):
    rng = np.random.default_rng(0)
    pixels = {}
    for label, size in zip(names, sizes):
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            shape = size if mode == "L" else size + (3,)
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            path = root / label / f"{i:02d}.png"
            Image.fromarray(arr, mode).save(path)
            pixels[arr.tobytes()] = label
    return pixels


def test_import_images(db, tmp_path):
    pixels = _image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("ignored")
    info = imagedb.import_images(str(tmp_path / "imgs"), "PETS", test_fraction=0.4, seed=1)
    assert (info["channels"], info["height"], info["width"]) == (1, 6, 5)
    assert info["sources"]["training"]["label_counts"] == {"0": 3, "1": 3}
    assert info["sources"]["testing"]["label_counts"] == {"0": 2, "1": 2}
    assert info["label_names"] == {"0": "cat", "1": "dog"}
    seen = set()
    for split in ("training", "testing"):
        images, labels = read_split("PETS", split)
        for img, y in zip(images, labels):
            key = img[0].tobytes()
            assert pixels[key] == ("cat", "dog")[y]  # exact pixels, right label
            seen.add(key)
    assert seen == set(pixels)  # every image exactly once across the two sources


def test_import_images_resize_and_color(db, tmp_path):
    _image_folder(tmp_path / "imgs", sizes=((6, 5), (9, 7)), mode="RGB", names=("3", "8"))
    info = imagedb.import_images(str(tmp_path / "imgs"), "RGB", size=(4, 3), channels=3,
                                 test_fraction=0.0)
    assert (info["channels"], info["height"], info["width"]) == (3, 4, 3)
    assert info["sources"]["training"]["label_counts"] == {"3": 5, "8": 5}  # numeric folders
    assert info["sources"]["testing"]["count"] == 0
    # stored RGB (C, H, W): each record is Pillow's bilinear resize of one source file
    images, labels = read_split("RGB", "training")
    assert images.shape == (10, 3, 4, 3)
    expected = {}
    for label in ("3", "8"):
        for path in sorted((tmp_path / "imgs" / label).iterdir()):
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB").resize((3, 4), Image.BILINEAR))
            expected[arr.transpose(2, 0, 1).tobytes()] = int(label)
    assert {img.tobytes(): int(y) for img, y in zip(images, labels)} == expected


def test_import_undecodable_image(db, tmp_path):
    _image_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError) as err:
        imagedb.import_images(str(tmp_path / "imgs"), "PETS")
    assert "broken.png" in str(err.value) and "cannot decode" in str(err.value)
    assert imagedb.list_datasets() == []
    (tmp_path / "imgs" / "empty").mkdir()
    bad.unlink()
    with pytest.raises(DataError, match="empty: no PNG/JPEG"):
        imagedb.import_images(str(tmp_path / "imgs"), "PETS")


# ----------------------------------------------------- list / show / delete --

def test_list_show_delete(db, tmp_path):
    _toy_dataset("A", 4, 2)
    _toy_dataset("B", 3, 3, shape=(3, 5, 6))
    assert imagedb.list_datasets() == ["A", "B"]
    out, info = imagedb.show("B", out=str(tmp_path / "b.png"), per_label=3)
    with Image.open(out) as im:
        assert im.size[0] > 3 * 6 and im.size[1] > 4 * 5
    imagedb.delete_dataset("A")
    assert imagedb.list_datasets() == ["B"]
    with pytest.raises(DatasetNotFoundError, match="dataset 'A'.*datasets: B"):
        imagedb.delete_dataset("A")
    with pytest.raises(DatasetNotFoundError, match="'Z.training'.*datasets: B"):
        imagedb.open_source("Z.training")


def test_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERGRAPH_DB", str(tmp_path / "env"))
    assert imagedb.db_root() == str(tmp_path / "env")
    assert imagedb.db_root(tmp_path / "explicit") == str(tmp_path / "explicit")
    monkeypatch.delenv("LAYERGRAPH_DB")
    assert imagedb.db_root() == os.path.expanduser("~/.layergraph/imagedb")


def test_leveldb_refused(db, tmp_path):
    with pytest.raises(DataError, match="LEVELDB is not supported.*LMDB"):
        imagedb.open_source(str(tmp_path), "LEVELDB")
    with pytest.raises(DataError, match="invalid dataset name"):
        imagedb.import_images(str(tmp_path), "../x")


# --------------------------------------------------------------------- CLI --

def run_cli(*argv):
    parser = argparse.ArgumentParser(prog="layergraph")
    add_data_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_cli_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAYERGRAPH_DB", str(tmp_path / "unused"))  # restored afterwards
    root = tmp_path / "clidb"
    make_idx_dir(tmp_path / "idx")
    assert run_cli("--db", str(root), "mnist", "--source", str(tmp_path / "idx"),
                   "--name", "F") == 0
    assert os.environ["LAYERGRAPH_DB"] == str(root)
    assert "created dataset F from IDX files" in capsys.readouterr().out
    with pytest.raises(DataError, match="already exists"):
        run_cli("mnist", "--source", str(tmp_path / "idx"), "--name", "F", "--db", str(root))
    assert run_cli("copy", "--source", "F", "--output", "F.2", "--max-per-label", "2",
                   "--seed", "5", "--auto-label") == 0
    assert imagedb.dataset_info("F.2", root)["sources"]["training"]["count"] == 8
    _image_folder(tmp_path / "imgs")
    assert run_cli("images", "--dir", str(tmp_path / "imgs"), "--name", "P", "--size", "3x4",
                   "--channels", "3") == 0
    info = imagedb.dataset_info("P", root)
    assert (info["channels"], info["height"], info["width"]) == (3, 3, 4)
    capsys.readouterr()
    assert run_cli("list") == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("F ", "F.2", "P "))
    assert run_cli("show", "F", "--out", str(tmp_path / "f.png")) == 0
    assert os.path.isfile(tmp_path / "f.png")
    assert "mean image" in capsys.readouterr().out
    assert run_cli("delete", "F.2") == 0
    assert imagedb.list_datasets(root) == ["F", "P"]
    with pytest.raises(SystemExit):
        run_cli("images", "--dir", "x", "--name", "y", "--size", "28")
    catalog = json.load(open(root / "F" / "catalog.json"))
    assert catalog["sources"]["testing"]["count"] == 30
