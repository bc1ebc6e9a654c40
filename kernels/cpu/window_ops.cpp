// window_ops.cpp -- the CPU's sliding-window loops: im2col / col2im and the
// layout changes around the convolution's matrix product, max and average
// pooling.  Compiled on first use by the host C++ compiler with OpenMP
// (layergraph/cpu_kernels.py); the NumPy code in layergraph/layers/ is the
// reference these are tested against (tests/test_cpu_kernels.py), and the
// fallback where no compiler is available.
//
// Why a CPU file next to the CUDA ones: NumPy runs each of its array loops
// on one core, and a sliding window costs it several passes (a strided copy
// per kernel tap, comparisons, index bookkeeping).  Here each is one pass,
// split over the cores by output plane; the GPU kernels index one element
// per thread with divisions that are cheap on a GPU and dear on a CPU.
//
// Conventions (as kernels/im2col.cu and kernels/pooling.cu):
//   images x, dx      (N, C, H, W) contiguous
//   columns col       (C*kh*kw, N*Ho*Wo): row (c, i, j), column (n, r, s)
//     col[(c, i, j), (n, r, s)] = x[n, c, r*sh - ph + i*dh, s*sw - pw + j*dw]
//     (0 outside the image)
//   conv output rows  (O, N*P), P = Ho*Wo;  top (N, O, P)
//   pooling argmax    flat index h*W + w into the input plane (Caffe's mask),
//                     -1 for a window that sees no input
// Every function is instantiated for float and double (suffix _f32 / _f64).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "parallel_for.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LG_DIRECT_CONV 1
#endif

