"""CPU training/inference speed of layergraph against the same work written in
PyTorch (2.13, CPU build): TripletNet_28x28 and Siamese_28x28 training steps,
a LeNet training step, and embedding inference of the deploy net.

    python benchmarks/bench_triplet.py [--cases triplet siamese lenet inference]
        [--threads 1 2] [--rounds 5] [--steps N] [--warmup N] [--dataset MNIST]
        [--engines layergraph torch] [--quick] [--json FILE] [--paired]

Cases (float32; images/s counts the images through the towers):

* ``triplet``: one full training step of the TripletNet_28x28 template in a
  run made by ``layergraph new --template TripletNet_28x28 --dataset MNIST``
  (Data, DataSequence, the three weight-shared towers, TripletLoss, Decode's
  centroid update, Adam update: ``solver.step(1)``), 64 triplets = 192 images.
  PyTorch: the same tower (conv 20x5x5, max pool 2/2, conv 50x5x5, max pool
  2/2, ip 500, ReLU, ip 10, ip 16) on one batch of 192 images drawn from a
  preloaded uint8 tensor of the same 4,998 MNIST digits, scaled by 1/256
  (anchor, a positive of its label, a negative of another label), triplet
  hinge loss max(0, |a-p|^2 - |a-n|^2 + 5) / (2N), a centroid update, and
  Adam with the template's solver (lr 0.001 "inv", betas 0.9/0.999, eps 1e-8,
  L2 weight decay 5e-4, biases at 2x lr).
* ``siamese``: Siamese_28x28 (pairs alternating same/different label, two
  towers, contrastive loss margin 2, SGD momentum 0.9 lr 0.01 "inv"), 64
  pairs = 128 images.
* ``lenet``: the LeNet of bench_lenet.py (conv 20, pool, conv 50, pool, ip
  500, ReLU, ip 10, softmax loss; SGD lr 0.01 momentum 0.9 weight decay 5e-4)
  on batches of 64 random images fed through an Input layer.
* ``inference``: the TripletNet_28x28 deploy (RUN) net, batch 256 of real
  MNIST digits, tower + distances to the 10 class centroids; PyTorch under
  ``torch.inference_mode``.

Protocol: every measurement is a fresh worker process (this script with
``--engine layergraph|torch --case C --threads T``; it prints one JSON line)
whose thread count is set before numpy/torch are imported (OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, and torch.set_num_threads).  A worker
runs ``--warmup`` untimed steps, then ``--steps`` timed ones.  Rounds
alternate the engines (A B, B A, ...); each engine's figure is its median
images/s over the rounds, shown with the min-max spread; the ratio is
layergraph / PyTorch (> 1: layergraph is faster).  Scaling: each engine's
2-thread median over its 1-thread median.  Peak RSS: ru_maxrss of the
triplet workers after their steps.  Results go to --json (default, for a
full run of all cases: benchmarks/results/bench_triplet.json).

Scaling in one process (``--paired [--blocks 60] [--repeat 1]``): the thread counts of
separate processes minutes apart see different states of a shared machine,
and that drift can exceed the difference measured.  With --paired each
engine and case runs in one worker that builds the step for both thread
counts, then alternates blocks of a few steps (PAIRED_STEPS, 50-100 ms) of
each; the figure is the median of the blocks' paired ratios, with the
min-max (default JSON for all cases: benchmarks/results/
bench_triplet_scaling.json).  ``--repeat R`` runs R rounds of those
workers, the two engines' workers interleaved in time (a few minutes of
drift then reaches both alike), and pools the ratios; each round's median
is printed beside the pooled one.  ``--pool FILE...`` prints the scaling of
several such results files pooled (every block pair of every file).

PyTorch is a dev-only reference (pip install torch==2.13.0), never a
dependency of layergraph; without it only layergraph is timed.

One worker by hand (``--profile``: cProfile of the timed steps, top 15 by
tottime, layergraph only):

    python benchmarks/bench_triplet.py --engine layergraph --case triplet \\
        --threads 1 --steps 20 --profile
"""
import argparse
import importlib.util
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _harness as H  # noqa: E402  (imports neither numpy nor torch)

