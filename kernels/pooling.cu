// pooling.cu -- Pooling's kernel path, layergraph/layers/pooling.py (Caffe's
// MaxPoolForward / AvePoolForward / MaxPoolBackward / AvePoolBackward).
//
// x (N, C, H, W) -> y (N, C, Ho, Wo); window (r, s) starts at
// hs = r*sh - ph, ws = s*sw - pw and spans kh x kw, clipped to the image:
//
//   MAX: y = max over the window; argmax = h*W + w of its first maximum in
//        row-major order (strict >, Caffe's choice on ties)
//   AVE: y = sum over the window / ((min(hs + kh, H + ph) - hs) * (min(ws + kw, W + pw) - ws))
//        (padding counts in the divisor, the overhang of a ceil-rounded last
//        window does not); a window that starts past the image (stride >
//        kernel) sees no input: MAX gives -FLT_MAX and argmax -1, AVE gives 0
//
// Backward is a gather: one thread per input pixel sums the gradients of the
// windows that cover it (MAX: only those whose argmax it is), so no atomics.
#include "common.cuh"

// First output row (or column) whose window covers input row h (+ pad) -- Caffe's phstart.
static __device__ __forceinline__ int pool_first_window(const int h_padded, const int kernel,
                                                        const int stride) {
  return h_padded < kernel ? 0 : (h_padded - kernel) / stride + 1;
}

// y and the int32 argmax (kept for backward); with write_mask, also the
// float mask top (Caffe's second top; `mask` is not touched otherwise).
extern "C" __global__ void max_pool_forward(const long long count, const float* x,
                                            const int height, const int width,
                                            const int pooled_h, const int pooled_w,
                                            const int kernel_h, const int kernel_w,
                                            const int stride_h, const int stride_w,
                                            const int pad_h, const int pad_w, float* y,
                                            int* argmax, const int write_mask, float* mask) {
  CUDA_KERNEL_LOOP(index, count) {  // index = (nc*Ho + r)*Wo + s
    const int s = (int)(index % pooled_w);
    const int r = (int)((index / pooled_w) % pooled_h);
    const long long nc = index / ((long long)pooled_w * pooled_h);
    int hstart = r * stride_h - pad_h;
    int wstart = s * stride_w - pad_w;
    const int hend = min(hstart + kernel_h, height);
    const int wend = min(wstart + kernel_w, width);
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    const float* plane = x + nc * height * width;
    float best = -3.402823466e+38f;  // -FLT_MAX, as Caffe
    int best_index = -1;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) {
        const float v = plane[h * width + w];
        if (v > best || best_index < 0) {
          best = v;
          best_index = h * width + w;
        }
      }
    }
    y[index] = best;
    argmax[index] = best_index;
    if (write_mask) mask[index] = (float)best_index;
  }
}

// y = window sum / Caffe's divisor.
extern "C" __global__ void ave_pool_forward(const long long count, const float* x,
                                            const int height, const int width,
                                            const int pooled_h, const int pooled_w,
                                            const int kernel_h, const int kernel_w,
                                            const int stride_h, const int stride_w,
                                            const int pad_h, const int pad_w, float* y) {
  CUDA_KERNEL_LOOP(index, count) {
    const int s = (int)(index % pooled_w);
    const int r = (int)((index / pooled_w) % pooled_h);
    const long long nc = index / ((long long)pooled_w * pooled_h);
    int hstart = r * stride_h - pad_h;
    int wstart = s * stride_w - pad_w;
    int hend = min(hstart + kernel_h, height + pad_h);
    int wend = min(wstart + kernel_w, width + pad_w);
    const int pool_size = (hend - hstart) * (wend - wstart);
    hstart = max(hstart, 0);
    wstart = max(wstart, 0);
    hend = min(hend, height);
    wend = min(wend, width);
    const float* plane = x + nc * height * width;
    float sum = 0.f;
    for (int h = hstart; h < hend; ++h) {
      for (int w = wstart; w < wend; ++w) sum += plane[h * width + w];
    }
    // a window past the image (stride > kernel) sees no input: 0
    y[index] = (hstart < hend && wstart < wend) ? sum / pool_size : 0.f;
  }
}

// dx[n, c, h, w] = sum of dy over the windows covering (h, w) whose argmax it is.
extern "C" __global__ void max_pool_backward(const long long count, const float* dy,
                                             const int* argmax, const int height,
                                             const int width, const int pooled_h,
                                             const int pooled_w, const int kernel_h,
                                             const int kernel_w, const int stride_h,
                                             const int stride_w, const int pad_h,
                                             const int pad_w, float* dx) {
  CUDA_KERNEL_LOOP(index, count) {  // index = (nc*H + h)*W + w
    const int w = (int)(index % width);
    const int h = (int)((index / width) % height);
    const long long nc = index / ((long long)width * height);
    const int rstart = pool_first_window(h + pad_h, kernel_h, stride_h);
    const int rend = min((h + pad_h) / stride_h + 1, pooled_h);
    const int sstart = pool_first_window(w + pad_w, kernel_w, stride_w);
    const int send = min((w + pad_w) / stride_w + 1, pooled_w);
    const long long offset = nc * pooled_h * pooled_w;
    const int here = h * width + w;
    float grad = 0.f;
    for (int r = rstart; r < rend; ++r) {
      for (int s = sstart; s < send; ++s) {
        const long long k = offset + r * pooled_w + s;
        if (argmax[k] == here) grad += dy[k];
      }
    }
    dx[index] = grad;
  }
}

// dx[n, c, h, w] = sum of dy / divisor over the windows covering (h, w).
extern "C" __global__ void ave_pool_backward(const long long count, const float* dy,
                                             const int height, const int width,
                                             const int pooled_h, const int pooled_w,
                                             const int kernel_h, const int kernel_w,
                                             const int stride_h, const int stride_w,
                                             const int pad_h, const int pad_w, float* dx) {
  CUDA_KERNEL_LOOP(index, count) {
    const int w = (int)(index % width) + pad_w;   // in padded coordinates
    const int h = (int)((index / width) % height) + pad_h;
    const long long nc = index / ((long long)width * height);
    const int rstart = pool_first_window(h, kernel_h, stride_h);
    const int rend = min(h / stride_h + 1, pooled_h);
    const int sstart = pool_first_window(w, kernel_w, stride_w);
    const int send = min(w / stride_w + 1, pooled_w);
    const float* grad_plane = dy + nc * pooled_h * pooled_w;
    float grad = 0.f;
    for (int r = rstart; r < rend; ++r) {
      const int hstart = r * stride_h - pad_h;
      const int rows = min(hstart + kernel_h, height + pad_h) - hstart;
      for (int s = sstart; s < send; ++s) {
        const int wstart = s * stride_w - pad_w;
        const int pool_size = rows * (min(wstart + kernel_w, width + pad_w) - wstart);
        grad += grad_plane[r * pooled_w + s] / pool_size;
      }
    }
    dx[index] = grad;
  }
}
