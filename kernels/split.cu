// split.cu -- Split, layers/split.py: forward shares the bottom's data (no kernel);
// backward sums the tops' diffs, dx = dtop_0 + dtop_1 + ... in that order (the
// NumPy path's order, so float32 results agree bit for bit).
#include "common.cuh"

// dx[i] = sum_t dtop_t[i]; `table` holds the addresses of the `tops` top diffs.
extern "C" __global__ void split_backward(const long long n, const long long tops,
                                          const long long* table, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    float sum = reinterpret_cast<const float*>(table[0])[i];
    for (long long t = 1; t < tops; ++t) sum += reinterpret_cast<const float*>(table[t])[i];
    dx[i] = sum;
  }
}
