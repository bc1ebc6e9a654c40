// prelu.cu -- parametric ReLU with one learned slope per channel,
// layers/prelu.py.  The bottom is viewed as (outer, channels, inner): a slope
// index is (i / inner) % channels (channels = 1, inner = n: one shared slope).
#include "common.cuh"

extern "C" __global__ void prelu_forward(const long long n, const long long channels,
                                         const long long inner, const float* x,
                                         const float* slope, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    const float v = x[i];
    y[i] = v > 0.f ? v : v * slope[(i / inner) % channels];
  }
}

// dx = dy where x > 0, slope * dy elsewhere.
extern "C" __global__ void prelu_backward_data(const long long n, const long long channels,
                                               const long long inner, const float* x,
                                               const float* slope, const float* dy, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = x[i] > 0.f ? dy[i] : dy[i] * slope[(i / inner) % channels];
  }
}

// dslope[c] += sum over (outer, inner) of dy * x * [x <= 0]: one block per
// channel, the block's threads striding over that channel's elements.
extern "C" __global__ void prelu_backward_slope(const long long outer, const long long channels,
                                                const long long inner, const float* x,
                                                const float* dy, float* dslope) {
  LG_SHARED_MEMORY(float, buf);
  BLOCK_LOOP(c, channels) {
    const long long per_channel = outer * inner;
    float acc = 0.f;
    for (long long k = threadIdx.x; k < per_channel; k += blockDim.x) {
      const long long i = (k / inner) * channels * inner + c * inner + k % inner;
      const float v = x[i];
      if (v <= 0.f) acc += dy[i] * v;
    }
    const float total = block_sum(acc, buf);
    if (threadIdx.x == 0) dslope[c] += total;
  }
}
