// softmax.cu -- Softmax (layers/softmax.py) and SoftmaxWithLoss
// (layers/softmax_loss.py).
//
// The bottom is viewed as (outer, channels, inner); a "row" is one position
// (o, i) of outer*inner, its `channels` values `inner` apart.  One block per
// row (block-stride over rows) does max, exp, sum and normalise in one pass:
//
//   y_c = exp(x_c - m) / sum_k exp(x_k - m),   m = max_k x_k
//   dx_c = y_c (dy_c - sum_k dy_k y_k)
//
// SoftmaxWithLoss adds, per row, -log p_label = -((x_label - m) - log sum),
// the NumPy path's log-softmax (finite for confident wrong predictions); a
// single-block pass then sums the rows (in double) and divides by the
// normaliser, and backward is (p - [c = label]) * w / Z per element.
#include "common.cuh"

#define SOFTMAX_LOWEST (-3.402823466e+38f)  // -FLT_MAX: the max of nothing

// Maximum of v over the block, returned to every thread (like block_sum;
// `buf` holds blockDim.x floats, every thread must call it).
static __device__ __forceinline__ float softmax_block_max(float v, float* buf) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] = fmaxf(buf[threadIdx.x], buf[threadIdx.x + s]);
    __syncthreads();
  }
  const float m = buf[0];
  __syncthreads();
  return m;
}

// The three passes over one row (n values `stride` apart) of a softmax,
// each thread taking elements threadIdx.x, + blockDim.x, ...; the kernels
// reduce between them (so their bodies show the CPU emulation that they
// synchronise).  y may be x: the max pass ends at a barrier, and the exp
// pass rewrites each element right after the same thread has read it.
static __device__ __forceinline__ float softmax_partial_max(const float* x, long long n,
                                                            long long stride) {
  float m = SOFTMAX_LOWEST;
  for (long long c = threadIdx.x; c < n; c += blockDim.x) m = fmaxf(m, x[c * stride]);
  return m;
}

// y = exp(x - m); returns this thread's part of the sum.
static __device__ __forceinline__ float softmax_partial_exp(const float* x, float* y, long long n,
                                                            long long stride, float m) {
  float s = 0.f;
  for (long long c = threadIdx.x; c < n; c += blockDim.x) {
    const float e = expf(x[c * stride] - m);
    y[c * stride] = e;
    s += e;
  }
  return s;
}

// y /= sum (the elements this thread wrote).
static __device__ __forceinline__ void softmax_scale(float* y, long long n, long long stride,
                                                     float sum) {
  for (long long c = threadIdx.x; c < n; c += blockDim.x) y[c * stride] = y[c * stride] / sum;
}

// Softmax forward: one block per row.
extern "C" __global__ void softmax_forward(const long long outer, const long long channels,
                                           const long long inner, const float* x, float* y) {
  LG_SHARED_MEMORY(float, buf);
  BLOCK_LOOP(r, outer * inner) {
    const long long base = (r / inner) * channels * inner + r % inner;
    const float m = softmax_block_max(softmax_partial_max(x + base, channels, inner), buf);
    const float sum = block_sum(softmax_partial_exp(x + base, y + base, channels, inner, m), buf);
    softmax_scale(y + base, channels, inner, sum);
  }
}

// Softmax backward: dx = (dy - sum_k dy_k y_k) * y, one block per row (dx may be dy).
extern "C" __global__ void softmax_backward(const long long outer, const long long channels,
                                            const long long inner, const float* y,
                                            const float* dy, float* dx) {
  LG_SHARED_MEMORY(float, buf);
  BLOCK_LOOP(r, outer * inner) {
    const long long base = (r / inner) * channels * inner + r % inner;
    float acc = 0.f;
    for (long long c = threadIdx.x; c < channels; c += blockDim.x)
      acc += dy[base + c * inner] * y[base + c * inner];
    const float dot = block_sum(acc, buf);
    for (long long c = threadIdx.x; c < channels; c += blockDim.x) {
      const long long k = base + c * inner;
      dx[k] = (dy[k] - dot) * y[k];
    }
  }
}