CASES = ("triplet", "siamese", "lenet", "inference")
ENGINES = ("layergraph", "torch")
BATCH = 64              # triplets / pairs / LeNet images per training step
INFER_BATCH = 256
IMAGES_PER_STEP = {"triplet": 3 * BATCH, "siamese": 2 * BATCH, "lenet": BATCH,
                   "inference": INFER_BATCH}
DATA_IMAGES = {"triplet": BATCH, "siamese": 2 * BATCH}
TITLES = {
    "triplet": "TripletNet_28x28 training step, 64 triplets: images/s = 192 images through "
               "the towers per step (x3 the Data layer's 64)",
    "siamese": "Siamese_28x28 training step, 64 pairs: images/s = 128 images through the "
               "towers per step (x2 the Data layer's 64)",
    "lenet": "LeNet training step, batch 64: images/s = 64 images per step",
    "inference": "Embedding inference, TripletNet_28x28 deploy net, batch 256: images/s "
                 "= 256 images per forward",
}
DEFAULT_STEPS = {"triplet": 40, "siamese": 50, "lenet": 100, "inference": 40}
QUICK_STEPS = {"triplet": 5, "siamese": 5, "lenet": 10, "inference": 5}
TEMPLATES = {"triplet": "TripletNet_28x28", "siamese": "Siamese_28x28"}
RESULTS = os.path.join(HERE, "results", "bench_triplet.json")

SAMPLE = os.path.join(ROOT, "layergraph", "imagedb", "mnist_sample")
SCALE = 0.00390625      # transform_param.scale of both templates (1/256)
TRIPLET_ALPHA = 5.0
CONTRASTIVE_MARGIN = 2.0
EMBED = 16              # num_output of "feat"
LABELS = 10             # Decode's pregen_label_count

# The solvers the PyTorch side reproduces; the layergraph worker checks them
# (and the parameter shapes, batch, scale, margins) against the template, so a
# changed template fails the benchmark instead of comparing different work.
SOLVERS = {
    "triplet": {"type": "Adam", "base_lr": 0.001, "momentum": 0.9, "momentum2": 0.999,
                "delta": 1e-8, "lr_policy": "inv", "gamma": 1e-4, "power": 0.75,
                "weight_decay": 5e-4},
    "siamese": {"type": "SGD", "base_lr": 0.01, "momentum": 0.9, "lr_policy": "inv",
                "gamma": 1e-4, "power": 0.75, "weight_decay": 0.0},
    "lenet": {"type": "SGD", "base_lr": 0.01, "momentum": 0.9, "lr_policy": "fixed",
              "weight_decay": 5e-4},
}
LENET_SHAPES = [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,),
                (10, 500), (10,)]
TOWER_SHAPES = LENET_SHAPES + [(EMBED, 10), (EMBED,)]

