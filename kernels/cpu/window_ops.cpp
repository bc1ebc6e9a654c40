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

#ifdef _OPENMP
#include <omp.h>
#endif

typedef long long i64;

namespace {

// ------------------------------------------------------------ im2col ----
template <typename T>
void im2col(const T* x, i64 n_img, int channels, int height, int width, int kh, int kw,
            int ph, int pw, int sh, int sw, int dh, int dw, int ho, int wo, T* col) {
  const i64 plane = (i64)ho * wo;
  const i64 rows = (i64)channels * kh * kw;
#pragma omp parallel for collapse(2) schedule(guided)
  for (i64 row = 0; row < rows; ++row) {
    for (i64 n = 0; n < n_img; ++n) {
      const int j = (int)(row % kw), i = (int)((row / kw) % kh);
      const i64 c = row / ((i64)kw * kh);
      const T* src = x + (n * channels + c) * height * width;
      T* dst = col + row * n_img * plane + n * plane;
      const int x_off = j * dw - pw;
      // output columns s whose input column s*sw + x_off lies in [0, width)
      int s_lo = x_off >= 0 ? 0 : (-x_off + sw - 1) / sw;
      int s_hi = width - 1 - x_off < 0 ? 0 : std::min(wo, (width - 1 - x_off) / sw + 1);
      if (s_lo > s_hi) s_lo = s_hi;
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

// dx[n, c] = sum over taps (i, j) of the tap's column block, added in tap
// order (i, j) -- the order of the NumPy reference.  One output plane per
// iteration, so no two threads write the same element.
template <typename T>
void col2im(const T* col, i64 n_img, int channels, int height, int width, int kh, int kw,
            int ph, int pw, int sh, int sw, int dh, int dw, int ho, int wo, T* dx) {
  const i64 plane = (i64)ho * wo;
#pragma omp parallel for schedule(guided)
  for (i64 nc = 0; nc < n_img * channels; ++nc) {
    const i64 n = nc / channels, c = nc % channels;
    T* dst = dx + nc * height * width;
    std::memset(dst, 0, sizeof(T) * height * width);
    for (int i = 0; i < kh; ++i) {
      for (int j = 0; j < kw; ++j) {
        const i64 row = (c * kh + i) * kw + j;
        const T* src = col + row * n_img * plane + n * plane;
        const int x_off = j * dw - pw;
        int s_lo = x_off >= 0 ? 0 : (-x_off + sw - 1) / sw;
        int s_hi = width - 1 - x_off < 0 ? 0 : std::min(wo, (width - 1 - x_off) / sw + 1);
        if (s_lo > s_hi) s_lo = s_hi;
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

// top[n, o, p] = rows[o, n*P + p] (+ bias[o])
template <typename T>
void rows_to_nchw(const T* rows, const T* bias, i64 n_img, int out_ch, i64 plane, T* top) {
#pragma omp parallel for collapse(2) schedule(guided)
  for (i64 n = 0; n < n_img; ++n) {
    for (i64 o = 0; o < out_ch; ++o) {
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

// rows[o, n*P + p] = dy[n, o, p]; dbias[o] += sum of dy[:, o, :] (if dbias)
template <typename T>
void nchw_to_rows(const T* dy, i64 n_img, int out_ch, i64 plane, T* rows, T* dbias) {
#pragma omp parallel for schedule(guided)
  for (i64 o = 0; o < out_ch; ++o) {
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

// ----------------------------------------------------------- pooling ----
// Window (r, s) covers rows r*sh - ph .. + kh - 1 and columns s*sw - pw ..
// + kw - 1, clipped to the image; MAX keeps the first maximum in row-major
// order (Caffe's rule on ties); a window past the image gives -FLT_MAX (the
// float's lowest) and argmax -1.
template <typename T>
void max_pool_forward(const T* x, i64 planes, int height, int width, int ho, int wo, int kh,
                      int kw, int sh, int sw, int ph, int pw, T* y, int32_t* argmax) {
  const T lowest = T(-FLT_MAX);  // Caffe's start, whatever T (as the NumPy path)
  const bool tiles = kh == sh && kw == sw && ph == 0 && pw == 0 && ho * kh <= height &&
                     wo * kw <= width;
#pragma omp parallel for schedule(guided)
  for (i64 pc = 0; pc < planes; ++pc) {
    const T* src = x + pc * height * width;
    T* out = y + pc * ho * wo;
    int32_t* idx = argmax + pc * ho * wo;
    if (tiles && kh == 2 && kw == 2) {  // LeNet's 2x2/2, branch-free: random data
      for (int r = 0; r < ho; ++r) {    // would mispredict every other compare
        const T* a = src + (i64)(2 * r) * width;
        const T* b = a + width;
        T* o = out + (i64)r * wo;
        int32_t* k = idx + (i64)r * wo;
        for (int s = 0; s < wo; ++s) {
          const T v0 = a[2 * s], v1 = a[2 * s + 1], v2 = b[2 * s], v3 = b[2 * s + 1];
          // strict > keeps the earlier tap on ties (Caffe's first maximum)
          const bool g1 = v1 > v0;
          T m = g1 ? v1 : v0;
          int tap = g1 ? 1 : 0;
          const bool g2 = v2 > m;
          m = g2 ? v2 : m;
          tap = g2 ? 2 : tap;
          const bool g3 = v3 > m;
          m = g3 ? v3 : m;
          tap = g3 ? 3 : tap;
          o[s] = m;
          k[s] = (2 * r + (tap >> 1)) * width + 2 * s + (tap & 1);
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

// dx = 0; dx[argmax[k]] += dy[k], the windows of a plane in order.
template <typename T>
void max_pool_backward(const T* dy, const int32_t* argmax, i64 planes, int height, int width,
                       int ho, int wo, T* dx) {
#pragma omp parallel for schedule(guided)
  for (i64 pc = 0; pc < planes; ++pc) {
    T* dst = dx + pc * height * width;
    std::memset(dst, 0, sizeof(T) * height * width);
    const T* grad = dy + pc * ho * wo;
    const int32_t* idx = argmax + pc * ho * wo;
    for (i64 k = 0; k < (i64)ho * wo; ++k) {
      if (idx[k] >= 0) dst[idx[k]] += grad[k];
    }
  }
}

// Caffe's divisor: (min(hs + kh, H + ph) - hs) * (min(ws + kw, W + pw) - ws),
// padding counted; 0 for a window past the image.
template <typename T>
void ave_pool_forward(const T* x, i64 planes, int height, int width, int ho, int wo, int kh,
                      int kw, int sh, int sw, int ph, int pw, T* y) {
#pragma omp parallel for schedule(guided)
  for (i64 pc = 0; pc < planes; ++pc) {
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
void ave_pool_backward(const T* dy, i64 planes, int height, int width, int ho, int wo, int kh,
                       int kw, int sh, int sw, int ph, int pw, T* dx) {
#pragma omp parallel for schedule(guided)
  for (i64 pc = 0; pc < planes; ++pc) {
    T* dst = dx + pc * height * width;
    std::memset(dst, 0, sizeof(T) * height * width);
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
                                                T* dx) {                                      \
    max_pool_backward<T>(dy, argmax, planes, h, w, ho, wo, dx);                               \
  }                                                                                           \
  extern "C" void lg_ave_pool_forward_##SUFFIX(const T* x, i64 planes, int h, int w, int ho, \
                                               int wo, int kh, int kw, int sh, int sw,        \
                                               int ph, int pw, T* y) {                        \
    ave_pool_forward<T>(x, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, y);                  \
  }                                                                                           \
  extern "C" void lg_ave_pool_backward_##SUFFIX(const T* dy, i64 planes, int h, int w,       \
                                                int ho, int wo, int kh, int kw, int sh,       \
                                                int sw, int ph, int pw, T* dx) {              \
    ave_pool_backward<T>(dy, planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw, dx);               \
  }

LG_WINDOW_OPS(float, f32)
LG_WINDOW_OPS(double, f64)

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
