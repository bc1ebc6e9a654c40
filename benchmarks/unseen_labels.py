"""The unseen-label protocol of the metric-learning literature (CUB, Cars,
SOP): train on some labels, judge retrieval on labels never seen in training.
MNIST (the shipped sample) and Fashion-MNIST, labels 0-4 seen, 5-9 unseen.

    apt-get install dataset-fashion-mnist      # /usr/share/datasets/fashion-mnist
    python benchmarks/unseen_labels.py [--iterations 1500] [--seeds 1 2 3]
        [--datasets MNIST FASHION] [--seen 0-4] [--db DIR] [--runs DIR] [--resume]
        [--json benchmarks/results/unseen_labels.json]

For each dataset D (created if missing: `data mnist`, the shipped sample
for MNIST, --fashion-source for FASHION):

    layergraph data copy --source D --output D.seen --labels 0-4
    layergraph data copy --source D --output D.unseen --exclude-labels 0-4

(both renumbered 0..4), then for each configuration and seed s

    layergraph new --template T --dataset D.seen --out RUN --max-iter N
    layergraph train --solver RUN/solver.prototxt --seed s
    layergraph evaluate --model RUN/train_val.prototxt --weights RUN/...caffemodel \\
        --dataset D.unseen --query testing --reference training --json

i.e. the queries are the unseen labels' testing images, the reference set
their training images (pytorch-metric-learning's definitions: P@1,
R-precision, MAP@R, mAP, k-NN and nearest-centroid accuracy, NMI).  The
solver's one test, at the end, gives the nearest-centroid accuracy on the
SEEN labels' testing images for comparison.  Baseline on the same unseen
split: raw pixels (scaled to [0, 1]) as the embedding.

Configurations: ``untrained`` is the template's net with its random
initial weights (0 iterations: what the architecture alone gives);
``batchhard`` is the TripletNet_28x28_BatchHard template as
shipped (100 semi-hard iterations, then batch-hard; augmentation);
``semihard_noaug`` (Fashion-MNIST) is benchmarks/fashion_mining.py's
semi-hard configuration without augmentation.  The templates' own schedule
is scaled to --iterations by `new --max-iter` (1,500 by default instead of
the template's 2,000, so that the whole benchmark takes about 20 minutes on
2 CPU cores).  Each run also carries the collapse guard (layergraph.guards);
whether it fired is recorded.

Writes the per-run rows, the per-configuration mean/std and the baselines to
--json; prints a table.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from layergraph import Solver  # noqa: E402
from layergraph.errors import DataError  # noqa: E402
from layergraph.imagedb import store  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CONFIGS = {
    # name: (template, text replacements in train_val.prototxt)
    # the template's random initial weights, not trained: what the
    # architecture alone gives (0 iterations)
    "untrained": ("TripletNet_28x28_BatchHard", []),
    # the template as shipped (it mined batch-hard with affine augmentation
    # when the README's figures were measured; semi-hard and elastic now)
    "batchhard": ("TripletNet_28x28_BatchHard", []),
    # the same without augmentation
    "semihard_noaug": ("TripletNet_28x28_BatchHard",
                       [("max_shift: 2 max_rotation: 10 min_scale: 0.9 max_scale: 1.1", ""),
                        ("elastic_alpha: 34 elastic_sigma: 4", "")]),
}
#: the configurations run per dataset
DATASET_CONFIGS = {"MNIST": ["untrained", "batchhard"],
                   "FASHION": ["untrained", "batchhard", "semihard_noaug"]}
#: metrics kept per run (evaluation.metrics names)
KEEP = ("precision_at_1", "r_precision", "mean_average_precision_at_r",
        "mean_average_precision", "knn_accuracy", "centroid_accuracy", "nmi")
SHORT = {"precision_at_1": "P@1", "r_precision": "R-prec",
         "mean_average_precision_at_r": "MAP@R", "mean_average_precision": "mAP",
         "knn_accuracy": "5-NN", "centroid_accuracy": "centroid", "nmi": "NMI",
         "seen_accuracy": "seen acc"}


def parse_labels(text):
    """'0-4' or '0,2,4-6' -> sorted label numbers (the CLI's form)."""
    from layergraph.cli.data import _labels
    return _labels(text)


def ensure_dataset(name, fashion_source):
    """Create MNIST (the shipped sample) or FASHION if the database lacks it."""
    if store.dataset_exists(name):
        return
    from layergraph.imagedb.creators import create_mnist
    try:
        if name == "FASHION":
            create_mnist(fashion_source, name=name)
        else:
            create_mnist(None, name=name, download=False)
    except DataError:
        if not store.dataset_exists(name):  # not another process creating it meanwhile
            raise


def make_splits(dataset, seen):
    """(seen name, unseen name): `data copy --labels` and its complement."""
    from layergraph.imagedb.creators import copy_dataset
    names = (f"{dataset}.seen", f"{dataset}.unseen")
    copy_dataset(dataset, names[0], labels=seen, overwrite=True)
    copy_dataset(dataset, names[1], exclude_labels=seen, overwrite=True)
    return names


def pixel_baseline(unseen):
    """The retrieval metrics of raw pixels (/255) on the unseen split."""
    from layergraph.evaluation import load_split, retrieval_metrics
    xq, yq, _ = load_split(unseen, "testing")
    xr, yr, _ = load_split(unseen, "training")
    xq = xq.reshape(len(xq), -1).astype(np.float32) / 255
    xr = xr.reshape(len(xr), -1).astype(np.float32) / 255
    report = retrieval_metrics(xq, yq, xr, yr, k=5)
    return {k: report[k] for k in KEEP}


def train_and_evaluate(dataset, config, seed, seen_name, unseen_name, args):
    from layergraph.evaluation.reports import evaluate
    from layergraph.guards import CollapseGuard
    from layergraph.tools.templates import new_from_template
    template, edits = CONFIGS[config]
    run_dir = os.path.join(args.runs, f"{dataset}_{config}_s{seed}")
    # recipe="template": each configuration says its own settings (no large_dataset recipe)
    new_from_template(template, seen_name, run_dir, force=True, max_iter=args.iterations,
                      recipe="template")
    model = os.path.join(run_dir, "train_val.prototxt")
    with open(model) as f:
        text = f.read()
    for old, new in edits:
        if old not in text:
            raise SystemExit(f"{model}: the template changed: '{old}' not found")
        text = text.replace(old, new)
    with open(model, "w") as f:
        f.write(text)
    # one test, at the end: seen-label accuracy (refit centroids) for reference
    overrides = {"random_seed": seed, "snapshot": 0, "test_interval": args.iterations}
    if config == "untrained":
        overrides["max_iter"] = 0
    solver = Solver(os.path.join(run_dir, "solver.prototxt"), log=None, overrides=overrides)
    guard = CollapseGuard()
    solver.add_callback(guard)
    seen_accuracy = {}
    solver.add_callback(_LastTest(seen_accuracy))
    t0 = time.time()
    solver.solve()
    train_s = time.time() - t0
    weights = f"{solver.snapshot_prefix()}_iter_{solver.iter}.caffemodel"
    solver.close()
    t0 = time.time()
    report = evaluate(model, weights, unseen_name, query="testing", reference="training",
                      log=None)
    row = {"dataset": dataset, "config": config, "template": template, "seed": seed,
           "iterations": solver.iter, "train_seconds": round(train_s, 1),
           "evaluate_seconds": round(time.time() - t0, 1),
           "queries": report["queries"], "references": report["references"],
           "seen_accuracy": seen_accuracy.get("accuracy"),
           "collapse_warning_at": guard.fired_at}
    row.update({k: report[k] for k in KEEP})
    return row


class _LastTest:
    """Solver callback keeping the last test's scalar results."""

    def __init__(self, into):
        self.into = into

    def on_test(self, solver, test_id, results):
        self.into.update({k: float(v) for k, v in results.items() if np.ndim(v) == 0})


def summarize(rows):
    """{dataset: {config: {metric: {mean, std, min, max}}}} over the seeds."""
    out = {}
    for row in rows:
        out.setdefault(row["dataset"], {}).setdefault(row["config"], []).append(row)
    summary = {}
    for dataset, configs in out.items():
        for config, runs in configs.items():
            stats = {}
            for key in KEEP + ("seen_accuracy",):
                v = np.array([r[key] for r in runs if r[key] is not None], float)
                if len(v):
                    stats[key] = {"mean": float(v.mean()),
                                  "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                  "min": float(v.min()), "max": float(v.max())}
            stats["seeds"] = [r["seed"] for r in runs]
            stats["collapse_warnings"] = sum(r["collapse_warning_at"] is not None
                                             for r in runs)
            summary.setdefault(dataset, {})[config] = stats
    return summary


def print_table(result):
    cols = ("precision_at_1", "r_precision", "mean_average_precision_at_r",
            "mean_average_precision", "centroid_accuracy", "nmi", "seen_accuracy")
    print(f"\nunseen labels {result['unseen_labels']} (trained on {result['seen_labels']}), "
          f"{result['iterations']} iterations, seeds {result['seeds']}: mean ± std")
    head = f"{'dataset':<8} {'embedding':<15}" + "".join(f"{SHORT[c]:>15}" for c in cols)
    print(head)
    for dataset, info in result["datasets"].items():
        pix = info["pixels"]
        print(f"{dataset:<8} {'raw pixels':<15}" + "".join(
            f"{pix[c]:>15.4f}" if c in pix else f"{'':>15}" for c in cols))
        for config, stats in result["summary"].get(dataset, {}).items():
            cells = []
            for c in cols:
                s = stats.get(c)
                cells.append(f"{s['mean']:>8.4f} ±{s['std']:.3f}" if s else f"{'':>15}")
            print(f"{dataset:<8} {config:<15}" + "".join(f"{c:>15}" for c in cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--datasets", nargs="+", default=["MNIST", "FASHION"],
                        choices=list(DATASET_CONFIGS))
    parser.add_argument("--seen", default="0-4", help="the training labels (default 0-4); "
                                                      "the others are the unseen ones")
    parser.add_argument("--fashion-source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--db", help="image database root")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "unseen_labels"),
                        help="where the runs go (default runs/unseen_labels, ignored by git)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the runs an interrupted invocation finished "
                             "(<runs>/rows.jsonl)")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results",
                                                       "unseen_labels.json"))
    args = parser.parse_args()
    if args.db:
        os.environ["LAYERGRAPH_DB"] = os.path.abspath(args.db)
    seen = parse_labels(args.seen)
    os.makedirs(args.runs, exist_ok=True)
    # every finished run is appended to <runs>/rows.jsonl; --resume reuses them
    rows_path = os.path.join(args.runs, "rows.jsonl")
    done = {}
    if args.resume and os.path.exists(rows_path):
        with open(rows_path) as f:
            for line in f:
                r = json.loads(line)
                done[(r["dataset"], r["config"], r["seed"], r["iterations"])] = r
    elif os.path.exists(rows_path):
        os.remove(rows_path)
    start = time.time()
    rows, datasets = [], {}
    for dataset in args.datasets:
        ensure_dataset(dataset, args.fashion_source)
        present = sorted(int(k) for k in
                         store.dataset_info(dataset)["sources"]["training"]["label_counts"])
        seen_name, unseen_name = make_splits(dataset, seen)
        info = {name: store.dataset_info(name) for name in (seen_name, unseen_name)}
        pixels = pixel_baseline(unseen_name)
        datasets[dataset] = {
            "seen": seen_name, "unseen": unseen_name,
            "seen_images": {s: info[seen_name]["sources"][s]["count"]
                            for s in store.SPLITS},
            "unseen_images": {s: info[unseen_name]["sources"][s]["count"]
                              for s in store.SPLITS},
            "unseen_source_labels": info[unseen_name].get("source_labels"),
            "pixels": pixels}
        print(f"{dataset}: seen {datasets[dataset]['seen_images']}, unseen "
              f"{datasets[dataset]['unseen_images']}; raw pixels on the unseen labels: "
              + ", ".join(f"{SHORT[k]} {v:.4f}" for k, v in pixels.items()), flush=True)
        for config in DATASET_CONFIGS[dataset]:
            for seed in args.seeds:
                key = (dataset, config, seed, 0 if config == "untrained" else args.iterations)
                if key in done:
                    row = done[key]
                else:
                    row = train_and_evaluate(dataset, config, seed, seen_name, unseen_name,
                                             args)
                    with open(rows_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                rows.append(row)
                print(json.dumps(row), flush=True)
    unseen = [v for v in present if v not in seen]
    from layergraph.imagedb.creators import format_labels
    result = {"seen_labels": format_labels(seen), "unseen_labels": format_labels(unseen),
              "iterations": args.iterations, "seeds": args.seeds,
              "query": "unseen testing split", "reference": "unseen training split",
              "datasets": datasets, "summary": summarize(rows), "runs": rows,
              "total_seconds": round(time.time() - start, 1),
              "run_seconds_sum": round(sum(r["train_seconds"] + r["evaluate_seconds"]
                                           for r in rows), 1)}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print_table(result)
    print(f"total {result['total_seconds'] / 60:.1f} min; wrote {args.json}")


if __name__ == "__main__":
    main()
