"""Fashion-MNIST, full: random triplets (TripletNet_28x28) next to online
mining (TripletNet_28x28_BatchHard as shipped: semi-hard; with batch-hard
mining after a semi-hard warm-up; semi-hard without augmentation) at equal
iterations; 48-bit codes
(DeepHash_28x28) next to the float embedding.

    apt-get install dataset-fashion-mnist      # /usr/share/datasets/fashion-mnist
    python benchmarks/fashion_mining.py [--iterations 4000] [--seed 1]
        [--configs random semihard batchhard semihard_noaug deephash] [--out runs/fashion]
        [--edit "OLD=>NEW" ...]

For each configuration: `layergraph new --dataset FASHION --max-iter N`
(the schedule scales with N), `train` with random_seed --seed, then
`layergraph evaluate` on all 10,000 testing images against all 60,000
training images: nearest-centroid accuracy, P@1, MAP@R, mAP, k-NN accuracy
(and Hamming mAP for the codes).  Baseline on the same split: raw-pixel
1-NN.  Writes <out>/fashion_mining.json and <out>/fashion_curves.png (the
training loss and the TEST accuracy of each run against the iteration).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from layergraph import Solver  # noqa: E402
from layergraph.imagedb import store  # noqa: E402

CONFIGS = {
    # name: (template, text replacements in train_val.prototxt)
    "random": ("TripletNet_28x28", []),
    "semihard": ("TripletNet_28x28_BatchHard", []),        # the template as shipped
    # batch-hard after 100 semi-hard iterations (the template's first setting)
    "batchhard": ("TripletNet_28x28_BatchHard",
                  [("miner: SEMI_HARD", "miner: BATCH_HARD\n    warmup_iterations: 100 "
                                        "warmup_miner: SEMI_HARD")]),
    # semi-hard without the augmentation (shifts/rotations cost accuracy on clothes)
    "semihard_noaug": ("TripletNet_28x28_BatchHard",
                       [("max_shift: 2 max_rotation: 10 min_scale: 0.9 max_scale: 1.1", ""),
                        ("elastic_alpha: 34 elastic_sigma: 4", "")]),
    "deephash": ("DeepHash_28x28", []),
}
#: --edit OLD=>NEW adds replacements to every configuration (a variant measured
#: without editing the templates), e.g. --edit "num_output: 64=>num_output: 128"


def pixel_1nn(dataset, chunk=2000):
    from layergraph.evaluation.embedding import load_split
    xtr, ytr, _ = load_split(dataset, "training")
    xte, yte, _ = load_split(dataset, "testing")
    xtr = xtr.reshape(len(xtr), -1).astype(np.float32) / 255
    xte = xte.reshape(len(xte), -1).astype(np.float32) / 255
    sq = (xtr ** 2).sum(1)
    hits = 0
    for start in range(0, len(xte), chunk):
        q = xte[start:start + chunk]
        d = sq[None] - 2 * q @ xtr.T
        hits += int((ytr[d.argmin(1)] == yte[start:start + chunk]).sum())
    return hits / len(yte)


def run(name, args):
    from layergraph.evaluation.reports import evaluate
    from layergraph.tools.templates import new_from_template
    template, edits = CONFIGS[name]
    run_dir = os.path.join(args.out, name)
    # recipe="template": each configuration says its own settings (no large_dataset recipe)
    new_from_template(template, args.dataset, run_dir, force=True, max_iter=args.iterations,
                      recipe="template")
    path = os.path.join(run_dir, "train_val.prototxt")
    with open(path) as f:
        text = f.read()
    for old, new in list(edits) + [e.split("=>", 1) for e in args.edit]:
        assert old in text, (name, old)
        text = text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)
    solver = Solver(os.path.join(run_dir, "solver.prototxt"), log=None,
                    overrides={"random_seed": args.seed, "snapshot": 0,
                               "test_interval": max(args.iterations // 8, 1),
                               "test_iter": [20]})
    t0 = time.time()
    solver.solve()
    seconds = time.time() - t0
    weights = f"{solver.snapshot_prefix()}_iter_{solver.iter}.caffemodel"
    log_path = solver.log_path
    solver.close()
    report = evaluate(path, weights, args.dataset, log=None, binary=(name == "deephash"),
                      layer="code" if name == "deephash" else None)
    keep = ("centroid_accuracy", "precision_at_1", "mean_average_precision_at_r",
            "mean_average_precision", "knn_accuracy", "nmi", "hamming_map",
            "precision_hamming_radius_2")
    row = {"config": name, "template": template, "iterations": args.iterations,
           "train_seconds": round(seconds, 1), "log": log_path,
           "edits": [old for old in args.edit]}
    row.update({k: report[k] for k in keep if k in report})
    return row


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from layergraph.tools.plot import read_log
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        train, tests = read_log(row["log"])
        axes[0].plot([r["iter"] for r in train], [r["smoothed_loss"] for r in train],
                     label=row["config"])
        for key, points in tests.items():
            if key.endswith("accuracy"):
                axes[1].plot(*zip(*points), marker="o", label=row["config"])
    axes[0].set_title("training loss (smoothed)")
    axes[1].set_title("TEST accuracy (nearest centroid, 2,000 images)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--edit", action="append", default=[], metavar="OLD=>NEW",
                        help="a text replacement in every configuration's train_val.prototxt")
    parser.add_argument("--configs", nargs="+", default=["random", "semihard", "batchhard", "deephash"],
                        choices=list(CONFIGS))
    parser.add_argument("--dataset", default="FASHION")
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--db", help="image database root")
    parser.add_argument("--out", default=os.path.join("runs", "fashion"))
    args = parser.parse_args()
    if args.db:
        os.environ["LAYERGRAPH_DB"] = os.path.abspath(args.db)
    if not store.dataset_exists(args.dataset):
        from layergraph.imagedb.creators import create_mnist
        create_mnist(args.source, name=args.dataset)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    baseline = pixel_1nn(args.dataset)
    print(f"raw-pixel 1-NN on {args.dataset}: {baseline:.2%}", flush=True)
    for name in args.configs:
        row = run(name, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    plot(rows, os.path.join(args.out, "fashion_curves.png"))
    with open(os.path.join(args.out, "fashion_mining.json"), "w") as f:
        json.dump({"pixel_1nn": baseline, "runs": rows}, f, indent=2)
    print(f"{'config':<10} {'centroid':>9} {'P@1':>7} {'MAP@R':>7} {'mAP':>7} {'kNN':>7}")
    for r in rows:
        print(f"{r['config']:<10} {r['centroid_accuracy']:>9.2%} {r['precision_at_1']:>7.2%} "
              f"{r['mean_average_precision_at_r']:>7.4f} {r['mean_average_precision']:>7.4f} "
              f"{r['knn_accuracy']:>7.2%}"
              + (f"  Hamming mAP {r['hamming_map']:.4f}" if "hamming_map" in r else ""))
    print(f"wrote {args.out}/fashion_mining.json and fashion_curves.png")


if __name__ == "__main__":
    main()