namespace {

// Short rows, fixed width: a window of ho rows x WO columns copied out of
// (or added into) an image whose rows are `step` apart.  With WO a
// compile-time constant the inner loop unrolls into a few vector moves; with
// a run-time width (the loops below) a row of 8 costs a loop set-up each --
// conv2 of the templates (8 x 8 outputs): im2col 2.1 -> 0.9 ms per 96 images.
template <typename T, int WO>
inline void copy_window(const T* src, i64 step, int ho, T* out) {
  for (int r = 0; r < ho; ++r, src += step, out += WO) {
#pragma GCC unroll 16
    for (int s = 0; s < WO; ++s) out[s] = src[s];
  }
}

template <typename T, int WO>
inline void add_window(const T* in, i64 step, int ho, T* dst) {
  for (int r = 0; r < ho; ++r, dst += step, in += WO) {
#pragma GCC unroll 16
    for (int s = 0; s < WO; ++s) dst[s] += in[s];
  }
}

#define LG_WIDTH_CASES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) \
  X(13) X(14) X(15) X(16)

// false when wo has no fixed-width version (the caller loops instead)
template <typename T>
inline bool copy_window_fixed(int wo, const T* src, i64 step, int ho, T* out) {
  switch (wo) {
#define LG_CASE(W) case W: copy_window<T, W>(src, step, ho, out); return true;
    LG_WIDTH_CASES(LG_CASE)
#undef LG_CASE
    default: return false;
  }
}

template <typename T>
inline bool add_window_fixed(int wo, const T* in, i64 step, int ho, T* dst) {
  switch (wo) {
#define LG_CASE(W) case W: add_window<T, W>(in, step, ho, dst); return true;
    LG_WIDTH_CASES(LG_CASE)
#undef LG_CASE
    default: return false;
  }
}

// ------------------------------------------------------------ im2col ----
template <typename T>
__attribute__((noinline)) void im2col_items(const T* x, i64 n_img, int channels, int height,
                                            int width, int kh, int kw, int ph, int pw, int sh,
                                            int sw, int dh, int dw, int ho, int wo, T* col,
                                            i64 begin, i64 end) {
  const i64 plane = (i64)ho * wo;
  for (i64 item = begin; item < end; ++item) {  // item = (row, n)
    {
      const i64 row = item / n_img, n = item % n_img;
      const int j = (int)(row % kw), i = (int)((row / kw) % kh);
      const i64 c = row / ((i64)kw * kh);
      const T* src = x + (n * channels + c) * height * width;
      T* dst = col + row * n_img * plane + n * plane;
      const int x_off = j * dw - pw;
      // output columns s whose input column s*sw + x_off lies in [0, width)
      int s_lo = x_off >= 0 ? 0 : (-x_off + sw - 1) / sw;
      int s_hi = width - 1 - x_off < 0 ? 0 : std::min(wo, (width - 1 - x_off) / sw + 1);
      if (s_lo > s_hi) s_lo = s_hi;
      const int y0 = i * dh - ph, y_last = (ho - 1) * sh + y0;
      if (sw == 1 && s_lo == 0 && s_hi == wo && y0 >= 0 && y_last < height &&
          copy_window_fixed<T>(wo, src + (i64)y0 * width + x_off, (i64)sh * width, ho, dst))
        continue;                     // the whole window inside the image
      for (int r = 0; r < ho; ++r) {
        T* out = dst + (i64)r * wo;
        const int y = r * sh - ph + i * dh;
        if (y < 0 || y >= height) {
          for (int s = 0; s < wo; ++s) out[s] = T(0);
          continue;
        }
        const T* line = src + (i64)y * width + x_off;
        for (int s = 0; s < s_lo; ++s) out[s] = T(0);
        if (sw == 1) {
          for (int s = s_lo; s < s_hi; ++s) out[s] = line[s];
        } else {
          for (int s = s_lo; s < s_hi; ++s) out[s] = line[(i64)s * sw];
        }
        for (int s = s_hi; s < wo; ++s) out[s] = T(0);
      }
    }
  }
}

template <typename T>
void im2col(const T* x, i64 n_img, int channels, int height, int width, int kh, int kw,
            int ph, int pw, int sh, int sw, int dh, int dw, int ho, int wo, T* col) {
  parallel_for((i64)channels * kh * kw * n_img, [=](i64 b, i64 e) {
    im2col_items<T>(x, n_img, channels, height, width, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo,
                    col, b, e);
  });
}

// dx[n, c] = sum over taps (i, j) of the tap's column block, added in tap
// order (i, j) -- the order of the NumPy reference.  One output plane per
// iteration, so no two threads write the same element.
template <typename T>
__attribute__((noinline)) void col2im_items(const T* col, i64 n_img, int channels, int height,
                                            int width, int kh, int kw, int ph, int pw, int sh,
                                            int sw, int dh, int dw, int ho, int wo, T* dx,
                                            i64 begin, i64 end) {
  const i64 plane = (i64)ho * wo;
  for (i64 cn = begin; cn < end; ++cn) {  // channel-major: the taps' column rows
    const i64 c = cn / n_img, n = cn % n_img;  // are then read in order, image by image
    T* dst = dx + (n * channels + c) * height * width;
    std::memset(dst, 0, sizeof(T) * height * width);
    for (int i = 0; i < kh; ++i) {
      for (int j = 0; j < kw; ++j) {
        const i64 row = (c * kh + i) * kw + j;
        const T* src = col + row * n_img * plane + n * plane;
        const int x_off = j * dw - pw;
        int s_lo = x_off >= 0 ? 0 : (-x_off + sw - 1) / sw;
        int s_hi = width - 1 - x_off < 0 ? 0 : std::min(wo, (width - 1 - x_off) / sw + 1);
        if (s_lo > s_hi) s_lo = s_hi;
        const int y0 = i * dh - ph, y_last = (ho - 1) * sh + y0;
        if (sw == 1 && s_lo == 0 && s_hi == wo && y0 >= 0 && y_last < height &&
            add_window_fixed<T>(wo, src, (i64)sh * width, ho, dst + (i64)y0 * width + x_off))
          continue;                   // the whole window inside the image
        for (int r = 0; r < ho; ++r) {
          const int y = r * sh - ph + i * dh;
          if (y < 0 || y >= height) continue;
          T* line = dst + (i64)y * width + x_off;
          const T* in = src + (i64)r * wo;
          if (sw == 1) {
            for (int s = s_lo; s < s_hi; ++s) line[s] += in[s];
          } else {
            for (int s = s_lo; s < s_hi; ++s) line[(i64)s * sw] += in[s];
          }
        }
      }
    }
  }
}

template <typename T>
void col2im(const T* col, i64 n_img, int channels, int height, int width, int kh, int kw,
            int ph, int pw, int sh, int sw, int dh, int dw, int ho, int wo, T* dx) {
  parallel_for(n_img * channels, [=](i64 b, i64 e) {
    col2im_items<T>(col, n_img, channels, height, width, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo,
                    dx, b, e);
  });
}

// top[n, o, p] = rows[o, n*P + p] (+ bias[o])
template <typename T>
__attribute__((noinline)) void rows_to_nchw_items(const T* rows, const T* bias, i64 n_img,
                                                  int out_ch, i64 plane, T* top, i64 begin,
                                                  i64 end) {
  for (i64 item = begin; item < end; ++item) {  // item = (n, o)
    {
      const i64 n = item / out_ch, o = item % out_ch;
      const T* src = rows + (o * n_img + n) * plane;
      T* dst = top + (n * out_ch + o) * plane;
      const T b = bias ? bias[o] : T(0);
      if (bias) {
        for (i64 p = 0; p < plane; ++p) dst[p] = src[p] + b;
      } else {
        std::memcpy(dst, src, sizeof(T) * plane);
      }
    }
  }
}

template <typename T>
void rows_to_nchw(const T* rows, const T* bias, i64 n_img, int out_ch, i64 plane, T* top) {
  parallel_for(n_img * out_ch, [=](i64 b, i64 e) {
    rows_to_nchw_items<T>(rows, bias, n_img, out_ch, plane, top, b, e);
  });
}

// rows[o, n*P + p] = dy[n, o, p]; dbias[o] += sum of dy[:, o, :] (if dbias)
template <typename T>
__attribute__((noinline)) void nchw_to_rows_items(const T* dy, i64 n_img, int out_ch, i64 plane,
                                                  T* rows, T* dbias, i64 begin, i64 end) {
  for (i64 o = begin; o < end; ++o) {
    double total = 0.0;
    for (i64 n = 0; n < n_img; ++n) {
      const T* src = dy + (n * out_ch + o) * plane;
      T* dst = rows + (o * n_img + n) * plane;
      std::memcpy(dst, src, sizeof(T) * plane);
      if (dbias) {
        T part = T(0);
        for (i64 p = 0; p < plane; ++p) part += src[p];
        total += part;
      }
    }
    if (dbias) dbias[o] += (T)total;
  }
}

template <typename T>
void nchw_to_rows(const T* dy, i64 n_img, int out_ch, i64 plane, T* rows, T* dbias) {
  parallel_for(out_ch, [=](i64 b, i64 e) {
    nchw_to_rows_items<T>(dy, n_img, out_ch, plane, rows, dbias, b, e);
  });
}

// ----------------------------------------------------------- pooling ----
// Window (r, s) covers rows r*sh - ph .. + kh - 1 and columns s*sw - pw ..
// + kw - 1, clipped to the image; MAX keeps the first maximum in row-major
// order (Caffe's rule on ties); a window past the image gives -FLT_MAX (the
// float's lowest) and argmax -1.
template <typename T>
__attribute__((noinline)) void max_pool_forward_items(const T* x, int height, int width, int ho,
                                                      int wo, int kh, int kw, int sh, int sw,
                                                      int ph, int pw, T* y, int32_t* argmax,
                                                      i64 begin, i64 end) {
  const T lowest = T(-FLT_MAX);  // Caffe's start, whatever T (as the NumPy path)
  const bool tiles = kh == sh && kw == sw && ph == 0 && pw == 0 && ho * kh <= height &&
                     wo * kw <= width;
  for (i64 pc = begin; pc < end; ++pc) {
    const T* src = x + pc * height * width;
    T* out = y + pc * ho * wo;
    int32_t* idx = argmax + pc * ho * wo;
    if (tiles && kh == 2 && kw == 2) {  // LeNet's 2x2/2 without branches: on random
      for (int r = 0; r < ho; ++r) {    // data a branch per compare mispredicts (7x slower)
        const T* a = src + (i64)(2 * r) * width;
        const T* b = a + width;
        T* o = out + (i64)r * wo;
        int32_t* k = idx + (i64)r * wo;
        const int base = 2 * r * width;
        for (int s = 0; s < wo; ++s) {
          const T v0 = a[2 * s], v1 = a[2 * s + 1], v2 = b[2 * s], v3 = b[2 * s + 1];
          // strict > keeps the earlier tap on ties (Caffe's first maximum in
          // row-major order); std::max(p, q) is p unless q > p
          const int right_a = v1 > v0, right_b = v3 > v2;
          const T top = std::max(v0, v1), bottom = std::max(v2, v3);
          const int lower = bottom > top;
          o[s] = std::max(top, bottom);
          k[s] = base + 2 * s + right_a + lower * (width + right_b - right_a);
        }
      }
      continue;
    }
    for (int r = 0; r < ho; ++r) {
      int hs = r * sh - ph;
      const int he = std::min(hs + kh, height);
      hs = std::max(hs, 0);
      for (int s = 0; s < wo; ++s) {
        int ws = s * sw - pw;
        const int we = std::min(ws + kw, width);
        ws = std::max(ws, 0);
        T best = lowest;
        int where = -1;
        for (int h = hs; h < he; ++h) {
          for (int w = ws; w < we; ++w) {
            const T v = src[(i64)h * width + w];
            if (v > best || where < 0) {
              best = v;
              where = h * width + w;
            }
          }
        }
        out[r * wo + s] = best;
        idx[r * wo + s] = where;
      }
    }
  }
}

template <typename T>
void max_pool_forward(const T* x, i64 planes, int height, int width, int ho, int wo, int kh,
                      int kw, int sh, int sw, int ph, int pw, T* y, int32_t* argmax) {
  parallel_for(planes, [=](i64 b, i64 e) {
    max_pool_forward_items<T>(x, height, width, ho, wo, kh, kw, sh, sw, ph, pw, y, argmax, b, e);
  });
}

// dx = 0; dx[argmax[k]] += dy[k], the windows of a plane in order.
// live (or null: every item): live[n] = 0 when item n's dy is all zero --
// its planes are only zeroed (the backward passes' skipped items).
template <typename T>
__attribute__((noinline)) void max_pool_backward_items(const T* dy, const int32_t* argmax,
                                                       int height, int width, int ho, int wo,
                                                       const uint8_t* live, i64 per_item,
                                                       T* dx, i64 begin, i64 end) {
  for (i64 pc = begin; pc < end; ++pc) {
    T* dst = dx + pc * height * width;
    std::memset(dst, 0, sizeof(T) * height * width);
    if (live && !live[pc / per_item]) continue;
    const T* grad = dy + pc * ho * wo;
    const int32_t* idx = argmax + pc * ho * wo;
    for (i64 k = 0; k < (i64)ho * wo; ++k) {
      if (idx[k] >= 0) dst[idx[k]] += grad[k];
    }
  }
}

template <typename T>
void max_pool_backward(const T* dy, const int32_t* argmax, i64 planes, int height, int width,
                       int ho, int wo, const uint8_t* live, i64 per_item, T* dx) {
  parallel_for(planes, [=](i64 b, i64 e) {
    max_pool_backward_items<T>(dy, argmax, height, width, ho, wo, live, per_item, dx, b, e);
  });
}

// Caffe's divisor: (min(hs + kh, H + ph) - hs) * (min(ws + kw, W + pw) - ws),
// padding counted; 0 for a window past the image.
template <typename T>
__attribute__((noinline)) void ave_pool_forward_items(const T* x, int height, int width, int ho, int wo,
                                              int kh, int kw, int sh, int sw, int ph, int pw,
                                              T* y, i64 begin, i64 end) {
  for (i64 pc = begin; pc < end; ++pc) {
    const T* src = x + pc * height * width;
    T* out = y + pc * ho * wo;
    for (int r = 0; r < ho; ++r) {
      int hs = r * sh - ph;
      int he = std::min(hs + kh, height + ph);
      const int rows = he - hs;
      hs = std::max(hs, 0);
      he = std::min(he, height);
      for (int s = 0; s < wo; ++s) {
        int ws = s * sw - pw;
        int we = std::min(ws + kw, width + pw);
        const int size = rows * (we - ws);
        ws = std::max(ws, 0);
        we = std::min(we, width);
        T sum = T(0);
        for (int h = hs; h < he; ++h) {
          for (int w = ws; w < we; ++w) sum += src[(i64)h * width + w];
        }
        out[r * wo + s] = (hs < he && ws < we) ? sum / T(size) : T(0);
      }
    }
  }
}

template <typename T>
void ave_pool_forward(const T* x, i64 planes, int height, int width, int ho, int wo, int kh, int kw,
            int sh, int sw, int ph, int pw, T* y) {
  parallel_for(planes, [=](i64 b, i64 e) {
    ave_pool_forward_items<T>(x, height, width, ho, wo, kh, kw, sh, sw, ph, pw, y, b, e);
  });
}

template <typename T>
__attribute__((noinline)) void ave_pool_backward_items(const T* dy, int height, int width, int ho, int wo,
                                              int kh, int kw, int sh, int sw, int ph, int pw,
                                              const uint8_t* live, i64 per_item,
                                              T* dx, i64 begin, i64 end) {
  for (i64 pc = begin; pc < end; ++pc) {
    T* dst = dx + pc * height * width;
    std::memset(dst, 0, sizeof(T) * height * width);
    if (live && !live[pc / per_item]) continue;   // as max_pool_backward
    const T* grad = dy + pc * ho * wo;
    for (int r = 0; r < ho; ++r) {
      int hs = r * sh - ph;
      int he = std::min(hs + kh, height + ph);
      const int rows = he - hs;
      hs = std::max(hs, 0);
      he = std::min(he, height);
      for (int s = 0; s < wo; ++s) {
        int ws = s * sw - pw;
        int we = std::min(ws + kw, width + pw);
        const int size = rows * (we - ws);
        ws = std::max(ws, 0);
        we = std::min(we, width);
        if (hs >= he || ws >= we) continue;
        const T g = grad[r * wo + s] / T(size);
        for (int h = hs; h < he; ++h) {
          for (int w = ws; w < we; ++w) dst[(i64)h * width + w] += g;
        }
      }
    }
  }
}

template <typename T>
void ave_pool_backward(const T* dy, i64 planes, int height, int width, int ho, int wo, int kh, int kw,
            int sh, int sw, int ph, int pw, const uint8_t* live, i64 per_item, T* dx) {
  parallel_for(planes, [=](i64 b, i64 e) {
    ave_pool_backward_items<T>(dy, height, width, ho, wo, kh, kw, sh, sw, ph, pw, live, per_item,
                               dx, b, e);
  });
}

// ------------------------------------------------------ active items ----
// The items (consecutive runs of `size` elements) of `a` that hold anything
// but zero -- NaN counts -- written to `index` in order; returns how many.
// A backward pass uses it to skip the batch items whose top gradient is all
// zero (a triplet that meets its margin): their bottom gradient is zero and
// they add nothing to the parameter gradients.  An active item is usually
// told by its first block; only the inactive ones are read to the end.
template <typename T>
i64 active_items(const T* a, i64 items, i64 size, i64* index) {
  const i64 block = 64;
  i64 count = 0;
  for (i64 k = 0; k < items; ++k) {
    const T* row = a + k * size;
    bool any = false;
    for (i64 b = 0; b < size && !any; b += block) {
      const i64 e = std::min(size, b + block);
      int hit = 0;
      for (i64 i = b; i < e; ++i) hit |= row[i] != T(0);
      any = hit != 0;
    }
    if (any) index[count++] = k;
  }
  return count;
}

}  // namespace

