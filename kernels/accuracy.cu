// accuracy.cu -- the accuracy layers: layers/accuracy.py (top-k
// classification), layers/accuracy_decode.py (nearest class of Decode's
// distances) and layers/accuracy_encoding.py (nearest centroid of embeddings).
//
//   accuracy      = #{counted items that are right} / max(#counted, 1)
//   per_class[c]  = #{right items of class c} / max(#items of class c, 1)
//
// Each runs in ONE block: a thread per item (strided), integer tallies added
// with atomicAdd (integer sums are exact, so the order does not matter and
// the result is deterministic), then the block divides.  The tallies live in
// `tally` (int32, 2 + 2 * classes): [counted, right, per-class counted...,
// per-class right...]; the kernel zeroes it first.  Launch with grid 1.
//
// An item whose label is outside [0, classes) is counted and wrong (the NumPy
// path raises on it; checking would need a host sync).
#include "common.cuh"

// layers/_centroids.py: NOT_READY marks a class without a centroid; a distance
// at or above NOT_READY_THRESHOLD is "not ready"
#define ACCURACY_NOT_READY 1e30f
#define ACCURACY_NOT_READY_THRESHOLD 5e29f

// (The kernels call __syncthreads themselves, around these helpers: the
// emulation looks for it in a kernel's own body to run its threads together.)
static __device__ __forceinline__ void accuracy_zero_tally(int* tally, const long long size) {
  for (long long j = threadIdx.x; j < size; j += blockDim.x) tally[j] = 0;
}

// Turn the tallies into the accuracy (and the per-class accuracy).
static __device__ __forceinline__ void accuracy_finish(const int* tally, const long long classes,
                                                       float* accuracy, const bool per_class_out,
                                                       float* per_class) {
  if (threadIdx.x == 0) {
    accuracy[0] = tally[0] > 0 ? (float)((double)tally[1] / (double)tally[0]) : 0.f;
  }
  if (per_class_out) {
    for (long long c = threadIdx.x; c < classes; c += blockDim.x) {
      const int total = tally[2 + c];
      per_class[c] = total > 0 ? (float)((double)tally[2 + classes + c] / (double)total) : 0.f;
    }
  }
}

// Tally one counted item (label `lab`, right or not).
static __device__ __forceinline__ void accuracy_tally(int* tally, const long long classes,
                                                      const long long lab, const bool right,
                                                      int* counted, int* hits,
                                                      const bool per_class_out) {
  *counted += 1;
  *hits += right;
  if (per_class_out && lab >= 0 && lab < classes) {
    atomicAdd(tally + 2 + lab, 1);
    if (right) atomicAdd(tally + 2 + classes + lab, 1);
  }
}

// One step (l = 0, 1, ...) of argmin: pred ends as the index of the smallest
// value, the first one on ties; the first NaN wins (as NumPy's argmin), which
// makes the item wrong.
static __device__ __forceinline__ void accuracy_argmin_step(const float v, const long long l,
                                                            float* best, long long* pred,
                                                            bool* nan_seen) {
  if (*nan_seen) return;
  if (v != v) {
    *nan_seen = true;
    *pred = l;
  } else if (l == 0 || v < *best) {
    *best = v;
    *pred = l;
  }
}

// Top-k classification accuracy: scores x (outer, C, inner), labels
// (outer * inner) truncated to integers as NumPy's astype does.  An item is
// right when fewer than top_k scores are strictly larger than its class's
// (a NaN compares false, as in NumPy).
extern "C" __global__ void accuracy_forward(
    const long long outer, const long long channels, const long long inner, const float* x,
    const float* label, const long long top_k, const bool has_ignore,
    const long long ignore_label, int* tally, float* accuracy, const bool per_class_out,
    float* per_class) {
  accuracy_zero_tally(tally, 2 + 2 * channels);
  __syncthreads();
  int counted = 0, hits = 0;
  const long long positions = outer * inner;
  for (long long p = threadIdx.x; p < positions; p += blockDim.x) {
    const long long lab = (long long)label[p];
    if (has_ignore && lab == ignore_label) continue;
    bool right = false;
    if (lab >= 0 && lab < channels) {
      const float* scores = x + (p / inner) * channels * inner + p % inner;
      const float own = scores[lab * inner];
      long long better = 0;
      bool nan_seen = own != own;  // a NaN score makes the item wrong
      for (long long c = 0; c < channels; ++c) {
        const float v = scores[c * inner];
        better += v > own;
        nan_seen |= v != v;
      }
      right = better < top_k && !nan_seen;
    }
    accuracy_tally(tally, channels, lab, right, &counted, &hits, per_class_out);
  }
  atomicAdd(tally, counted);
  atomicAdd(tally + 1, hits);
  __syncthreads();  // every thread has added its tallies
  accuracy_finish(tally, channels, accuracy, per_class_out, per_class);
}

