// tanh.cu -- the hyperbolic tangent, layers/tanh.py.
#include "common.cuh"

extern "C" __global__ void tanh_forward(const long long n, const float* x, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = tanhf(x[i]); }
}

// dx = dy * (1 - y^2)
extern "C" __global__ void tanh_backward(const long long n, const float* y, const float* dy,
                                         float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float v = y[i];
    dx[i] = dy[i] * (1.f - v * v);
  }
}
