// solver_update.cu -- the fused parameter updates of layergraph/solver.py
// (Solver.apply_update on a kernel backend): one launch per learnable blob
// per step does, element by element, what the NumPy path does array by array:
//
//   g' = g * clip_scale * iter_scale            (clip_gradients, 1/iter_size)
//   g' += decay * w   (L2)   or   decay * sign(w)   (L1)
//   history update and update value u (Caffe's rules, module doc of solver.py)
//   w -= u;  diff = g'   (the NumPy path leaves g' in the diff; so do we)
//
// Every scalar is float32 as NumPy sees it (the host computes 1 - momentum
// etc. in double and rounds once), and the operations run in the NumPy
// expression's order.  Products go through lg_solver_mul, which on the GPU is
// __fmul_rn: it is never contracted into a fused multiply-add, so each step
// rounds exactly as NumPy's float32 ufuncs do.
#include "common.cuh"

// Regularisation: decay 0 means none (the NumPy path skips it: 0 * inf).
#define LG_REG_NONE 0
#define LG_REG_L2 1
#define LG_REG_L1 2

// a * b rounded on its own (no FMA contraction with a following add).
static __device__ __forceinline__ float lg_solver_mul(float a, float b) {
#ifdef LG_EMULATION
  volatile float product = a * b;  // host compilers may contract too (-ffp-contract)
  return product;
#else
  return __fmul_rn(a, b);
#endif
}

// NumPy's sign for float32: -1, +0 (for -0 too), +1; NaN stays NaN.
static __device__ __forceinline__ float lg_solver_sign(float w) {
  return w > 0.f ? 1.f : (w < 0.f ? -1.f : (w == 0.f ? 0.f : w));
}

// The clipped, normalised, regularised gradient of element i (written back).
static __device__ __forceinline__ float lg_solver_gradient(
    long long i, const float* w, float* g, float clip_scale, float iter_scale,
    int reg, float decay) {
  float v = lg_solver_mul(g[i], clip_scale);
  v = lg_solver_mul(v, iter_scale);
  if (reg == LG_REG_L2) {
    v = v + lg_solver_mul(decay, w[i]);
  } else if (reg == LG_REG_L1) {
    v = v + lg_solver_mul(decay, lg_solver_sign(w[i]));
  }
  g[i] = v;
  return v;
}

// SGD with momentum: h = m h + lr g; w -= h.
extern "C" __global__ void solver_sgd_update(
    const long long n, float* __restrict__ w, float* __restrict__ g,
    float* __restrict__ h, const float clip_scale, const float iter_scale,
    const int reg, const float decay, const float rate, const float momentum) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = lg_solver_gradient(i, w, g, clip_scale, iter_scale, reg, decay);
    const float hi = lg_solver_mul(h[i], momentum) + lg_solver_mul(rate, gi);
    h[i] = hi;
    w[i] = w[i] - hi;
  }
}

// Nesterov: h' = m h + lr g; w -= (1 + m) h' - m h.
extern "C" __global__ void solver_nesterov_update(
    const long long n, float* __restrict__ w, float* __restrict__ g,
    float* __restrict__ h, const float clip_scale, const float iter_scale,
    const int reg, const float decay, const float rate, const float momentum,
    const float one_plus_momentum) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = lg_solver_gradient(i, w, g, clip_scale, iter_scale, reg, decay);
    const float prev = h[i];
    const float hi = lg_solver_mul(prev, momentum) + lg_solver_mul(rate, gi);
    h[i] = hi;
    const float u = lg_solver_mul(one_plus_momentum, hi) - lg_solver_mul(momentum, prev);
    w[i] = w[i] - u;
  }
}

// AdaGrad: h += g^2; w -= lr g / (sqrt(h) + delta).
extern "C" __global__ void solver_adagrad_update(
    const long long n, float* __restrict__ w, float* __restrict__ g,
    float* __restrict__ h, const float clip_scale, const float iter_scale,
    const int reg, const float decay, const float rate, const float delta) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = lg_solver_gradient(i, w, g, clip_scale, iter_scale, reg, decay);
    const float hi = h[i] + lg_solver_mul(gi, gi);
    h[i] = hi;
    const float u = lg_solver_mul(rate, gi) / (sqrtf(hi) + delta);
    w[i] = w[i] - u;
  }
}

// RMSProp: h = d h + (1 - d) g^2; w -= lr g / (sqrt(h) + delta).
extern "C" __global__ void solver_rmsprop_update(
    const long long n, float* __restrict__ w, float* __restrict__ g,
    float* __restrict__ h, const float clip_scale, const float iter_scale,
    const int reg, const float decay, const float rate, const float rms_decay,
    const float one_minus_rms_decay, const float delta) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = lg_solver_gradient(i, w, g, clip_scale, iter_scale, reg, decay);
    const float hi = lg_solver_mul(h[i], rms_decay) +
                     lg_solver_mul(lg_solver_mul(one_minus_rms_decay, gi), gi);
    h[i] = hi;
    const float u = lg_solver_mul(rate, gi) / (sqrtf(hi) + delta);
    w[i] = w[i] - u;
  }
}

// AdaDelta: h = m h + (1 - m) g^2; v = g sqrt(h2 + eps) / sqrt(h + eps);
// h2 = m h2 + (1 - m) v^2; w -= lr v.
extern "C" __global__ void solver_adadelta_update(
    const long long n, float* __restrict__ w, float* __restrict__ g,
    float* __restrict__ h, float* __restrict__ h2, const float clip_scale,
    const float iter_scale, const int reg, const float decay, const float rate,
    const float momentum, const float one_minus_momentum, const float delta) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = lg_solver_gradient(i, w, g, clip_scale, iter_scale, reg, decay);
    const float hi = lg_solver_mul(h[i], momentum) +
                     lg_solver_mul(lg_solver_mul(one_minus_momentum, gi), gi);
    h[i] = hi;
    const float h2_old = h2[i];
    const float v = lg_solver_mul(gi, sqrtf(h2_old + delta)) / sqrtf(hi + delta);
    h2[i] = lg_solver_mul(h2_old, momentum) +
            lg_solver_mul(lg_solver_mul(one_minus_momentum, v), v);
    w[i] = w[i] - lg_solver_mul(rate, v);
  }
}

// Adam: h = b1 h + (1 - b1) g; h2 = b2 h2 + (1 - b2) g^2;
// w -= corrected_rate h / (sqrt(h2) + eps), corrected_rate = lr sqrt(1 - b2^t) / (1 - b1^t).
extern "C" __global__ void solver_adam_update(
    const long long n, float* __restrict__ w, float* __restrict__ g,
    float* __restrict__ h, float* __restrict__ h2, const float clip_scale,
    const float iter_scale, const int reg, const float decay,
    const float corrected_rate, const float beta1, const float one_minus_beta1,
    const float beta2, const float one_minus_beta2, const float delta) {
  CUDA_KERNEL_LOOP(i, n) {
    const float gi = lg_solver_gradient(i, w, g, clip_scale, iter_scale, reg, decay);
    const float hi = lg_solver_mul(h[i], beta1) + lg_solver_mul(one_minus_beta1, gi);
    h[i] = hi;
    const float h2i = lg_solver_mul(h2[i], beta2) +
                      lg_solver_mul(lg_solver_mul(one_minus_beta2, gi), gi);
    h2[i] = h2i;
    const float u = lg_solver_mul(corrected_rate, hi) / (sqrtf(h2i) + delta);
    w[i] = w[i] - u;
  }
}
