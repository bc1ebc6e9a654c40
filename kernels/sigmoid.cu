// sigmoid.cu -- the logistic function, layers/sigmoid.py.
#include "common.cuh"

// y = 1 / (1 + exp(-x)), in the tanh form that never overflows.
extern "C" __global__ void sigmoid_forward(const long long n, const float* x, float* y) {
  CUDA_KERNEL_LOOP(i, n) { y[i] = 0.5f * tanhf(0.5f * x[i]) + 0.5f; }
}

// dx = dy * y * (1 - y)
extern "C" __global__ void sigmoid_backward(const long long n, const float* y,
                                            const float* dy, float* dx) {
  CUDA_KERNEL_LOOP(i, n) {
    const float v = y[i];
    dx[i] = dy[i] * v * (1.f - v);
  }
}
