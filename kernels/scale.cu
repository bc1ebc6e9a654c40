// scale.cu -- Scale, layers/scale.py (Caffe's ScaleLayer).
//
// The bottom is viewed as (outer, dim, inner): element i uses scale[d] with
// d = (i / inner) % dim.
#include "common.cuh"

// y = x * scale[d] (+ bias[d] when has_bias).  Also dx = dy * scale[d]
// (has_bias = 0).  In place when y == x.
extern "C" __global__ void scale_forward(const long long count, const long long dim,
                                         const long long inner, const float* x,
                                         const float* scale, const float* bias,
                                         const int has_bias, float* y) {
  CUDA_KERNEL_LOOP(i, count) {
    const long long d = (i / inner) % dim;
    const float v = x[i] * scale[d];
    y[i] = has_bias ? v + bias[d] : v;
  }
}

// One block per scale element d, over its outer*inner elements:
//   scale_mode 1: dscale[d] = sum dy*x;  2: dscale[d] += sum dy*x;  0: skip;
//   has_bias:     dbias[d] += sum dy.
extern "C" __global__ void scale_backward_params(const long long outer, const long long dim,
                                                 const long long inner, const float* x,
                                                 const float* dy, float* dscale,
                                                 const int scale_mode, float* dbias,
                                                 const int has_bias) {
  LG_SHARED_MEMORY(float, buf);
  const long long per_element = outer * inner;
  BLOCK_LOOP(d, dim) {
    float acc_scale = 0.f, acc_bias = 0.f;
    for (long long k = threadIdx.x; k < per_element; k += blockDim.x) {
      const long long i = ((k / inner) * dim + d) * inner + k % inner;
      acc_scale += dy[i] * x[i];
      acc_bias += dy[i];
    }
    const float total_scale = block_sum(acc_scale, buf);
    const float total_bias = block_sum(acc_bias, buf);
    if (threadIdx.x == 0) {
      if (scale_mode == 1) dscale[d] = total_scale;
      if (scale_mode == 2) dscale[d] += total_scale;
      if (has_bias) dbias[d] += total_bias;
    }
  }
}
