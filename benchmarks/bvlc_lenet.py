"""BVLC Caffe's LeNet example and MyCaffe's LeNet trained with `layergraph
train` on the MNIST datasets made by `layergraph data mnist`.

    python benchmarks/bvlc_lenet.py [--iterations 1500] [--which bvlc|mycaffe|both]

BVLC: ../shared/compat/bvlc/lenet_train_test.prototxt and lenet_solver.prototxt
with only their `source` lines pointed at MNIST.training / MNIST.testing (and
the solver's `net` at the copy).  MyCaffe: lenet_train_test.prototxt
unmodified (its sources are MNIST.training / MNIST.testing already) with its
solver, through `--model`.  test_iter is passed so a test covers the 5,002
testing images once.  Prints the final test accuracy.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
COMPAT = os.environ.get("LAYERGRAPH_COMPAT",
                        os.path.abspath(os.path.join(HERE, "..", "..", "shared", "compat")))


def layergraph(*args):
    cmd = [sys.executable, "-m", "layergraph", *args]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def final_accuracy(log_path):
    import json
    acc = None
    with open(log_path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "test":
                acc = rec["outputs"].get("accuracy")
    return acc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--which", default="both", choices=["bvlc", "mycaffe", "both"])
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(HERE, ".."))
    from layergraph.imagedb import store
    if not store.dataset_exists("MNIST"):
        layergraph("data", "mnist")
    work = tempfile.mkdtemp(prefix="lenet_")
    results = {}
    if args.which in ("bvlc", "both"):
        text = open(os.path.join(COMPAT, "bvlc", "lenet_train_test.prototxt")).read()
        text = text.replace("examples/mnist/mnist_train_lmdb", "MNIST.training")
        text = text.replace("examples/mnist/mnist_test_lmdb", "MNIST.testing")
        open(os.path.join(work, "lenet_train_test.prototxt"), "w").write(text)
        solver = open(os.path.join(COMPAT, "bvlc", "lenet_solver.prototxt")).read()
        solver = re.sub(r'net: ".*"', 'net: "lenet_train_test.prototxt"', solver)
        solver = solver.replace("test_iter: 100", "test_iter: 51")  # 51 x 100 >= 5,002
        solver = re.sub(r"test_interval: \d+", f"test_interval: {args.iterations}", solver)
        open(os.path.join(work, "lenet_solver.prototxt"), "w").write(solver)
        layergraph("train", "--solver", os.path.join(work, "lenet_solver.prototxt"),
                   "--iterations", str(args.iterations), "--quiet",
                   "--snapshot-prefix", os.path.join(work, "bvlc", "lenet"))
        results["bvlc"] = final_accuracy(os.path.join(work, "bvlc", "lenet_log.jsonl"))
        print(f"BVLC lenet: test accuracy {results['bvlc']:.4f} after {args.iterations} "
              f"iterations", flush=True)
    if args.which in ("mycaffe", "both"):
        for name in ("lenet_train_test.prototxt", "lenet_solver.prototxt"):
            shutil.copyfile(os.path.join(COMPAT, "mycaffe", name), os.path.join(work, name))
        sys.path.insert(0, os.path.join(HERE, ".."))
        import layergraph as lg
        solver = lg.Solver(os.path.join(work, "lenet_solver.prototxt"), overrides={
            "net": os.path.join(work, "lenet_train_test.prototxt"),
            "max_iter": args.iterations, "test_iter": [40], "test_interval": args.iterations,
            "test_initialization": False,
            "snapshot_prefix": os.path.join(work, "mycaffe", "lenet")}, log=None)
        solver.solve()
        results["mycaffe"] = final_accuracy(os.path.join(work, "mycaffe", "lenet_log.jsonl"))
        print(f"MyCaffe lenet (unmodified net): test accuracy {results['mycaffe']:.4f} after "
              f"{args.iterations} iterations", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
