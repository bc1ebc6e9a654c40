// cuda_emu.h -- runs the CUDA C kernels of kernels/ on the CPU, for tests.
//
// A kernel launch <<<grid, block, shared>>> becomes lg_emu::launch(): blocks
// run one after another; within a block, a kernel that never calls
// __syncthreads() runs its threads one after another on the calling thread,
// and one that does runs each thread as a std::thread meeting the others at a
// std::barrier.  __shared__ variables become function-local statics (blocks
// never overlap, so one copy serves every block), dynamic shared memory is a
// per-launch buffer, atomicAdd goes through std::atomic_ref.  Warp-level
// intrinsics (__shfl_*, __ballot_sync) are deliberately not provided: the
// kernels do not use them, so every kernel can be checked here.
#pragma once
#define LG_EMULATION 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) alignas(n)
#define __launch_bounds__(...)

namespace lg_emu {
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<unsigned char> shared_buffer;
inline std::mutex launch_mutex;
inline void* shared_memory() { return shared_buffer.data(); }

// Run body() as every thread of a grid x block launch.
inline void launch(unsigned grid, unsigned block, size_t shared, bool threaded,
                   const std::function<void()>& body) {
  std::lock_guard<std::mutex> guard(launch_mutex);
  gridDim.x = grid;
  blockDim.x = block;
  shared_buffer.assign(shared + 16, 0);
  for (unsigned b = 0; b < grid; ++b) {
    if (!threaded) {
      blockIdx.x = b;
      for (unsigned t = 0; t < block; ++t) {
        threadIdx.x = t;
        body();
      }
      continue;
    }
    std::barrier<> barrier(block);
    block_barrier = &barrier;
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
      threads.emplace_back([&, b, t] {
        blockIdx.x = b;
        threadIdx.x = t;
        body();
      });
    }
    for (auto& th : threads) th.join();
    block_barrier = nullptr;
  }
}
}  // namespace lg_emu

inline void __syncthreads() { lg_emu::block_barrier->arrive_and_wait(); }

template <typename T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
inline int atomicMax(int* address, int value) {
  std::atomic_ref<int> ref(*address);
  int old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
inline int atomicExch(int* address, int value) {
  return std::atomic_ref<int>(*address).exchange(value);
}

// CUDA's math built-ins that the C++ library lacks or names differently.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return std::min(std::max(x, 0.0f), 1.0f); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
using std::max;
using std::min;
inline long long min(long long a, int b) { return a < b ? a : b; }
inline long long min(int a, long long b) { return a < b ? a : b; }
inline long long max(long long a, int b) { return a > b ? a : b; }
inline long long max(int a, long long b) { return a > b ? a : b; }
