// The range of an index array: what the ops check class labels and pooling indices against before
// any kernel indexes memory with them.
//
// Math
//   range = (min_i a[i], max_i a[i]) over the n >= 1 int64 values of a.
//
// Why a kernel: the check runs on every cross-entropy call and reads the result back to the host
// (the one sync of a GPU training step). One or two launches and one 16-byte read replace the three
// array-library launches (min, max, stack) that cost ~60 us of host time per call on an H200.
//
// Decomposition: G = index_range_blocks(n) blocks of kThreads threads; block b takes the b-th of G
// equal contiguous slices, each thread strides over the slice keeping its min and max, a
// shared-memory tree combines them, and thread 0 writes the slice's (min, max) as two values. With
// one block (up to kOneBlockValues: a batch of labels, ~10 us of one SM's reading) those two
// values are the answer: one launch. With more (one per kValuesPerBlock, at most kMaxBlocks), the
// 2G slice values go to a workspace and the same kernel, one block, takes their min and max: the
// min of every slice's (min, max) pairs is the least min, since each slice's max is at least its
// min, and likewise for the max. One SM reads ~50 GB/s: one block over 2 MB of labels took ~40 us
// on an H200, most of a 262144 x 1000 fused cross-entropy's overhead; a second launch costs the
// host a few us, which a 65536 x 10 one (~60 us in all) felt. Min and max do not depend on the
// order, so the result is exact and the same on every run. Indices are 64-bit.
#pragma once

#include "check.h"
#include "common.cuh"

namespace fc {

namespace index_range_launch {
constexpr int kThreads = 512;
constexpr int64_t kOneBlockValues = 65536;  // 512 KB
constexpr int64_t kValuesPerBlock = 16384;  // 128 KB per block past that
constexpr int64_t kMaxBlocks = 1024;
}  // namespace index_range_launch

// out[2 b], out[2 b + 1] = min, max of a[b * per_block .. min(n, (b + 1) * per_block)).
__global__ void __launch_bounds__(index_range_launch::kThreads)
    index_range_kernel(const int64_t* __restrict__ a, int64_t n, int64_t per_block, int64_t* __restrict__ out) {
  constexpr int kThreads = index_range_launch::kThreads;
  __shared__ int64_t lows[kThreads];
  __shared__ int64_t highs[kThreads];
  const int64_t begin = (int64_t)blockIdx.x * per_block, end = min64(n, begin + per_block);
  int64_t low = INT64_MAX, high = INT64_MIN;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
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
    out[2 * blockIdx.x] = lows[0];
    out[2 * blockIdx.x + 1] = highs[0];
  }
}

int64_t index_range_blocks(int64_t n) {
  using namespace index_range_launch;
  if (n <= kOneBlockValues) return 1;
  return min64((n + kValuesPerBlock - 1) / kValuesPerBlock, kMaxBlocks);
}

void index_range(const int64_t* a, int64_t n, int64_t* range, int64_t* workspace, void* stream) {
  using namespace index_range_launch;
  require(n >= 1, "index_range: needs at least one value");
  const int64_t blocks = index_range_blocks(n);
  if (blocks == 1) {
    launch("index_range_kernel", index_range_kernel, dim3(1), dim3(kThreads), 0, stream, a, n, n, range);
    return;
  }
  require(workspace != nullptr, "index_range: more than one block needs a workspace of 2 * blocks values");
  const int64_t per_block = (n + blocks - 1) / blocks;
  launch("index_range_kernel", index_range_kernel, dim3((unsigned)blocks), dim3(kThreads), 0, stream, a, n, per_block,
         workspace);
  launch("index_range_kernel", index_range_kernel, dim3(1), dim3(kThreads), 0, stream, (const int64_t*)workspace,
         2 * blocks, 2 * blocks, range);
}

}  // namespace fc
