"""CLI command ``layergraph upgrade IN OUT``: an old Caffe file in the current
format (Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and
upgrade_solver_proto_text in one command)."""
import os

from ..errors import LayergraphError


def cmd_upgrade(args):
    from ..upgrade import upgrade_file
    if os.path.abspath(args.input) == os.path.abspath(args.output) and not args.in_place:
        raise LayergraphError(f"{args.output}: is the input file; give another OUT, or "
                              f"--in-place to replace it")
    if os.path.exists(args.output) and not (args.force or args.in_place):
        raise LayergraphError(f"{args.output}: exists; give --force to overwrite it")
    report, problems = upgrade_file(args.input, args.output)
    for problem in problems:
        print(f"warning: {problem}")
    print(report)
    return 0


def add_commands(sub):
    p = sub.add_parser(
        "upgrade", help="write an old (V0/V1) net, .caffemodel or solver in the current format",
        description="Reads a net prototxt, a binary .caffemodel or a solver prototxt of any "
                    "Caffe version (the format is told by the content) and writes it in the "
                    "current format: text stays text, binary stays binary. V1 'layers { type: "
                    "CONVOLUTION blobs_lr ... }' become 'layer { type: \"Convolution\" param "
                    "{ lr_mult ... } }', V0 layers and padding layers are converted, 'input' "
                    "fields become an Input layer, solver_type becomes type.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--in-place", action="store_true", help="allow OUT to be IN")
    p.set_defaults(func=cmd_upgrade)