#define LG_WINDOW_OPS(T, SUFFIX)                                                              \
  extern "C" void lg_im2col_##SUFFIX(const T* x, i64 n, int c, int h, int w, int kh, int kw, \
                                     int ph, int pw, int sh, int sw, int dh, int dw, int ho,  \
                                     int wo, T* col) {                                        \
    im2col<T>(x, n, c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo, col);                    \
  }                                                                                           \
  extern "C" void lg_col2im_##SUFFIX(const T* col, i64 n, int c, int h, int w, int kh,       \
                                     int kw, int ph, int pw, int sh, int sw, int dh, int dw,  \
                                     int ho, int wo, T* dx) {                                 \
    col2im<T>(col, n, c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo, dx);                   \
  }                                                                                           \
  extern "C" void lg_rows_to_nchw_##SUFFIX(const T* rows, const T* bias, i64 n, int o,       \
                                           i64 plane, T* top) {                               \
    rows_to_nchw<T>(rows, bias, n, o, plane, top);                                            \
  }                                                                                           \
  extern "C" void lg_nchw_to_rows_##SUFFIX(const T* dy, i64 n, int o, i64 plane, T* rows,    \
                                           T* dbias) {                                        \
    nchw_to_rows<T>(dy, n, o, plane, rows, dbias);                                            \
  }                                                                                           \
  extern "C" void lg_max_pool_forward_##SUFFIX(const T* x, i64 planes, int h, int w, int ho, \
                                               int wo, int kh, int kw, int sh, int sw,        \
                                               int ph, int pw, T* y, int32_t* argmax) {       \
    max_pool_forward<T>(x, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, y, argmax);          \
  }                                                                                           \
  extern "C" void lg_max_pool_backward_##SUFFIX(const T* dy, const int32_t* argmax,          \
                                                i64 planes, int h, int w, int ho, int wo,     \
                                                const uint8_t* live, i64 per_item, T* dx) {   \
    max_pool_backward<T>(dy, argmax, planes, h, w, ho, wo, live, per_item, dx);               \
  }                                                                                           \
  extern "C" void lg_ave_pool_forward_##SUFFIX(const T* x, i64 planes, int h, int w, int ho, \
                                               int wo, int kh, int kw, int sh, int sw,        \
                                               int ph, int pw, T* y) {                        \
    ave_pool_forward<T>(x, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, y);                  \
  }                                                                                           \
  extern "C" void lg_ave_pool_backward_##SUFFIX(const T* dy, i64 planes, int h, int w,       \
                                                int ho, int wo, int kh, int kw, int sh,       \
                                                int sw, int ph, int pw, const uint8_t* live,  \
                                                i64 per_item, T* dx) {                        \
    ave_pool_backward<T>(dy, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, live, per_item, dx); \
  }                                                                                           \
  extern "C" i64 lg_active_items_##SUFFIX(const T* a, i64 items, i64 size, i64* index) {     \
    return active_items<T>(a, items, size, index);                                            \
  }

