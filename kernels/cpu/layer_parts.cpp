// layer_parts.cpp -- a layer's whole pass, one part of the batch per OpenMP
// thread, in one call: Convolution's forward (im2col, matrix product, layout
// change) and backward (layout change and bias gradient, the weight
// gradient's product, the columns' gradient and col2im), InnerProduct's
// forward and backward.  Built into the same library as window_ops.cpp
// (layergraph/cpu_kernels.py), float32 only.
//
// Why: the Python thread pool (cpu_kernels.run_parts) hands each part to a
// thread at a cost of tens of microseconds, and each part then takes the GIL
// between its steps -- a convolution's backward part makes some ten NumPy
// and ctypes calls, and each return waits for the GIL the other part holds
// for its own Python.  Here nothing between a layer's first and last step
// touches Python: the threads are OpenMP's, the matrix products are the
// BLAS's own sgemm (the library NumPy uses, at one thread, found by
// cpu_kernels.py and handed over with lg_set_sgemm), and the steps are the
// loops of window_ops.cpp run on one thread each (an OpenMP region nested in
// another runs on its caller's thread alone).
//
// The results are bit for bit those of the Python-pool path: the same
// products on the same parts, the parts' weight and bias gradients added in
// part order (tests/test_cpu_kernels.py compares the two).
#include <cstdint>
#include <cstring>

#include "parallel_for.h"

extern "C" {
void lg_im2col_f32(const float* x, i64 n, int c, int h, int w, int kh, int kw, int ph, int pw,
                   int sh, int sw, int dh, int dw, int ho, int wo, float* col);
void lg_col2im_f32(const float* col, i64 n, int c, int h, int w, int kh, int kw, int ph, int pw,
                   int sh, int sw, int dh, int dw, int ho, int wo, float* dx);
void lg_rows_to_nchw_f32(const float* rows, const float* bias, i64 n, int o, i64 plane,
                         float* top);
void lg_nchw_to_rows_f32(const float* dy, i64 n, int o, i64 plane, float* rows, float* dbias);
void lg_direct_conv_f32(const float* x, i64 n_img, int channels, int height, int width,
                        int out_ch, int kh, int kw, int ho, int wo, const float* w,
                        const float* bias, float* wide, float* y);
void lg_direct_conv_dw_f32(const float* x, const float* dy, const i64* index, i64 count,
                           int channels, int height, int width, int out_ch, int kh, int kw,
                           int ho, int wo, float* dyw, void* masks, float* acc, double* dbias);
}

namespace {

// CBLAS's row-major sgemm, 64- or 32-bit integers (an ILP64 or LP64 BLAS)
typedef void (*Sgemm64)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                        const float*, int64_t, float, float*, int64_t);
typedef void (*Sgemm32)(int, int, int, int32_t, int32_t, int32_t, float, const float*, int32_t,
                        const float*, int32_t, float, float*, int32_t);
void* g_sgemm = nullptr;
int g_ilp64 = 0;

// c (m x n, row stride ldc) = op(a) op(b) (+ c when accumulate), op =
// transpose when t*
inline void gemm(bool ta, bool tb, i64 m, i64 n, i64 k, const float* a, i64 lda, const float* b,
                 i64 ldb, float* c, i64 ldc, bool accumulate = false) {
  const int row_major = 101, no = 111, yes = 112;
  const float beta = accumulate ? 1.f : 0.f;
  if (g_ilp64)
    reinterpret_cast<Sgemm64>(g_sgemm)(row_major, ta ? yes : no, tb ? yes : no, m, n, k, 1.f, a,
                                       lda, b, ldb, beta, c, ldc);
  else
    reinterpret_cast<Sgemm32>(g_sgemm)(row_major, ta ? yes : no, tb ? yes : no, (int32_t)m,
                                       (int32_t)n, (int32_t)k, 1.f, a, (int32_t)lda, b,
                                       (int32_t)ldb, beta, c, (int32_t)ldc);
}

// The window geometry as the layer passes it: c, h, w, kh, kw, ph, pw, sh,
// sw, dh, dw, ho, wo, out_ch, group
struct Geometry {
  int c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo, o, g;
  explicit Geometry(const int* v)
      : c(v[0]), h(v[1]), w(v[2]), kh(v[3]), kw(v[4]), ph(v[5]), pw(v[6]), sh(v[7]), sw(v[8]),
        dh(v[9]), dw(v[10]), ho(v[11]), wo(v[12]), o(v[13]), g(v[14]) {}
  i64 image() const { return (i64)c * h * w; }            // values of one input image
  i64 plane() const { return (i64)ho * wo; }
  i64 taps() const { return (i64)c / g * kh * kw; }        // column rows per group
  void im2col(const float* x, i64 n, float* col) const {
    lg_im2col_f32(x, n, c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo, col);
  }
  void col2im(const float* col, i64 n, float* dx) const {
    lg_col2im_f32(col, n, c, h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo, dx);
  }
};

