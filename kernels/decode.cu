// decode.cu -- Decode's distances and state updates, layers/decode.py (the
// centroid update is also AccuracyEncoding's, layers/accuracy_encoding.py;
// the rules are written out in layers/_centroids.py).
//
//   CENTROID  dist[i, l] = ||x_i - c_l||_2
//   KNN       dist[i, l] = mean of the min(k, fill_l) smallest ||x_i - cache[l, s]||_2
//   either    dist[i, l] = NOT_READY (1e30) for a label with no state yet or ignored
// Distances are computed from explicit differences (no ||x||^2 - 2 x.c + ||c||^2
// expansion: its cancellation is poor in float32 for near points).
//
// Labels: the label rows are (N, cols) floats, column 0 the item's label,
// rounded to the nearest integer.  `ignored[l]` (uint8, one per label) marks
// the labels the layer ignores.  A label outside [0, L) matches no centroid,
// so such an item is skipped (the NumPy path raises on it; checking here
// would need a host sync).
#include "common.cuh"

#define DECODE_NOT_READY 1e30f

static __device__ __forceinline__ long long decode_item_label(const float* label,
                                                              const long long cols,
                                                              const long long i) {
  return (long long)rintf(label[i * cols]);
}

// Euclidean distance between two rows of `dim` floats.
static __device__ __forceinline__ float decode_distance(const float* x, const float* y,
                                                        const long long dim) {
  float s = 0.f;
  for (long long k = 0; k < dim; ++k) {
    const float d = x[k] - y[k];
    s += d * d;
  }
  return sqrtf(s);
}

// dist (N, L): distance of each embedding to each centroid; NOT_READY where
// counts[l] == 0 or the label is ignored.  One thread per (item, label).
extern "C" __global__ void decode_centroid_distances(
    const long long n, const long long num_labels, const long long dim, const float* x,
    const float* centroids, const float* counts, const unsigned char* ignored, float* dist) {
  CUDA_KERNEL_LOOP(j, n * num_labels) {
    const long long i = j / num_labels, l = j % num_labels;
    const bool ready = counts[l] > 0.f && !ignored[l];
    dist[j] = ready ? decode_distance(x + i * dim, centroids + l * dim, dim) : DECODE_NOT_READY;
  }
}

// dist (N, L): mean distance of each embedding to its min(k, fill_l) nearest
// cached embeddings of label l (cache (L, cap, D), fill_l valid slots).  One
// thread per (item, label): the distances to the valid slots go to its row of
// `scratch` (N * L * cap floats), then the smallest are summed in ascending
// order (selection by (distance, slot), so ties are taken once each).
extern "C" __global__ void decode_knn_distances(
    const long long n, const long long num_labels, const long long cap, const long long dim,
    const long long k, const float* x, const float* cache, const float* fill,
    const unsigned char* ignored, float* scratch, float* dist) {
  const long long kk = k < cap ? k : cap;
  CUDA_KERNEL_LOOP(j, n * num_labels) {
    const long long i = j / num_labels, l = j % num_labels;
    const long long filled = (long long)fill[l];
    const long long used = filled < kk ? filled : kk;
    if (used <= 0 || ignored[l]) {
      dist[j] = DECODE_NOT_READY;
      continue;
    }
    float* row = scratch + j * cap;
    for (long long s = 0; s < filled; ++s)
      row[s] = decode_distance(x + i * dim, cache + (l * cap + s) * dim, dim);
    float total = 0.f, prev = 0.f;
    long long prev_slot = -1;
    for (long long r = 0; r < used; ++r) {
      float best = 0.f;
      long long best_slot = -1;
      for (long long s = 0; s < filled; ++s) {
        const float v = row[s];
        const bool after_prev = prev_slot < 0 || v > prev || (v == prev && s > prev_slot);
        if (after_prev && (best_slot < 0 || v < best)) {
          best = v;
          best_slot = s;
        }
      }
      if (best_slot < 0) break;  // only NaNs left
      total += best;
      prev = best;
      prev_slot = best_slot;
    }
    dist[j] = total / (float)used;
  }
}

