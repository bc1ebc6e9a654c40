// triplet_loss.cu -- the hinge triplet loss, layers/triplet_loss.py.
//
//   h_i = ||a_i - p_i||^2 - ||a_i - n_i||^2 + alpha
//   E   = sum_i max(0, h_i) / normalizer      (normalizer = 2N, or 2: NONE)
//   active top = #{i : h_i > 0} / max(N, 1)
// Forward runs in ONE block: a thread per triplet and one block reduction, so
// the scalar loss (and the active fraction) is written on the device with no
// second pass and no atomics (deterministic).  It stores each triplet's
// activity (1 or 0) for backward, one element-wise pass with g = top diff /
// normalizer:
//   dE/da = 2 g [h > 0] (n - p),  dE/dp = 2 g [h > 0] (p - a),  dE/dn = 2 g [h > 0] (a - n)
#include "common.cuh"

// loss[0] = sum_i max(h_i, 0) / normalizer; active[i] = [h_i > 0];
// active_fraction[0] = mean of active (when output_active).
// Launch with grid 1 and shared = 8 * blockDim bytes.
extern "C" __global__ void triplet_loss_forward(
    const long long n, const long long dim, const float* anchor, const float* positive,
    const float* negative, const float alpha, const float normalizer, float* active,
    float* loss, const bool output_active, float* active_fraction) {
  LG_SHARED_MEMORY(double, buf);
  double total = 0.0;
  double num_active = 0.0;
  if (blockIdx.x == 0) {
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
      const float* a = anchor + i * dim;
      const float* p = positive + i * dim;
      const float* q = negative + i * dim;
      float ap = 0.f, an = 0.f;
      for (long long k = 0; k < dim; ++k) {
        const float dp = a[k] - p[k];
        const float dn = a[k] - q[k];
        ap += dp * dp;
        an += dn * dn;
      }
      const float h = ap - an + alpha;
      const bool on = h > 0.f;  // false for NaN, as in NumPy
      active[i] = on ? 1.f : 0.f;
      if (on) {
        total += (double)h;
        num_active += 1.0;
      }
    }
  }
  const double sum = block_sum_double(total, buf);
  const double on = block_sum_double(num_active, buf);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    loss[0] = (float)(sum / (double)normalizer);
    if (output_active) active_fraction[0] = (float)(on / (double)(n > 1 ? n : 1));
  }
}

// The three bottom diffs in one pass, each written only where asked.
extern "C" __global__ void triplet_loss_backward(
    const long long count, const long long dim, const float* anchor, const float* positive,
    const float* negative, const float* active, const float* top_diff, const float normalizer,
    const bool propagate_anchor, const bool propagate_positive, const bool propagate_negative,
    float* d_anchor, float* d_positive, float* d_negative) {
  const float w_unit = 2.f * (top_diff[0] / normalizer);
  CUDA_KERNEL_LOOP(j, count) {
    const float w = w_unit * active[j / dim];
    const float a = anchor[j], p = positive[j], q = negative[j];
    if (propagate_anchor) d_anchor[j] = w * (q - p);
    if (propagate_positive) d_positive[j] = w * (p - a);
    if (propagate_negative) d_negative[j] = w * (a - q);
  }
}
