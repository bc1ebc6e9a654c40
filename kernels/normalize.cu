// normalize.cu -- L2 normalisation of every item, layers/normalize.py.
//
// The bottom is viewed as (rows, dim), one row per item; one block per row
// (block-stride over rows):
//
//   r = sqrt(sum_i x_i^2 + eps),   y = x / r
//   dx = (dy - y sum_i dy_i y_i) / r
//
// Each thread rewrites only the elements it read, so y may be x and dx may
// be dy (in-place use).
#include "common.cuh"

// Forward: row norm (kept in norm[row] for backward) and scale, one block per row.
extern "C" __global__ void normalize_forward(const long long rows, const long long dim,
                                             const float eps, const float* x, float* norm,
                                             float* y) {
  LG_SHARED_MEMORY(float, buf);
  BLOCK_LOOP(r, rows) {
    const float* xr = x + r * dim;
    float acc = 0.f;
    for (long long i = threadIdx.x; i < dim; i += blockDim.x) acc += xr[i] * xr[i];
    const float rn = sqrtf(block_sum(acc, buf) + eps);
    if (threadIdx.x == 0) norm[r] = rn;
    float* yr = y + r * dim;
    for (long long i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] / rn;
  }
}

// Backward: dx = (dy - y <dy, y>) / r, one block per row.
extern "C" __global__ void normalize_backward(const long long rows, const long long dim,
                                              const float* y, const float* dy,
                                              const float* norm, float* dx) {
  LG_SHARED_MEMORY(float, buf);
  BLOCK_LOOP(r, rows) {
    const long long base = r * dim;
    float acc = 0.f;
    for (long long i = threadIdx.x; i < dim; i += blockDim.x) acc += dy[base + i] * y[base + i];
    const float dot = block_sum(acc, buf);
    const float rn = norm[r];
    for (long long i = threadIdx.x; i < dim; i += blockDim.x) {
      const long long k = base + i;
      dx[k] = (dy[k] - y[k] * dot) / rn;
    }
  }
}