// Nearest-class accuracy of a distance matrix dist (N, L): right when
// argmin_l dist[i, l] is the item's label and that label is ready (its
// distance below NOT_READY / 2).  Labels: column 0 of (N, cols) rows, rounded.
extern "C" __global__ void accuracy_decode_forward(
    const long long n, const long long num_labels, const float* dist, const float* label,
    const long long label_cols, const bool has_ignore, const long long ignore_label,
    int* tally, float* accuracy, const bool per_label_out, float* per_label) {
  accuracy_zero_tally(tally, 2 + 2 * num_labels);
  __syncthreads();
  int counted = 0, hits = 0;
  for (long long i = threadIdx.x; i < n; i += blockDim.x) {
    const long long lab = (long long)rintf(label[i * label_cols]);
    if (has_ignore && lab == ignore_label) continue;
    const float* row = dist + i * num_labels;
    float best = 0.f;
    long long pred = 0;
    bool nan_seen = false;
    for (long long l = 0; l < num_labels; ++l)
      accuracy_argmin_step(row[l], l, &best, &pred, &nan_seen);
    const bool right = lab >= 0 && lab < num_labels && pred == lab &&
                       row[lab] < ACCURACY_NOT_READY_THRESHOLD;
    accuracy_tally(tally, num_labels, lab, right, &counted, &hits, per_label_out);
  }
  atomicAdd(tally, counted);
  atomicAdd(tally + 1, hits);
  __syncthreads();  // every thread has added its tallies
  accuracy_finish(tally, num_labels, accuracy, per_label_out, per_label);
}

// Nearest-centroid accuracy of embeddings x (N, D) against centroids (L, D)
// that are ready where counts > 0.  With leave_one_out allowed (not TRAIN)
// and every count 0, the centroids come from the batch itself: first the
// per-label sums and sizes of the counted items go to sums (L, D) and sizes
// (L,), then an item's own class is the mean of the OTHER items of that class
// (not ready when there is none) and any other class the mean of all its
// items.  Distances are computed on the fly (no (N, L) matrix).
extern "C" __global__ void accuracy_encoding_forward(
    const long long n, const long long num_labels, const long long dim, const float* x,
    const float* label, const long long label_cols, const bool has_ignore,
    const long long ignore_label, const float* centroids, const float* counts,
    const bool leave_one_out, float* sums, float* sizes, int* tally, float* accuracy,
    const bool per_label_out, float* per_label) {
  bool trained = false;
  for (long long l = 0; l < num_labels; ++l) trained = trained || counts[l] > 0.f;
  const bool batch_means = leave_one_out && !trained;  // the same in every thread
  if (batch_means) {
    for (long long j = threadIdx.x; j < num_labels * dim; j += blockDim.x) {
      const long long l = j / dim, d = j % dim;
      float s = 0.f, m = 0.f;
      for (long long i = 0; i < n; ++i) {
        const long long lab = (long long)rintf(label[i * label_cols]);
        if (lab != l || (has_ignore && lab == ignore_label)) continue;
        s += x[i * dim + d];
        m += 1.f;
      }
      sums[j] = s;
      if (d == 0) sizes[l] = m;
    }
  }
  accuracy_zero_tally(tally, 2 + 2 * num_labels);
  __syncthreads();  // the tally is zero and the batch sums are written
  int counted = 0, hits = 0;
  for (long long i = threadIdx.x; i < n; i += blockDim.x) {
    const long long lab = (long long)rintf(label[i * label_cols]);
    if (has_ignore && lab == ignore_label) continue;
    const long long own = lab < 0 ? 0 : (lab >= num_labels ? num_labels - 1 : lab);
    const float* xi = x + i * dim;
    float best = 0.f, own_dist = 0.f;
    long long pred = 0;
    bool nan_seen = false;
    for (long long l = 0; l < num_labels; ++l) {
      float v = ACCURACY_NOT_READY;
      if (!batch_means) {
        if (counts[l] > 0.f) {
          float s = 0.f;
          for (long long k = 0; k < dim; ++k) {
            const float d = xi[k] - centroids[l * dim + k];
            s += d * d;
          }
          v = sqrtf(s);
        }
      } else if (l == own) {  // leave-one-out mean of the other items
        const float others = sizes[l] - 1.f;
        if (others > 0.f) {
          float s = 0.f;
          for (long long k = 0; k < dim; ++k) {
            const float d = xi[k] - (sums[l * dim + k] - xi[k]) / fmaxf(others, 1.f);
            s += d * d;
          }
          v = sqrtf(s);
        }
      } else if (sizes[l] > 0.f) {
        float s = 0.f;
        for (long long k = 0; k < dim; ++k) {
          const float d = xi[k] - sums[l * dim + k] / fmaxf(sizes[l], 1.f);
          s += d * d;
        }
        v = sqrtf(s);
      }
      if (l == own) own_dist = v;
      accuracy_argmin_step(v, l, &best, &pred, &nan_seen);
    }
    const bool right = lab >= 0 && lab < num_labels && pred == lab &&
                       own_dist < ACCURACY_NOT_READY_THRESHOLD;
    accuracy_tally(tally, num_labels, lab, right, &counted, &hits, per_label_out);
  }
  atomicAdd(tally, counted);
  atomicAdd(tally + 1, hits);
  __syncthreads();  // every thread has added its tallies
  accuracy_finish(tally, num_labels, accuracy, per_label_out, per_label);
}
