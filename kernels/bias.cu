// bias.cu -- Bias, layers/bias.py (Caffe's BiasLayer).
//
// The bottom is viewed as (outer, dim, inner): element i uses bias[d] with
// d = (i / inner) % dim.
#include "common.cuh"

// y = x + bias[d].  In place when y == x.
extern "C" __global__ void bias_forward(const long long count, const long long dim,
                                        const long long inner, const float* x,
                                        const float* bias, float* y) {
  CUDA_KERNEL_LOOP(i, count) {
    y[i] = x[i] + bias[(i / inner) % dim];
  }
}

// dbias[d] (+)= sum over (outer, inner) of dy: one block per bias element;
// accumulate for a learned bias, overwrite for a bias bottom.
extern "C" __global__ void bias_backward(const long long outer, const long long dim,
                                         const long long inner, const float* dy, float* dbias,
                                         const int accumulate) {
  LG_SHARED_MEMORY(float, buf);
  const long long per_element = outer * inner;
  BLOCK_LOOP(d, dim) {
    float acc = 0.f;
    for (long long k = threadIdx.x; k < per_element; k += blockDim.x) {
      acc += dy[((k / inner) * dim + d) * inner + k % inner];
    }
    const float total = block_sum(acc, buf);
    if (threadIdx.x == 0) dbias[d] = accumulate ? dbias[d] + total : total;
  }
}
