// eltwise.cu -- Eltwise, layers/eltwise.py: J bottoms of equal size combined element by
// element, one launch per pass whatever J.  `table` holds addresses: the J bottoms'
// data first, then (PROD) J saved-copy or (backward) J bottom-diff addresses, 0 for
// none.  Each thread reads everything of its element before writing, so a top that
// is also a bottom (in place) is safe.
//   SUM:  y = sum_j c_j x_j                   dx_j = c_j dy
//   PROD: y = prod_j x_j                      dx_j = dy prod_{k != j} x_k  (stable)
//                                             dx_j = dy y / x_j           (not stable)
//   MAX:  y = max_j x_j, argmax (ties: bottom 0 wins only when strictly greater)
//                                             dx_j = dy [argmax == j]
#include "common.cuh"

static __device__ __forceinline__ const float* eltwise_in(const long long* table, long long j) {
  return reinterpret_cast<const float*>(table[j]);
}

static __device__ __forceinline__ float* eltwise_out(const long long* table, long long j) {
  return reinterpret_cast<float*>(table[j]);
}

// NumPy's maximum: NaN when either operand is NaN.
static __device__ __forceinline__ float eltwise_maximum(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

// y = sum_j coeff[j] * x_j, summed in bottom order.
extern "C" __global__ void eltwise_sum_forward(const long long n, const long long bottoms,
                                               const long long* table, const float* coeff,
                                               float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    float acc = eltwise_in(table, 0)[i] * coeff[0];
    for (long long j = 1; j < bottoms; ++j) acc += coeff[j] * eltwise_in(table, j)[i];
    y[i] = acc;
  }
}

// dx_j = coeff[j] * dy for every bottom j with a diff address (table[bottoms + j]).
extern "C" __global__ void eltwise_sum_backward(const long long n, const long long bottoms,
                                                const long long* table, const float* coeff,
                                                const float* dy) {
  CUDA_KERNEL_LOOP(i, n) {
    const float g = dy[i];
    for (long long j = 0; j < bottoms; ++j) {
      float* dx = eltwise_out(table, bottoms + j);
      if (dx != nullptr) dx[i] = g * coeff[j];
    }
  }
}

// y = x_0 * x_1 * ...; bottom j is also copied to table[bottoms + j] when that is
// not 0 (a bottom that the top overwrites in place: backward needs it).
extern "C" __global__ void eltwise_prod_forward(const long long n, const long long bottoms,
                                                const long long* table, float* y) {
  CUDA_KERNEL_LOOP(i, n) {
    float prod = eltwise_in(table, 0)[i] * eltwise_in(table, 1)[i];
    for (long long j = 2; j < bottoms; ++j) prod *= eltwise_in(table, j)[i];
    for (long long j = 0; j < bottoms; ++j) {
      float* saved = eltwise_out(table, bottoms + j);
      if (saved != nullptr) saved[i] = eltwise_in(table, j)[i];
    }
    y[i] = prod;
  }
}

// dx_j = dy * prod_{k != j} x_k (stable) or dy * y / x_j, for every bottom j with a
// diff address (table[bottoms + j]); table[j] is bottom j's data (its saved copy when
// the forward ran in place).
extern "C" __global__ void eltwise_prod_backward(const long long n, const long long bottoms,
                                                 const long long* table, const float* y,
                                                 const float* dy, const int stable) {
  CUDA_KERNEL_LOOP(i, n) {
    const float g = dy[i];
    const float yv = y[i];
    for (long long j = 0; j < bottoms; ++j) {
      float* dx = eltwise_out(table, bottoms + j);
      if (dx == nullptr) continue;
      float grad;
      if (stable) {
        const long long first = j == 0 ? 1 : 0;
        grad = eltwise_in(table, first)[i] * g;
        for (long long k = first + 1; k < bottoms; ++k)
          if (k != j) grad *= eltwise_in(table, k)[i];
      } else {
        grad = g * yv / eltwise_in(table, j)[i];
      }
      dx[i] = grad;
    }
  }
}

// y = max_j x_j and argmax[i] = the winning bottom (NumPy path's tie rule).
extern "C" __global__ void eltwise_max_forward(const long long n, const long long bottoms,
                                               const long long* table, float* y,
                                               int* argmax) {
  CUDA_KERNEL_LOOP(i, n) {
    const float a = eltwise_in(table, 0)[i];
    const float b = eltwise_in(table, 1)[i];
    int best = a > b ? 0 : 1;
    float m = eltwise_maximum(a, b);
    for (long long j = 2; j < bottoms; ++j) {
      const float v = eltwise_in(table, j)[i];
      if (v > m) best = (int)j;
      m = eltwise_maximum(m, v);
    }
    argmax[i] = best;
    y[i] = m;
  }
}

// dx_j = dy where bottom j won, 0 elsewhere (dy * 0: NaN stays NaN, as in NumPy).
extern "C" __global__ void eltwise_max_backward(const long long n, const long long bottoms,
                                                const long long* table, const int* argmax,
                                                const float* dy) {
  CUDA_KERNEL_LOOP(i, n) {
    const float g = dy[i];
    const int best = argmax[i];
    for (long long j = 0; j < bottoms; ++j) {
      float* dx = eltwise_out(table, bottoms + j);
      if (dx != nullptr) dx[i] = g * (best == j ? 1.f : 0.f);
    }
  }
}
