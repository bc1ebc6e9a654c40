"""The seed tutorial, for real: TripletNet_28x28 (or Siamese_28x28) trained on
30 images per label of the MNIST training split, then test-many on the WHOLE
testing split, over several seeds; raw-pixel baselines on the same draws.

    python benchmarks/seed_tutorial.py [--template TripletNet_28x28] [--seeds 1 2 3]
        [--per-label 30] [--iterations N] [--dataset MNIST] [--db DIR] [--out DIR]
        [--edit "OLD=>NEW" ...] [--set FIELD=VALUE ...] [--tag NAME]

With --per-label 0 the whole training split is used (the full-data runs).
For each seed s: `data copy --max-per-label 30 --seed s` (a different draw of
the 300 training images), `train` with random_seed s, `test-many --all` with
the centroids the Decode layer learned ("model") and with centroids recomputed
from the 300 training images under the final weights ("training").  Baselines
on the same draw: raw-pixel 1-nearest-neighbour and nearest class centroid.
Prints mean and spread; writes <out>/seed_tutorial_<template>.json.  The
default <out> is runs/seed_tutorial/ at the repository root (ignored by git);
give --out benchmarks/results to record a result.  While a seed trains, a
progress line (iteration, loss, images/s, ETA) every --progress-seconds.
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
from layergraph.evaluation import load_split, test_many  # noqa: E402
from layergraph.tools.templates import new_from_template  # noqa: E402


ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


class Progress:
    """Solver callback: a line every ``every`` seconds while training, and
    one per test."""

    def __init__(self, label, every=30.0):
        self.label, self.every = label, every
        self.start = self.last = None
        self.rates = []

    def on_start(self, solver):
        if self.start is None:
            self.start = self.last = time.monotonic()
            self.first_iter = solver.iter
            print(f"[{self.label}] training {solver.param.max_iter} iterations", flush=True)

    def on_iteration(self, solver, record):
        self.rates.append(record["images_per_s"])
        now = time.monotonic()
        if now - self.last < self.every:
            return
        done = max(solver.iter - self.first_iter, 1)
        eta = (now - self.start) / done * max(solver.param.max_iter - solver.iter, 0)
        print(f"[{self.label}] iteration {solver.iter}/{solver.param.max_iter}, loss "
              f"{solver.smoothed_loss:.4g}, {sum(self.rates) / len(self.rates):.0f} images/s, "
              f"ETA {int(eta) // 60}:{int(eta) % 60:02d}", flush=True)
        self.last, self.rates = now, []

    def on_test(self, solver, test_id, results):
        shown = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if np.ndim(v) == 0)
        print(f"[{self.label}] iteration {solver.iter}, test: {shown}", flush=True)


def pixel_baselines(train_name, dataset):
    xtr, ytr, _ = load_split(train_name, "training")
    xte, yte, _ = load_split(dataset, "testing")
    xtr = xtr.reshape(len(xtr), -1).astype(np.float32) / 255
    xte = xte.reshape(len(xte), -1).astype(np.float32) / 255
    d = (xte ** 2).sum(1)[:, None] - 2 * xte @ xtr.T + (xtr ** 2).sum(1)[None]
    nn1 = float((ytr[d.argmin(1)] == yte).mean())
    classes = np.unique(ytr)
    cents = np.stack([xtr[ytr == c].mean(0) for c in classes])
    dc = ((xte[:, None, :] - cents[None]) ** 2).sum(-1)
    ncc = float((classes[dc.argmin(1)] == yte).mean())
    return nn1, ncc


def apply_edits(path, edits):
    """Each edit is "OLD=>NEW": OLD must occur in the file."""
    with open(path) as f:
        text = f.read()
    for edit in edits:
        old, sep, new = edit.partition("=>")
        if not sep or old not in text:
            raise SystemExit(f"--edit {edit!r}: expected OLD=>NEW with OLD in {path}")
        text = text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", default="TripletNet_28x28")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--per-label", type=int, default=30,
                        help="training images per label (0: the whole training split)")
    parser.add_argument("--iterations", type=int,
                        help="max_iter; the schedule (stepvalue, test_interval) scales with it")
    parser.add_argument("--edit", action="append", default=[], metavar="OLD=>NEW",
                        help="replace text in the copied train_val.prototxt (a variant of "
                             "the template, measured without editing it); repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a solver field (e.g. weight_decay=5e-4); repeatable")
    parser.add_argument("--tag", default="",
                        help="suffix for the run folders and the JSON (variants side by side)")
    parser.add_argument("--dataset", default="MNIST")
    parser.add_argument("--db", help="image database root")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "seed_tutorial"),
                        help="where the runs and the JSON go (default: runs/seed_tutorial "
                             "at the repository root, ignored by git)")
    parser.add_argument("--progress-seconds", type=float, default=30.0,
                        help="a progress line every this many seconds while training")
    args = parser.parse_args()
    if args.db:
        os.environ["LAYERGRAPH_DB"] = os.path.abspath(args.db)
    if not store.dataset_exists(args.dataset):
        from layergraph.imagedb.creators import create_mnist
        create_mnist(None, name=args.dataset)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for seed in args.seeds:
        few = f"{args.dataset}.{args.per_label}s{seed}" if args.per_label else args.dataset
        if not store.dataset_exists(few):
            from layergraph.imagedb.creators import copy_dataset
            copy_dataset(args.dataset, few, max_per_label=args.per_label, seed=seed)
        run_dir = os.path.join(args.out, "runs", f"{args.template}{args.tag}_s{seed}")
        new_from_template(args.template, few, run_dir, force=True, max_iter=args.iterations)
        apply_edits(os.path.join(run_dir, "train_val.prototxt"), args.edit)
        overrides = {"random_seed": seed, "snapshot": 0}
        for item in args.set:
            field, _, value = item.partition("=")
            overrides[field] = float(value) if "." in value or "e" in value else int(value)
        solver = Solver(os.path.join(run_dir, "solver.prototxt"), log=None, overrides=overrides)
        solver.add_callback(Progress(f"seed {seed}", args.progress_seconds))
        t0 = time.time()
        solver.solve()
        train_s = time.time() - t0
        weights = f"{solver.snapshot_prefix()}_iter_{solver.iter}.caffemodel"
        solver.close()
        print(f"[seed {seed}] trained in {train_s:.0f} s; testing on all of "
              f"{args.dataset}.testing", flush=True)
        model = os.path.join(run_dir, "train_val.prototxt")
        acc_model = test_many(model, weights, args.dataset, count=None, log=None)["accuracy"]
        acc_train = test_many(model, weights, args.dataset, count=None, log=None,
                              centroids="training", centroid_dataset=few)["accuracy"]
        nn1, ncc = pixel_baselines(few, args.dataset)
        row = {"seed": seed, "train_images": store.dataset_info(few)["sources"]["training"]
               ["count"], "iterations": solver.iter, "train_seconds": round(train_s, 1),
               "accuracy_model_centroids": acc_model,
               "accuracy_training_centroids": acc_train,
               "pixel_1nn": nn1, "pixel_ncc": ncc, "edits": args.edit + args.set}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.template} on {args.per_label} images/label, tested on all of "
          f"{args.dataset}.testing, seeds {args.seeds}:")
    for key in ("accuracy_model_centroids", "accuracy_training_centroids", "pixel_1nn",
                "pixel_ncc"):
        v = np.array([r[key] for r in rows])
        print(f"  {key:<28} mean {v.mean():.2%}  std {v.std(ddof=1) if len(v) > 1 else 0:.2%}"
              f"  min {v.min():.2%}  max {v.max():.2%}")
    path = os.path.join(args.out, f"seed_tutorial_{args.template}{args.tag}.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
