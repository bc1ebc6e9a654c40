"""``layergraph time``: per-layer forward and backward time, each layer's share,
images/s and the execution plan (Caffe's `caffe time`)."""
import time

import numpy as np

from .common import (_backend, _batch_size, _phase, _set_db, _synchronizer,
                     add_device_arguments, positive_int)


def cmd_time(args):
    """Caffe's `caffe time`: per-layer forward and backward time, each layer's
    share, images/s of the whole step, and the execution plan."""
    import contextlib
    from ..net import Net
    _set_db(args)
    net = Net(args.model, phase=_phase(args.phase), backend=_backend(args))
    rng = np.random.default_rng(0)
    for name in net.inputs:   # U[0, 1): also a valid label input (class 0)
        blob = net.blobs[name]
        blob.data[...] = net.xp.asarray(rng.random(blob.shape), dtype=blob.dtype)
    sync = _synchronizer(net.backend)
    n = len(net.layers)
    fwd, bwd = np.zeros(n), np.zeros(n)
    current = fwd

    @contextlib.contextmanager
    def clock(i):
        sync()
        t = time.perf_counter()
        yield
        sync()
        current[i] += time.perf_counter() - t
    try:
        net.forward_backward()  # warm-up
        sync()
        t_all = time.perf_counter()
        for _ in range(args.iterations):
            current = fwd
            net.forward_prefilled(clock=clock)
            current = bwd
            net.backward(clock=clock)
        sync()
        wall = (time.perf_counter() - t_all) / args.iterations
    finally:
        net.close()
    fwd, bwd = fwd / args.iterations * 1e3, bwd / args.iterations * 1e3
    total = max(fwd.sum() + bwd.sum(), 1e-12)
    in_chain = {j: chain for chain in net.chains for j in chain.layer_indices}
    width = max(len(x) for x in net.layer_names)
    print(f"{'layer':<{width}}  {'type':<16} {'forward ms':>11} {'backward ms':>12} {'share':>6}")
    for i, layer in enumerate(net.layers):
        chain = in_chain.get(i)
        if chain is not None and i not in [stage[0] for stage in chain.stages]:
            lead = next(stage[0] for stage in chain.stages if i in stage)
            print(f"{layer.name:<{width}}  {layer.type:<16} (batched into "
                  f"{net.layer_names[lead]})")
            continue
        share = (fwd[i] + bwd[i]) / total
        print(f"{layer.name:<{width}}  {layer.type:<16} {fwd[i]:>11.3f} {bwd[i]:>12.3f} "
              f"{share:>6.1%}")
    batch = _batch_size(net)
    print(f"Average forward pass: {fwd.sum():.3f} ms")
    print(f"Average backward pass: {bwd.sum():.3f} ms")
    print(f"Average forward-backward: {fwd.sum() + bwd.sum():.3f} ms "
          f"(wall clock {wall * 1e3:.3f} ms)")
    if batch:
        line = f"Images/s: {batch / wall:,.0f} (batch {batch})"
        for chain in net.chains:
            line += (f"; {chain.k * batch / wall:,.0f} through the {chain.k} weight-shared "
                     f"branches")
        print(line)
    for line in net.describe_plan():
        print(line)
    if net.backend.kernels is not None:
        print(f"backend {net.backend.name}: {net.backend.launches} kernel launches so far")
    elif any(getattr(layer, "cpu_loops", False) for layer in net.layers):
        from .. import cpu_kernels
        print(f"sliding windows: {cpu_kernels.status()[1]}")
        followers = {j for chain in net.chains for stage in chain.stages for j in stage[1:]}
        split = [f"{layer.name} ({len(layer._parts)} parts)"
                 for i, layer in enumerate(net.layers)
                 if i not in followers and len(getattr(layer, "_parts", None) or ()) > 1]
        if split:
            print(f"batch split over threads (LAYERGRAPH_BATCH_THREADS="
                  f"{cpu_kernels.batch_threads()}; BLAS at 1 thread meanwhile): "
                  f"{', '.join(split)}")
            print(cpu_kernels.native_status())
        else:
            print("batch split over threads: none (LAYERGRAPH_BATCH_THREADS="
                  f"{cpu_kernels.batch_threads()})")
        chunked = [f"{layer.name} ({layer._chunk} images at a time)"
                   for i, layer in enumerate(net.layers)
                   if i not in followers and getattr(layer, "_chunk", 0)]
        if chunked:
            print(f"im2col columns made in cache-sized chunks: {', '.join(chunked)}")
        direct = [layer.name for i, layer in enumerate(net.layers)
                  if i not in followers and getattr(layer, "_direct", False)]
        if direct:
            print(f"direct convolution (no columns, AVX-512): {', '.join(direct)}")
        print(f"backward skips items whose gradient is all zero when at most "
              f"{cpu_kernels.SKIP_BELOW:.0%} are active (Convolution, InnerProduct, Pooling); "
              f"a fresh net's triplets are all active")
    elif any(layer.type in ("Convolution", "Pooling") for layer in net.layers):
        from .. import cpu_kernels
        print(f"sliding windows: {cpu_kernels.status()[1] if not cpu_kernels.status()[0] else 'NumPy'}")
    return 0


def add_commands(sub):
    p = sub.add_parser("time", help="per-layer forward/backward timing")
    p.add_argument("--model", required=True)
    p.add_argument("--iterations", type=positive_int, default=20)
    p.add_argument("--phase", default="TRAIN")
    p.add_argument("--db")
    add_device_arguments(p)
    p.set_defaults(func=cmd_time)
