// The range of an index array: what the ops check class labels and pooling indices against before
// any kernel indexes memory with them.
//
// Math
//   range = (min_i a[i], max_i a[i]) over the n >= 1 int64 values of a.
//
// Why a kernel: the check runs on every cross-entropy call and reads the result back to the host
// (the one sync of a GPU training step). One launch and one 16-byte read replace the three array
// library launches (min, max, stack) that cost ~60 us of host time per call on an H200.
//
// Decomposition: ONE block of kThreads threads strides over the array (labels are a batch long);
// each thread keeps its min and max, a shared-memory tree combines them, thread 0 writes both. Min
// and max do not depend on the order, so the result is exact and the same on every run. Indices
// are 64-bit. One SM reads ~50 GB/s this way: fastconv/_native/check.py sends arrays past 2^20 values to
// the array library's whole-GPU reductions instead (measured there).
#pragma once

#include "check.h"
#include "common.cuh"

namespace fc {

namespace index_range_launch {
constexpr int kThreads = 512;
}

__global__ void __launch_bounds__(index_range_launch::kThreads)
    index_range_kernel(const int64_t* __restrict__ a, int64_t n, int64_t* __restrict__ range) {
  constexpr int kThreads = index_range_launch::kThreads;
  __shared__ int64_t lows[kThreads];
  __shared__ int64_t highs[kThreads];
  int64_t low = INT64_MAX, high = INT64_MIN;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    low = min64(low, a[i]);
    high = max64(high, a[i]);
  }
  lows[threadIdx.x] = low;
  highs[threadIdx.x] = high;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if ((int)threadIdx.x < half) {
      lows[threadIdx.x] = min64(lows[threadIdx.x], lows[threadIdx.x + half]);
      highs[threadIdx.x] = max64(highs[threadIdx.x], highs[threadIdx.x + half]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    range[0] = lows[0];
    range[1] = highs[0];
  }
}

void index_range(const int64_t* a, int64_t n, int64_t* range, void* stream) {
  launch("index_range_kernel", index_range_kernel, dim3(1), dim3(index_range_launch::kThreads), 0, stream, a, n,
         range);
}

}  // namespace fc
