// im2col.cu -- Convolution's kernel path, layergraph/layers/convolution.py
// (Caffe's im2col_gpu_kernel / col2im_gpu_kernel, 2-D, NCHW).
//
// For a bottom x (N, C, H, W), kernel kh x kw, pad ph/pw, stride sh/sw,
// dilation dh/dw and output Ho x Wo, the column buffer col has rows (c, i, j)
// and columns (n, r, s):
//
//   col[(c*kh + i)*kw + j, (n*Ho + r)*Wo + s] = x[n, c, r*sh - ph + i*dh, s*sw - pw + j*dw]
//
// (0 outside the image), so y (O, N*Ho*Wo) = w (O, C*kh*kw) @ col, one GEMM
// per group (the rows of a group are contiguous: c is the major index).
// col2im is its adjoint, dx[n, c, h, w] = sum of the col entries that read
// x[n, c, h, w], computed as a gather: each thread owns one input pixel, so
// there are no atomics and the sum order is fixed (taps i, then j).
// The bias/transposition kernels move between the GEMM's (O, N, Ho*Wo) order
// and the blobs' (N, O, Ho, Wo).
#include "common.cuh"

// Fill col from x: one thread per (c, n, r, s), looping over the kh*kw taps.
extern "C" __global__ void im2col_nchw(const long long count, const float* x,
                                       const int num, const int channels, const int height,
                                       const int width, const int kernel_h, const int kernel_w,
                                       const int pad_h, const int pad_w, const int stride_h,
                                       const int stride_w, const int dilation_h,
                                       const int dilation_w, const int out_h, const int out_w,
                                       float* col) {
  const long long plane = (long long)out_h * out_w;
  const long long cols = num * plane;
  CUDA_KERNEL_LOOP(index, count) {  // index = ((c*N + n)*Ho + r)*Wo + s
    const int s = (int)(index % out_w);
    const int r = (int)((index / out_w) % out_h);
    const long long cn = index / plane;
    const int n = (int)(cn % num);
    const int c = (int)(cn / num);
    const float* x_plane = x + ((long long)n * channels + c) * height * width;
    float* out = col + (long long)c * kernel_h * kernel_w * cols + n * plane + (long long)r * out_w + s;
    const int h0 = r * stride_h - pad_h;
    const int w0 = s * stride_w - pad_w;
    for (int i = 0; i < kernel_h; ++i) {
      const int h = h0 + i * dilation_h;
      const bool row_inside = h >= 0 && h < height;
      for (int j = 0; j < kernel_w; ++j) {
        const int w = w0 + j * dilation_w;
        *out = (row_inside && w >= 0 && w < width) ? x_plane[(long long)h * width + w] : 0.f;
        out += cols;
      }
    }
  }
}

// dx = col2im(col), overwriting dx: one thread per input pixel (n, c, h, w)
// sums the entries of its taps whose output position (r, s) exists.
extern "C" __global__ void col2im_nchw(const long long count, const float* col,
                                       const int num, const int channels, const int height,
                                       const int width, const int kernel_h, const int kernel_w,
                                       const int pad_h, const int pad_w, const int stride_h,
                                       const int stride_w, const int dilation_h,
                                       const int dilation_w, const int out_h, const int out_w,
                                       float* dx) {
  const long long plane = (long long)out_h * out_w;
  const long long cols = num * plane;
  CUDA_KERNEL_LOOP(index, count) {  // index = ((n*C + c)*H + h)*W + w
    const int w = (int)(index % width);
    const int h = (int)((index / width) % height);
    const long long nc = index / ((long long)height * width);
    const int c = (int)(nc % channels);
    const int n = (int)(nc / channels);
    const float* taps = col + (long long)c * kernel_h * kernel_w * cols + n * plane;
    float sum = 0.f;
    for (int i = 0; i < kernel_h; ++i) {
      const int hh = h + pad_h - i * dilation_h;  // r*sh for the output row reading (h, i)
      if (hh < 0) break;                          // decreasing in i
      if (hh % stride_h) continue;
      const int r = hh / stride_h;
      if (r >= out_h) continue;
      for (int j = 0; j < kernel_w; ++j) {
        const int ww = w + pad_w - j * dilation_w;
        if (ww < 0) break;
        if (ww % stride_w) continue;
        const int s = ww / stride_w;
        if (s >= out_w) continue;
        sum += taps[(long long)(i * kernel_w + j) * cols + (long long)r * out_w + s];
      }
    }
    dx[index] = sum;
  }
}

// top[n, o, p] = out[o, n, p] + bias[o] (bias read only when has_bias; p runs
// over Ho*Wo): the GEMM result into the top's layout, bias fused.
extern "C" __global__ void conv_bias_to_nchw(const long long count, const float* out,
                                             const float* bias, const int has_bias,
                                             const int num, const int channels,
                                             const long long plane, float* top) {
  CUDA_KERNEL_LOOP(index, count) {  // index = (n*O + o)*plane + p
    const long long p = index % plane;
    const long long no = index / plane;
    const int o = (int)(no % channels);
    const int n = (int)(no / channels);
    const float v = out[((long long)o * num + n) * plane + p];
    top[index] = has_bias ? v + bias[o] : v;
  }
}

// rows[o, n*plane + p] = dy[n, o, p]: the top gradient in the GEMM's order.
extern "C" __global__ void conv_nchw_to_rows(const long long count, const float* dy,
                                             const int num, const int channels,
                                             const long long plane, float* rows) {
  CUDA_KERNEL_LOOP(index, count) {  // index = (o*N + n)*plane + p
    const long long p = index % plane;
    const long long on = index / plane;
    const int n = (int)(on % num);
    const int o = (int)(on / num);
    rows[index] = dy[((long long)n * channels + o) * plane + p];
  }
}

// The same transposition plus dbias[o] += sum of row o: one block per output
// channel, a block reduction (deterministic) instead of atomics.
extern "C" __global__ void conv_nchw_to_rows_bias(const int num, const int channels,
                                                  const long long plane, const float* dy,
                                                  float* rows, float* dbias) {
  LG_SHARED_MEMORY(float, buf);
  const long long per_channel = num * plane;
  BLOCK_LOOP(o, channels) {
    float acc = 0.f;
    for (long long k = threadIdx.x; k < per_channel; k += blockDim.x) {
      const long long n = k / plane;
      const float v = dy[(n * channels + o) * plane + k % plane];
      rows[o * per_channel + k] = v;
      acc += v;
    }
    const float total = block_sum(acc, buf);
    if (threadIdx.x == 0) dbias[o] += total;
  }
}
