// The emulator's self-test kernels: small CUDA kernels whose results are only right when the
// CUDA semantics they rely on are emulated faithfully. Compiled into _emu (to test the emulator)
// and into _cuda (the same tests then check the GPU agrees).
//
// What each one relies on, and how a block and a thread divide the work:
//   reverse_kernel     a static __shared__ array and one barrier: thread t of a block writes
//                      x[t] to s[t], waits, then reads s[threads - 1 - t] (another thread's slot).
//   block_sum_kernel   dynamic shared memory and a barrier per level of a tree reduction over a
//                      block of any size (the upper half of `active` folds onto the lower half).
//   warp_ops_kernel    the four shuffles with full and partial masks, many in a row: a warp of
//                      w lanes (w < 32 only for a block's last warp) scans with __shfl_up_sync,
//                      broadcasts with __shfl_sync, and reduces over its largest power-of-two
//                      p <= w lanes (lanes p..w-1 first fold onto 0..w-p-1) with __shfl_down_sync
//                      and __shfl_xor_sync under the mask of lanes 0..p-1 only, so no lane ever
//                      reads a lane outside its mask or past the end of the warp.
//   histogram_kernel   atomicAdd on int and on T, atomicMax on int; a grid-stride loop.
//   coords_kernel      threadIdx/blockIdx/blockDim/gridDim in 3-D.
//   vector_copy_kernel 16-byte vector loads and stores (vec_load4 / vec_store4): thread i copies
//                      values 4i .. 4i + 3; a pointer that is not 16-byte aligned traps.
//   early_return_kernel, shuffle_kernel: broken or checked on purpose (see selftest.h).
// Missing barriers are planted by a uniform `use_barrier` flag (uniform across the block, so the
// kernels stay valid CUDA either way).
#pragma once

#include "common.cuh"
#include "selftest.h"

namespace fc {

namespace selftest {
constexpr int kMaxThreads = 1024;
}

template <typename T>
__global__ void reverse_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, bool use_barrier) {
  __shared__ T s[selftest::kMaxThreads];
  const int t = threadIdx.x, threads = blockDim.x;
  const int64_t base = (int64_t)blockIdx.x * threads;
  s[t] = base + t < n ? x[base + t] : T(0);
  if (use_barrier) __syncthreads();
  // The mirrored slot of a short last block is one of the zeros written above.
  const int64_t chunk = min64(threads, n - base);
  if (t < chunk) y[base + t] = s[chunk - 1 - t];
}

template <typename T>
__global__ void block_sum_kernel(const T* __restrict__ x, T* __restrict__ sums, int64_t n, bool use_barrier) {
  FC_DYNAMIC_SMEM(T, s);
  const int t = threadIdx.x;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + t;
  s[t] = i < n ? x[i] : T(0);
  if (use_barrier) __syncthreads();
  for (int active = blockDim.x; active > 1;) {
    const int half = (active + 1) / 2;  // slots half..active-1 fold onto 0..active-half-1
    if (t < active - half) s[t] += s[t + half];
    active = half;
    if (use_barrier) __syncthreads();
  }
  if (t == 0) sums[blockIdx.x] = s[0];
}

template <typename T>
__global__ void warp_ops_kernel(const T* __restrict__ x, T* __restrict__ scan, T* __restrict__ bcast,
                                T* __restrict__ xsum, T* __restrict__ wsum, int64_t n) {
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  const int w = blockDim.x - warp * 32 < 32 ? blockDim.x - warp * 32 : 32;  // lanes in this warp
  const unsigned all = w == 32 ? 0xffffffffu : (1u << w) - 1;
  int p = 1;
  while (p * 2 <= w) p *= 2;
  const unsigned low = p == 32 ? 0xffffffffu : (1u << p) - 1;

  const int64_t i = (int64_t)blockIdx.x * blockDim.x + t;
  const T v = i < n ? x[i] : T(0);

  T prefix = v;  // inclusive scan: lanes below `delta` keep their value
  for (int delta = 1; delta < w; delta *= 2) {
    T other = __shfl_up_sync(all, prefix, delta);
    if (lane >= delta) prefix += other;
  }
  const T first = __shfl_sync(all, v, 0);

  // Fold lanes p..w-1 onto 0..w-p-1 (reads only existing lanes), then reduce over lanes 0..p-1.
  T folded = __shfl_sync(all, v, lane + p < w ? lane + p : lane);
  T part = v + (lane + p < w ? folded : T(0));
  T down = part, butterfly = part;
  if (lane < p) {
    for (int offset = p / 2; offset > 0; offset /= 2) down += __shfl_down_sync(low, down, offset, p);
    // One more shuffle, so that these lanes have done an odd number more than lanes p..w-1 when
    // the whole warp shuffles again below.
    down = __shfl_sync(low, down, 0);
    for (int offset = p / 2; offset > 0; offset /= 2) butterfly += __shfl_xor_sync(low, butterfly, offset, p);
  }
  // Lanes p..w-1 take the total from lane 0 (after a warp-level barrier over partial masks).
  __syncwarp(all);
  const T total = __shfl_sync(all, butterfly, 0);

  if (i < n) {
    scan[i] = prefix;
    bcast[i] = first;
    xsum[i] = lane < p ? butterfly : total;
  }
  const int warps_per_block = (blockDim.x + 31) / 32;
  if (lane == 0) wsum[(int64_t)blockIdx.x * warps_per_block + warp] = down;
}