LG_WINDOW_OPS(float, f32)
LG_WINDOW_OPS(double, f64)

// ------------------------------------------------- direct convolution ----
// A convolution whose windows hold few values (C*kh*kw <= 64: the first
// layer of a net on grey or colour images, conv1 of the templates with 25)
// gains little from im2col + GEMM: the product is skinny (K = 25), and
// writing and reading the columns and the transposed output cost more than
// the arithmetic.  Here each output is computed in place, 16 positions per
// AVX-512 vector: over the "wide" plane (ho rows of W columns, the last
// W - wo of each discarded), the inputs of a tap are contiguous, so a tap is
// one load and one fused multiply-add per output channel (8 channels per
// pass).  Stride 1, no padding, no dilation, one group; float32.  The host
// must support AVX-512F (lg_direct_conv_available); the layer falls back to
// im2col + GEMM otherwise.  Sums run in tap order (c, i, j) from the bias,
// with fused multiply-adds: not bit-identical to the GEMM path (float32
// rounding).
#ifdef LG_DIRECT_CONV
namespace {

// off[k] of each tap k = (c, i, j): where its input starts in the image;
// returns the tap count, 0 when over 64 (the callers check DIRECT_CONV_TAPS)
inline int tap_offsets(int channels, int height, int width, int kh, int kw, int* off) {
  const int taps = channels * kh * kw;
  if (taps > 64 || taps < 1) return 0;
  for (int c = 0, k = 0; c < channels; ++c)
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j) off[k++] = (c * height + i) * width + j;
  return taps;
}