LENET = f"""
name: "LeNet"
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: {BATCH} dim: 1 dim: 28 dim: 28 }} shape {{ dim: {BATCH} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 20 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param {{ num_output: 50 kernel_size: 5 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param {{ num_output: 500 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""


# ---------------------------------------------------------------- data --
def read_idx(name):
    """An IDX file of the bundled MNIST sample as a uint8 array."""
    import gzip

    import numpy as np
    with gzip.open(os.path.join(SAMPLE, name), "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def lenet_batches(n=16):
    """The random LeNet batches (the same in both engines)."""
    import numpy as np
    rng = np.random.default_rng(0)
    return [(rng.random((BATCH, 1, 28, 28), dtype=np.float32),
             rng.integers(0, 10, BATCH).astype(np.float32)) for _ in range(n)]


def inference_batches(n=8):
    """``n`` batches of 256 real MNIST test digits scaled to [0, 1)."""
    import numpy as np
    images = read_idx("t10k-images-idx3-ubyte.gz")[:n * INFER_BATCH]
    x = images.astype(np.float32)[:, None] * np.float32(SCALE)
    return [np.ascontiguousarray(x[k:k + INFER_BATCH]) for k in range(0, len(x), INFER_BATCH)]


# ---------------------------------------------------------- layergraph --
def make_run(case, dataset, out):
    """``layergraph new --template T --dataset D --out out``; returns out."""
    import subprocess
    cmd = [sys.executable, "-m", "layergraph", "new", "--template", TEMPLATES[case],
           "--dataset", dataset, "--out", out, "--force"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise SystemExit(f"bench_triplet: `{' '.join(cmd[2:])}` failed: "
                         f"{msg[-1] if msg else proc.returncode}")
    return out


def check_solver(case, param, solver_type):
    want = SOLVERS[case]
    for key, value in want.items():
        got = solver_type if key == "type" else getattr(param, key)
        # the prototxt's float fields are float32: compare to 1e-6 relative
        ok = got == value if isinstance(value, str) else abs(got - value) <= 1e-6 * abs(value)
        if not ok:
            raise SystemExit(f"bench_triplet: the {case} solver has {key} = {got}, the PyTorch "
                             f"reference assumes {value}; update SOLVERS")


def check_net(case, net):
    shapes = [tuple(b.shape) for b in net.learnable_params]
    want = LENET_SHAPES if case == "lenet" else TOWER_SHAPES
    if shapes != want:
        raise SystemExit(f"bench_triplet: {case} parameter shapes {shapes} differ from the "
                         f"PyTorch reference's {want}")
    for layer in net.layers:
        p = layer.param
        if layer.type == "Data" and (p.data_param.batch_size != BATCH
                                     or abs(p.transform_param.scale - SCALE) > 1e-12):
            raise SystemExit(f"bench_triplet: {case} Data layer: batch "
                             f"{p.data_param.batch_size}, scale {p.transform_param.scale}")
        if layer.type == "TripletLoss" and p.triplet_loss_param.alpha != TRIPLET_ALPHA:
            raise SystemExit(f"bench_triplet: alpha {p.triplet_loss_param.alpha} != "
                             f"{TRIPLET_ALPHA}")
        if (layer.type == "ContrastiveLoss"
                and p.contrastive_loss_param.margin != CONTRASTIVE_MARGIN):
            raise SystemExit(f"bench_triplet: margin {p.contrastive_loss_param.margin}")


def layergraph_worker(args):
    """(step function, images per step, info) for our engine."""
    import numpy as np

    import layergraph as lg
    info = {"version": lg.__version__, "numpy": np.__version__}
    case = args.case
    if case in TEMPLATES:
        run = args.run or make_run(case, args.dataset, tempfile.mkdtemp(prefix="bench_"))
        solver = lg.Solver(os.path.join(run, "solver.prototxt"), log=None,
                           overrides={"test_interval": 0, "snapshot": 0, "display": 0})
        check_solver(case, solver.param, solver.type)
        check_net(case, solver.net)
        data_images, tower_images = solver.images_per_forward()
        # the Data layer's images (a siamese row holds a pair) and the towers'
        if tower_images not in (None, IMAGES_PER_STEP[case]) or data_images != DATA_IMAGES[case]:
            raise SystemExit(f"bench_triplet: {case} net runs {data_images} data / "
                             f"{tower_images} tower images per step")
        info["plan"] = [c.describe() for c in getattr(solver.net, "chains", [])
                        if hasattr(c, "describe")]

        def step():
            solver.step(1)
        info["loss"] = lambda: float(solver.smoothed_loss)
        return step, info
    if case == "lenet":
        from layergraph.prototxt import parse_text
        sp = parse_text('base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" weight_decay: 0.0005 '
                        'random_seed: 1', lg.pb.SolverParameter())
        sp.train_net_param.CopyFrom(parse_text(LENET, lg.pb.NetParameter()))
        solver = lg.Solver(sp, log=None)
        check_solver(case, solver.param, solver.type)
        check_net(case, solver.net)
        net, data, k = solver.net, lenet_batches(), [0]

        def step():
            x, y = data[k[0] % len(data)]
            k[0] += 1
            net.blobs["data"].data[...] = x
            net.blobs["label"].data[...] = y
            solver.step(1)
        info["loss"] = lambda: float(solver.smoothed_loss)
        return step, info
    # inference: the deploy net as bench_onnx.py builds it
    from layergraph.tools.templates import TEMPLATE_DIR
    net = lg.Net(os.path.join(TEMPLATE_DIR, TEMPLATES["triplet"], "train_val.prototxt"), lg.RUN,
                 input_shape=(INFER_BATCH, 1, 28, 28))
    check_net("inference", net)
    name, batches, k = net.inputs[0], inference_batches(), [0]

    def step():
        net.forward(**{name: batches[k[0] % len(batches)]})
        k[0] += 1
    return step, info


def blas_threads():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{"api": d.get("internal_api"), "threads": d.get("num_threads"),
             "version": d.get("version")} for d in threadpool_info()]


# --------------------------------------------------------------- torch --
def torch_worker(args):
    import numpy as np
    import torch
    import torch.nn as nn
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    info = {"version": torch.__version__, "numpy": np.__version__,
            "torch_threads": torch.get_num_threads()}
    case = args.case

    def tower(embed):
        layers = [nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5),
                  nn.MaxPool2d(2, 2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True),
                  nn.Linear(500, 10)]
        if embed:
            layers.append(nn.Linear(10, embed))
        return nn.Sequential(*layers)

    if case == "inference":
        model = tower(EMBED).eval()
        centroids = torch.randn(LABELS, EMBED)
        batches, k = [torch.from_numpy(x) for x in inference_batches()], [0]

        def step():
            with torch.inference_mode():
                feat = model(batches[k[0] % len(batches)])
                torch.cdist(feat, centroids)       # Decode's distances top
            k[0] += 1
        return step, info

    if case == "lenet":
        model = tower(None)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
        loss_fn = nn.CrossEntropyLoss()
        data = [(torch.from_numpy(x), torch.from_numpy(y).long()) for x, y in lenet_batches()]
        k, last = [0], [None]

        def step():
            x, y = data[k[0] % len(data)]
            k[0] += 1
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            last[0] = loss.detach()
        info["loss"] = lambda: float(last[0])
        return step, info

    # triplet / siamese: preloaded uint8 digits, per-label index tables
    images = torch.from_numpy(read_idx("train-images-idx3-ubyte.gz").copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx("train-labels-idx1-ubyte.gz").astype(np.int64))
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=LABELS)
    offsets = torch.cumsum(counts, 0) - counts
    n_images = len(labels)

    def of_label(y):
        """One random image index of each label in ``y``."""
        return order[offsets[y] + (torch.rand(len(y)) * counts[y]).long().clamp_max(counts[y] - 1)]

    def other_label(y):
        return (y + torch.randint(1, LABELS, (len(y),))) % LABELS

    model = tower(EMBED)
    s = SOLVERS[case]
    weights = [p for p in model.parameters() if p.dim() > 1]
    biases = [p for p in model.parameters() if p.dim() == 1]
    groups = [{"params": weights, "lr_mult": 1.0}, {"params": biases, "lr_mult": 2.0}]
    if case == "triplet":
        opt = torch.optim.Adam(groups, lr=s["base_lr"], betas=(s["momentum"], s["momentum2"]),
                               eps=s["delta"], weight_decay=s["weight_decay"])
    else:
        opt = torch.optim.SGD(groups, lr=s["base_lr"], momentum=s["momentum"],
                              weight_decay=s["weight_decay"])
    # Decode: per-label running mean of the anchor embeddings, distances to it
    sums, seen = torch.zeros(LABELS, EMBED), torch.zeros(LABELS)
    it, last = [0], [None]
    match = torch.arange(BATCH) % 2 == 0          # balance_matches: even rows match

    def decode(anchor, y):
        with torch.no_grad():
            torch.cdist(anchor, sums / seen.clamp_min(1.0)[:, None])
            sums.index_add_(0, y, anchor)
            seen.index_add_(0, y, torch.ones(len(y)))

    def step():
        rate = s["base_lr"] * (1.0 + s["gamma"] * it[0]) ** (-s["power"])   # lr_policy "inv"
        for g in opt.param_groups:
            g["lr"] = rate * g["lr_mult"]
        idx = torch.randint(n_images, (BATCH,))
        y = labels[idx]
        if case == "triplet":
            pick = torch.cat([idx, of_label(y), of_label(other_label(y))])
        else:
            y2 = torch.where(match, y, other_label(y))
            pick = torch.cat([idx, of_label(y2)])
        x = images[pick].float().mul_(SCALE)
        opt.zero_grad()
        feat = model(x)
        if case == "triplet":
            a, p, n = feat.split(BATCH)
            h = (a - p).pow(2).sum(1) - (a - n).pow(2).sum(1) + TRIPLET_ALPHA
            loss = h.clamp_min(0).sum() / (2 * BATCH)
        else:
            a, b = feat.split(BATCH)
            d2 = (a - b).pow(2).sum(1)
            d = d2.clamp_min(1e-12).sqrt()
            sim = (y == y2).float()
            loss = (sim * d2 + (1 - sim) * (CONTRASTIVE_MARGIN - d).clamp_min(0).pow(2)).sum() \
                / (2 * BATCH)
        loss.backward()
        opt.step()
        decode(a.detach(), y)
        it[0] += 1
        last[0] = loss.detach()
    info["loss"] = lambda: float(last[0])
    return step, info


# -------------------------------------------------------------- worker --
def worker(args):
    """One measurement in this process; prints one RESULT line."""
    threads = args.threads[0]
    H.set_thread_env(threads)   # before numpy / torch are imported
    args.threads = threads
    make = layergraph_worker if args.engine == "layergraph" else torch_worker
    step, info = make(args)
    steps = args.steps or DEFAULT_STEPS[args.case]
    warmup = DEFAULT_WARMUP if args.warmup is None else args.warmup
    setup_rss = H.maxrss_mb()
    timer = H.StepTimer(step, warmup, steps)
    if args.profile:
        import cProfile
        import pstats
        for _ in range(warmup):
            step()
        timer.warmup = 0
        prof = cProfile.Profile()
        prof.enable()
        timing = timer.run()
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    else:
        timing = timer.run()
    images = IMAGES_PER_STEP[args.case]
    loss = info.pop("loss", None)
    record = {"engine": args.engine, "case": args.case, "threads": threads,
              "images_per_step": images, "warmup": warmup, "steps": steps,
              "images_per_s": images * steps / timing["seconds"], **timing,
              "maxrss_setup_mb": setup_rss, "maxrss_mb": H.maxrss_mb(),
              "loss_last": loss() if loss else None, "blas": blas_threads(),
              "loadavg": os.getloadavg()[0], **info}
    H.emit(record)


DEFAULT_WARMUP = 5


# ------------------------------------------------------ paired scaling --
PAIRED_RESULTS = os.path.join(HERE, "results", "bench_triplet_scaling.json")


def report_paired(args, record, paired, engines, default_json):
    """Print the paired scaling table; write the JSON record."""
    lo, hi = sorted(set(args.threads))
    print(f"\nScaling {hi}/{lo} threads, paired blocks in one process (median, min-max; "
          "images/s medians of the blocks):")
    record["protocol"].update({"paired": True, "blocks": args.blocks, "repeat": args.repeat,
                               "steps_per_block": {c: args.steps or PAIRED_STEPS[c]
                                                   for c in args.cases}})
    record["scaling"] = {}
    for case, by_engine in paired.items():
        row = {}
        for engine in engines:
            rec = by_engine[engine]
            r = H.spread(rec["ratios"])
            rates = {t: H.spread(v)["median"] for t, v in rec["images_per_s"].items()}
            row[engine] = {"ratio": r, "images_per_s": rates, "ratios": rec["ratios"],
                           "round_medians": rec.get("round_medians", [r["median"]])}
        record["scaling"][case] = row
        rounds = (lambda e: " rounds " + "/".join(f"{m:.2f}" for m in row[e]["round_medians"])
                  + ";" if args.repeat > 1 else "")
        cells = "   ".join(
            f"{H.ENGINE_NAMES[e]} {row[e]['ratio']['median']:.2f}x "
            f"({row[e]['ratio']['min']:.2f}-{row[e]['ratio']['max']:.2f};{rounds(e)} "
            f"{row[e]['images_per_s'][str(lo)]:,.0f} -> {row[e]['images_per_s'][str(hi)]:,.0f})"
            for e in engines)
        print(f"  {case:<9} {cells}")
    path = args.json
    if path is None and set(args.cases) == set(CASES) and default_json == RESULTS:
        path = PAIRED_RESULTS
    if path:
        H.write_json(path, record)
        shown = os.path.relpath(path)
        print(f"wrote {path if shown.startswith('..') else shown}")
    return record


def select_threads(engine, threads, keep):
    """Switch this process's engine to ``threads`` threads between blocks
    (``keep``: holds the BLAS limit object)."""
    from threadpoolctl import threadpool_limits
    keep[:] = [threadpool_limits(threads, user_api="blas")]
    if engine == "torch":
        import torch
        torch.set_num_threads(threads)
        return
    from layergraph import cpu_kernels
    os.environ["LAYERGRAPH_BATCH_THREADS"] = str(threads)   # read when a layer splits
    cpu_kernels.set_threads(threads)


def paired_worker(args):
    """Scaling measured in one process: the same case built for each thread
    count of --threads (our engine: one solver or net per count, since a
    layer cuts its batch when it is set up), then blocks of --steps steps
    alternating the counts (1 2, 2 1, ...) --blocks times.  The ratio of
    each pair of neighbouring blocks sees the same state of the machine;
    prints one RESULT line with every block's images/s and the ratios."""
    import time
    counts = sorted(set(args.threads))
    H.set_thread_env(max(counts))      # before numpy / torch are imported
    make = layergraph_worker if args.engine == "layergraph" else torch_worker
    keep, steps = [], {}
    for t in counts:
        select_threads(args.engine, t, keep)
        args.threads = t
        steps[t] = make(args)[0]
        for _ in range(DEFAULT_WARMUP if args.warmup is None else args.warmup):
            steps[t]()
    n = args.steps or PAIRED_STEPS[args.case]
    images = IMAGES_PER_STEP[args.case]
    rates = {t: [] for t in counts}
    for b in range(args.blocks):
        for t in (counts if b % 2 == 0 else counts[::-1]):
            select_threads(args.engine, t, keep)
            steps[t]()                      # one untimed step after the switch
            start = time.perf_counter()
            for _ in range(n):
                steps[t]()
            rates[t].append(images * n / (time.perf_counter() - start))
    lo, hi = counts[0], counts[-1]
    ratios = [b / a for a, b in zip(rates[lo], rates[hi])]
    H.emit({"engine": args.engine, "case": args.case, "threads": counts, "paired": True,
            "steps_per_block": n, "blocks": args.blocks,
            "images_per_s": {str(t): r for t, r in rates.items()}, "ratios": ratios})


