"""``layergraph draw`` (the net as a picture) and ``layergraph plot`` (training
curves from the JSON-lines log)."""
from .common import _phase


def cmd_draw(args):
    from ..tools.draw import draw_net
    draw_net(args.model, args.out, phase=_phase(args.phase), rankdir=args.rankdir)
    print(f"wrote {args.out}")
    return 0


def cmd_plot(args):
    from ..tools.plot import plot_log
    plot_log(args.log, args.out)
    print(f"wrote {args.out}")
    return 0


def add_commands(sub):
    p = sub.add_parser("draw", help="draw the net as a picture (PNG/SVG/PDF)")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--phase", default="TRAIN")
    p.add_argument("--rankdir", default="TB", choices=["TB", "LR"])
    p.set_defaults(func=cmd_draw)

    p = sub.add_parser("plot", help="training curves (loss, test outputs) to PNG")
    p.add_argument("--log", required=True, help="the <prefix>_log.jsonl a training wrote")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_plot)