// block(std::integral_constant<int, B>, o) over the output channels: blocks
// of 4, then one block of the rest
template <typename Block>
inline void channel_blocks(int out_ch, const Block& block) {
  int o = 0;
  for (; o + 4 <= out_ch; o += 4) block(std::integral_constant<int, 4>(), o);
  switch (out_ch - o) {
#define LG_TAIL(B) case B: block(std::integral_constant<int, B>(), o); break;
    LG_TAIL(1) LG_TAIL(2) LG_TAIL(3)
#undef LG_TAIL
    default: break;
  }
}

// OB output channels by PB whole 16-position chunks from position p, every
// tap inside the image: OB * PB accumulators, per tap PB loads of x and OB
// broadcasts of a weight for OB * PB multiply-adds.  Each output adds the
// bias and then the taps in order, as the one-chunk loop below does.
template <int OB, int PB>
__attribute__((target("avx512f"))) inline void direct_conv_tile(
    const float* x, const int* off, int taps, const float* wb, const float* bias, int o0, i64 p,
    i64 wide_plane, float* wide) {
  __m512 acc[OB][PB];
#pragma GCC unroll 8
  for (int b = 0; b < OB; ++b)
#pragma GCC unroll 8
    for (int q = 0; q < PB; ++q) acc[b][q] = _mm512_set1_ps(bias ? bias[o0 + b] : 0.0f);
  const float* xp = x + p;
  for (int k = 0; k < taps; ++k) {
    __m512 xv[PB];
#pragma GCC unroll 8
    for (int q = 0; q < PB; ++q) xv[q] = _mm512_loadu_ps(xp + off[k] + q * 16);
#pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) {
      const __m512 wv = _mm512_set1_ps(wb[(i64)b * taps + k]);
#pragma GCC unroll 8
      for (int q = 0; q < PB; ++q) acc[b][q] = _mm512_fmadd_ps(wv, xv[q], acc[b][q]);
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < OB; ++b)
#pragma GCC unroll 8
    for (int q = 0; q < PB; ++q)
      _mm512_storeu_ps(wide + (i64)(o0 + b) * wide_plane + p + q * 16, acc[b][q]);
}