#: timed steps per block of the paired scaling measurement
PAIRED_STEPS = {"triplet": 3, "siamese": 4, "lenet": 6, "inference": 3}


def paired_scaling(args, engines, runs, script, progress=print):
    """--repeat rounds of one paired worker per case and engine (engines
    alternating their order from worker to worker, so both see the same
    stretch of the machine's state); returns {case: {engine: record}}, each
    record's blocks and ratios those of its rounds in turn, with
    ``round_medians`` the median ratio of each round."""
    out = {case: {} for case in args.cases}
    turn = 0
    for rnd in range(args.repeat):
        for case in args.cases:
            for engine in (engines if turn % 2 == 0 else engines[::-1]):
                extra = ["--paired", "--blocks", args.blocks]
                if args.steps:
                    extra += ["--steps", args.steps]
                if case in runs and engine == "layergraph":
                    extra += ["--run", runs[case]]
                rec = H.run_worker(script, engine, case, sorted(set(args.threads)), extra)
                median = H.spread(rec["ratios"])["median"]
                if engine not in out[case]:
                    out[case][engine] = dict(rec, round_medians=[median])
                else:
                    pooled = out[case][engine]
                    pooled["ratios"] = pooled["ratios"] + rec["ratios"]
                    pooled["round_medians"].append(median)
                    for t, rates in rec["images_per_s"].items():
                        pooled["images_per_s"][t] = pooled["images_per_s"][t] + rates
                if progress:
                    r = H.spread(rec["ratios"])
                    label = f" round {rnd + 1}" if args.repeat > 1 else ""
                    progress(f"  {case:<9} {H.ENGINE_NAMES[engine]:<10} scaling "
                             f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) over "
                             f"{len(rec['ratios'])} block pairs{label}")
            turn += 1
    return out


