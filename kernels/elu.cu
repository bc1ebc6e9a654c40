// elu.cu -- exponential linear unit, layers/elu.py.
#include "common.cuh"

// y = x > 0 ? x : alpha (exp(x) - 1); slope = dy/dx (kept for in-place use).
extern "C" __global__ void elu_forward(const long long n, const float* x, float* y,
                                       float* slope, const float alpha) {
  CUDA_KERNEL_LOOP(i, n) {
    const float v = x[i];
    if (v > 0.f) {
      y[i] = v;
      slope[i] = 1.f;
    } else {
      const float e = expm1f(v);
      y[i] = alpha * e;
      slope[i] = alpha * (e + 1.f);
    }
  }
}

// dx = dy * slope
extern "C" __global__ void elu_backward(const long long n, const float* slope,
                                        const float* dy, float* dx) {
  CUDA_KERNEL_LOOP(i, n) { dx[i] = dy[i] * slope[i]; }
}
