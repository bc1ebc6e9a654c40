// common.cuh -- conventions shared by every kernel in kernels/.
//
// Included first by each .cu file.  On the GPU the file is compiled by NVRTC
// (through cupy.RawModule); under the CPU emulation (LG_EMULATION, see
// cuda_emu.h) by the host C++ compiler.  Kernels are written in grid-stride
// form so that any grid -- the emulation's few blocks included -- covers all
// the work, and use blockDim.x rather than a fixed block size.
#pragma once

#ifndef LG_EMULATION
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef unsigned int uint32_t;
typedef signed char int8_t;
typedef unsigned char uint8_t;
#endif

// Caffe's CUDA_KERNEL_LOOP: i runs over [0, n) in steps of the whole grid.
#define CUDA_KERNEL_LOOP(i, n)                                             \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;     \
       i < (long long)(n); i += (long long)blockDim.x * gridDim.x)

// Block-stride loop: each block takes items b, b + gridDim.x, ... (one block
// per row of a reduction, say).
#define BLOCK_LOOP(b, n) \
  for (long long b = blockIdx.x; b < (long long)(n); b += gridDim.x)

// Dynamic shared memory, sized by the launch (shared= bytes).
#ifdef LG_EMULATION
#define LG_SHARED_MEMORY(type, name) \
  type* name = reinterpret_cast<type*>(lg_emu::shared_memory())
#else
#define LG_SHARED_MEMORY(type, name)                      \
  extern __shared__ __align__(16) unsigned char lg_smem_[]; \
  type* name = reinterpret_cast<type*>(lg_smem_)
#endif

// Sum of v over the block, returned to every thread.  `buf` holds blockDim.x
// floats of shared memory; blockDim.x must be a power of two.  Every thread
// of the block must call it (it synchronises).
__device__ __forceinline__ float block_sum(float v, float* buf) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  float total = buf[0];
  __syncthreads();  // buf may be reused right after
  return total;
}

// Same reduction in double precision (losses summed over many terms).
__device__ __forceinline__ double block_sum_double(double v, double* buf) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  double total = buf[0];
  __syncthreads();
  return total;
}

// A counter-based random number in [0, 1) from (seed, index): splitmix64 of
// the pair.  Stateless, so a kernel needs no RNG state and the NumPy side can
// compute the very same numbers (layergraph.cuda.uniform_hash).
__device__ __forceinline__ float lg_uniform(unsigned long long seed,
                                            unsigned long long index) {
  unsigned long long z = seed + (index + 1ULL) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z = z ^ (z >> 31);
  return (float)(z >> 40) * (1.0f / 16777216.0f);  // 24 random bits
}
