"""GPU speed: layergraph's CuPy backend next to PyTorch CUDA, same GPU, same
nets, same batches, one process, as ratios.

    python benchmarks/bench_gpu.py [--iterations 200] [--gpu 0] [--out results.json]

Measures, each as the median of --rounds timed rounds (after warm-up), with
the GPU synchronised around every timed region:

1. TripletNet_28x28 training step (the template unchanged: Data, DataSequence,
   three weight-shared towers of 64 images, TripletLoss, Decode,
   AccuracyDecode, Adam) -- images/s counted as the 192 images the towers
   process -- next to the same step in PyTorch (the three towers as one
   batch of 192, the same triplet hinge loss, Adam).
2. Siamese_28x28 training step (pairs of 64 -> 128 images, contrastive loss
   margin 2, SGD as in the template) next to PyTorch.
3. Embedding inference: the deploy net at batch 256 next to PyTorch under
   torch.inference_mode.

Also prints the kernel launches per iteration that layergraph issues
through kernels/*.cu (Backend.launches; CuPy's own element-wise kernels and
cuBLAS calls come on top of these).

Needs a CUDA GPU, CuPy, PyTorch with CUDA, and lmdb (for the templates'
Data layer: the MNIST sample is loaded into a temporary image database).
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
from layergraph.backend import get_backend  # noqa: E402


def _median_rate(step, images, iterations, rounds, sync):
    rates = []
    for _ in range(rounds):
        sync()
        t = time.perf_counter()
        for _ in range(iterations):
            step()
        sync()
        rates.append(images * iterations / (time.perf_counter() - t))
    return statistics.median(rates), (min(rates), max(rates))


# ------------------------------------------------------------- layergraph --

def layergraph_training(template, gpu, iterations, rounds, workdir):
    from layergraph.tools.templates import new_from_template
    run = os.path.join(workdir, template)
    new_from_template(template, "MNIST", run)
    backend = get_backend(f"gpu:{gpu}")
    solver = lg.Solver(os.path.join(run, "solver.prototxt"), log=None, backend=backend,
                       overrides={"test_interval": 0, "snapshot": 0, "display": 0,
                                  "max_iter": 10 ** 9})
    sync = backend.xp.cuda.get_current_stream().synchronize
    images = 192 if template.startswith("Triplet") else 128
    solver.step(20)  # warm-up: kernels compiled, buffers allocated
    start = backend.launches
    solver.step(10)
    launches = (backend.launches - start) / 10
    rate, spread = _median_rate(lambda: solver.step(1), images, iterations, rounds, sync)
    solver.close()
    return rate, spread, launches


def layergraph_inference(gpu, iterations, rounds, workdir):
    from layergraph.proto import pb
    run = os.path.join(workdir, "TripletNet_28x28")
    backend = get_backend(f"gpu:{gpu}")
    net = lg.Net(os.path.join(run, "train_val.prototxt"), pb.RUN, backend=backend,
                 input_shape=(256, 1, 28, 28))
    x = backend.xp.asarray(np.random.default_rng(0).random((256, 1, 28, 28), np.float32))
    sync = backend.xp.cuda.get_current_stream().synchronize
    name = net.inputs[0]

    def step():
        net.forward(**{name: x})
    for _ in range(10):
        step()
    return _median_rate(step, 256, iterations, rounds, sync)


# ---------------------------------------------------------------- PyTorch --

def torch_nets(gpu):
    import torch
    from torch import nn
    device = torch.device(f"cuda:{gpu}")
    torch.backends.cudnn.benchmark = True

    def tower():
        return nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10),
            nn.Linear(10, 16)).to(device)
    return torch, device, tower


def torch_training(kind, gpu, iterations, rounds):
    torch, device, tower = torch_nets(gpu)
    net = tower()
    if kind == "triplet":
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                               weight_decay=5e-4)
        x = torch.rand(192, 1, 28, 28, device=device)
        images = 192

        def loss_fn(out):
            a, p, n = out[:64], out[64:128], out[128:]
            dp = ((a - p) ** 2).sum(1)
            dn = ((a - n) ** 2).sum(1)
            return torch.clamp(dp - dn + 5.0, min=0).mean()
    else:
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
        x = torch.rand(128, 1, 28, 28, device=device)
        same = (torch.rand(64, device=device) > 0.5).float()
        images = 128

        def loss_fn(out):
            d = ((out[:64] - out[64:]) ** 2).sum(1)
            return (same * d + (1 - same) * torch.clamp(2.0 - d.sqrt(), min=0) ** 2).mean() / 2

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x)).backward()
        opt.step()
    for _ in range(20):
        step()
    return _median_rate(step, images, iterations, rounds, torch.cuda.synchronize)


def torch_inference(gpu, iterations, rounds):
    torch, device, tower = torch_nets(gpu)
    net = tower().eval()
    x = torch.rand(256, 1, 28, 28, device=device)

    def step():
        with torch.inference_mode():
            net(x)
    for _ in range(10):
        step()
    return _median_rate(step, 256, iterations, rounds, torch.cuda.synchronize)


# ------------------------------------------------------------------- main --

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args(argv)

    from layergraph.backend import describe_devices
    ok, lines = describe_devices()
    if not ok:
        print(f"bench_gpu: {lines[0]}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    results = {"device": lines[1:], "iterations": args.iterations, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as workdir:
        os.environ["LAYERGRAPH_DB"] = os.path.join(workdir, "imagedb")
        from layergraph.imagedb.creators import create_mnist
        create_mnist(None, name="MNIST", download=False)
        rows = []
        for template, kind in (("TripletNet_28x28", "triplet"), ("Siamese_28x28", "siamese")):
            ours, ours_spread, launches = layergraph_training(
                template, args.gpu, args.iterations, args.rounds, workdir)
            theirs, theirs_spread = torch_training(kind, args.gpu, args.iterations, args.rounds)
            rows.append((f"{template} training step", ours, ours_spread, theirs, theirs_spread,
                         launches))
        ours, ours_spread = layergraph_inference(args.gpu, args.iterations, args.rounds, workdir)
        theirs, theirs_spread = torch_inference(args.gpu, args.iterations, args.rounds)
        rows.append(("embedding inference, batch 256", ours, ours_spread, theirs, theirs_spread,
                     None))
    print(f"{'what':<36} {'layergraph img/s':>17} {'PyTorch img/s':>14} {'ratio':>6} "
          f"{'our launches/it':>16}")
    for what, ours, (lo, hi), theirs, (tlo, thi), launches in rows:
        print(f"{what:<36} {ours:>17,.0f} {theirs:>14,.0f} {ours / theirs:>6.2f} "
              f"{'' if launches is None else f'{launches:.0f}':>16}")
        print(f"{'  spread (min-max)':<36} {f'{lo:,.0f}-{hi:,.0f}':>17} "
              f"{f'{tlo:,.0f}-{thi:,.0f}':>14}")
        results[what] = {"layergraph": ours, "layergraph_spread": [lo, hi], "pytorch": theirs,
                         "pytorch_spread": [tlo, thi], "ratio": ours / theirs,
                         "kernel_launches_per_iteration": launches}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
