// relu.cu -- ReLU (leaky when negative_slope != 0), layers/relu.py.
#include "common.cuh"

// y = x > 0 ? x : slope * x.  In place when y == x.
extern "C" __global__ void relu_forward(const long long n, const float* x, float* y,
                                        const float slope) {
  CUDA_KERNEL_LOOP(i, n) {
    const float v = x[i];
    y[i] = v > 0.f ? v : slope * v;
  }
}

// dx = dy where the sign source > 0, slope * dy elsewhere.  The sign source
// is the top data for slope >= 0 (sign(y) == sign(x), which is what is left
// after an in-place forward) and the saved input otherwise.
extern "C" __global__ void relu_backward(const long long n, const float* sign_source,
                                         const float* dy, float* dx, const float slope) {
  CUDA_KERNEL_LOOP(i, n) {
    dx[i] = sign_source[i] > 0.f ? dy[i] : slope * dy[i];
  }
}
