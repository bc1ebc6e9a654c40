"""Plot training curves from the JSON-lines log a training run writes
(``<snapshot_prefix>_log.jsonl``): smoothed training loss and every test
output against the iteration."""
import json
import os

from ..errors import LayergraphError


def read_log(path, warn=None):
    """(train records, {test output: [(iter, value)]}) from a JSON-lines log.
    A torn last line (a run killed while writing it) is skipped with a
    warning; any other line that is not a JSON object is an error."""
    import sys
    warn = warn or (lambda msg: print(f"layergraph: warning: {msg}", file=sys.stderr))
    if not os.path.exists(path):
        raise LayergraphError(f"{path}: no such log file")
    if not os.path.isfile(path):
        raise LayergraphError(f"{path}: is not a regular file")
    train, tests = [], {}
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("iter", 0), (int, float)):
            if n - 1 == last and n > 1 and not raw.endswith(b"\n"):
                warn(f"{path}:{n}: skipped a torn last line (the run was interrupted "
                     f"while writing it)")
                continue
            raise LayergraphError(f"{path}:{n}: not a training log line (expected one JSON "
                                  f"object per line, as `train` writes)")
        if rec.get("kind") == "train" and isinstance(rec.get("loss"), (int, float)):
            train.append(rec)
        elif rec.get("kind") == "test" and isinstance(rec.get("outputs"), dict):
            for name, value in rec["outputs"].items():
                if isinstance(value, (int, float)):
                    key = f"test#{rec.get('test_net', 0)} {name}"
                    tests.setdefault(key, []).append((rec.get("iter", 0), value))
    return train, tests


def plot_log(path, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train, tests = read_log(path)
    if not train and not tests:
        raise LayergraphError(f"{path}: the log holds no training or test records")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        axes[0].plot([r.get("iter", 0) for r in train], [r["loss"] for r in train],
                     alpha=0.35, label="loss")
        axes[0].plot([r.get("iter", 0) for r in train],
                     [r.get("smoothed_loss", r["loss"]) for r in train], label="smoothed loss")
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training loss")
    axes[0].legend()
    for key, points in sorted(tests.items()):
        axes[1].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    axes[1].set_xlabel("iteration")
    axes[1].set_title("test outputs")
    if tests:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