// The centroid rule of layers/_centroids.py, in place.  For label l with
// count n_l and m_l items in the batch (sum s_l), M = max_count:
//   n_l <  M: c_l = (n_l c_l + s_l) / max(n_l + m_l, 1),  n_l = min(n_l + m_l, M)
//   n_l >= M: c_l = (1 - m_l/M) c_l + (m_l/M) s_l / m_l
// One block per label, its threads over the features; the batch is summed in
// item order (deterministic).  updates[0] += 1 when count_update.
extern "C" __global__ void decode_update_centroids(
    const long long n, const long long num_labels, const long long dim, const float* x,
    const float* label, const long long label_cols, const unsigned char* ignored,
    const float max_count, float* centroids, float* counts, const bool count_update,
    float* updates) {
  BLOCK_LOOP(l, num_labels) {
    float m = 0.f;
    if (!ignored[l]) {
      for (long long i = 0; i < n; ++i) m += decode_item_label(label, label_cols, i) == l;
    }
    const float count = counts[l];
    const bool running = count < max_count;
    if (m > 0.f) {
      const float beta = m / max_count;
      for (long long d = threadIdx.x; d < dim; d += blockDim.x) {
        float s = 0.f;
        for (long long i = 0; i < n; ++i) {
          if (decode_item_label(label, label_cols, i) == l) s += x[i * dim + d];
        }
        float* c = centroids + l * dim + d;
        if (running) {
          *c = (*c * count + s) / fmaxf(count + m, 1.f);
        } else {
          *c = (1.f - beta) * *c + beta * (s / fmaxf(m, 1.f));
        }
      }
    }
    __syncthreads();  // every thread has read counts[l]
    if (threadIdx.x == 0 && m > 0.f && running) counts[l] = fminf(count + m, max_count);
  }
  if (count_update && blockIdx.x == 0 && threadIdx.x == 0) updates[0] += 1.f;
}

// Append the batch's items to the per-label ring buffers (cache (L, cap, D),
// fill and cursor (L,) floats holding integers), in batch order; only the
// last cap items of a label in the batch can survive, so only those are
// written.  One block per label, its threads over the features.
// updates[0] += 1.
extern "C" __global__ void decode_push_ring(
    const long long n, const long long num_labels, const long long cap, const long long dim,
    const float* x, const float* label, const long long label_cols,
    const unsigned char* ignored, float* cache, float* fill, float* cursor, float* updates) {
  BLOCK_LOOP(l, num_labels) {
    long long m = 0;
    if (!ignored[l]) {
      for (long long i = 0; i < n; ++i) m += decode_item_label(label, label_cols, i) == l;
    }
    const long long start = (long long)cursor[l];
    const float filled = fill[l];
    if (m > 0) {
      for (long long d = threadIdx.x; d < dim; d += blockDim.x) {
        long long rank = 0;
        for (long long i = 0; i < n; ++i) {
          if (decode_item_label(label, label_cols, i) != l) continue;
          if (rank >= m - cap) cache[(l * cap + (start + rank) % cap) * dim + d] = x[i * dim + d];
          ++rank;
        }
      }
    }
    __syncthreads();  // every thread has read cursor[l] and fill[l]
    if (threadIdx.x == 0 && m > 0) {
      cursor[l] = (float)((start + m) % cap);
      fill[l] = fminf(filled + (float)m, (float)cap);
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) updates[0] += 1.f;
}

// The centroids top (L, D): zero until updates[0] >= output_iteration, and
// for labels not ready; else the centroid (KNN: the mean of the fill_l valid
// cache slots).  `state` is the centroids (L, D) or the cache (L, cap, D);
// `counts` the counts or the fill.
extern "C" __global__ void decode_centroid_output(
    const long long num_labels, const long long dim, const long long cap, const bool knn,
    const float* state, const float* counts, const unsigned char* ignored,
    const float* updates, const long long output_iteration, float* out) {
  const bool on = (double)updates[0] >= (double)output_iteration;
  CUDA_KERNEL_LOOP(j, num_labels * dim) {
    const long long l = j / dim, d = j % dim;
    const bool ready = counts[l] > 0.f && !ignored[l];
    float v = 0.f;
    if (on && ready) {
      if (knn) {
        const long long filled = (long long)counts[l];
        float s = 0.f;
        for (long long t = 0; t < filled; ++t) s += state[(l * cap + t) * dim + d];
        v = s / fmaxf((float)filled, 1.f);
      } else {
        v = state[j];
      }
    }
    out[j] = v;
  }
}
