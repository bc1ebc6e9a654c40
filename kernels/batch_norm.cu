// batch_norm.cu -- BatchNorm, layers/batch_norm.py (Caffe's BatchNormLayer).
//
// The bottom is viewed as (num, channels, spatial); channel c holds
// m = num * spatial values, element (n, c, s) at (n*channels + c)*spatial + s.
// Statistics are reduced by one block per channel (block-stride over the
// channels), in double, so that they do not depend on thread timing.
#include "common.cuh"

__device__ __forceinline__ long long bn_index(long long k, long long c, long long channels,
                                              long long spatial) {
  return ((k / spatial) * channels + c) * spatial + k % spatial;  // k = n*spatial + s
}

// Batch statistics: mean[c], inv_std[c] = 1/sqrt(var + eps), and Caffe's
// moving sums: mean_sum = mean + maf*mean_sum, var_sum = correction*var +
// maf*var_sum, factor = maf*factor + 1 (by the block holding channel 0).
extern "C" __global__ void batch_norm_batch_stats(const long long num, const long long channels,
                                                  const long long spatial, const float* x,
                                                  const float maf, const float correction,
                                                  const float eps, float* mean, float* inv_std,
                                                  float* mean_sum, float* var_sum,
                                                  float* factor) {
  LG_SHARED_MEMORY(double, buf);
  const long long m = num * spatial;
  BLOCK_LOOP(c, channels) {
    double acc = 0.0;
    for (long long k = threadIdx.x; k < m; k += blockDim.x) {
      acc += x[bn_index(k, c, channels, spatial)];
    }
    const double mu = block_sum_double(acc, buf) / (double)m;
    acc = 0.0;
    for (long long k = threadIdx.x; k < m; k += blockDim.x) {
      const double d = x[bn_index(k, c, channels, spatial)] - mu;
      acc += d * d;
    }
    const double var = block_sum_double(acc, buf) / (double)m;
    if (threadIdx.x == 0) {
      mean[c] = (float)mu;
      inv_std[c] = 1.f / sqrtf((float)var + eps);
      mean_sum[c] = (float)mu + maf * mean_sum[c];
      var_sum[c] = correction * (float)var + maf * var_sum[c];
      if (c == 0) factor[0] = maf * factor[0] + 1.f;
    }
  }
}

// Stored statistics: mean = mean_sum / factor, var = var_sum / factor (0 while
// factor == 0).
extern "C" __global__ void batch_norm_global_stats(const long long channels,
                                                   const float* mean_sum, const float* var_sum,
                                                   const float* factor, const float eps,
                                                   float* mean, float* inv_std) {
  const float f = factor[0];
  const float scale = f == 0.f ? 0.f : 1.f / f;
  CUDA_KERNEL_LOOP(c, channels) {
    mean[c] = mean_sum[c] * scale;
    inv_std[c] = 1.f / sqrtf(var_sum[c] * scale + eps);
  }
}

// y = x_norm = (x - mean[c]) * inv_std[c]; x_norm is kept for backward
// (y may be overwritten by a later in-place layer).  In place when y == x.
extern "C" __global__ void batch_norm_forward(const long long count, const long long channels,
                                              const long long spatial, const float* x,
                                              const float* mean, const float* inv_std,
                                              float* y, float* x_norm) {
  CUDA_KERNEL_LOOP(i, count) {
    const long long c = (i / spatial) % channels;
    const float v = (x[i] - mean[c]) * inv_std[c];
    y[i] = v;
    x_norm[i] = v;
  }
}

// dx = (dy - mean(dy) - y * mean(dy * y)) * inv_std[c], y = x_norm: one block
// per channel reduces, then writes its channel (dx may be dy: in place).
extern "C" __global__ void batch_norm_backward(const long long num, const long long channels,
                                               const long long spatial, const float* x_norm,
                                               const float* dy, const float* inv_std,
                                               float* dx) {
  LG_SHARED_MEMORY(double, buf);
  const long long m = num * spatial;
  BLOCK_LOOP(c, channels) {
    double acc_g = 0.0, acc_gy = 0.0;
    for (long long k = threadIdx.x; k < m; k += blockDim.x) {
      const long long i = bn_index(k, c, channels, spatial);
      acc_g += dy[i];
      acc_gy += (double)dy[i] * x_norm[i];
    }
    const float mean_g = (float)(block_sum_double(acc_g, buf) / (double)m);
    const float mean_gy = (float)(block_sum_double(acc_gy, buf) / (double)m);
    const float s = inv_std[c];
    for (long long k = threadIdx.x; k < m; k += blockDim.x) {
      const long long i = bn_index(k, c, channels, spatial);
      dx[i] = (dy[i] - mean_g - x_norm[i] * mean_gy) * s;
    }
  }
}

// Global statistics: dx = dy * inv_std[c].
extern "C" __global__ void batch_norm_backward_global(const long long count,
                                                     const long long channels,
                                                     const long long spatial, const float* dy,
                                                     const float* inv_std, float* dx) {
  CUDA_KERNEL_LOOP(i, count) {
    dx[i] = dy[i] * inv_std[(i / spatial) % channels];
  }
}