# -------------------------------------------------------------- parent --
def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                   help="thread counts to measure (default: 1 2)")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating rounds per engine; the median is reported (default 5)")
    p.add_argument("--steps", type=int, help="timed steps per worker (default per case: "
                   + ", ".join(f"{c} {n}" for c, n in DEFAULT_STEPS.items()) + ")")
    p.add_argument("--warmup", type=int, help=f"untimed steps first (default {DEFAULT_WARMUP})")
    p.add_argument("--dataset", default="MNIST",
                   help="image-database dataset of the triplet/siamese runs (default MNIST)")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 1 warm-up step, a few timed steps")
    p.add_argument("--json", help="write the results here (default for a full run of all "
                   "cases: benchmarks/results/bench_triplet.json)")
    worker_opts = p.add_argument_group("worker mode (one measurement, prints a JSON line)")
    worker_opts.add_argument("--engine", choices=ENGINES)
    worker_opts.add_argument("--case", choices=CASES)
    worker_opts.add_argument("--run", help="a run folder made by `layergraph new`")
    worker_opts.add_argument("--profile", action="store_true",
                             help="cProfile the timed steps, print the top 15 by tottime")
    p.add_argument("--paired", action="store_true",
                   help="measure each engine's scaling between the --threads counts in one "
                   "process, blocks of steps alternating the counts (see paired_worker)")
    p.add_argument("--blocks", type=int, default=60,
                   help="blocks per thread count with --paired (default 60)")
    p.add_argument("--pool", nargs="+", metavar="JSON",
                   help="print the scaling of earlier --paired results files pooled (every "
                   "block pair of every file), then exit")
    p.add_argument("--repeat", type=int, default=1,
                   help="with --paired: rounds of workers, the engines interleaved in time; "
                   "the ratios of every round are pooled (default 1)")
    args = p.parse_args(argv)
    if args.engine or args.case:
        if not (args.engine and args.case) or (len(args.threads) != 1 and not args.paired):
            p.error("worker mode needs --engine, --case and one --threads value")
    if args.paired and (len(set(args.threads)) != 2 or args.blocks < 1 or args.repeat < 1):
        p.error("--paired needs two --threads counts, --blocks >= 1 and --repeat >= 1")
    if any(t < 1 for t in args.threads):
        p.error("--threads takes counts >= 1")
    if args.rounds < 1 or (args.steps is not None and args.steps < 1):
        p.error("--rounds and --steps must be >= 1")
    return args


