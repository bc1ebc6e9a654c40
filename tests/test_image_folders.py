"""`data images` on image files as users hold them: folders already split
into train/ and test/, Caffe convert_imageset list files, colour and gray,
PNG and JPEG of odd sizes, corrupt files, the resize modes and the shuffle."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from layergraph import imagedb
from layergraph.cli import main
from layergraph.errors import DataError
from layergraph.imagedb import creators


@pytest.fixture
def db(tmp_path, monkeypatch):
    root = tmp_path / "db"
    monkeypatch.setenv("LAYERGRAPH_DB", str(root))
    return root


def read_split(name, split):
    src = imagedb.open_source(f"{name}.{split}")
    try:
        return src.read_all()
    finally:
        src.close()


def expected_pixels(path, size, channels, resize="squash"):
    """What an import must store for ``path``: Pillow's decode, converted and
    fitted (JPEG is lossy, so the reference is the decoded file, not the
    array it was saved from)."""
    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(creators._fit(im, size, resize), np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def make_split_tree(root, train="train", test="test"):
    """root/{train,test}/{cat,dog}/ with colour and gray PNG and JPEG files of
    odd sizes; a label folder (owl) only in the testing split.  Returns
    {split: [(path, folder), ...]}."""
    rng = np.random.default_rng(3)
    layout = {train: {"cat": 3, "dog": 4}, test: {"cat": 2, "dog": 2, "owl": 2}}
    files = {}
    for split, labels in layout.items():
        for label, count in labels.items():
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = (7, 9) if i % 2 else (11, 5)
                color = i % 3 != 0
                arr = rng.integers(0, 256, (h, w, 3) if color else (h, w), dtype=np.uint8)
                ext = ".jpg" if i == 1 else ".png"
                path = folder / f"{label}_{i}{ext}"
                Image.fromarray(arr, "RGB" if color else "L").save(path)
                files.setdefault(split, []).append((str(path), label))
    return files


def assert_records(name, split, entries, size, channels, label_of, resize="squash"):
    """The split holds exactly one record per entry, each with its label."""
    images, labels = read_split(name, split)
    want = sorted((expected_pixels(p, size, channels, resize).tobytes(), label_of(f))
                  for p, f in entries)
    got = sorted((img.tobytes(), int(y)) for img, y in zip(images, labels))
    assert got == want


# ------------------------------------------------------- pre-split folders --

def test_pre_split_folder_is_detected(db, tmp_path, capsys):
    files = make_split_tree(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "dog" / "notes.txt").write_text("not an image")
    assert main(["data", "images", "--dir", str(tmp_path / "imgs"), "--name", "PETS",
                 "--size", "6x8", "--channels", "3"]) == 0
    out, err = capsys.readouterr()
    assert "labels: 0 cat, 1 dog, 2 owl" in out
    assert "notes.txt" in err and "ignored 1 file" in err
    info = imagedb.dataset_info("PETS")
    assert info["label_names"] == {"0": "cat", "1": "dog", "2": "owl"}
    assert info["sources"]["training"]["label_counts"] == {"0": 3, "1": 4}
    assert info["sources"]["testing"]["label_counts"] == {"0": 2, "1": 2, "2": 2}
    assert (info["channels"], info["height"], info["width"]) == (3, 6, 8)
    index = {"cat": 0, "dog": 1, "owl": 2}
    assert_records("PETS", "training", files["train"], (6, 8), 3, index.get)
    assert_records("PETS", "testing", files["test"], (6, 8), 3, index.get)


def test_explicit_split_folders_gray_and_first_image_size(db, tmp_path):
    files = make_split_tree(tmp_path / "imgs", train="training", test="val")
    info = imagedb.import_images(None, "G", train_dir=str(tmp_path / "imgs" / "training"),
                                 test_dir=str(tmp_path / "imgs" / "val"))
    # no --size: the first training image's size (cat_0.png, 11x5), gray by default
    assert (info["channels"], info["height"], info["width"]) == (1, 11, 5)
    index = {"cat": 0, "dog": 1, "owl": 2}
    assert_records("G", "training", files["training"], (11, 5), 1, index.get)
    assert_records("G", "testing", files["val"], (11, 5), 1, index.get)
    # the same tree through --dir: training/ and val/ are found by name
    again = imagedb.import_images(str(tmp_path / "imgs"), "G2")
    assert again["sources"] == {k: dict(v, name=v["name"].replace("G.", "G2."))
                                for k, v in info["sources"].items()}


def test_split_folder_names_that_do_not_pair_up(db, tmp_path):
    for folder in ("train/a", "val/a", "test/a"):
        (tmp_path / "imgs" / folder).mkdir(parents=True)
    with pytest.raises(DataError, match="test, train, val.*--train-dir and --test-dir"):
        imagedb.import_images(str(tmp_path / "imgs"), "X")
    make_split_tree(tmp_path / "pre")
    with pytest.raises(DataError, match="--test-fraction splits a source that is not split"):
        imagedb.import_images(str(tmp_path / "pre"), "X", test_fraction=0.5)
    with pytest.raises(DataError, match="--train-dir and --test-dir go together"):
        imagedb.import_images(None, "X", train_dir=str(tmp_path / "pre" / "train"))
    with pytest.raises(DataError, match="give one source.*a folder and a list file"):
        imagedb.import_images(str(tmp_path / "pre"), "X", list_file="list.txt")
    assert imagedb.list_datasets() == []


# ------------------------------------------------------------- list files --

def make_list_tree(root):
    """Images under root/images (one with a space in its name) and Caffe list
    files naming them with integer labels; returns the entries per list."""
    rng = np.random.default_rng(5)
    (root / "images" / "sub dir").mkdir(parents=True)
    entries = {"train": [], "test": []}
    for i in range(10):
        split = "test" if i >= 7 else "train"
        rel = f"sub dir/img {i}.png" if i == 0 else f"{i:03d}.jpg"
        arr = rng.integers(0, 256, (6 + i % 3, 5, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / rel)
        entries[split].append((rel, (3, 7)[i % 2]))
    for split, name in (("train", "train.txt"), ("test", "test.txt")):
        lines = ["# path label", ""] + [f"{rel} {label}" for rel, label in entries[split]]
        (root / name).write_text("\n".join(lines) + "\n")
    return entries


def test_list_files_keep_their_order_and_labels(db, tmp_path, capsys):
    entries = make_list_tree(tmp_path)
    assert main(["data", "images", "--list", str(tmp_path / "train.txt"), "--test-list",
                 str(tmp_path / "test.txt"), "--root", str(tmp_path / "images"),
                 "--name", "L", "--size", "4x4", "--channels", "3"]) == 0
    assert "list files" in capsys.readouterr().out
    info = imagedb.dataset_info("L")
    assert "label_names" not in info  # the integers given, no names
    for split, key in (("training", "train"), ("testing", "test")):
        images, labels = read_split("L", split)
        assert labels.tolist() == [label for _, label in entries[key]]  # list order kept
        for img, (rel, _) in zip(images, entries[key]):
            np.testing.assert_array_equal(
                img, expected_pixels(tmp_path / "images" / rel, (4, 4), 3))


def test_list_file_without_test_list_is_split_and_root_defaults(db, tmp_path):
    make_list_tree(tmp_path)
    listing = (tmp_path / "train.txt").read_text().replace("sub dir/", "images/sub dir/")
    listing = "\n".join(line if line.startswith(("#", "images")) or not line
                        else "images/" + line for line in listing.splitlines())
    (tmp_path / "train.txt").write_text(listing)
    info = imagedb.import_images(None, "S", list_file=str(tmp_path / "train.txt"),
                                 size=(4, 4), test_fraction=0.3)
    # labels 3 (4 images) and 7 (3 images): round(0.3 n) of each to testing
    assert info["sources"]["training"]["label_counts"] == {"3": 3, "7": 2}
    assert info["sources"]["testing"]["label_counts"] == {"3": 1, "7": 1}


@pytest.mark.parametrize("line, message", [
    ("a.png", r"train.txt:2: expected 'PATH LABEL'"),
    ("a.png cat", r"train.txt:2: the label 'cat' is not an integer"),
    ("a.png 99999999999", r"train.txt:2: the label 99999999999 does not fit"),
])
def test_bad_list_lines_are_one_line_errors(db, tmp_path, capsys, line, message):
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "train.txt").write_text(f"a.png 0\n{line}\n")
    assert main(["data", "images", "--list", str(tmp_path / "train.txt"), "--name", "B"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("layergraph: error: ")
    assert re.search(message, err[0])


# ---------------------------------------------------------- corrupt files --

def test_corrupt_files_are_skipped_or_refused(db, tmp_path, capsys):
    files = make_split_tree(tmp_path / "imgs")
    broken = tmp_path / "imgs" / "train" / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    fake = tmp_path / "imgs" / "test" / "owl" / "fake.jpg"
    fake.write_text("a text file with an image extension")
    good = tmp_path / "imgs" / "train" / "cat" / "cat_0.png"
    truncated = tmp_path / "imgs" / "train" / "cat" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    argv = ["data", "images", "--dir", str(tmp_path / "imgs"), "--name", "P", "--size", "5x5"]

    # --strict: one line naming the first bad file met, nothing created
    assert main(argv + ["--strict"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("layergraph: error: ") and "cannot decode image" in err[0]
    assert any(str(p) in err[0] for p in (broken, fake, truncated))
    assert imagedb.list_datasets() == []

    # the default (--skip-bad): each bad file named in one warning line, left out
    assert main(argv) == 0
    err = capsys.readouterr().err
    for bad in (broken, fake, truncated):
        assert sum(str(bad) in line and "warning: skipped" in line
                   for line in err.splitlines()) == 1
    assert "Traceback" not in err
    info = imagedb.dataset_info("P")
    assert info["sources"]["training"]["count"] == len(files["train"])
    assert info["sources"]["testing"]["count"] == len(files["test"])
    assert len(info["skipped_files"]) == 3 and "3 bad files skipped" in info["origin"]
    index = {"cat": 0, "dog": 1, "owl": 2}
    assert_records("P", "training", files["train"], (5, 5), 1, index.get)


def test_missing_listed_file_and_all_bad(db, tmp_path):
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_text("nope")
    (tmp_path / "l.txt").write_text("ok.png 1\nmissing.png 2\nbad.png 2\n")
    warnings = []
    info = imagedb.import_images(None, "M", list_file=str(tmp_path / "l.txt"),
                                 test_fraction=0.0, on_bad="skip", warn=warnings.append)
    assert info["sources"]["training"]["label_counts"] == {"1": 1}
    assert any("missing.png: cannot read" in w for w in warnings)
    assert any("label 2 lost every training image" in w for w in warnings)
    (tmp_path / "l.txt").write_text("bad.png 0\nmissing.png 1\n")
    with pytest.raises(DataError, match="none of the images can be decoded"):
        imagedb.import_images(None, "N", list_file=str(tmp_path / "l.txt"),
                              test_fraction=0.0, on_bad="skip", warn=warnings.append)
    with pytest.raises(DataError, match="bad.png: cannot decode image"):  # the first met
        imagedb.import_images(None, "N", list_file=str(tmp_path / "l.txt"), size=(4, 4),
                              test_fraction=0.0)
    assert imagedb.list_datasets() == ["M"]


# ----------------------------------------------------------- resize modes --

def test_resize_modes_exact_pixels():
    """At scale 1 crop and pad copy pixels exactly: crop keeps the centre,
    pad leaves zero borders."""
    wide = (np.arange(4 * 8).reshape(4, 8) + 1).astype(np.uint8)
    im = Image.fromarray(wide)
    np.testing.assert_array_equal(np.asarray(creators._fit(im, (4, 4), "crop")), wide[:, 2:6])
    tall = Image.fromarray(np.ascontiguousarray(wide.T))  # 8 x 4
    np.testing.assert_array_equal(np.asarray(creators._fit(tall, (4, 4), "crop")),
                                  wide.T[2:6, :])
    flat = wide[:2, :4]  # 2 x 4 into 4 x 4: one zero row above and below
    padded = np.asarray(creators._fit(Image.fromarray(flat), (4, 4), "pad"))
    np.testing.assert_array_equal(padded[1:3], flat)
    assert not padded[0].any() and not padded[3].any()
    # colour: the same, per channel
    rgb = np.stack([wide, 255 - wide, wide // 2], axis=-1)
    cropped = np.asarray(creators._fit(Image.fromarray(rgb), (4, 4), "crop"))
    np.testing.assert_array_equal(cropped, rgb[:, 2:6])


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_resize_modes_with_scaling(tmp_path, resize):
    """An 8x16 image (50 | 200 | 100 in column bands) into 4x4."""
    arr = np.full((8, 16), 200, np.uint8)
    arr[:, :4], arr[:, 12:] = 50, 100
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = creators._load_image(str(tmp_path / "a.png"), (4, 4), 1, resize)
    assert out.shape == (1, 4, 4) and out.dtype == np.uint8
    out = out[0].astype(int)
    if resize == "crop":     # scaled by 1/2 to 4x8, the centre 4x4 cut: the 200 band
        assert (out[:, 1:3] == 200).all() and (out > 50).all() and (out < 255).all()
        assert (out[:, 0] < 200).all() and (out[:, 3] < 200).all()  # blended edges
    elif resize == "pad":    # scaled by 1/4 to 2x4, centred: zero rows above and below
        assert not out[0].any() and not out[3].any()
        assert (out[1:3] > 0).all() and out[1, 0] < out[1, 1] and out[1, 3] < out[1, 2]
    else:                    # squashed: all three bands, every row alike
        assert out[0, 0] < out[0, 1] and out[0, 3] < out[0, 2]
        assert (out == out[0]).all()
    rgb = creators._load_image(str(tmp_path / "a.png"), (4, 4), 3, resize)
    assert rgb.shape == (3, 4, 4)
    np.testing.assert_array_equal(rgb[0], out)  # gray to RGB: equal channels


def test_crop_and_pad_through_the_cli(db, tmp_path):
    files = make_split_tree(tmp_path / "imgs")
    for flag, resize in (("--crop", "crop"), ("--pad", "pad")):
        name = f"R{resize}"
        assert main(["data", "images", "--dir", str(tmp_path / "imgs"), "--name", name,
                     "--size", "6x6", "--channels", "3", flag]) == 0
        index = {"cat": 0, "dog": 1, "owl": 2}
        assert_records(name, "training", files["train"], (6, 6), 3, index.get, resize)
    images, _ = read_split("Rpad", "training")
    # 11x5 and 7x9 files are never square: every padded record has a zero border
    assert all(not (img[:, 0].any() and img[:, -1].any() and img[:, :, 0].any()
                    and img[:, :, -1].any()) for img in images)


# ----------------------------------------------------------------- shuffle --

def test_shuffle_is_seeded(db, tmp_path):
    make_list_tree(tmp_path)
    kw = dict(list_file=str(tmp_path / "train.txt"), list_root=str(tmp_path / "images"),
              size=(4, 4), test_fraction=0.0)
    imagedb.import_images(None, "K", **kw)
    imagedb.import_images(None, "S1", shuffle=True, seed=1, **kw)
    imagedb.import_images(None, "S1b", shuffle=True, seed=1, **kw)
    imagedb.import_images(None, "S2", shuffle=True, seed=2, **kw)
    kept, s1, s1b, s2 = (read_split(n, "training")[0] for n in ("K", "S1", "S1b", "S2"))
    np.testing.assert_array_equal(s1, s1b)              # same seed, same order
    assert not np.array_equal(s1, kept) and not np.array_equal(s1, s2)
    assert sorted(x.tobytes() for x in s1) == sorted(x.tobytes() for x in kept)
    # folders: shuffled by default; --no-shuffle keeps label-then-file order
    files = make_split_tree(tmp_path / "imgs")
    imagedb.import_images(str(tmp_path / "imgs"), "F", size=(5, 5), shuffle=False)
    images, labels = read_split("F", "training")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    for img, (path, _) in zip(images, files["train"]):
        np.testing.assert_array_equal(img, expected_pixels(path, (5, 5), 1))
    info = imagedb.import_images(str(tmp_path / "imgs"), "F2", size=(5, 5))
    assert "shuffled with seed 0" in info["origin"]
    assert sorted(read_split("F2", "training")[1].tolist()) == labels.tolist()


def test_progress_bar_on_stderr(db, tmp_path, capsys):
    make_split_tree(tmp_path / "imgs")
    imagedb.import_images(str(tmp_path / "imgs"), "B", size=(5, 5), progress=True)
    err = capsys.readouterr().err
    assert "dataset B" in err and "13/13" in err
    catalog = json.loads((db / "B" / "catalog.json").read_text())
    assert catalog["sources"]["testing"]["count"] == 6
    assert not [d for d in os.listdir(db) if d.startswith(".tmp")]