// body(part) for each part, one OpenMP thread each (fewer threads: several
// parts in turn), then finish(t, nt) on every thread after a barrier
template <typename Body, typename Finish>
void run_parts(int parts, const Body& body, const Finish& finish) {
#pragma omp parallel num_threads(parts)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int t = 0, nt = 1;
#endif
    for (int p = t; p < parts; p += nt) body(p);
#pragma omp barrier
    finish(t, nt);
  }
}

}  // namespace

extern "C" void lg_set_sgemm(void* fn, int ilp64) {
  g_sgemm = fn;
  g_ilp64 = ilp64;
}

// Convolution forward: part p is images [first[p], first[p] + count[p]).
// Direct (`direct` != 0; one group, see lg_direct_conv_f32): wide[p] is its
// scratch.  Otherwise col[p] (C*kh*kw, count*P) and out[p] (O, count*P).
extern "C" void lg_conv_forward_parts_f32(const float* x, const int* geometry, const float* weight,
                                          const float* bias, int parts, const i64* first,
                                          const i64* count, int direct, float* const* wide,
                                          float* const* col, float* const* out, i64 chunk,
                                          float* y) {
  const Geometry geo(geometry);
  const i64 o_g = geo.o / geo.g, k_g = geo.taps(), plane = geo.plane();
  run_parts(parts, [&](int p) {
    const i64 n = count[p];
    if (n == 0) return;
    const float* xp = x + first[p] * geo.image();
    float* yp = y + first[p] * geo.o * plane;
    if (direct) {
      lg_direct_conv_f32(xp, n, geo.c, geo.h, geo.w, geo.o, geo.kh, geo.kw, geo.ho, geo.wo,
                         weight, bias, wide[p], yp);
      return;
    }
    // chunk: images at a time whose columns stay in the core's cache (0:
    // all of them, the columns kept for the backward pass)
    const i64 step = chunk > 0 ? chunk : n;
    for (i64 s = 0; s < n; s += step) {
      const i64 m = s + step < n ? step : n - s, cols = m * plane;
      geo.im2col(xp + s * geo.image(), m, col[p]);
      for (int k = 0; k < geo.g; ++k)   // out_k (O/g, cols) = w_k (O/g, K/g) @ col_k
        gemm(false, false, o_g, cols, k_g, weight + k * o_g * k_g, k_g, col[p] + k * k_g * cols,
             cols, out[p] + k * o_g * cols, cols);
      lg_rows_to_nchw_f32(out[p], bias, m, geo.o, plane, yp + s * geo.o * plane);
    }
  }, [](int, int) {});
}

