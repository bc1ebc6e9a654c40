// crop.cu -- Crop, layers/crop.py (Caffe's CropLayer), any number of axes.
//
// table = [top_shape[ndim], bottom_shape[ndim], offsets[ndim]] (int64):
// top[j_0, ..., j_{d-1}] = bottom[j_0 + o_0, ..., j_{d-1} + o_{d-1}].
#include "common.cuh"

// One thread per top element gathers its bottom element.
extern "C" __global__ void crop_forward(const long long count, const int ndim,
                                        const long long* table, const float* x, float* y) {
  const long long* top_shape = table;
  const long long* bottom_shape = table + ndim;
  const long long* offsets = table + 2 * ndim;
  CUDA_KERNEL_LOOP(i, count) {
    long long rest = i, src = 0, stride = 1;
    for (int a = ndim - 1; a >= 0; --a) {
      const long long j = rest % top_shape[a];
      rest /= top_shape[a];
      src += (j + offsets[a]) * stride;
      stride *= bottom_shape[a];
    }
    y[i] = x[src];
  }
}

// One thread per bottom element: dx = dy of the top element it became, or 0
// outside the window (no separate zeroing pass).
extern "C" __global__ void crop_backward(const long long count, const int ndim,
                                         const long long* table, const float* dy, float* dx) {
  const long long* top_shape = table;
  const long long* bottom_shape = table + ndim;
  const long long* offsets = table + 2 * ndim;
  CUDA_KERNEL_LOOP(i, count) {
    long long rest = i, dst = 0, stride = 1;
    bool inside = true;
    for (int a = ndim - 1; a >= 0; --a) {
      const long long j = rest % bottom_shape[a] - offsets[a];
      rest /= bottom_shape[a];
      if (j < 0 || j >= top_shape[a]) inside = false;
      dst += j * stride;
      stride *= top_shape[a];
    }
    dx[i] = inside ? dy[dst] : 0.f;
  }
}
