// slice.cu -- Slice, layers/slice.py: the bottom viewed as (outer, axis, inner) is
// cut along the axis at bounds b_0 = 0 < b_1 < ... < b_T = axis into T tops of shape
// (outer, b_{t+1} - b_t, inner).  Both passes are one launch over the bottom's
// elements; `table` holds the T + 1 bounds, then the T tops' addresses (data in
// forward, diff in backward).
#include "common.cuh"

// The piece holding axis position a (linear scan: T is small).
static __device__ __forceinline__ int slice_piece(const long long* bounds, long long pieces,
                                                  long long a) {
  int t = 0;
  while (t + 1 < pieces && a >= bounds[t + 1]) ++t;
  return t;
}

// top_t[o, a - b_t, r] = x[o, a, r] for every element of the bottom.
extern "C" __global__ void slice_forward(const long long n, const long long axis,
                                         const long long inner, const long long pieces,
                                         const long long* table, const float* x) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long r = i % inner;
    const long long a = (i / inner) % axis;
    const long long o = i / (inner * axis);
    const int t = slice_piece(table, pieces, a);
    const long long size = table[t + 1] - table[t];
    float* top = reinterpret_cast<float*>(table[pieces + 1 + t]);
    top[(o * size + a - table[t]) * inner + r] = x[i];
  }
}

// dx[o, a, r] = dtop_t[o, a - b_t, r]: the pieces tile the axis, so all of dx is written.
extern "C" __global__ void slice_backward(const long long n, const long long axis,
                                          const long long inner, const long long pieces,
                                          const long long* table, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long r = i % inner;
    const long long a = (i / inner) % axis;
    const long long o = i / (inner * axis);
    const int t = slice_piece(table, pieces, a);
    const long long size = table[t + 1] - table[t];
    const float* dtop = reinterpret_cast<const float*>(table[pieces + 1 + t]);
    dx[i] = dtop[(o * size + a - table[t]) * inner + r];
  }
}
