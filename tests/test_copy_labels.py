"""`data copy --labels / --exclude-labels`: the splits of the unseen-label
protocol (train on some labels, judge retrieval on the others)."""
import numpy as np
import pytest

from layergraph import imagedb
from layergraph.cli import main
from layergraph.errors import DataError


def read_split(name, split):
    src = imagedb.open_source(f"{name}.{split}")
    try:
        return src.read_all()
    finally:
        src.close()


def test_labels_and_their_complement_partition_the_dataset(db):
    seen = imagedb.copy_dataset("MNIST", "L.seen", labels=range(5))
    unseen = imagedb.copy_dataset("MNIST", "L.unseen", exclude_labels=[0, 1, 2, 3, 4])
    full = imagedb.dataset_info("MNIST")
    for split in ("training", "testing"):
        images, labels = read_split("MNIST", split)
        counts = full["sources"][split]["label_counts"]
        for info, old_labels in ((seen, range(5)), (unseen, range(5, 10))):
            got_images, got_labels = read_split(info["name"], split)
            # the images of those labels, in the source's order, renumbered 0..4
            mask = np.isin(labels, list(old_labels))
            np.testing.assert_array_equal(got_images, images[mask])
            assert got_labels.tolist() == (labels[mask] - old_labels[0]).tolist()
            assert info["sources"][split]["label_counts"] == {
                str(new): counts[str(old)] for new, old in enumerate(old_labels)}
    # the catalog records the mapping (renumbered by default once labels are chosen)
    assert unseen["source_labels"] == {"0": 5, "1": 6, "2": 7, "3": 8, "4": 9}
    assert unseen["label_names"] == {"0": "5", "1": "6", "2": "7", "3": "8", "4": "9"}
    assert unseen["origin"] == "copy of 'MNIST', labels 5-9, labels renumbered 0..L-1"
    assert imagedb.dataset_info("L.unseen")["source_labels"]["4"] == 9


def test_labels_compose_with_max_per_label_and_keep_the_same_draw(db):
    # TINY is MNIST capped at 12 per label with seed 0 (conftest): choosing
    # labels must not change which images of a label the cap draws
    info = imagedb.copy_dataset("MNIST", "L.tiny", labels=[5, 6, 7, 8, 9], max_per_label=12,
                                seed=0)
    assert info["origin"] == ("copy of 'MNIST', labels 5-9, at most 12 per label (seed 0), "
                              "labels renumbered 0..L-1")
    for split in ("training", "testing"):
        tiny_images, tiny_labels = read_split("TINY", split)
        got_images, got_labels = read_split("L.tiny", split)
        mask = tiny_labels >= 5
        np.testing.assert_array_equal(got_images, tiny_images[mask])
        assert got_labels.tolist() == (tiny_labels[mask] - 5).tolist()
        assert info["sources"][split]["count"] == 60


def test_labels_without_renumbering(db):
    info = imagedb.copy_dataset("MNIST", "L.keep", labels=[1, 3, 8], max_per_label=4,
                                auto_label=False)
    assert info["sources"]["training"]["label_counts"] == {"1": 4, "3": 4, "8": 4}
    assert "source_labels" not in info and "label_names" not in info
    renumbered = imagedb.copy_dataset("MNIST", "L.renum", labels=[1, 3, 8], max_per_label=4)
    assert renumbered["source_labels"] == {"0": 1, "1": 3, "2": 8}
    for split in ("training", "testing"):
        kept_images, kept_labels = read_split("L.keep", split)
        new_images, new_labels = read_split("L.renum", split)
        np.testing.assert_array_equal(kept_images, new_images)
        assert kept_labels.tolist() == [(1, 3, 8)[v] for v in new_labels.tolist()]


def test_a_label_only_in_the_testing_split(db):
    rng = np.random.default_rng(0)
    with imagedb.DatasetWriter("L.odd") as w:   # label 7 has testing images only
        w.add("training", rng.integers(0, 256, (4, 1, 3, 3), dtype=np.uint8), [1, 2, 1, 2])
        w.add("testing", rng.integers(0, 256, (3, 1, 3, 3), dtype=np.uint8), [1, 7, 7])
    info = imagedb.copy_dataset("L.odd", "L.odd2", labels=[2, 7])
    assert info["sources"]["training"]["label_counts"] == {"0": 2}
    assert info["sources"]["testing"]["label_counts"] == {"1": 2}
    with pytest.raises(DataError, match="no training images of label.* 7 .*only in its testing"):
        imagedb.copy_dataset("L.odd", "L.odd3", labels=[7])


@pytest.mark.parametrize("kwargs,message", [
    ({"labels": [8, 9, 10, 11]}, r"no label 10-11 \(--labels\); its labels: 0-9"),
    ({"exclude_labels": [12]}, r"no label 12 \(--exclude-labels\)"),
    ({"exclude_labels": range(10)}, "leaves no label"),
    ({"labels": []}, "names no label"),
    ({"labels": [1], "exclude_labels": [2]}, "not both"),
])
def test_bad_label_choices_are_one_line_errors(db, kwargs, message):
    with pytest.raises(DataError, match=message):
        imagedb.copy_dataset("MNIST", "L.bad", **kwargs)
    assert "L.bad" not in imagedb.list_datasets()


def test_cli_label_specs(db, capsys):
    assert main(["data", "copy", "--source", "TINY", "--output", "L.cli",
                 "--labels", " 0,2, 4-6 "]) == 0
    out = capsys.readouterr().out
    assert "labels 0,2,4-6" in out
    assert "labels renumbered: 0->0, 2->1, 4->2, 5->3, 6->4" in out
    info = imagedb.dataset_info("L.cli")
    assert info["sources"]["training"]["label_counts"] == {str(i): 12 for i in range(5)}
    assert main(["data", "copy", "--source", "TINY", "--output", "L.cli2",
                 "--exclude-labels", "1-9", "--no-auto-label"]) == 0
    assert imagedb.dataset_info("L.cli2")["sources"]["testing"]["label_counts"] == {"0": 12}
    assert "renumbered" not in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--labels", "3-1"], "the range 3-1 runs backwards (write 1-3)"),
    (["--labels", "x"], "'x' is not a label number or range"),
    (["--labels", "1,,2"], "'' is not a label number"),
    (["--labels", "-1"], "'-1' is not a label number"),
    (["--labels", "0-4000000000"], "more than 1,000,000 labels"),
    (["--labels", "3,11"], "has no label 11 (--labels); its labels: 0-9"),
    (["--labels", "1", "--exclude-labels", "2"], "not allowed with argument --labels"),
])
def test_cli_bad_label_specs(db, capsys, argv, message):
    with _ExitStatus() as outcome:     # argparse exits; main() returns DataError's
        outcome.code = main(["data", "copy", "--source", "TINY", "--output", "L.x", *argv])
    err = capsys.readouterr().err
    assert outcome.code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("layergraph: error: ")
    assert "Traceback" not in err


class _ExitStatus:
    """Records the exit status whether main() returns it or argparse exits."""

    def __enter__(self):
        self.code = None
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is SystemExit:
            self.code = exc.code
            return True
        return False
