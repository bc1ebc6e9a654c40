"""``layergraph test``: the mean of a net's outputs over N batches (Caffe's
`caffe test`)."""
import numpy as np

from .common import _backend, _phase, _set_db, add_device_arguments, positive_int


def cmd_test(args):
    from ..backend import to_numpy
    from ..net import Net
    _set_db(args)
    net = Net(args.model, phase=_phase(args.phase), weights=args.weights,
              backend=_backend(args))
    sums = {}
    try:
        for i in range(args.iterations):
            net.forward()
            for name in net.outputs:
                value = to_numpy(net.blobs[name].data).astype(np.float64)
                if args.verbose:
                    print(f"Batch {i}, {name} = {np.array2string(value, precision=4)}")
                sums[name] = sums.get(name, 0.0) + value
    finally:
        net.close()
    for name, total in sums.items():
        mean = total / args.iterations
        shown = f"{float(mean):.6g}" if np.ndim(mean) == 0 else np.array2string(mean, precision=4)
        print(f"{name} = {shown}")
    return 0


def add_commands(sub):
    p = sub.add_parser("test", help="score a trained net (mean of its outputs)")
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--iterations", type=positive_int, default=50)
    p.add_argument("--phase", default="TEST")
    p.add_argument("--db")
    p.add_argument("--verbose", action="store_true")
    add_device_arguments(p)
    p.set_defaults(func=cmd_test)
