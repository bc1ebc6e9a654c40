"""``layergraph data ...``: create, list, show and delete image-database datasets.

Wiring (main CLI)::

    sub = parser.add_subparsers(dest="command")
    add_data_commands(sub)
    args = parser.parse_args()
    return args.func(args)          # an exit code; DataError for user mistakes

``--db DIR`` (on ``data`` or after any sub-command) sets $LAYERGRAPH_DB for the
process, so Data layers of a net trained afterwards read the same database.
"""
import argparse
import os
import sys
import time

from ..errors import DataError
from .. import imagedb


def _size(text):
    """HEIGHTxWIDTH -> (h, w).  Only the form is checked here; the range (at least
    1, at most imagedb's MAX_SIDE) is checked by import_images, whose one-line
    error names the limit."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; expected HEIGHTxWIDTH, "
                                         "e.g. 28x28") from None
    return h, w


def _labels(text):
    """A label spec -> sorted label numbers: '0-4' -> [0..4], '0,2,4-6' ->
    [0, 2, 4, 5, 6].  Only the form is checked here; whether the dataset has
    those labels is checked by copy_dataset."""
    values = set()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise argparse.ArgumentTypeError(
                f"invalid label spec {text!r} ({part!r} is not a label number or range "
                f"A-B); expected e.g. 0-4 or 0,2,4-6")
        lo = int(lo)
        hi = int(hi) if sep else lo
        if hi < lo:
            raise argparse.ArgumentTypeError(
                f"invalid label spec {text!r}: the range {lo}-{hi} runs backwards "
                f"(write {hi}-{lo})")
        if hi - lo >= _MAX_LABELS or len(values) >= _MAX_LABELS:
            raise argparse.ArgumentTypeError(
                f"invalid label spec {text!r}: more than {_MAX_LABELS:,} labels")
        values.update(range(lo, hi + 1))
    return sorted(values)


_MAX_LABELS = 1_000_000  # labels a spec may name (a typo like 0-4000000000 stops here)


def add_data_commands(subparsers):
    """Register ``data`` and its sub-commands on an argparse subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="DIR", default=argparse.SUPPRESS,
                        help="image database root (default: $LAYERGRAPH_DB or "
                             "~/.layergraph/imagedb)")
    data = subparsers.add_parser(
        "data", parents=[common], help="create and inspect image-database datasets",
        description="Create, list, show and delete datasets of the image database (LMDB). "
                    "A dataset NAME has the sources NAME.training and NAME.testing.")
    data.set_defaults(func=lambda args: _help(data))
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND")

    p = sub.add_parser("mnist", parents=[common], help="create a dataset from MNIST IDX files",
                       description="Create a dataset from the four MNIST-layout IDX files "
                                   "(gzip or plain; MNIST or Fashion-MNIST). Without --source: "
                                   "download the official MNIST files when the network allows, "
                                   "else use the MNIST sample shipped with layergraph.")
    p.add_argument("--source", metavar="DIR", help="folder holding the four IDX files")
    p.add_argument("--name", default="MNIST", help="dataset name (default: MNIST)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--no-download", action="store_true",
                   help="without --source: use the shipped sample, do not try to download")
    p.set_defaults(func=cmd_mnist)

    p = sub.add_parser(
        "copy", parents=[common], help="copy a dataset: some labels, capped per label",
        description="Copy a dataset, keeping only the images of some labels (--labels or "
                    "--exclude-labels) and/or at most --max-per-label images of each label, "
                    "in both sources (a random subset, fixed by --seed).  With --labels or "
                    "--exclude-labels the labels kept are renumbered 0..L-1 in sorted order "
                    "(--no-auto-label keeps their numbers); the catalog records the mapping.",
        epilog="examples (the unseen-label protocol: train on 0-4, judge retrieval on 5-9):\n"
               "  layergraph data copy --source MNIST --output MNIST.seen --labels 0-4\n"
               "  layergraph data copy --source MNIST --output MNIST.unseen --labels 5-9\n"
               "  layergraph data copy --source MNIST --output MNIST.odd --labels 1,3,5-9 "
               "--max-per-label 30 --seed 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, metavar="NAME", help="dataset to copy")
    p.add_argument("--output", required=True, metavar="NAME", help="new dataset name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--labels", type=_labels, metavar="SPEC",
                       help="keep only these labels: numbers and ranges, e.g. 0-4 or 0,2,4-6")
    which.add_argument("--exclude-labels", type=_labels, metavar="SPEC",
                       help="keep every label but these (same form as --labels)")
    p.add_argument("--max-per-label", type=int, metavar="N", help="cap per label and source")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subset (default 0)")
    p.add_argument("--auto-label", action=argparse.BooleanOptionalAction, default=None,
                   help="renumber the labels 0..L-1 in sorted order (MyCaffe's COPY creator; "
                        "default: on with --labels/--exclude-labels, else off)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser(
        "images", parents=[common], help="import image files: label folders or list files",
        description="Import images (PNG, JPEG, BMP, GIF, TIFF, WebP) as users hold them:\n"
                    "  DIR/<label>/*                split per label by --test-fraction\n"
                    "  DIR/train/<label>/*, DIR/test/<label>/*  (or training/testing/val: "
                    "found\n"
                    "                               automatically; or --train-dir/--test-dir)\n"
                    "  --list FILE [--test-list F]  Caffe convert_imageset list files, "
                    "'path label'\n"
                    "                               a line, paths relative to --root\n"
                    "Label folders are numbered 0..L-1 in sorted order (folders named by "
                    "integers keep\nthem); the names are kept in the catalog.",
        epilog="examples:\n"
               "  layergraph data images --dir flowers/ --name FLOWERS --size 64x64 "
               "--channels 3 --crop\n"
               "  layergraph data images --list train.txt --test-list test.txt --root "
               "images/ --name CUB --size 224x224 --channels 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_argument_group("source (one of)")
    source.add_argument("--dir", metavar="DIR",
                        help="folder of label sub-folders, or of train/ and test/ folders "
                             "of label sub-folders")
    source.add_argument("--train-dir", metavar="DIR", help="training label folders")
    source.add_argument("--test-dir", metavar="DIR", help="testing label folders")
    source.add_argument("--list", metavar="FILE",
                        help="training list file: 'relative/path label' a line (Caffe's "
                             "convert_imageset)")
    source.add_argument("--test-list", metavar="FILE", help="testing list file")
    source.add_argument("--root", metavar="DIR",
                        help="folder the list files' paths are relative to (default: the "
                             "list file's folder)")
    p.add_argument("--name", required=True, help="dataset name")
    p.add_argument("--size", type=_size, metavar="HxW",
                   help="resize to HEIGHTxWIDTH, e.g. 28x28 (default: the first image's size)")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3),
                   help="1 (gray) or 3 (RGB) (default 1)")
    fit = p.add_mutually_exclusive_group()
    fit.add_argument("--crop", dest="resize", action="store_const", const="crop",
                     help="keep the aspect ratio: resize the short side to fit, cut the centre")
    fit.add_argument("--pad", dest="resize", action="store_const", const="pad",
                     help="keep the aspect ratio: fit the whole image, pad with zeros")
    p.set_defaults(resize="squash")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="for sources not split already: share of each label put in the "
                        "testing source (default 0.2)")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                   help="store each source's records in a random order drawn with --seed "
                        "(default: shuffle folders, keep a list file's order)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split and the shuffle (default 0)")
    bad = p.add_mutually_exclusive_group()
    bad.add_argument("--skip-bad", dest="on_bad", action="store_const", const="skip",
                     help="name a corrupt or non-image file in a warning and leave it out "
                          "(default)")
    bad.add_argument("--strict", dest="on_bad", action="store_const", const="error",
                     help="refuse the import at the first corrupt or non-image file")
    p.set_defaults(on_bad="skip")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("list", parents=[common], help="list the datasets")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", parents=[common],
                       help="save a PNG of sample images per label and the mean image")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--out", metavar="FILE", help="PNG file (default: NAME.png)")
    p.add_argument("--per-label", type=int, default=8, metavar="N",
                   help="images per label (default 8)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("delete", parents=[common], help="delete a dataset")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_delete)
    return data


def _help(parser):
    parser.print_help()
    return 2


def _apply_db(args):
    db = getattr(args, "db", None)
    if db:
        os.environ[imagedb.ENV_VAR] = os.path.abspath(os.path.expanduser(db))


def _summary(info):
    src = info["sources"]
    return (f"{src['training']['name']} {src['training']['count']:,} images, "
            f"{src['testing']['name']} {src['testing']['count']:,} images "
            f"({info['channels']}x{info['height']}x{info['width']}, "
            f"{len(set(src['training']['label_counts']) | set(src['testing']['label_counts']))}"
            " labels)")


def cmd_mnist(args):
    _apply_db(args)
    start = time.perf_counter()
    info = imagedb.create_mnist(args.source, name=args.name, overwrite=args.overwrite,
                                download=False if args.no_download else None)
    print(f"created dataset {info['name']} from {info['origin']}")
    print(f"  {_summary(info)} in {time.perf_counter() - start:.1f} s -> {info['path']}")
    return 0


def cmd_copy(args):
    _apply_db(args)
    info = imagedb.copy_dataset(args.source, args.output, max_per_label=args.max_per_label,
                                seed=args.seed, auto_label=args.auto_label,
                                overwrite=args.overwrite, labels=args.labels,
                                exclude_labels=args.exclude_labels)
    print(f"created dataset {info['name']}: {info['origin']}")
    print(f"  {_summary(info)}")
    renumbered = info.get("source_labels")
    if renumbered and any(int(new) != old for new, old in renumbered.items()):
        pairs = [f"{old}->{new}" for new, old in
                 sorted(renumbered.items(), key=lambda kv: int(kv[0]))]
        shown = pairs[:_LABELS_PRINTED]
        more = len(pairs) - len(shown)
        print("  labels renumbered: " + ", ".join(shown) + (f", ... ({more} more)" if more
                                                             else "")
              + " (the catalog keeps the mapping: source_labels, label_names)")
    return 0


def cmd_images(args):
    _apply_db(args)
    info = imagedb.import_images(
        args.dir, args.name, size=args.size, channels=args.channels,
        test_fraction=args.test_fraction, seed=args.seed, overwrite=args.overwrite,
        train_dir=args.train_dir, test_dir=args.test_dir, list_file=args.list,
        test_list=args.test_list, list_root=args.root, resize=args.resize,
        shuffle=args.shuffle, on_bad=args.on_bad, progress=None)
    print(f"created dataset {info['name']} from {info['origin']}")
    print(f"  {_summary(info)}")
    names = info.get("label_names") or {}
    if any(k != v for k, v in names.items()):
        pairs = [f"{k} {v}" for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))]
        shown = pairs[:_LABELS_PRINTED]
        more = len(pairs) - len(shown)
        print("  labels: " + ", ".join(shown)
              + (f", ... ({more} more: layergraph data show {info['name']})" if more else ""))
    return 0


