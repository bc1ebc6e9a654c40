// deconvolution.cu -- the bias of Deconvolution, layers/deconvolution.py.
// The rest of its kernel path is kernels/im2col.cu (col2im forward, im2col
// backward, the layout transpositions) around cuBLAS GEMMs.
#include "common.cuh"

// y[n, o, p] += bias[o] (p over the output plane).
extern "C" __global__ void deconv_add_bias(const long long count, const long long channels,
                                           const long long plane, const float* bias,
                                           float* y) {
  CUDA_KERNEL_LOOP(i, count) {
    y[i] += bias[(i / plane) % channels];
  }
}

// dbias[o] += sum over (n, p) of dy[n, o, p]: one block per output channel.
extern "C" __global__ void deconv_bias_backward(const long long num, const long long channels,
                                                const long long plane, const float* dy,
                                                float* dbias) {
  LG_SHARED_MEMORY(float, buf);
  const long long per_channel = num * plane;
  BLOCK_LOOP(o, channels) {
    float acc = 0.f;
    for (long long k = threadIdx.x; k < per_channel; k += blockDim.x) {
      acc += dy[((k / plane) * channels + o) * plane + k % plane];
    }
    const float total = block_sum(acc, buf);
    if (threadIdx.x == 0) dbias[o] += total;
  }
}