template <int OB>
__attribute__((target("avx512f"))) void direct_conv_block(
    const float* x, i64 limit, const int* off, int taps, const float* w, const float* bias,
    int o0, i64 wide_plane, float* wide) {
  constexpr int PB = 5;   // chunks per tile: 4 x 5 accumulators
  const __mmask16 all = 0xFFFF;
  const float* wb = w + (i64)o0 * taps;
  i64 p = 0;
  for (; p + PB * 16 <= wide_plane && p + (PB - 1) * 16 + off[taps - 1] + 16 <= limit;
       p += PB * 16)
    direct_conv_tile<OB, PB>(x, off, taps, wb, bias, o0, p, wide_plane, wide);
  for (; p < wide_plane; p += 16) {   // the rest one chunk at a time
    __m512 acc[OB];
#pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) acc[b] = _mm512_set1_ps(bias ? bias[o0 + b] : 0.0f);
    const i64 lanes = std::min<i64>(16, wide_plane - p);
    const __mmask16 valid = lanes == 16 ? all : (__mmask16)((1u << lanes) - 1);
    if (valid == all && p + off[taps - 1] + 16 <= limit) {   // every tap inside the image
      const float* xp = x + p;
      for (int k = 0; k < taps; ++k) {
        const __m512 xv = _mm512_loadu_ps(xp + off[k]);
#pragma GCC unroll 8
        for (int b = 0; b < OB; ++b)
          acc[b] = _mm512_fmadd_ps(_mm512_set1_ps(wb[(i64)b * taps + k]), xv, acc[b]);
      }
    } else {  // the plane's last positions: no read past the image
      for (int k = 0; k < taps; ++k) {
        const i64 start = p + off[k];
        const i64 readable = std::max<i64>(0, std::min<i64>(16, limit - start));
        const __mmask16 m = valid & (__mmask16)((1u << readable) - 1);
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + start);
#pragma GCC unroll 8
        for (int b = 0; b < OB; ++b)
          acc[b] = _mm512_fmadd_ps(_mm512_set1_ps(wb[(i64)b * taps + k]), xv, acc[b]);
      }
    }
#pragma GCC unroll 8
    for (int b = 0; b < OB; ++b)
      _mm512_mask_storeu_ps(wide + (i64)(o0 + b) * wide_plane + p, valid, acc[b]);
  }
}

__attribute__((target("avx512f"))) void direct_conv_image(
    const float* x, int channels, int height, int width, int out_ch, int kh, int kw, int ho,
    int wo, const float* w, const float* bias, float* wide, float* y) {
  int off[64];
  const int taps = tap_offsets(channels, height, width, kh, kw, off);
  if (!taps) return;
  const i64 limit = (i64)channels * height * width, wide_plane = (i64)ho * width;
  channel_blocks(out_ch, [&](auto ob, int o) {
    direct_conv_block<decltype(ob)::value>(x, limit, off, taps, w, bias, o, wide_plane, wide);
  });
  for (int oc = 0; oc < out_ch; ++oc)   // the wide plane's first wo columns
    for (int r = 0; r < ho; ++r) {
      const float* src = wide + (i64)oc * wide_plane + (i64)r * width;
      float* dst = y + ((i64)oc * ho + r) * wo;
      for (int s = 0; s < wo; s += 16) {
        const __mmask16 m = wo - s >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (wo - s)) - 1);
        _mm512_mask_storeu_ps(dst + s, m, _mm512_maskz_loadu_ps(m, src + s));
      }
    }
}