// A label as the NumPy path reads it: truncated to an integer (astype int64;
// NaN and huge values become INT64_MIN there too).  Returns 1 when the
// position counts (*lab in [0, channels)), 0 when it is ignored, -1 when
// its label is out of range.
static __device__ __forceinline__ int softmax_loss_label(float v, long long channels,
                                                         int has_ignore, long long ignore_label,
                                                         long long* lab) {
  const long long lowest = -9223372036854775807LL - 1LL;
  const long long l = (v == v && fabsf(v) < 9.2e18f) ? (long long)v : lowest;
  *lab = l;
  if (has_ignore && l == ignore_label) return 0;
  return (l >= 0 && l < channels) ? 1 : -1;
}

// SoftmaxWithLoss forward, one block per row: the probabilities, the row's
// -log p_label (0 when not counted) and its status (1 counted, 0 ignored,
// -1 label out of range).
extern "C" __global__ void softmax_loss_forward(const long long outer, const long long channels,
                                                const long long inner, const float* x,
                                                const float* label, const int has_ignore,
                                                const long long ignore_label, float* prob,
                                                float* row_loss, float* row_status) {
  LG_SHARED_MEMORY(float, buf);
  BLOCK_LOOP(r, outer * inner) {
    const long long base = (r / inner) * channels * inner + r % inner;
    const float m = softmax_block_max(softmax_partial_max(x + base, channels, inner), buf);
    const float sum =
        block_sum(softmax_partial_exp(x + base, prob + base, channels, inner, m), buf);
    softmax_scale(prob + base, channels, inner, sum);
    const float log_sum = logf(sum);
    if (threadIdx.x == 0) {
      long long lab;
      const int status = softmax_loss_label(label[r], channels, has_ignore, ignore_label, &lab);
      row_loss[r] = status == 1 ? -((x[base + lab * inner] - m) - log_sum) : 0.f;
      row_status[r] = (float)status;
    }
  }
}

// SoftmaxWithLoss total, one block: loss = sum of row losses / Z, with
// Z = max(counted rows, 1) when valid_mode, else fixed_normalizer.  Writes
// stats = (Z, rows with a bad label) for backward and the layer's check.
extern "C" __global__ void softmax_loss_reduce(const long long rows, const float* row_loss,
                                               const float* row_status, const int valid_mode,
                                               const float fixed_normalizer, float* loss,
                                               float* stats) {
  LG_SHARED_MEMORY(double, buf);
  double total = 0.0, counted = 0.0, bad = 0.0;
  for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
    total += row_loss[r];
    counted += row_status[r] > 0.f ? 1.0 : 0.0;
    bad += row_status[r] < 0.f ? 1.0 : 0.0;
  }
  total = block_sum_double(total, buf);
  counted = block_sum_double(counted, buf);
  bad = block_sum_double(bad, buf);
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    const float z = valid_mode ? (float)(counted > 1.0 ? counted : 1.0) : fixed_normalizer;
    loss[0] = (float)total / z;
    stats[0] = z;
    stats[1] = (float)bad;
  }
}

// SoftmaxWithLoss backward, per element: dx = w/Z (p - [c = label]) where
// the row counts, 0 elsewhere (w = top_diff[0], Z = stats[0]).
extern "C" __global__ void softmax_loss_backward(const long long n, const long long channels,
                                                 const long long inner, const float* prob,
                                                 const float* label, const int has_ignore,
                                                 const long long ignore_label,
                                                 const float* top_diff, const float* stats,
                                                 float* dx) {
  const float scale = top_diff[0] / stats[0];
  CUDA_KERNEL_LOOP(k, n) {
    const long long i = k % inner;
    const long long c = (k / inner) % channels;
    const long long r = (k / (inner * channels)) * inner + i;
    long long lab;
    const int status = softmax_loss_label(label[r], channels, has_ignore, ignore_label, &lab);
    dx[k] = status == 1 ? (prob[k] - (c == lab ? 1.f : 0.f)) * scale : 0.f;
  }
}
