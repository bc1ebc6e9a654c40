"""``layergraph export``: the deploy (RUN) net as an ONNX model
(layergraph.onnx_export), optionally checked against our own forward pass
through onnxruntime."""
from ..errors import LayergraphError


def parse_shape(text):
    """'1,1,28,28' -> (1, 1, 28, 28), every dimension >= 1."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise LayergraphError(f"--input-shape '{text}' is not a list of integers "
                              f"(e.g. 1,1,28,28)") from None
    if len(shape) < 2 or min(shape) < 1:
        raise LayergraphError(f"--input-shape '{text}': give N,C,H,W (or N,D) with every "
                              f"dimension >= 1")
    return shape


def cmd_export(args):
    import numpy as np
    from ..onnx_export import compare, deploy_net, export_onnx, require_onnx
    require_onnx()
    shape = parse_shape(args.input_shape) if args.input_shape else None
    summary = export_onnx(args.model, args.weights, args.out, input_shape=shape,
                          outputs=args.output or None)
    print(f"wrote {args.out}: {summary['nodes']} ONNX nodes (opset 13)")
    for what in ("inputs", "outputs"):
        for name, dims in summary[what]:
            print(f"  {what[:-1]} {name}: ({', '.join(str(d) for d in dims)})")
    if summary["transform"]:
        print(f"  the input is the raw image transformed as in training: "
              f"{summary['transform']} (recorded in the model's metadata)")
    else:
        print("  the model file has no transform_param: the input is fed as the RUN net "
              "takes it")
    if args.verify:
        import onnx
        proto = onnx.load(args.out)
        net = deploy_net(args.model, args.weights, shape)
        try:
            rng = np.random.default_rng(0)
            feeds = {name: rng.random((args.verify,) + net.blobs[name].shape[1:],
                                      dtype=np.float32) for name in net.inputs}
            diffs, _, _ = compare(net, proto, feeds)
        finally:
            net.close()
        worst = max(diffs.values(), default=0.0)
        for name, d in diffs.items():
            print(f"  verify {name}: max |ours - onnxruntime| = {d:.3g} "
                  f"({args.verify} random inputs)")
        if not worst <= args.tolerance:
            raise LayergraphError(f"onnxruntime differs from our forward pass by {worst:.3g} "
                                  f"(> --tolerance {args.tolerance:g})")
    return 0


def add_commands(sub):
    p = sub.add_parser("export", help="the deploy (RUN) net as an ONNX model")
    p.add_argument("--model", required=True, help="train_val or deploy prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="the input's shape (the batch axis stays free in the model); "
                        "needed for a train_val file, e.g. 1,1,28,28")
    p.add_argument("--output", action="append", metavar="BLOB",
                   help="a blob or layer to export as an output (repeatable; default: the "
                        "RUN net's outputs and the embedding the Decode layer reads)")
    p.add_argument("--verify", type=int, nargs="?", const=8, metavar="N",
                   help="run N random inputs (default 8) through onnxruntime and our "
                        "forward pass and print the largest difference")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="with --verify: fail above this difference (default 1e-4)")
    p.set_defaults(func=cmd_export)