// The weight gradient without columns: acc[o, k, :] += dy_wide[o, p..p+16) *
// x[p + off_k ..] over the wide plane's 16-position chunks, for a tile of
// OB output channels by KT taps held in OB * KT vector accumulators: per
// chunk OB loads of dy and KT (masked) loads of x feed OB * KT
// multiply-adds.  Each accumulator still adds its chunks in order, so the
// sums are those of one tap at a time, bit for bit.  `acc` holds 16
// partial sums per weight, summed by the caller; `dyw` is the image's dy
// laid out on the wide plane (zero past column wo and past the plane,
// padded to whole chunks), so only x's loads need masks.
template <int OB, int KT>
__attribute__((target("avx512f"))) void direct_dw_tile(
    const float* x, const __mmask16* masks, const int* off, int taps, const float* dyw,
    int o0, int k0, i64 chunks, i64 padded_plane, float* acc) {
  __m512 a[OB][KT];
#pragma GCC unroll 8
  for (int b = 0; b < OB; ++b)
#pragma GCC unroll 8
    for (int t = 0; t < KT; ++t)
      a[b][t] = _mm512_loadu_ps(acc + ((i64)(o0 + b) * taps + k0 + t) * 16);
  const float* xk[KT];
#pragma GCC unroll 8
  for (int t = 0; t < KT; ++t) xk[t] = x + off[k0 + t];
  for (i64 c = 0; c < chunks; ++c) {
    __m512 d[OB];
#pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) d[b] = _mm512_loadu_ps(dyw + (i64)(o0 + b) * padded_plane + c * 16);
#pragma GCC unroll 8
    for (int t = 0; t < KT; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(masks[c * 64 + k0 + t], xk[t] + c * 16);
#pragma GCC unroll 8
      for (int b = 0; b < OB; ++b) a[b][t] = _mm512_fmadd_ps(d[b], xv, a[b][t]);
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < OB; ++b)
#pragma GCC unroll 8
    for (int t = 0; t < KT; ++t)
      _mm512_storeu_ps(acc + ((i64)(o0 + b) * taps + k0 + t) * 16, a[b][t]);
}

// tile(std::integral_constant<int, OB>, std::integral_constant<int, KT>,
// o, k) over output channels by taps: tiles of 4 x 5 (20 accumulators, 4
// loads of dy and 5 of x), then the channels' and the taps' rest
template <typename Tile>
inline void dw_tiles(int out_ch, int taps, const Tile& tile) {
  auto taps_of = [&](auto ob, int o) {
    int k = 0;
    for (; k + 5 <= taps; k += 5) tile(ob, std::integral_constant<int, 5>(), o, k);
    switch (taps - k) {
#define LG_TAIL(T) case T: tile(ob, std::integral_constant<int, T>(), o, k); break;
      LG_TAIL(1) LG_TAIL(2) LG_TAIL(3) LG_TAIL(4)
#undef LG_TAIL
      default: break;
    }
  };
  channel_blocks(out_ch, taps_of);
}

__attribute__((target("avx512f"))) void direct_dw_image(
    const float* x, const float* dy, const int* off, int taps, int width, int out_ch, int ho,
    int wo, const __mmask16* masks, float* dyw, float* acc, double* dbias) {
  const i64 wide_plane = (i64)ho * width;
  const i64 chunks = (wide_plane + 15) / 16, padded = chunks * 16;
  for (int o = 0; o < out_ch; ++o) {   // dy's rows onto the wide plane, and their sum
    float* row = dyw + (i64)o * padded;
    std::memset(row, 0, sizeof(float) * padded);
    const float* src = dy + (i64)o * ho * wo;
    __m512 sum[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int r = 0; r < ho; ++r)
      for (int s = 0; s < wo; s += 16) {
        const __mmask16 m = wo - s >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (wo - s)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, src + (i64)r * wo + s);
        _mm512_mask_storeu_ps(row + (i64)r * width + s, m, v);
        sum[r & 1] = _mm512_add_ps(sum[r & 1], v);
      }
    if (dbias) dbias[o] += (double)_mm512_reduce_add_ps(_mm512_add_ps(sum[0], sum[1]));
  }
  dw_tiles(out_ch, taps, [&](auto ob, auto kt, int o, int k) {
    direct_dw_tile<decltype(ob)::value, decltype(kt)::value>(x, masks, off, taps, dyw, o, k,
                                                             chunks, padded, acc);
  });
}

}  // namespace
#endif

// The weight (and bias) gradient of a direct convolution, for the images
// index[0..count) of x and dy (index null: images 0..count), on one thread:
// acc (O, C*kh*kw, 16) += the partial sums (the caller adds the 16 lanes),
// dbias (O, double; null: none) += dy's sums (each image's in 16 float
// lanes, then added in double).  Scratch: dyw of O * (ho * W
// rounded up to 16) floats, masks of ceil(ho * W / 16) * 64 entries.
extern "C" void lg_direct_conv_dw_f32(const float* x, const float* dy, const i64* index,
                                      i64 count, int channels, int height, int width,
                                      int out_ch, int kh, int kw, int ho, int wo, float* dyw,
                                      void* masks, float* acc, double* dbias) {
#ifdef LG_DIRECT_CONV
  int off[64];
  const int taps = tap_offsets(channels, height, width, kh, kw, off);
  if (!taps) return;
  const i64 limit = (i64)channels * height * width, wide_plane = (i64)ho * width;
  const i64 chunks = (wide_plane + 15) / 16;
  // per chunk and tap: the lanes inside the plane, on a column < wo, and
  // inside the image (the plane's last taps would read past it)
  __mmask16* m = static_cast<__mmask16*>(masks);
  for (i64 c = 0; c < chunks; ++c) {
    unsigned inside = 0;   // the chunk's lanes on the plane and on a column < wo
    for (int l = 0; l < 16; ++l) {
      const i64 p = c * 16 + l;
      if (p < wide_plane && p % width < wo) inside |= 1u << l;
    }
    for (int k = 0; k < taps; ++k) {   // and reading inside the image
      const i64 readable = limit - (c * 16 + off[k]);
      m[c * 64 + k] = (__mmask16)(readable >= 16 ? inside
                                  : readable <= 0 ? 0u : inside & ((1u << readable) - 1));
    }
  }
  for (i64 k = 0; k < count; ++k) {
    const i64 img = index ? index[k] : k;
    direct_dw_image(x + img * channels * height * width, dy + img * (i64)out_ch * ho * wo, off,
                    taps, width, out_ch, ho, wo, m, dyw, acc, dbias);
  }
#endif
}

