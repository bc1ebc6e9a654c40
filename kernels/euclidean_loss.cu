// euclidean_loss.cu -- EuclideanLoss, layers/euclidean_loss.py.
//
//   d = a - b,   loss = sum d^2 / (2 num),   da = +w/num d,   db = -w/num d
//
// (num = max(N, 1), w = the top diff.)  The forward sum runs in one block
// (in double, deterministic): the loss of these nets is over N x D
// embeddings, small enough that one block beats a second launch.
#include "common.cuh"

// Forward, one block: d = a - b (kept for backward) and the loss.
extern "C" __global__ void euclidean_loss_forward(const long long count, const float* a,
                                                  const float* b, const float num,
                                                  float* diff, float* loss) {
  LG_SHARED_MEMORY(double, buf);
  double acc = 0.0;
  for (long long i = threadIdx.x; i < count; i += blockDim.x) {
    const float d = a[i] - b[i];
    diff[i] = d;
    acc += (double)d * d;
  }
  const double total = block_sum_double(acc, buf);
  if (threadIdx.x == 0 && blockIdx.x == 0) loss[0] = (float)(total / (2.0 * num));
}

// Backward, both bottoms in one pass (each only where its propagate flag is set).
extern "C" __global__ void euclidean_loss_backward(const long long count, const float* diff,
                                                   const float* top_diff, const float num,
                                                   const int propagate_a, const int propagate_b,
                                                   float* da, float* db) {
  const float scale = top_diff[0] / num;
  CUDA_KERNEL_LOOP(i, count) {
    const float d = diff[i];
    if (propagate_a) da[i] = scale * d;
    if (propagate_b) db[i] = -scale * d;
  }
}
