"""The collapse guard (layergraph.guards.CollapseGuard) shown working: it
fires on a deliberately bad setting and stays silent on the templates.

    python benchmarks/collapse_guard.py [--cases bad_batchhard_fashion TripletNet_28x28 ...]
        [--template-iterations N] [--seed 1] [--db DIR] [--runs DIR] [--update]
        [--json benchmarks/results/collapse_guard.json]

Cases (each: `layergraph new --template T --dataset D --out RUN [--max-iter N]`,
then trained as `layergraph train` trains it: a Solver with the guard as its
callback, the log lines captured):

``bad_batchhard_fashion``  TripletNet_28x28_BatchHard on Fashion-MNIST with
    plain batch-hard mining from iteration 0 (``miner: BATCH_HARD``, no
    semi-hard warm-up; the template mines semi-hard), 500
    iterations: the setting that collapsed in every seed in issue 9.  It must
    fire.  The same run is repeated through the real command line
    (``layergraph train``, 200 iterations) to show the wiring in cli/train.py
    prints the warning.
``TripletNet_28x28``, ``TripletNet_28x28_BatchHard``, ``Siamese_28x28``,
``DeepHash_28x28``  each template's default run on MNIST (the shipped
    sample, `data mnist`): its own solver, iterations and seed, or with
    --template-iterations N only its first N iterations (the schedule as it
    is, as `train --iterations N` runs it) and a test at the end.  It must
    not fire.

Alongside the guard, an independent recorder measures what the guard judges
from, every 10 iterations: the embedding spread S = mean ||x_i - xbar|| of
the loss layer's embedding bottoms, the active-triplet fraction and the
loss; the JSON keeps the trace (every 50th iteration) and its minimum
relative to the first checks, the warning line and its iteration, and the
last TEST accuracy (which can look fine while the embedding is collapsed).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from layergraph import Solver  # noqa: E402
from layergraph.errors import DataError  # noqa: E402
from layergraph.guards import WATCHED, CollapseGuard  # noqa: E402
from layergraph.imagedb import store  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WARNING = re.compile(r"WARNING: embedding collapse at iteration (\d+)")

#: name -> (template, dataset, train_val edits, iterations (None: the template's),
#:          one test at the end only (a Fashion-MNIST refit covers 60,000 images),
#:          expected to fire)
CASES = {
    "bad_batchhard_fashion": ("TripletNet_28x28_BatchHard", "FASHION",
                              [("miner: SEMI_HARD", "miner: BATCH_HARD")],
                              500, True, True),
    "TripletNet_28x28": ("TripletNet_28x28", "MNIST", [], None, False, False),
    "TripletNet_28x28_BatchHard": ("TripletNet_28x28_BatchHard", "MNIST", [], None, False,
                                   False),
    "Siamese_28x28": ("Siamese_28x28", "MNIST", [], None, False, False),
    "DeepHash_28x28": ("DeepHash_28x28", "MNIST", [], None, False, False),
}
CLI_ITERATIONS = 200  # the command-line repeat of the bad case


class SpreadRecorder:
    """Solver callback: every ``every`` iterations, for each metric-learning
    loss layer (the guard's WATCHED types), the embedding spread, the active
    fraction (its second top, if any) and the loss -- measured here, apart
    from the guard, to check what it reports."""

    def __init__(self, every=10):
        self.every = every
        self.trace = {}   # layer -> [(iter, spread, active, loss)]
        self._layers = None

    def on_start(self, solver):
        net = solver.net
        self._layers = [(name, [bottom[j] for j in WATCHED[layer.type] if j < len(bottom)],
                         top) for name, layer, bottom, top in
                        zip(net.layer_names, net.layers, net.bottom_vecs, net.top_vecs)
                        if layer.type in WATCHED]

    def on_iteration(self, solver, record):
        if record["iter"] % self.every:
            return
        from layergraph.backend import to_numpy
        for name, bottoms, tops in self._layers:
            x = np.concatenate([to_numpy(b.data).reshape(b.shape[0], -1) for b in bottoms])
            spread = float(np.linalg.norm(x - x.mean(0), axis=1).mean())
            active = float(to_numpy(tops[1].data)) if len(tops) > 1 else None
            loss = float(to_numpy(tops[0].data))
            self.trace.setdefault(name, []).append((record["iter"], spread, active, loss))


class LastTest:
    def __init__(self):
        self.results, self.iter = {}, None

    def on_test(self, solver, test_id, results):
        self.iter = solver.iter
        self.results = {k: float(v) for k, v in results.items() if np.ndim(v) == 0}


def ensure_dataset(name, fashion_source):
    if store.dataset_exists(name):
        return
    from layergraph.imagedb.creators import create_mnist
    try:
        if name == "FASHION":
            create_mnist(fashion_source, name=name)
        else:
            create_mnist(None, name=name, download=False)
    except DataError:
        if not store.dataset_exists(name):
            raise


def make_run(case, args, suffix="", iterations=None):
    """`layergraph new` for a case (its edits applied); returns the run folder."""
    from layergraph.tools.templates import new_from_template
    template, dataset, edits, case_iterations, _, _ = CASES[case]
    iterations = iterations or case_iterations   # None: the template's schedule as is
    run_dir = os.path.join(args.runs, case + suffix)
    # recipe="template": the cases say their own settings (no large_dataset recipe)
    new_from_template(template, dataset, run_dir, force=True, max_iter=iterations,
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
    return run_dir


def run_case(case, args):
    template, dataset, edits, _, one_test, expect = CASES[case]
    run_dir = make_run(case, args)
    lines = []
    overrides = {}
    if args.seed is not None:
        overrides["random_seed"] = args.seed
    if one_test:
        overrides["test_interval"] = CASES[case][3]
    elif args.template_iterations:
        # the first N iterations of the default run (its schedule unscaled),
        # with a test at the end
        overrides["max_iter"] = overrides["test_interval"] = args.template_iterations
    solver = Solver(os.path.join(run_dir, "solver.prototxt"), log=lines.append,
                    overrides=overrides)
    # as cli/train.py wires it
    guard = CollapseGuard()
    recorder = SpreadRecorder()
    tests = LastTest()
    for callback in (recorder, guard, tests):
        solver.add_callback(callback)
    t0 = time.time()
    solver.solve()
    seconds = time.time() - t0
    seed, max_iter = solver.seed, solver.param.max_iter
    solver.close()
    with open(os.path.join(run_dir, "train_output.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    warnings = [line for line in lines if WARNING.search(line)]
    traces = {}
    for name, trace in recorder.trace.items():
        spreads = np.array([t[1] for t in trace])
        initial = float(spreads[:3].max())
        traces[name] = {
            "initial_spread": initial,
            "min_spread": float(spreads.min()),
            "min_spread_iter": int(trace[int(spreads.argmin())][0]),
            "final_spread": float(spreads[-1]),
            "min_spread_ratio": float(spreads.min() / initial) if initial else None,
            "every_50": [{"iter": it, "spread": round(s, 6),
                          "active": None if a is None else round(a, 4), "loss": round(l, 6)}
                         for it, s, a, l in trace if it % 50 == 0]}
    row = {"case": case, "template": template, "dataset": dataset,
           "edits": [f"{a} -> {b}" for a, b in edits], "iterations": max_iter, "seed": seed,
           "train_seconds": round(seconds, 1), "expected_to_fire": expect,
           "fired": guard.fired_at is not None, "fired_at": guard.fired_at,
           "warning": warnings[0] if warnings else None, "warnings_logged": len(warnings),
           "last_test_iter": tests.iter, "last_test": tests.results, "watched": traces,
           "output": os.path.relpath(os.path.join(run_dir, "train_output.txt"), ROOT)}
    return row


def cli_repeat(case, args):
    """The bad case again through `layergraph train` (cli/train.py's wiring),
    CLI_ITERATIONS iterations; returns the warning line the command printed."""
    run_dir = make_run(case, args, suffix="_cli", iterations=CLI_ITERATIONS)
    cmd = [sys.executable, "-m", "layergraph", "train", "--solver",
           os.path.join(run_dir, "solver.prototxt"), "--iterations", str(CLI_ITERATIONS),
           "--seed", str(args.seed if args.seed is not None else 1)]
    env = dict(os.environ)
    if args.db:
        env["LAYERGRAPH_DB"] = os.path.abspath(args.db)
    with open(os.path.join(run_dir, "solver.prototxt")) as f:
        solver_text = f.read()
    solver_text = re.sub(r"^test_interval:\s*\d+", "test_interval: 0", solver_text,
                         flags=re.M)
    with open(os.path.join(run_dir, "solver.prototxt"), "w") as f:
        f.write(solver_text)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    with open(os.path.join(run_dir, "train_output.txt"), "w") as f:
        f.write(output)
    found = [line for line in output.splitlines() if WARNING.search(line)]
    return {"command": " ".join(["layergraph"] + cmd[3:]), "exit_status": proc.returncode,
            "seconds": round(time.time() - t0, 1),
            "warning": found[0] if found else None,
            "fired_at": int(WARNING.search(found[0]).group(1)) if found else None,
            "warnings_printed": len(found),
            "output": os.path.relpath(os.path.join(run_dir, "train_output.txt"), ROOT)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--template-iterations", type=int,
                        help="run only the first N iterations of each template's default "
                             "run (its schedule unchanged; default: the whole run)")
    parser.add_argument("--seed", type=int,
                        help="random_seed (default: each template's own, 1)")
    parser.add_argument("--no-cli", action="store_true",
                        help="skip the command-line repeat of the bad case")
    parser.add_argument("--update", action="store_true",
                        help="keep the results of the cases not run from an existing --json")
    parser.add_argument("--fashion-source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--db", help="image database root")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "collapse_guard"))
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results",
                                                       "collapse_guard.json"))
    args = parser.parse_args()
    if args.db:
        os.environ["LAYERGRAPH_DB"] = os.path.abspath(args.db)
    os.makedirs(args.runs, exist_ok=True)
    rows, cli = [], None
    start = time.time()
    for case in args.cases:
        ensure_dataset(CASES[case][1], args.fashion_source)
        print(f"[{case}] training ...", flush=True)
        row = run_case(case, args)
        rows.append(row)
        name, trace = next(iter(row["watched"].items()))
        print(f"[{case}] {row['iterations']} iterations in {row['train_seconds']:.0f} s; "
              f"spread of '{name}': initial {trace['initial_spread']:.4g}, min "
              f"{trace['min_spread']:.3g} (x{trace['min_spread_ratio']:.2g}) at iteration "
              f"{trace['min_spread_iter']}; last TEST {row['last_test']}", flush=True)
        print(f"[{case}] guard: " + (f"fired at iteration {row['fired_at']}: {row['warning']}"
                                     if row["fired"] else "silent"), flush=True)
        if case == "bad_batchhard_fashion" and not args.no_cli:
            cli = cli_repeat(case, args)
            print(f"[{case}] `{cli['command']}` (exit {cli['exit_status']}) printed: "
                  f"{cli['warning']}", flush=True)
    if args.update and os.path.exists(args.json):   # keep the other cases' results
        with open(args.json) as f:
            old = json.load(f)
        ran = {r["case"] for r in rows}
        rows = [r for r in old["runs"] if r["case"] not in ran] + rows
        rows.sort(key=lambda r: list(CASES).index(r["case"]))
        if cli is None:
            cli = old.get("cli_repeat")
        start -= old.get("total_seconds", 0)
    result = {"runs": rows, "cli_repeat": cli,
              "guard": {"every": 10, "ratio": 0.01, "patience": 3, "baseline_checks": 3,
                        "loss_tolerance": 0.01},
              "all_as_expected": all(r["fired"] == r["expected_to_fire"] for r in rows)
              and (cli is None or cli["fired_at"] is not None),
              "total_seconds": round(time.time() - start, 1)}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{'case':<28} {'dataset':<8} {'iters':>6} {'min spread/initial':>19} "
          f"{'last TEST accuracy':>19}  guard")
    for r in rows:
        trace = next(iter(r["watched"].values()))
        acc = r["last_test"].get("accuracy")
        print(f"{r['case']:<28} {r['dataset']:<8} {r['iterations']:>6} "
              f"{trace['min_spread_ratio']:>19.2e} "
              f"{(f'{acc:.2%}' if acc is not None else 'n/a'):>19}  "
              + (f"FIRED at iteration {r['fired_at']}" if r["fired"] else "silent"))
    if cli:
        print(f"command line: {cli['command']} -> "
              + (f"warning at iteration {cli['fired_at']}" if cli["fired_at"] is not None
                 else "no warning"))
    print(f"as expected: {result['all_as_expected']}; total "
          f"{result['total_seconds'] / 60:.1f} min; wrote {args.json}")


if __name__ == "__main__":
    main()
