"""``layergraph test-many``, ``inspect`` and ``evaluate``: a trained net judged
on a dataset split (accuracy per label, t-SNE pictures, retrieval metrics).

The images get the input transform of the model file's Data layer; a deploy
prototxt has none, so ``--train-val FILE`` (that file's Data layer),
``--scale S`` and ``--mean M`` give it (evaluation.embedding.resolve_transform).
Raw 0-255 pixels fed to a net whose transform is not known print a warning.
"""
from .common import _backend, _set_db, add_device_arguments
from ..errors import LayergraphError


def _transform(args):
    """The --train-val / --scale / --mean choices, as a context for the reports."""
    from ..evaluation.embedding import transform_override
    return transform_override(train_val=args.train_val, scale=args.scale, mean=args.mean)


def add_transform_arguments(p):
    p.add_argument("--train-val", metavar="FILE",
                   help="take the input transform (scale, mean) from this file's Data "
                        "layer: for a deploy --model, which has none")
    p.add_argument("--scale", type=float,
                   help="input scale: the net sees (pixel - mean) * scale (e.g. 0.00390625 "
                        "for nets trained on [0, 1]); overrides the file's")
    p.add_argument("--mean", metavar="M",
                   help="mean subtracted from the pixels: a value, one per channel "
                        "(104,117,123) or a .binaryproto file; overrides the file's")


def cmd_test_many(args):
    from ..evaluation.reports import test_many
    _set_db(args)
    if args.count is not None and args.count <= 0:
        raise LayergraphError("--count must be positive")
    with _transform(args):
        test_many(args.model, args.weights, args.dataset, split=args.split,
                  count=None if args.all else args.count, batch_size=args.batch_size,
                  centroids=args.centroids, out=args.out, seed=args.seed,
                  centroid_dataset=args.centroid_dataset, backend=_backend(args))
    return 0


def cmd_inspect(args):
    from ..evaluation.reports import inspect
    _set_db(args)
    if not args.out and not args.projector:
        raise LayergraphError("give --out (t-SNE PNG) and/or --projector DIR")
    with _transform(args):
        inspect(args.model, args.weights, args.layer, args.dataset, out=args.out,
                split=args.split, count=None if args.all else args.count,
                projector=args.projector, seed=args.seed, backend=_backend(args))
    return 0


def cmd_evaluate(args):
    import json
    from ..evaluation.reports import evaluate
    _set_db(args)
    if args.k < 1:
        raise LayergraphError("--k must be positive")
    if args.batch_size < 1:
        raise LayergraphError("--batch-size must be positive")
    if args.threshold is not None and not (args.binary or args.export_codes):
        raise LayergraphError("--threshold needs --binary or --export-codes")
    with _transform(args):
        report = evaluate(args.model, args.weights, args.dataset, query=args.query,
                          reference=args.reference, layer=args.layer, k=args.k,
                          count=args.count, seed=args.seed, batch_size=args.batch_size,
                          binary=args.binary, threshold=args.threshold,
                          export_codes=args.export_codes, log=None if args.json else print,
                          backend=_backend(args))
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def add_commands(sub):
    p = sub.add_parser("test-many", help="classify a dataset split; accuracy per label, "
                                         "confusion matrix")
    p.add_argument("--model", required=True, help="train_val (or deploy) prototxt")
    p.add_argument("--weights", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="testing", choices=["training", "testing"])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, default=1000, help="random images (default 1000)")
    group.add_argument("--all", action="store_true", help="every image of the split")
    p.add_argument("--centroids", default="model", choices=["model", "training"],
                   help="model: the Decode layer's learned centroids; training: recompute "
                        "them from the training split with the final weights")
    p.add_argument("--centroid-dataset",
                   help="with --centroids training: the dataset whose training split gives "
                        "the centroids (default: --dataset; use the one the net trained on)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for report.json and confusion.png")
    add_transform_arguments(p)
    p.add_argument("--db")
    add_device_arguments(p)
    p.set_defaults(func=cmd_test_many)

    p = sub.add_parser("inspect", help="t-SNE picture / projector files of embeddings")
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--layer", required=True, help="blob, layer or Debug layer name")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="testing", choices=["training", "testing"])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, default=2000)
    group.add_argument("--all", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="t-SNE scatter PNG")
    p.add_argument("--projector", help="directory for tensors.tsv and metadata.tsv")
    add_transform_arguments(p)
    p.add_argument("--db")
    add_device_arguments(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("evaluate", help="retrieval metrics of the embedding: P@1, "
                                        "R-precision, MAP@R, mAP, k-NN, centroid, NMI")
    p.add_argument("--model", required=True, help="train_val (or deploy) prototxt")
    p.add_argument("--weights", required=True)
    p.add_argument("--dataset", required=True, help="dataset name (without .training/.testing)")
    p.add_argument("--query", default="testing", choices=["training", "testing"],
                   help="the split whose images are the queries (default testing)")
    p.add_argument("--reference", default="training", choices=["training", "testing"],
                   help="the split searched (default training); the query split itself: "
                        "leave-one-out")
    p.add_argument("--layer", help="embedding blob or layer (default: the Decode layer's "
                                   "input, else the last output)")
    p.add_argument("--k", type=int, default=5, help="neighbours for k-NN accuracy (default 5)")
    p.add_argument("--count", type=int,
                   help="random images of each split (default: all)")
    p.add_argument("--seed", type=int, default=0, help="for --count and k-means")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--binary", action="store_true",
                   help="also binarise the embedding: Hamming-ranking mAP and precision "
                        "within Hamming radius 2")
    p.add_argument("--threshold", type=float,
                   help="bit = value > threshold (default: 0.5 if the values lie in [0, 1], "
                        "else 0)")
    p.add_argument("--export-codes", metavar="FILE.npz",
                   help="write the packed binary codes (np.packbits) and labels")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_transform_arguments(p)
    p.add_argument("--db")
    add_device_arguments(p)
    p.set_defaults(func=cmd_evaluate)
