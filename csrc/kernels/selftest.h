// Launchers of the emulator's self-test kernels (selftest.cuh). They exist to check the CUDA
// emulator (barriers, shared memory, warp shuffles, atomics, launch geometry, error reporting)
// and, compiled by nvcc, the same expectations on a GPU. Pointers are device pointers under CUDA,
// host pointers under the emulator; `stream` is a cudaStream_t (ignored by the emulator).
#pragma once

#include "common.h"

namespace fc {

// y = x with each block's chunk of `threads` values reversed (through a static __shared__ array).
// use_barrier = false plants the bug of a missing __syncthreads (the result is then wrong).
template <typename T>
void selftest_reverse(const T* x, T* y, int64_t n, int threads, bool use_barrier, void* stream);

// sums[b] = sum of x[b*threads .. (b+1)*threads) (zeros past n): a tree reduction in dynamic
// shared memory with a barrier per level. use_barrier = false plants the missing barriers.
template <typename T>
void selftest_block_sum(const T* x, T* sums, int64_t n, int threads, bool use_barrier, void* stream);

// Per warp of each block (blocks of `threads`, the last warp possibly partial), thread i writes:
//   scan[i]  inclusive prefix sum of x over its warp        (__shfl_up_sync)
//   bcast[i] x of its warp's lane 0                         (__shfl_sync)
//   xsum[i]  its warp's total, in every lane                 (__shfl_xor_sync butterfly)
// and lane 0 writes wsum[warp] = its warp's total            (__shfl_down_sync tree).
// Warps are numbered globally: block b's warp w is b * ceil(threads / 32) + w.
template <typename T>
void selftest_warp_ops(const T* x, T* scan, T* bcast, T* xsum, T* wsum, int64_t n, int threads, void* stream);

// For each i < n with b = bins_of[i] in [0, nbins):
//   counts[b] += 1 (atomicAdd int), weights[b] += w[i] (atomicAdd T), maxima[b] = max(maxima[b], keys[i])
// (atomicMax int). The outputs hold their initial values on entry.
template <typename T>
void selftest_histogram(const int* bins_of, const T* w, const int* keys, int* counts, T* weights, int* maxima,
                        int64_t n, int nbins, int threads, void* stream);

// y[0 .. 4 groups) = x[0 .. 4 groups), thread i copying values 4i .. 4i + 3 with one 16-byte
// vector load and store (two for double): x and y must be 16-byte aligned (a GPU traps otherwise).
template <typename T>
void selftest_vector_copy(const T* x, T* y, int64_t groups, void* stream);

// Each thread writes 12 ints at its global linear index (blocks in x-fastest order, threads in
// x-fastest order within a block): threadIdx, blockIdx, blockDim, gridDim (x, y, z each).
void selftest_coords(int* out, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, void* stream);

// Broken on purpose (the emulator must raise, naming the kernel, instead of hanging):
// threads with threadIdx.x >= active return before a __syncthreads the others wait at.
void selftest_early_return(float* y, int threads, int active, void* stream);
// Every lane of a 32-thread block shuffles with mask `mask`, reading lane `src_lane`.
void selftest_shuffle(float* y, unsigned mask, int src_lane, void* stream);

}  // namespace fc
