"""``layergraph device``: the GPU(s) CuPy sees (Caffe's `caffe device_query`)."""
from ..errors import LayergraphError


def cmd_device(args):
    """Caffe's device_query: the GPU(s), memory, CuPy and CUDA versions."""
    from ..backend import describe_devices
    ok, lines = describe_devices()
    if not ok:
        raise LayergraphError(lines[0])
    for line in lines:
        print(line)
    if args.check:
        from ..backend import get_backend
        from ..kernels import kernel_index
        backend = get_backend(f"gpu:{args.check_id}")
        names = sorted(kernel_index())
        for name in names:
            backend.kernels.function(name)
        print(f"compiled {len(names)} kernels from kernels/*.cu on GPU {args.check_id}")
    return 0


def add_commands(sub):
    p = sub.add_parser("device", help="the GPU(s) CuPy sees (Caffe's device_query)")
    p.add_argument("--check", action="store_true",
                   help="also compile every kernel of kernels/ on the GPU")
    p.add_argument("--check-id", type=int, default=0, help="the GPU for --check")
    p.set_defaults(func=cmd_device)