template <typename T>
__global__ void histogram_kernel(const int* __restrict__ bins_of, const T* __restrict__ w, const int* __restrict__ keys,
                                 int* counts, T* weights, int* maxima, int64_t n, int nbins) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int b = bins_of[i];
    if (b < 0 || b >= nbins) continue;
    atomicAdd(&counts[b], 1);
    atomicAdd(&weights[b], w[i]);
    atomicMax(&maxima[b], keys[i]);
  }
}

__global__ void coords_kernel(int* out) {
  const int64_t block = ((int64_t)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int64_t thread = ((int64_t)threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  int* o = out + (block * blockDim.x * blockDim.y * blockDim.z + thread) * 12;
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockIdx.x;  o[4] = blockIdx.y;  o[5] = blockIdx.z;
  o[6] = blockDim.x;  o[7] = blockDim.y;  o[8] = blockDim.z;
  o[9] = gridDim.x;   o[10] = gridDim.y;  o[11] = gridDim.z;
}

template <typename T>
__global__ void vector_copy_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t groups) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= groups) return;
  T v[4];
  vec_load4(x + 4 * i, v);
  vec_store4(y + 4 * i, v);
}

__global__ void early_return_kernel(float* y, int active) {
  __shared__ float s[selftest::kMaxThreads];
  const int t = threadIdx.x;
  if (t >= active) return;  // the bug: these threads never reach the barrier below
  s[t] = (float)t;
  __syncthreads();
  y[t] = s[active - 1 - t];
}

__global__ void shuffle_kernel(float* y, unsigned mask, int src_lane) {
  const int lane = threadIdx.x % 32;
  if (mask >> lane & 1u) y[threadIdx.x] = __shfl_sync(mask, (float)lane, src_lane);
}

// ---- launchers ---------------------------------------------------------------------------------

inline void selftest_require_threads(int threads) {
  require(threads >= 1 && threads <= selftest::kMaxThreads, "selftest: threads must be in [1, 1024]");
}

template <typename T>
void selftest_reverse(const T* x, T* y, int64_t n, int threads, bool use_barrier, void* stream) {
  selftest_require_threads(threads);
  if (n) launch("reverse_kernel", reverse_kernel<T>, dim3(blocks_for(n, threads)), dim3(threads), 0, stream, x, y, n, use_barrier);
}

template <typename T>
void selftest_block_sum(const T* x, T* sums, int64_t n, int threads, bool use_barrier, void* stream) {
  selftest_require_threads(threads);
  if (n) launch("block_sum_kernel", block_sum_kernel<T>, dim3(blocks_for(n, threads)), dim3(threads), threads * sizeof(T), stream, x, sums, n, use_barrier);
}

template <typename T>
void selftest_warp_ops(const T* x, T* scan, T* bcast, T* xsum, T* wsum, int64_t n, int threads, void* stream) {
  selftest_require_threads(threads);
  if (n) launch("warp_ops_kernel", warp_ops_kernel<T>, dim3(blocks_for(n, threads)), dim3(threads), 0, stream, x, scan, bcast, xsum, wsum, n);
}

template <typename T>
void selftest_histogram(const int* bins_of, const T* w, const int* keys, int* counts, T* weights, int* maxima,
                        int64_t n, int nbins, int threads, void* stream) {
  selftest_require_threads(threads);
  // Few blocks, so that each thread handles several items (the grid-stride loop is exercised).
  dim3 grid((unsigned)min64(blocks_for(n, threads), 4));
  if (n) launch("histogram_kernel", histogram_kernel<T>, grid, dim3(threads), 0, stream, bins_of, w, keys, counts, weights, maxima, n, nbins);
}

template <typename T>
void selftest_vector_copy(const T* x, T* y, int64_t groups, void* stream) {
  if (groups) launch("vector_copy_kernel", vector_copy_kernel<T>, dim3(blocks_for(groups, 64)), dim3(64), 0, stream, x, y, groups);
}

void selftest_coords(int* out, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, void* stream) {
  launch("coords_kernel", coords_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0, stream, out);
}

void selftest_early_return(float* y, int threads, int active, void* stream) {
  selftest_require_threads(threads);
  require(active >= 1 && active <= threads, "selftest_early_return: active must be in [1, threads]");
  launch("early_return_kernel", early_return_kernel, dim3(1), dim3(threads), 0, stream, y, active);
}

void selftest_shuffle(float* y, unsigned mask, int src_lane, void* stream) {
  launch("shuffle_kernel", shuffle_kernel, dim3(1), dim3(32), 0, stream, y, mask, src_lane);
}

#define FC_INSTANTIATE_SELFTEST(T)                                                                   \
  template void selftest_reverse<T>(const T*, T*, int64_t, int, bool, void*);                        \
  template void selftest_block_sum<T>(const T*, T*, int64_t, int, bool, void*);                      \
  template void selftest_warp_ops<T>(const T*, T*, T*, T*, T*, int64_t, int, void*);                 \
  template void selftest_histogram<T>(const int*, const T*, const int*, int*, T*, int*, int64_t, int, int, void*); \
  template void selftest_vector_copy<T>(const T*, T*, int64_t, void*);
FC_INSTANTIATE_SELFTEST(float)
FC_INSTANTIATE_SELFTEST(double)
#undef FC_INSTANTIATE_SELFTEST

}  // namespace fc