// Convolution backward.  Part p holds count[p] images: images
// [first[p], first[p] + count[p]) of x, dy and dx, or with index[p] those
// images gathered into xa[p], dya[p] (and dx's rows into dxa[p], scattered
// back; the idle_count images idle[] that no part gathers get dx = 0, cut
// over the parts).  recompute: the part's columns are computed here from x (a
// gathered part, or a direct forward pass that left none); else col[p]
// holds them from the forward pass.  rows[p] (O, count*P) takes dy,
// dw_t[p] (g, K/g, O/g) the part's dw^T, dbias[p] (O) its bias gradient
// (null: no bias); dx null: no bottom gradient, else dcol[p] holds
// dcol_images images of columns at a time (one group; with more groups
// all of them).  After the parts: w_diff (g, O/g, K/g) += each part's dw
// and b_diff += each part's dbias, in part order.
extern "C" void lg_conv_backward_parts_f32(
    const float* x, const float* dy, float* dx, const int* geometry, const float* weight,
    int parts, const i64* first, const i64* count, const i64* const* index, float* const* xa,
    float* const* dya, float* const* dxa, const i64* idle, i64 idle_count, int recompute,
    float* const* col, float* const* rows,
    float* const* dw_t, float* const* dbias, float* const* dcol, i64 dcol_images, i64 chunk,
    float* w_diff, float* b_diff) {
  const Geometry geo(geometry);
  const i64 o_g = geo.o / geo.g, k_g = geo.taps(), plane = geo.plane();
  const i64 in_size = geo.image(), out_size = geo.o * plane;
  run_parts(parts, [&](int p) {
    const i64 n = count[p], cols = n * plane;
    const float* xp = x + first[p] * in_size;
    const float* dyp = dy + first[p] * out_size;
    float* dxp = dx ? dx + first[p] * in_size : nullptr;
    if (dx && idle)                    // (rows no part scatters to)
      for (i64 i = idle_count * p / parts; i < idle_count * (p + 1) / parts; ++i)
        std::memset(dx + idle[i] * in_size, 0, sizeof(float) * in_size);
    if (index && index[p]) {           // gather the part's images
      for (i64 i = 0; i < n; ++i) {
        std::memcpy(xa[p] + i * in_size, x + index[p][i] * in_size, sizeof(float) * in_size);
        std::memcpy(dya[p] + i * out_size, dy + index[p][i] * out_size,
                    sizeof(float) * out_size);
      }
      xp = xa[p];
      dyp = dya[p];
      dxp = dx ? dxa[p] : nullptr;
    }
    if (dbias[p]) std::memset(dbias[p], 0, sizeof(float) * geo.o);
    if (n == 0) {
      std::memset(dw_t[p], 0, sizeof(float) * geo.g * k_g * o_g);
      return;
    }
    lg_nchw_to_rows_f32(dyp, n, geo.o, plane, rows[p], dbias[p]);
    if (chunk > 0) {                   // the columns again, chunk images at a time
      for (i64 s = 0; s < n; s += chunk) {
        const i64 m = s + chunk < n ? chunk : n - s, cm = m * plane;
        geo.im2col(xp + s * in_size, m, col[p]);
        for (int k = 0; k < geo.g; ++k)   // dw_t_k += col_k (K/g, cm) @ rows_k[:, chunk]^T
          gemm(false, true, k_g, o_g, cm, col[p] + k * k_g * cm, cm,
               rows[p] + k * o_g * cols + s * plane, cols, dw_t[p] + k * k_g * o_g, o_g, s > 0);
        if (!dxp) continue;
        for (int k = 0; k < geo.g; ++k)
          gemm(true, false, k_g, cm, o_g, weight + k * o_g * k_g, k_g,
               rows[p] + k * o_g * cols + s * plane, cols, dcol[p] + k * k_g * cm, cm);
        geo.col2im(dcol[p], m, dxp + s * in_size);
      }
    } else {                           // the part's columns whole
      if (recompute) geo.im2col(xp, n, col[p]);
      for (int k = 0; k < geo.g; ++k)   // dw_t_k (K/g, O/g) = col_k (K/g, cols) @ rows_k^T
        gemm(false, true, k_g, o_g, cols, col[p] + k * k_g * cols, cols,
             rows[p] + k * o_g * cols, cols, dw_t[p] + k * k_g * o_g, o_g);
      if (dxp && geo.g == 1) {         // by chunks of images that stay in the cache
        for (i64 s = 0; s < n; s += dcol_images) {
          const i64 e = s + dcol_images < n ? s + dcol_images : n;
          gemm(true, false, k_g, (e - s) * plane, geo.o, weight, k_g, rows[p] + s * plane,
               cols, dcol[p], (e - s) * plane);
          geo.col2im(dcol[p], e - s, dxp + s * in_size);
        }
      } else if (dxp) {
        for (int k = 0; k < geo.g; ++k)
          gemm(true, false, k_g, cols, o_g, weight + k * o_g * k_g, k_g,
               rows[p] + k * o_g * cols, cols, dcol[p] + k * k_g * cols, cols);
        geo.col2im(dcol[p], n, dxp);
      }
    }
    if (dxp && index && index[p])      // scatter the part's dx rows
      for (i64 i = 0; i < n; ++i)
        std::memcpy(dx + index[p][i] * in_size, dxp + i * in_size, sizeof(float) * in_size);
  }, [&](int t, int nt) {              // w_diff and b_diff by output channels
    const i64 lo = geo.o * t / nt, hi = geo.o * (t + 1) / nt;
    for (i64 oc = lo; oc < hi; ++oc) {
      const i64 k = oc / o_g, oo = oc % o_g;
      float* dst = w_diff + oc * k_g;
      for (int p = 0; p < parts; ++p) {
        const float* src = dw_t[p] + k * k_g * o_g + oo;
        for (i64 j = 0; j < k_g; ++j) dst[j] += src[j * o_g];
      }
      if (b_diff)
        for (int p = 0; p < parts; ++p) b_diff[oc] += dbias[p][oc];
    }
  });
}

