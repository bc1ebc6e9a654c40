// Shared by the CPU's compiled loops (window_ops.cpp, solver_ops.cpp).
#ifndef LAYERGRAPH_CPU_PARALLEL_FOR_H_
#define LAYERGRAPH_CPU_PARALLEL_FOR_H_

#ifdef _OPENMP
#include <omp.h>
#endif

typedef long long i64;

namespace {

// body(begin, end) on one contiguous share of [0, n) per OpenMP thread.  The
// loops themselves live in functions of their own (the *_items) that take
// every size by value: inside an OpenMP region the compiler sees shared
// variables through a pointer and, fearing aliasing, reloads them on every
// access -- which cost the 2x2 pooling loop a factor 2.5.
//
// ``min_items``: run on the calling thread alone when n is under twice it.
// Waking the idle (passive) OpenMP threads costs tens of microseconds, more
// than a small loop takes: a bias's update, say.
//
// Called inside a parallel region (a part of layer_parts.cpp's passes), the
// loop runs on the calling thread without opening a region at all: a nested
// region of one thread still costs a team start, and two threads starting
// them chunk after chunk slowed a convolution's parts by a third.
template <typename Body>
void parallel_for(i64 n, const Body& body, i64 min_items = 1) {
#ifdef _OPENMP
  if (omp_in_parallel()) {
    body(0, n);
    return;
  }
#endif
#pragma omp parallel if (n >= 2 * min_items)
  {
#ifdef _OPENMP
    const i64 t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const i64 t = 0, nt = 1;
#endif
    body(n * t / nt, n * (t + 1) / nt);
  }
}

}  // namespace

#endif  // LAYERGRAPH_CPU_PARALLEL_FOR_H_