extern "C" int lg_direct_conv_available() {
#ifdef LG_DIRECT_CONV
  return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
  return 0;
#endif
}

// y (N, O, ho, wo) = conv(x (N, C, H, W), w (O, C, kh, kw)) + bias; `wide`:
// scratch of O * ho * W floats per thread.  Images split over the threads.
extern "C" void lg_direct_conv_f32(const float* x, i64 n_img, int channels, int height,
                                   int width, int out_ch, int kh, int kw, int ho, int wo,
                                   const float* w, const float* bias, float* wide, float* y) {
#ifdef LG_DIRECT_CONV
  const i64 scratch = (i64)out_ch * ho * width;
#ifdef _OPENMP
  // called from a part of layer_parts.cpp (inside a parallel region), the
  // loop runs on this thread alone with the part's own scratch
  const bool alone = omp_in_parallel();
#endif
  parallel_for(n_img, [=](i64 b, i64 e) {
#ifdef _OPENMP
    float* mine = wide + (alone ? 0 : (i64)omp_get_thread_num() * scratch);
#else
    float* mine = wide;
#endif
    for (i64 img = b; img < e; ++img)
      direct_conv_image(x + img * channels * height * width, channels, height, width, out_ch,
                        kh, kw, ho, wo, w, bias, mine,
                        y + img * (i64)out_ch * ho * wo);
  });
#endif
}

// DataSequence's content hash of each row of a float32 (rows, d) array, the
// host twin of kernels/data_sequence.cu's data_sequence_hash (and of the
// NumPy _row_hash): sum over elements e of mix((e << 32 | bits_e) + golden)
// mod 2^64, mix being SplitMix64's finaliser.  A sum mod 2^64 does not
// depend on its order, so 8 elements at a time in AVX-512 lanes (with
// AVX512DQ's 64-bit multiply) give the scalar loop's value exactly.
namespace {

inline uint64_t row_hash_scalar(const uint32_t* bits, i64 begin, i64 d) {
  uint64_t total = 0;
  for (i64 k = begin; k < d; ++k) {
    uint64_t z = (((uint64_t)k << 32) | bits[k]) + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    total += z ^ (z >> 31);
  }
  return total;
}

#ifdef LG_DIRECT_CONV
__attribute__((target("avx512f,avx512dq"))) uint64_t row_hash_avx512(const uint32_t* bits,
                                                                       i64 d) {
  const __m512i golden = _mm512_set1_epi64((long long)0x9E3779B97F4A7C15ULL);
  const __m512i c1 = _mm512_set1_epi64((long long)0xBF58476D1CE4E5B9ULL);
  const __m512i c2 = _mm512_set1_epi64((long long)0x94D049BB133111EBULL);
  const __m512i eight = _mm512_set1_epi64(8LL << 32);
  __m512i index = _mm512_slli_epi64(_mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0), 32);
  __m512i total = _mm512_setzero_si512();
  i64 k = 0;
  for (; k + 8 <= d; k += 8) {
    const __m512i b = _mm512_cvtepu32_epi64(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + k)));
    __m512i z = _mm512_add_epi64(_mm512_or_si512(index, b), golden);
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), c1);
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), c2);
    total = _mm512_add_epi64(total, _mm512_xor_si512(z, _mm512_srli_epi64(z, 31)));
    index = _mm512_add_epi64(index, eight);
  }
  return (uint64_t)_mm512_reduce_add_epi64(total) + row_hash_scalar(bits, k, d);
}
#endif

}  // namespace

extern "C" void lg_row_hash_f32(const float* x, i64 rows, i64 d, uint64_t* out) {
#ifdef LG_DIRECT_CONV
  const bool vector = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#else
  const bool vector = false;
#endif
  parallel_for(rows, [=](i64 b, i64 e) {
    for (i64 r = b; r < e; ++r) {
      const uint32_t* bits = reinterpret_cast<const uint32_t*>(x + r * d);
#ifdef LG_DIRECT_CONV
      if (vector) {
        out[r] = row_hash_avx512(bits, d);
        continue;
      }
#endif
      out[r] = row_hash_scalar(bits, 0, d);
    }
  });
}

extern "C" void lg_set_threads(int n) {
#ifdef _OPENMP
  omp_set_num_threads(n > 0 ? n : 1);
#endif
}

extern "C" int lg_get_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}