def pool_paired(paths, progress=print):
    """The pooled scaling of --paired results files: per case and engine
    the median (min-max) of every file's block-pair ratios together, beside
    each file's own median.  Returns {case: {engine: spread}}."""
    import json
    pooled, per_file = {}, {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if "scaling" not in record:
            raise SystemExit(f"bench_triplet: {path} holds no --paired results")
        for case, by_engine in record["scaling"].items():
            for engine, row in by_engine.items():
                pooled.setdefault(case, {}).setdefault(engine, []).extend(row["ratios"])
                per_file.setdefault(case, {}).setdefault(engine, []).append(
                    row["ratio"]["median"])
    out = {}
    progress(f"Scaling pooled over {len(paths)} file(s) (median of every block pair, "
             "min-max; each file's median after):")
    for case, by_engine in pooled.items():
        out[case] = {e: H.spread(r) for e, r in by_engine.items()}
        progress(f"  {case:<9} " + "   ".join(
            f"{H.ENGINE_NAMES[e]} {out[case][e]['median']:.2f}x "
            f"({out[case][e]['min']:.2f}-{out[case][e]['max']:.2f}, "
            f"{out[case][e]['n']} pairs; files "
            + "/".join(f"{m:.2f}" for m in per_file[case][e]) + ")"
            for e in by_engine))
    return out


def main(argv=None, default_json=RESULTS, script=os.path.abspath(__file__)):
    args = parse(argv)
    if args.pool:
        return pool_paired(args.pool)
    if args.engine:
        return paired_worker(args) if args.paired else worker(args)
    engines = list(args.engines)
    if "torch" in engines and importlib.util.find_spec("torch") is None:
        print("PyTorch not installed (pip install torch==2.13.0 for the reference): "
              "timing layergraph only")
        engines.remove("torch")
    if args.quick:
        args.rounds = 1
        args.warmup = 1 if args.warmup is None else args.warmup
    threads = sorted(set(args.threads))
    record = {"machine": H.machine_info(), "command": " ".join([os.path.basename(script)]
                                                               + (argv or sys.argv[1:])),
              "protocol": {"rounds": args.rounds, "warmup": args.warmup or DEFAULT_WARMUP,
                           "steps": {c: args.steps or (QUICK_STEPS if args.quick
                                                       else DEFAULT_STEPS)[c]
                                     for c in args.cases},
                           "images_per_step": {c: IMAGES_PER_STEP[c] for c in args.cases},
                           "dataset": args.dataset, "threads": threads,
                           "order": "rounds alternate the engines' order; median over rounds",
                           "ratio": "layergraph images/s / PyTorch images/s"}}
    load = record["machine"]["loadavg_at_start"]
    how = (f"scaling {threads[0]} -> {threads[-1]} threads in one process per engine and case, "
           f"{args.blocks} blocks per count alternating, median of the paired ratios (min-max)"
           if args.paired else f"each measurement a fresh process; {args.rounds} alternating "
           "round(s), median (min-max)")
    print(f"{record['machine']['cpu']}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{v:.2f}' for v in load) if load else '?'}; float32; {how}")
    if load and load[0] > 0.5:
        print("note: the machine is busy (load average above 0.5): figures are noisy")
    with tempfile.TemporaryDirectory(prefix="bench_triplet_") as tmp:
        runs = {c: make_run(c, args.dataset, os.path.join(tmp, c))
                for c in args.cases if c in TEMPLATES and "layergraph" in engines}

        def extra_for(case):
            steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)[case]
            extra = ["--steps", steps]
            if args.warmup is not None:
                extra += ["--warmup", args.warmup]
            if case in runs:
                extra += ["--run", runs[case]]
            return extra

        if args.paired:
            try:
                paired = paired_scaling(args, engines, runs, script)
            except H.WorkerError as err:
                raise SystemExit(f"bench_triplet: {err}")
            return report_paired(args, record, paired, engines, default_json)
        try:
            results, errors = H.alternate_rounds(script, args.cases, threads, engines, args.rounds,
                                         extra_for)
        except H.WorkerError as err:
            raise SystemExit(f"bench_triplet: {err}")
    summary = H.summarize(results, engines)
    H.print_table(summary, TITLES, engines)
    H.print_memory(summary, "triplet", engines, record["protocol"]["steps"].get("triplet"))
    versions = {}
    for case in results.values():
        for by_engine in case.values():
            for engine, recs in by_engine.items():
                for r in recs:
                    versions[engine] = {k: r.get(k) for k in ("version", "numpy", "blas")}
    record["versions"] = versions
    record["results"] = {c: {"title": TITLES[c], **summary[c]} for c in summary}
    record["workers"] = {c: {str(t): {e: [{k: r[k] for k in (
        "round", "images_per_s", "step_ms_median", "step_ms_min", "cores_busy", "loadavg",
        "maxrss_setup_mb", "maxrss_mb", "loss_last")} for r in recs] for e, recs in by_e.items()}
        for t, by_e in by_t.items()} for c, by_t in results.items()}
    print()
    print("versions: " + "; ".join(
        f"{H.ENGINE_NAMES[e]} {v['version']} (numpy {v['numpy']}; thread pools: "
        + ", ".join(f"{b['api']}" + (f" {b['version']}" if b.get("version") else "")
                    for b in v.get("blas") or []) + ")"
        for e, v in versions.items()))
    busy_line, busy = H.busy_notes(summary)
    if busy_line:
        print(busy_line)
    record["busy"] = busy
    record["errors"] = errors
    for err in errors:
        print(f"failed worker (left out of the medians): {err}")
    path = args.json
    if path is None and not args.quick and set(args.cases) == set(CASES):
        path = default_json
    if path:
        H.write_json(path, record)
        shown = os.path.relpath(path)
        print(f"wrote {path if shown.startswith('..') else shown}")
    if errors:
        raise SystemExit(1)
    return record


if __name__ == "__main__":
    main()
