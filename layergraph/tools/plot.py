"""Plot training curves from the JSON-lines log a training run writes
(``<snapshot_prefix>_log.jsonl``): smoothed training loss and every test
output against the iteration."""
import json
import os

from ..errors import LayergraphError


def read_log(path):
    if not os.path.exists(path):
        raise LayergraphError(f"{path}: no such log file")
    train, tests = [], {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise LayergraphError(f"{path}:{n}: not a JSON line") from None
            if rec.get("kind") == "train":
                train.append(rec)
            elif rec.get("kind") == "test":
                for name, value in rec.get("outputs", {}).items():
                    if isinstance(value, (int, float)):
                        key = f"test#{rec.get('test_net', 0)} {name}"
                        tests.setdefault(key, []).append((rec["iter"], value))
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
        axes[0].plot([r["iter"] for r in train], [r["loss"] for r in train],
                     alpha=0.35, label="loss")
        axes[0].plot([r["iter"] for r in train], [r["smoothed_loss"] for r in train],
                     label="smoothed loss")
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
