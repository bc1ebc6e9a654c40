"""Data layer throughput and dataset creation time.

    python benchmarks/bench_data.py [--batches 2000] [--json out.json]

Measures, in a temporary image database:

* creation of the MNIST sample dataset (shipped with layergraph) and, when
  /usr/share/datasets/fashion-mnist exists (Debian package
  dataset-fashion-mnist), of the 60,000 + 10,000 image Fashion-MNIST dataset;
* Data layer throughput in images/s as the net sees it (forward calls, the
  prefetch thread running) for LOAD_ALL and LOAD_ON_DEMAND: 28x28 images,
  batch 64, transform scale + mirror, random selection.  "cold" is the first
  epoch of a fresh layer (LOAD_ON_DEMAND then reads every record from LMDB),
  "steady" the following batches.  Set-up time (LOAD_ALL reads the whole
  source) is reported separately.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from layergraph import imagedb  # noqa: E402
from layergraph.proto import pb  # noqa: E402
from layergraph.testing import make_layer, setup_layer  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
SPEC = """name: "data" type: "Data" top: "data" top: "label"
transform_param {{ scale: 0.00390625 mirror: true }}
data_param {{ source: "{source}" batch_size: 64 backend: IMAGEDB
              enable_random_selection: true load_method: {method} }}"""


def throughput(source, method, count, batches):
    t0 = time.perf_counter()
    layer = make_layer(SPEC.format(source=source, method=method), phase=pb.TRAIN,
                       dtype=np.float32)
    _, top = setup_layer(layer, [], 2)
    setup_s = time.perf_counter() - t0
    epoch = -(-count // 64)
    t0 = time.perf_counter()
    for _ in range(epoch):
        layer.forward([], top)
    cold = epoch * 64 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(batches):
        layer.forward([], top)
    steady = batches * 64 / (time.perf_counter() - t0)
    layer.close()
    return {"source": source, "load_method": method, "setup_s": round(setup_s, 3),
            "cold_images_per_s": round(cold), "steady_images_per_s": round(steady)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2000, help="steady-state batches")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results = {"cpu_count": os.cpu_count(), "creation": [], "throughput": []}
    with tempfile.TemporaryDirectory() as root:
        os.environ["LAYERGRAPH_DB"] = root
        t0 = time.perf_counter()
        info = imagedb.create_mnist(None, name="MNIST", download=False)
        results["creation"].append({"dataset": "MNIST sample", "images": 10000,
                                    "seconds": round(time.perf_counter() - t0, 3)})
        sources = [("MNIST.training", info["sources"]["training"]["count"])]
        if os.path.isdir(FASHION):
            t0 = time.perf_counter()
            info = imagedb.create_mnist(FASHION, name="FashionMNIST")
            results["creation"].append({"dataset": "Fashion-MNIST", "images": 70000,
                                        "seconds": round(time.perf_counter() - t0, 3)})
            sources.append(("FashionMNIST.training", info["sources"]["training"]["count"]))
        else:
            print(f"(skipping Fashion-MNIST: {FASHION} not found; "
                  "apt-get install dataset-fashion-mnist)")
        for source, count in sources:
            for method in ("LOAD_ALL", "LOAD_ON_DEMAND"):
                results["throughput"].append(throughput(source, method, count, args.batches))
    print(f"CPU cores: {results['cpu_count']}")
    for c in results["creation"]:
        print(f"create {c['dataset']:<14} {c['images']:>6} images  {c['seconds']:6.2f} s  "
              f"({c['images'] / c['seconds']:,.0f} images/s)")
    print(f"{'source':<22} {'load_method':<15} {'setup s':>8} {'cold img/s':>11} "
          f"{'steady img/s':>13}")
    for r in results["throughput"]:
        print(f"{r['source']:<22} {r['load_method']:<15} {r['setup_s']:>8.2f} "
              f"{r['cold_images_per_s']:>11,} {r['steady_images_per_s']:>13,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
