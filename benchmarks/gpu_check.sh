#!/usr/bin/env bash
# The on-GPU verification of the CuPy backend, as one prepared script for a
# session that is lent a GPU machine (the `device` tool).  It runs:
#   1. `layergraph device --check`: the GPU, and every kernel of kernels/
#      compiled by cupy.RawModule on it;
#   2. the parity tests marked `gpu` (every layer's forward/backward on the
#      GPU against the NumPy path, whole TripletNet/Siamese runs following
#      the CPU loss curve, the solver updates);
#   3. benchmarks/bench_gpu.py: images/s next to PyTorch CUDA, as ratios.
#
# The GPU image has CuPy, PyTorch and pytest but not lmdb: beforehand, here,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl lmdb
# and call the device tool with carry [".whl"] and the command
#   bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -m layergraph device --check 2>&1 | tee "$OUT/device.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.txt"
python3 benchmarks/bench_gpu.py --iterations 100 --rounds 5 --out "$OUT/bench_gpu.json" \
  2>&1 | tee "$OUT/bench_gpu.txt"
