// concat.cu -- Concat, layers/concat.py: bottoms of shape (outer, s_j, inner) joined
// along the axis into a top (outer, axis, inner), axis = sum_j s_j, bottom j at
// offsets b_j = s_0 + ... + s_{j-1}.  Both passes are one launch over the top's
// elements; `table` holds the J + 1 offsets, then the J bottoms' addresses (data in
// forward; diff in backward, 0 for a bottom that gets no gradient).
#include "common.cuh"

// The bottom holding axis position a (linear scan: J is small).
static __device__ __forceinline__ int concat_piece(const long long* offsets, long long pieces,
                                                   long long a) {
  int j = 0;
  while (j + 1 < pieces && a >= offsets[j + 1]) ++j;
  return j;
}

// y[o, a, r] = bottom_j[o, a - b_j, r] for every element of the top.
extern "C" __global__ void concat_forward(const long long n, const long long axis,
                                          const long long inner, const long long pieces,
                                          const long long* table, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long r = i % inner;
    const long long a = (i / inner) % axis;
    const long long o = i / (inner * axis);
    const int j = concat_piece(table, pieces, a);
    const long long size = table[j + 1] - table[j];
    const float* x = reinterpret_cast<const float*>(table[pieces + 1 + j]);
    y[i] = x[(o * size + a - table[j]) * inner + r];
  }
}

// dbottom_j[o, a - b_j, r] = dy[o, a, r] for the bottoms whose address is not 0.
extern "C" __global__ void concat_backward(const long long n, const long long axis,
                                           const long long inner, const long long pieces,
                                           const long long* table, const float* dy) {
  CUDA_KERNEL_LOOP(i, n) {
    const long long r = i % inner;
    const long long a = (i / inner) % axis;
    const long long o = i / (inner * axis);
    const int j = concat_piece(table, pieces, a);
    float* dx = reinterpret_cast<float*>(table[pieces + 1 + j]);
    if (dx == nullptr) continue;
    const long long size = table[j + 1] - table[j];
    dx[(o * size + a - table[j]) * inner + r] = dy[i];
  }
}
