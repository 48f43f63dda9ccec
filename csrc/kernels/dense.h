// Launchers of the dense-path kernels (dense.cuh). Pointers are device pointers under CUDA and
// host pointers under the emulator; `stream` is a cudaStream_t (ignored by the emulator).
// All arrays are C-contiguous; the Python layer has checked shapes and dtypes.
#pragma once

#include "common.h"

namespace fc {

// C (M x N) = act(op(A) @ op(B) + bias); op(A) is M x K, op(B) is K x N; bias (N) may be null.
// A is stored M x K (K x M when trans_a), B is stored K x N (N x K when trans_b).
// `tile` picks the block tile (0 small 64 x 64, 1 large 128 x 128, 2 wide 128 x 256; see dense.cuh); splits > 1 splits K and needs a workspace of splits * M * N values.
template <typename T>
void gemm(const T* A, const T* B, const T* bias, T* C, int64_t M, int64_t N, int64_t K, bool trans_a,
          bool trans_b, int act, T* workspace, int tile, int64_t splits, void* stream);

// The plan for an M x N x K product, from the shape alone: the tile, then how many K slices
// (1: no split) that tile should use.
int gemm_tile(int64_t M, int64_t N, int64_t K);
int64_t gemm_splits(int64_t M, int64_t N, int64_t K, int tile);

// db[c] = sum_r dy[r, c] for dy (rows x cols).
template <typename T>
void column_sum(const T* dy, T* db, int64_t rows, int64_t cols, void* stream);

template <typename T>
void relu_forward(const T* x, T* y, int64_t n, void* stream);
template <typename T>
void relu_backward(const T* dy, const T* x, T* dx, int64_t n, void* stream);
template <typename T>
void sigmoid_forward(const T* x, T* y, int64_t n, void* stream);
template <typename T>
void sigmoid_backward(const T* dy, const T* y, T* dx, int64_t n, void* stream);

}  // namespace fc
