"""Embedding throughput of the deploy net: onnxruntime (the exported ONNX
model) next to our own forward pass, on the CPU, as a ratio.

    python benchmarks/bench_onnx.py [--template TripletNet_28x28 | --model M --weights W
                                     --input-shape 1,1,28,28] [--batch 256] [--rounds 7]
                                    [--batches 8] [--threads N] [--json FILE]

The same RUN net (default: the TripletNet_28x28 template's, weights from its
fillers -- speed does not depend on their values) is exported with
layergraph.onnx_export and both engines embed the same real MNIST digits in
batches of ``--batch``.  A round times ``--batches`` batches on one engine
while the other is idle; rounds alternate between the engines and the
median round gives each one's images/s.  ``--threads`` caps both (NumPy's
BLAS through threadpoolctl, onnxruntime's intra-op pool); by default each
uses what it finds.  Needs onnx and onnxruntime (pip install '.[onnx]').
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import layergraph as lg  # noqa: E402
from layergraph.imagedb.creators import read_idx  # noqa: E402
from layergraph.onnx_export import net_to_onnx, require_onnxruntime  # noqa: E402
from layergraph.tools.templates import TEMPLATE_DIR  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "layergraph",
                      "imagedb", "mnist_sample", "t10k-images-idx3-ubyte.gz")


def digits(count, shape):
    """``count`` real MNIST digits scaled to [0, 1], as (count,) + shape[1:]
    (for another input shape the pixel values are reflowed: np.resize)."""
    images = read_idx(SAMPLE, "images")[:count].astype(np.float32) / 255.0
    return np.resize(images, (count,) + tuple(shape[1:]))


def build(args):
    shape = tuple(int(v) for v in args.input_shape.split(","))
    if args.model:
        model, weights = args.model, args.weights
    else:
        model, weights = os.path.join(TEMPLATE_DIR, args.template, "train_val.prototxt"), None
    net = lg.Net(model, lg.RUN, weights=weights, input_shape=shape)
    return net, model


def time_rounds(run, batches, rounds):
    """images/s of each round of ``run(batch)`` over all ``batches``."""
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for x in batches:
            run(x)
        out.append(sum(len(x) for x in batches) / (time.perf_counter() - start))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--template", default="TripletNet_28x28")
    p.add_argument("--model", help="a prototxt instead of the template")
    p.add_argument("--weights", help="with --model")
    p.add_argument("--input-shape", default="1,1,28,28")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=8, help="batches per round")
    p.add_argument("--rounds", type=int, default=7, help="rounds per engine (median)")
    p.add_argument("--threads", type=int, help="cap both engines at N threads")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="print only the result lines")
    args = p.parse_args(argv)
    ort = require_onnxruntime()

    net, model = build(args)
    proto = net_to_onnx(net)
    outputs = [o.name for o in proto.graph.output]
    options = ort.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = net.inputs[0]
    images = digits(args.batch * args.batches, net.blobs[name].shape)
    batches = [images[k:k + args.batch] for k in range(0, len(images), args.batch)]

    def ours(x):
        net.forward(**{name: x})

    def theirs(x):
        session.run(outputs, {name: x})

    limit = None
    if args.threads:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(args.threads)
    rates = {"layergraph": [], "onnxruntime": []}
    for run in (ours, theirs):
        time_rounds(run, batches[:2], 1)   # warm-up: buffers, ORT's arena
    for _ in range(args.rounds):           # alternate, one engine at a time
        rates["layergraph"] += time_rounds(ours, batches, 1)
        rates["onnxruntime"] += time_rounds(theirs, batches, 1)
    if limit is not None:
        limit.unregister()
    median = {k: statistics.median(v) for k, v in rates.items()}
    ratio = median["onnxruntime"] / median["layergraph"]
    result = {"model": os.path.relpath(model), "outputs": outputs, "batch": args.batch,
              "batches_per_round": args.batches, "rounds": args.rounds,
              "threads": args.threads, "images_per_s": median,
              "rounds_images_per_s": rates, "onnxruntime_over_layergraph": ratio,
              "onnxruntime_version": ort.__version__}
    if not args.quiet:
        print(f"{result['model']} RUN net, outputs {', '.join(outputs)}; batch {args.batch}, "
              f"{args.batches} batches per round, median of {args.rounds} rounds")
    for engine, rate in median.items():
        print(f"{engine:>12}: {rate:9.0f} images/s")
    print(f"onnxruntime / layergraph: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
