// dropout.cu -- inverted dropout, layers/dropout.py.
//   TRAIN: keep_i = lg_uniform(seed, i) >= p,  y = x * keep * scale,  scale = 1 / (1 - p)
//          dx = dy * keep * scale
// The mask is counter-based (common.cuh), so the NumPy twin
// layergraph.kernels.uniform_hash(seed, arange(n)) >= p reproduces it bit for bit.
#include "common.cuh"

// Draw the mask, keep it (uint8) for backward and scale the survivors; in place when y == x.
extern "C" __global__ void dropout_forward(const long long n, const float* x, float* y,
                                           unsigned char* keep,
                                           const unsigned long long seed,
                                           const float ratio, const float scale) {
  CUDA_KERNEL_LOOP(i, n) {
    const bool k = lg_uniform(seed, (unsigned long long)i) >= ratio;
    keep[i] = k;
    y[i] = x[i] * (k ? scale : 0.f);
  }
}

// dx = dy * keep * scale; in place when dx == dy.
extern "C" __global__ void dropout_backward(const long long n, const float* dy,
                                            const unsigned char* keep, float* dx,
                                            const float scale) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = dy[i] * (keep[i] ? scale : 0.f);
  }
}
