// The CPU's fused solver updates: one pass over a parameter's arrays where
// the NumPy path (Solver.compute_update) makes ten or more, each streaming
// the whole array through the cache (Adam on ip1's 400,000 weights: ~12
// passes of 1.6 MB).  Built into the same library as window_ops.cpp by
// layergraph/cpu_kernels.py.
//
// Bit for bit the NumPy path: the same float32 operations in the same order
// (each scalar rounded to float32 first, as NumPy rounds a Python float
// against a float32 array), compiled without contraction into FMAs
// (-ffp-contract=off) and without -ffast-math; sqrt and division are IEEE
// (-fno-math-errno only lets sqrt vectorise: it no longer sets errno).
// tests/test_cpu_kernels.py compares the two exactly.
//
// Per value, with g = diff (written back, as the NumPy path's in-place ops):
//   g *= iter_scale                          (when iter_scale != 1)
//   g += decay * w      (L2)   or  g += decay * sign(w)   (L1)
//   SGD:  h = h * m + g * lr;                           w -= h
//   Adam: h = h * b1 + g * (1 - b1)
//         h2 = h2 * b2 + (g * (1 - b2)) * g
//         w -= (h * lr_c) / (sqrt(h2) + delta)           (lr_c: lr times the bias correction)
#include <cmath>
#include <cstring>

#include "parallel_for.h"

namespace {

template <typename T>
inline T regularised(T g, T w, T iter_scale, int scale, int reg, T decay) {
  if (scale) g = g * iter_scale;
  if (reg == 1) {
    g = g + w * decay;
  } else if (reg == 2) {
    const T s = w > T(0) ? T(1) : (w < T(0) ? T(-1) : w);  // np.sign: keeps +-0 (and NaN)
    g = g + s * decay;
  }
  return g;
}

template <typename T>
__attribute__((noinline)) void sgd_items(T* __restrict__ w, T* __restrict__ diff,
                                         T* __restrict__ h, i64 begin, i64 end, T iter_scale,
                                         int scale, int reg, T decay, T lr, T momentum) {
  for (i64 k = begin; k < end; ++k) {
    const T g = regularised(diff[k], w[k], iter_scale, scale, reg, decay);
    diff[k] = g;
    const T v = h[k] * momentum + g * lr;
    h[k] = v;
    w[k] = w[k] - v;
  }
}

template <typename T>
__attribute__((noinline)) void adam_items(T* __restrict__ w, T* __restrict__ diff,
                                          T* __restrict__ h, T* __restrict__ h2, i64 begin, i64 end,
                                          T iter_scale, int scale, int reg, T decay, T lr_c,
                                          T b1, T c1, T b2, T c2, T delta) {
  for (i64 k = begin; k < end; ++k) {
    const T g = regularised(diff[k], w[k], iter_scale, scale, reg, decay);
    diff[k] = g;
    const T m = h[k] * b1 + g * c1;
    const T v = h2[k] * b2 + (g * c2) * g;
    h[k] = m;
    h2[k] = v;
    w[k] = w[k] - (m * lr_c) / (std::sqrt(v) + delta);
  }
}

}  // namespace

// Values per thread below which an update runs on one thread (see
// parallel_for's min_items): biases and small layers are not worth a wake-up.
#define LG_UPDATE_MIN_ITEMS 32768

// Every parameter's update in one call: arrays of per-parameter pointers
// and sizes; scalars per parameter (SGD: iter_scale, decay, lr, momentum;
// Adam: iter_scale, decay, lr_c, b1, c1, b2, c2, delta -- the rule's in the
// order Solver._rule gives them, the GPU kernels' order too) and flags
// (scale, reg).  The values of all the parameters, end to end, are cut into
// one share per thread (one share under LG_UPDATE_MIN_ITEMS per thread), so
// a step's update is one wake-up of the threads, not one per large
// parameter plus a Python call per parameter.
namespace {

template <typename Body>
void over_params(int n, const i64* counts, const Body& body) {
  i64 total = 0;
  for (int i = 0; i < n; ++i) total += counts[i];
  parallel_for(total, [&](i64 b, i64 e) {
    i64 start = 0;
    for (int i = 0; i < n && start < e; start += counts[i], ++i) {
      const i64 lo = b > start ? b - start : 0, hi = e - start < counts[i] ? e - start : counts[i];
      if (hi > lo) body(i, lo, hi);
    }
  }, LG_UPDATE_MIN_ITEMS);
}

}  // namespace

#define LG_SOLVER_OPS_MANY(T, SUFFIX)                                                         \
  extern "C" void lg_sgd_update_many_##SUFFIX(int n, T* const* w, T* const* diff,             \
                                              T* const* h, const i64* counts, const T* s,     \
                                              const int* flags) {                             \
    over_params(n, counts, [&](int i, i64 b, i64 e) {                                         \
      const T* k = s + 4 * i;                                                                 \
      sgd_items<T>(w[i], diff[i], h[i], b, e, k[0], flags[2 * i], flags[2 * i + 1], k[1],     \
                   k[2], k[3]);                                                               \
    });                                                                                       \
  }                                                                                           \
  extern "C" void lg_adam_update_many_##SUFFIX(int n, T* const* w, T* const* diff,            \
                                               T* const* h, T* const* h2, const i64* counts,  \
                                               const T* s, const int* flags) {                \
    over_params(n, counts, [&](int i, i64 b, i64 e) {                                         \
      const T* k = s + 8 * i;                                                                 \
      adam_items<T>(w[i], diff[i], h[i], h2[i], b, e, k[0], flags[2 * i], flags[2 * i + 1],   \
                    k[1], k[2], k[3], k[4], k[5], k[6], k[7]);                                \
    });                                                                                       \
  }

LG_SOLVER_OPS_MANY(float, f32)
LG_SOLVER_OPS_MANY(double, f64)

// diffs' zeroing (Net.clear_param_diffs) in one call, split as above
#define LG_ZERO_MANY(T, SUFFIX)                                                               \
  extern "C" void lg_zero_many_##SUFFIX(int n, T* const* a, const i64* counts) {              \
    over_params(n, counts, [&](int i, i64 b, i64 e) {                                         \
      std::memset(a[i] + b, 0, sizeof(T) * (e - b));                                          \
    });                                                                                       \
  }

LG_ZERO_MANY(float, f32)
LG_ZERO_MANY(double, f64)
