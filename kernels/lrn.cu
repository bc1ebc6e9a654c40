// lrn.cu -- LRN, layers/lrn.py (Caffe's LRNLayer).
//
// x is (N, C, H, W).  ACROSS_CHANNELS: the window of (n, c, p) is channels
// c - pre .. c + pre at pixel p (clipped), s = k + ratio * sum x^2.
// WITHIN_CHANNEL: the window is the size x size pixels centred on (h, w)
// (clipped), s = 1 + ratio * sum x^2.  y = x * s^(-beta).  One thread per
// element sums its own window (size or size^2 terms): no shared state.
#include "common.cuh"

extern "C" __global__ void lrn_across_forward(const long long count, const float* x,
                                              const int channels, const long long plane,
                                              const int size, const float ratio,
                                              const float k, const float neg_beta,
                                              float* scale, float* y) {
  const int pre = (size - 1) / 2;
  CUDA_KERNEL_LOOP(i, count) {  // i = (n*C + c)*plane + p
    const int c = (int)((i / plane) % channels);
    const int lo = c - pre < 0 ? 0 : c - pre;
    const int hi = c + pre >= channels ? channels - 1 : c + pre;
    const float* col = x + (i - (long long)c * plane);  // channel 0 of this pixel
    float acc = 0.f;
    for (int cc = lo; cc <= hi; ++cc) {
      const float v = col[(long long)cc * plane];
      acc += v * v;
    }
    const float s = k + ratio * acc;
    scale[i] = s;
    y[i] = x[i] * powf(s, neg_beta);
  }
}

// dx = dy s^(-beta) - cache_ratio * x * sum over the window of dy*y/s.
extern "C" __global__ void lrn_across_backward(const long long count, const float* x,
                                               const float* y, const float* scale,
                                               const float* dy, const int channels,
                                               const long long plane, const int size,
                                               const float neg_beta, const float cache_ratio,
                                               float* dx) {
  const int pre = (size - 1) / 2;
  CUDA_KERNEL_LOOP(i, count) {
    const int c = (int)((i / plane) % channels);
    const int lo = c - pre < 0 ? 0 : c - pre;
    const int hi = c + pre >= channels ? channels - 1 : c + pre;
    const long long base = i - (long long)c * plane;
    float acc = 0.f;
    for (int cc = lo; cc <= hi; ++cc) {
      const long long j = base + (long long)cc * plane;
      acc += dy[j] * y[j] / scale[j];
    }
    dx[i] = dy[i] * powf(scale[i], neg_beta) - cache_ratio * x[i] * acc;
  }
}

extern "C" __global__ void lrn_within_forward(const long long count, const float* x,
                                              const int height, const int width,
                                              const int size, const float ratio,
                                              const float neg_beta, float* scale, float* y) {
  const int pre = (size - 1) / 2;
  const long long plane = (long long)height * width;
  CUDA_KERNEL_LOOP(i, count) {  // i = nc*plane + h*W + w
    const int w = (int)(i % width);
    const int h = (int)((i / width) % height);
    const float* img = x + (i / plane) * plane;
    const int h0 = h - pre < 0 ? 0 : h - pre, h1 = h + pre >= height ? height - 1 : h + pre;
    const int w0 = w - pre < 0 ? 0 : w - pre, w1 = w + pre >= width ? width - 1 : w + pre;
    float acc = 0.f;
    for (int hh = h0; hh <= h1; ++hh) {
      for (int ww = w0; ww <= w1; ++ww) {
        const float v = img[(long long)hh * width + ww];
        acc += v * v;
      }
    }
    const float s = 1.f + ratio * acc;
    scale[i] = s;
    y[i] = x[i] * powf(s, neg_beta);
  }
}

extern "C" __global__ void lrn_within_backward(const long long count, const float* x,
                                               const float* y, const float* scale,
                                               const float* dy, const int height,
                                               const int width, const int size,
                                               const float neg_beta, const float cache_ratio,
                                               float* dx) {
  const int pre = (size - 1) / 2;
  const long long plane = (long long)height * width;
  CUDA_KERNEL_LOOP(i, count) {
    const int w = (int)(i % width);
    const int h = (int)((i / width) % height);
    const long long base = (i / plane) * plane;
    const int h0 = h - pre < 0 ? 0 : h - pre, h1 = h + pre >= height ? height - 1 : h + pre;
    const int w0 = w - pre < 0 ? 0 : w - pre, w1 = w + pre >= width ? width - 1 : w + pre;
    float acc = 0.f;
    for (int hh = h0; hh <= h1; ++hh) {
      for (int ww = w0; ww <= w1; ++ww) {
        const long long j = base + (long long)hh * width + ww;
        acc += dy[j] * y[j] / scale[j];
      }
    }
    dx[i] = dy[i] * powf(scale[i], neg_beta) - cache_ratio * x[i] * acc;
  }
}
