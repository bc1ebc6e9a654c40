"""Draw a net as a picture: layers as boxes, blobs as arrows, ranked by depth.

Rendered with matplotlib (no graphviz needed); ``.dot`` output writes the
graph in Graphviz's language instead.
"""
import os

from ..net import filter_net, upgrade_legacy_inputs
from ..proto import pb
from ..prototxt import read_net

COLORS = {"Convolution": "#ff8a65", "Pooling": "#81d4fa", "InnerProduct": "#ffb74d",
          "Data": "#aed581", "Input": "#aed581", "DataSequence": "#aed581"}
LOSS_COLOR, DEFAULT_COLOR = "#e57373", "#e0e0e0"


def _graph(model, phase):
    param = model if isinstance(model, pb.NetParameter) else read_net(model)
    param = filter_net(upgrade_legacy_inputs(param), pb.NetState(phase=phase))
    producer, nodes, edges = {}, [], []
    for i, lp in enumerate(param.layer):
        nodes.append((lp.name, lp.type))
        for b in lp.bottom:
            if b in producer:
                edges.append((producer[b], i, b))
        for t in lp.top:
            producer[t] = i
    return param, nodes, edges


def to_dot(model, phase=pb.TRAIN, rankdir="TB"):
    _, nodes, edges = _graph(model, phase)
    lines = [f'digraph net {{ rankdir={rankdir}; node [shape=box, style=filled];']
    for i, (name, typ) in enumerate(nodes):
        color = LOSS_COLOR if typ.endswith("Loss") else COLORS.get(typ, DEFAULT_COLOR)
        lines.append(f'  n{i} [label="{name}\\n({typ})", fillcolor="{color}"];')
    for a, b, blob in edges:
        lines.append(f'  n{a} -> n{b} [label="{blob}"];')
    lines.append("}")
    return "\n".join(lines)


def draw_net(model, out, phase=pb.TRAIN, rankdir="TB"):
    if os.path.splitext(out)[1].lower() == ".dot":
        with open(out, "w") as f:
            f.write(to_dot(model, phase, rankdir))
        return out
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    param, nodes, edges = _graph(model, phase)
    rank = [0] * len(nodes)
    for a, b, _ in sorted(edges, key=lambda e: e[1]):
        rank[b] = max(rank[b], rank[a] + 1)
    by_rank = {}
    for i, r in enumerate(rank):
        by_rank.setdefault(r, []).append(i)
    pos = {}
    for r, members in by_rank.items():
        for k, i in enumerate(members):
            x, y = k - (len(members) - 1) / 2.0, -r
            pos[i] = (y, x) if rankdir == "LR" else (x, y)
    width = max(len(m) for m in by_rank.values()) if by_rank else 1
    depth = len(by_rank) or 1
    size = (max(6, 2.6 * width), max(4, 1.1 * depth))
    fig, ax = plt.subplots(figsize=size if rankdir == "TB" else size[::-1])
    for a, b, blob in edges:
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="#555555", shrinkA=14, shrinkB=14))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, blob, fontsize=6, color="#333333",
                ha="center", va="center", bbox=dict(fc="white", ec="none", pad=0.5))
    for i, (name, typ) in enumerate(nodes):
        color = LOSS_COLOR if typ.endswith("Loss") else COLORS.get(typ, DEFAULT_COLOR)
        x, y = pos[i]
        ax.text(x, y, f"{name}\n{typ}", ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="#333333"))
    xs = [p[0] for p in pos.values()] or [0]
    ys = [p[1] for p in pos.values()] or [0]
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    ax.set_title(param.name or "net")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
