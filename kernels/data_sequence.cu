// data_sequence.cu -- DataSequence, layers/data_sequence.py: per-label ring caches of
// images kept on the device, (rows, cache_size, d) floats.  The host chooses the
// (row, slot) of every pick; the device hashes the batch, stores it in the caches
// and gathers the anchor / positive / negative tops, one launch each.
#include "common.cuh"

// splitmix64's finalizer (as in lg_uniform).
static __device__ __forceinline__ unsigned long long ds_mix(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Per item (one block per row of d floats, given as their bit patterns):
// out[row] = sum_e mix((e << 32 | bits[row, e]) + golden) mod 2^64, a content hash whose
// NumPy twin is data_sequence._row_hash; out[rows + row] = rint(labels[row]).  The sum
// is reduced in shared memory (blockDim.x 64-bit words): exact in any order.
extern "C" __global__ void data_sequence_hash(const long long rows, const long long d,
                                              const unsigned int* bits, const float* labels,
                                              long long* out) {
  LG_SHARED_MEMORY(unsigned long long, buf);
  BLOCK_LOOP(row, rows) {
    unsigned long long h = 0ULL;
    for (long long e = threadIdx.x; e < d; e += blockDim.x) {
      const unsigned long long word = ((unsigned long long)e << 32) | bits[row * d + e];
      h += ds_mix(word + 0x9E3779B97F4A7C15ULL);
    }
    buf[threadIdx.x] = h;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      out[row] = (long long)buf[0];
      out[rows + row] = (long long)rintf(labels[row]);
    }
    __syncthreads();  // buf is reused by the next row
  }
}

// cache[slot_of[i]] = batch row i for the items the host chose to store (slot_of[i] =
// cache row * cache_size + slot; -1: not stored).  Stored slots are distinct.
extern "C" __global__ void data_sequence_insert(const long long n, const long long d,
                                                const float* batch, const long long* slot_of,
                                                float* cache) {
  CUDA_KERNEL_LOOP(k, n * d) {
    const long long s = slot_of[k / d];
    if (s >= 0) cache[s * d + k % d] = batch[k];
  }
}

// All the image tops in one pass: top 0 (the anchor) = the batch; top t >= 1, row i =
// cache slot pick[(t - 1) * n + i].  `tops` addresses in top_table.  Then, when
// label_cols > 0, labels_top (n, label_cols) = the int64 labels that follow the picks.
extern "C" __global__ void data_sequence_gather(const long long n, const long long d,
                                                const long long tops, const long long label_cols,
                                                const float* batch, const float* cache,
                                                const long long* pick,
                                                const long long* top_table, float* labels_top) {
  const long long per_top = n * d;
  const long long images = tops * per_top;
  CUDA_KERNEL_LOOP(k, images + n * label_cols) {
    if (k < images) {
      const long long t = k / per_top;
      const long long r = k % per_top;
      float* top = reinterpret_cast<float*>(top_table[t]);
      top[r] = t == 0 ? batch[r] : cache[pick[(t - 1) * n + r / d] * d + r % d];
    } else {
      labels_top[k - images] = (float)pick[(tops - 1) * n + (k - images)];
    }
  }
}