_LABELS_PRINTED = 50  # label names printed after an import at most


def cmd_list(args):
    _apply_db(args)
    root = imagedb.db_root()
    names = imagedb.list_datasets()
    rows, damaged = [("NAME", "SHAPE", "TRAINING", "TESTING", "LABELS")], []
    for name in names:
        try:  # one damaged catalog must not hide the healthy datasets
            info = imagedb.dataset_info(name)
        except DataError as e:
            damaged.append((name, e))
            continue
        src = info["sources"]
        labels = set(src["training"]["label_counts"]) | set(src["testing"]["label_counts"])
        rows.append((name, f"{info['channels']}x{info['height']}x{info['width']}",
                     f"{src['training']['count']:,}", f"{src['testing']['count']:,}",
                     str(len(labels))))
    if len(rows) == 1:
        print(f"no datasets in {root} (create one with 'layergraph data mnist')")
    else:
        print(f"datasets in {root}:")
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                   for i, (v, w) in enumerate(zip(r, widths))))
    for name, error in damaged:
        print(f"layergraph: warning: dataset '{name}' skipped: {error} (or remove it with "
              f"'layergraph data delete {name}')", file=sys.stderr)
    return 0


def cmd_show(args):
    _apply_db(args)
    if args.per_label < 1:
        raise DataError(f"--per-label must be at least 1, got {args.per_label}")
    path, info = imagedb.show(args.name, out=args.out, per_label=args.per_label)
    print(f"{info['name']}: {_summary(info)}")
    print(f"  origin: {info.get('origin', 'unknown')}")
    names = info.get("label_names", {})
    train = info["sources"]["training"]["label_counts"]
    test = info["sources"]["testing"]["label_counts"]
    print("  label  training  testing" + ("  name" if names else ""))
    for label in sorted(set(train) | set(test), key=lambda v: int(v)):
        extra = f"  {names[label]}" if label in names else ""
        print(f"  {label:>5}  {train.get(label, 0):>8}  {test.get(label, 0):>7}{extra}")
    mean = imagedb.read_mean(args.name)
    print(f"  mean image: min {mean.min():.1f}, max {mean.max():.1f}, "
          f"average {mean.mean():.2f}")
    print(f"saved {path}")
    return 0


def cmd_delete(args):
    _apply_db(args)
    imagedb.delete_dataset(args.name)
    print(f"deleted dataset {args.name} from {imagedb.db_root()}")
    return 0


def add_commands(sub):
    """The CLI's hook (layergraph.cli.build_parser)."""
    add_data_commands(sub)
