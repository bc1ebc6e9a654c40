// contrastive_loss.cu -- the siamese pair loss, layers/contrastive_loss.py.
//
// For pair i with d = ||a_i - b_i||_2 (or sum_k |a_ik - b_ik|, MANHATTAN):
//   similar:     l_i = d^2
//   dissimilar:  l_i = max(margin - d, 0)^2      (legacy: max(margin - d^2, 0))
//   E = sum_i l_i / normalizer,  normalizer = 2N (or 2 with normalization NONE)
// Forward runs in ONE block: a thread per pair (the rows are short embeddings)
// and one block reduction, so the scalar loss is written on the device with
// no second pass and no atomics (deterministic).  Forward also stores each
// pair's gradient coefficient, so backward is one element-wise pass:
//   dE/da = (top diff / normalizer) * coef_i * (a - b)          EUCLIDEAN
//   dE/da = (top diff / normalizer) * coef_i * sign(a - b)      MANHATTAN
//   dE/db = -dE/da
#include "common.cuh"

// y = [label_0 == label_1] for (N, 2) labels, else [int(label_0) != 0] (Caffe
// casts the label to an integer: 0.5 is dissimilar).
static __device__ __forceinline__ bool contrastive_similar(const float* label,
                                                           const long long cols,
                                                           const long long i) {
  const float* row = label + i * cols;
  return cols == 2 ? row[0] == row[1] : truncf(row[0]) != 0.f;
}

// loss[0] = sum_i l_i / normalizer; coef[i] = the pair's gradient coefficient;
// matches[i] = 1 where the pair is judged correctly (when output_matches).
// Launch with grid 1 and shared = 8 * blockDim bytes.
extern "C" __global__ void contrastive_loss_forward(
    const long long n, const long long dim, const float* a, const float* b,
    const float* label, const long long label_cols, const float margin, const bool legacy,
    const bool manhattan, const float normalizer, float* coef, float* loss,
    const bool output_matches, float* matches) {
  LG_SHARED_MEMORY(double, buf);
  double total = 0.0;
  if (blockIdx.x == 0) {
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
      const float* ai = a + i * dim;
      const float* bi = b + i * dim;
      float s = 0.f;
      for (long long k = 0; k < dim; ++k) {
        const float d = ai[k] - bi[k];
        s += manhattan ? fabsf(d) : d * d;
      }
      const float dist = manhattan ? s : sqrtf(s);
      const float dist_sq = manhattan ? s * s : s;
      const bool similar = contrastive_similar(label, label_cols, i);
      // the hinge is on d (default) or on d^2 (legacy)
      const float hinge = fmaxf(margin - (legacy ? dist_sq : dist), 0.f);
      const float pair_loss = similar ? dist_sq : (legacy ? hinge : hinge * hinge);
      total += (double)pair_loss;
      float c;
      if (manhattan) {  // dl/dd; dd/da = sign(a - b)
        c = similar ? 2.f * dist : (legacy ? (hinge > 0.f ? -2.f * dist : 0.f) : -2.f * hinge);
      } else {          // dl/d(d^2) times 2; d(d^2)/da = 2 (a - b)
        c = 2.f * (similar ? 1.f
                           : (legacy ? (hinge > 0.f ? -1.f : 0.f)
                                     : -hinge / fmaxf(dist, 1e-12f)));
      }
      coef[i] = c;
      if (output_matches) {
        const bool inside = (legacy ? dist_sq : dist) < 0.5f * margin;
        matches[i] = (similar ? inside : !inside) ? 1.f : 0.f;
      }
    }
  }
  const double sum = block_sum_double(total, buf);
  if (blockIdx.x == 0 && threadIdx.x == 0) loss[0] = (float)(sum / (double)normalizer);
}

// da = g * coef * (a - b) (or sign(a - b)), db = -da, g = top_diff / normalizer;
// each written only where asked (propagate_a / propagate_b).
extern "C" __global__ void contrastive_loss_backward(
    const long long count, const long long dim, const float* a, const float* b,
    const float* coef, const float* top_diff, const float normalizer, const bool manhattan,
    const bool propagate_a, const bool propagate_b, float* da, float* db) {
  const float scale = top_diff[0] / normalizer;
  CUDA_KERNEL_LOOP(j, count) {
    const float d = a[j] - b[j];
    const float dir = manhattan ? (float)((d > 0.f) - (d < 0.f)) : d;
    const float g = scale * (coef[j / dim] * dir);
    if (propagate_a) da[j] = g;
    if (propagate_b) db[j] = -g;
  }
}