// InnerProduct forward, y (M, O) = x (M, K) w^T + b: part p computes
// columns [out_lo[p], out_hi[p]) of y from those rows of w.
extern "C" void lg_ip_forward_parts_f32(const float* x, const float* w, const float* bias, i64 m,
                                        i64 k, i64 o, int parts, const i64* out_lo,
                                        const i64* out_hi, float* y) {
  run_parts(parts, [&](int p) {
    const i64 a = out_lo[p], b = out_hi[p];
    if (b <= a) return;
    gemm(false, true, m, b - a, k, x, k, w + a * k, k, y + a, o);
    if (bias)
      for (i64 r = 0; r < m; ++r)
        for (i64 j = a; j < b; ++j) y[r * o + j] += bias[j];
  }, [](int, int) {});
}

// InnerProduct backward: part p adds rows [out_lo[p], out_hi[p]) of dw =
// dy^T x to w_diff in the product itself (the sgemm's beta = 1: no
// weight-sized buffer to write, read and add), the same entries of b_diff
// += dy's column sums (b_diff null: none), and computes rows [row_lo[p],
// row_hi[p]) of dx = dy w (dx null: none).  The sums are the thread
// pool's (product, then add) bit for bit while the batch's rows fit one
// of the BLAS's K blocks (384 in OpenBLAS's SkylakeX sgemm), else to
// float32 rounding.
extern "C" void lg_ip_backward_parts_f32(const float* dy, const float* x, const float* w, i64 m,
                                         i64 k, i64 o, int parts, const i64* out_lo,
                                         const i64* out_hi, const i64* row_lo, const i64* row_hi,
                                         float* w_diff, float* b_diff, float* dx) {
  run_parts(parts, [&](int p) {
    const i64 a = out_lo[p], b = out_hi[p];
    if (b > a) {
      gemm(true, false, b - a, k, m, dy + a, o, x, k, w_diff + a * k, k, true);
      if (b_diff)   // dy's column sums, 256 columns side by side, each row after row
        for (i64 j0 = a; j0 < b; j0 += 256) {
          const i64 n = b - j0 < 256 ? b - j0 : 256;
          float total[256] = {};
          for (i64 r = 0; r < m; ++r)
            for (i64 j = 0; j < n; ++j) total[j] += dy[r * o + j0 + j];
          for (i64 j = 0; j < n; ++j) b_diff[j0 + j] += total[j];
        }
    }
    if (dx && row_hi[p] > row_lo[p])
      gemm(false, false, row_hi[p] - row_lo[p], k, o, dy + row_lo[p] * o, o, w, k,
           dx + row_lo[p] * k, k);
  }, [](int, int) {});
}


// The weight and bias gradients of a direct convolution without a bottom
// gradient (lg_direct_conv_dw_f32), one part per thread: part p's images
// [first[p], first[p] + count[p]), or index[p][0..count[p]) when index[p]
// is set; acc[p] (O, C*kh*kw, 16), dbias[p] (O, double), dyw[p], masks[p]
// its scratch.  Then w_diff (O, C*kh*kw) += each part's lanes summed, and
// b_diff += each part's dbias, in part order -- the sums in the order
// NumPy's acc.sum(axis=2) takes (pairwise: lanes j and j + 8 first), so the
// result is the thread-pool path's bit for bit.
extern "C" void lg_direct_conv_dw_parts_f32(
    const float* x, const float* dy, int parts, const i64* first, const i64* count,
    const i64* const* index, const int* geometry, float* const* dyw, void* const* masks,
    float* const* acc, double* const* dbias, float* w_diff, float* b_diff) {
  const Geometry geo(geometry);
  const i64 taps = geo.taps(), in_size = geo.image(), out_size = (i64)geo.o * geo.plane();
  run_parts(parts, [&](int p) {
    std::memset(acc[p], 0, sizeof(float) * geo.o * taps * 16);
    std::memset(dbias[p], 0, sizeof(double) * geo.o);
    const bool gathered = index && index[p];
    lg_direct_conv_dw_f32(gathered ? x : x + first[p] * in_size,
                          gathered ? dy : dy + first[p] * out_size, gathered ? index[p] : nullptr,
                          count[p], geo.c, geo.h, geo.w, geo.o, geo.kh, geo.kw, geo.ho, geo.wo,
                          dyw[p], masks[p], acc[p], dbias ? dbias[p] : nullptr);
  }, [&](int t, int nt) {
    const i64 lo = geo.o * t / nt, hi = geo.o * (t + 1) / nt;
    for (int p = 0; p < parts; ++p)
      for (i64 oc = lo; oc < hi; ++oc) {
        for (i64 k = 0; k < taps; ++k) {
          const float* a = acc[p] + (oc * taps + k) * 16;
          float r[8];
          for (int j = 0; j < 8; ++j) r[j] = a[j] + a[j + 8];
          w_diff[oc * taps + k] += ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        }
        if (b_diff) b_diff[oc] += (float)dbias[p][oc];
      }
  });
}
