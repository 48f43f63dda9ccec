// Dense path: GEMM with a fused epilogue, the bias-gradient column sum, ReLU and sigmoid.
//
// Math
//   linear forward   y  = act(x @ W^T + b)          x (N, in), W (out, in), b (out)
//   linear backward  dx = dz @ W,  dW = dz^T @ x,  db = sum_rows dz      (dz = dy * act'(z))
//   relu             y = max(x, 0);       dx = dy * [x > 0]
//   sigmoid          y = 1 / (1 + e^-x);  dx = dy * y * (1 - y)
// so the GEMM is C = act(op(A) @ op(B) + bias), op = identity or transpose, and the backward
// uses the transposed variants: dx = gemm(dz, W), dW = gemm(dz, x, trans_a).
//
// GEMM decomposition (the classic register-blocked SGEMM, cf. siboehm's and llm.c's kernels):
//   a block of 256 threads owns a 128 x 128 tile of C and walks K in steps of 8;
//   per step it stages op(A)[128 x 8] and op(B)[8 x 128] in shared memory, stored k-major so the
//   inner loop reads contiguous rows; each thread owns an 8 x 8 sub-tile of C in registers and
//   does 64 FMAs per k from 16 shared-memory reads. Global loads are 16-byte vectors along the
//   contiguous dimension when the leading dimension and base pointer allow it (else scalar with
//   bounds checks), and the next tile is fetched into registers while the current one computes.
//   Bias and activation are applied in the epilogue, before the single store of C.
//   Edges: out-of-range loads read 0 and out-of-range outputs are not stored, so any M, N, K
//   (including 1, primes and K = 0) is exact. Indices are 64-bit.
#pragma once

#include "common.cuh"
#include "dense.h"

namespace fc {

namespace gemm_tile {
constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
constexpr int THREADS = (BM / TM) * (BN / TN);  // 256
static_assert(BM * BK == 4 * THREADS && BN * BK == 4 * THREADS, "each thread stages 4 + 4 values");
}  // namespace gemm_tile

// Fetches this thread's 4 values of the op(A) tile at (m0, k0) and of the op(B) tile at (k0, n0).
template <typename T, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void gemm_fetch(const T* __restrict__ A, const T* __restrict__ B, int64_t M, int64_t N,
                                           int64_t K, int64_t m0, int64_t n0, int64_t k0, bool vec_a, bool vec_b,
                                           int tid, T a[4], T b[4]) {
  using namespace gemm_tile;
  if (!TRANS_A) {  // A is M x K: 4 consecutive k of one row
    int64_t m = m0 + tid / 2, k = k0 + (tid % 2) * 4;
    int64_t valid = m < M ? min64(4, K - k) : 0;
    load4(A + m * K + k, vec_a, valid, a);
  } else {  // A is K x M: 4 consecutive m of one k
    int64_t k = k0 + tid / 32, m = m0 + (tid % 32) * 4;
    int64_t valid = k < K ? min64(4, M - m) : 0;
    load4(A + k * M + m, vec_a, valid, a);
  }
  if (!TRANS_B) {  // B is K x N: 4 consecutive n of one k
    int64_t k = k0 + tid / 32, n = n0 + (tid % 32) * 4;
    int64_t valid = k < K ? min64(4, N - n) : 0;
    load4(B + k * N + n, vec_b, valid, b);
  } else {  // B is N x K: 4 consecutive k of one n
    int64_t n = n0 + tid / 2, k = k0 + (tid % 2) * 4;
    int64_t valid = n < N ? min64(4, K - k) : 0;
    load4(B + n * K + k, vec_b, valid, b);
  }
}

template <typename T, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void gemm_stage(T (*As)[gemm_tile::BM], T (*Bs)[gemm_tile::BN], int tid, const T a[4],
                                           const T b[4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (!TRANS_A) As[(tid % 2) * 4 + j][tid / 2] = a[j];
    else As[tid / 32][(tid % 32) * 4 + j] = a[j];
    if (!TRANS_B) Bs[tid / 32][(tid % 32) * 4 + j] = b[j];
    else Bs[(tid % 2) * 4 + j][tid / 2] = b[j];
  }
}

template <typename T, bool TRANS_A, bool TRANS_B>
__global__ void __launch_bounds__(gemm_tile::THREADS)
    gemm_kernel(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ bias, T* __restrict__ C,
                int64_t M, int64_t N, int64_t K, int act, bool vec_a, bool vec_b) {
  using namespace gemm_tile;
  __shared__ __align__(16) T As[BK][BM];
  __shared__ __align__(16) T Bs[BK][BN];

  const int tid = threadIdx.x;
  const int tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;

  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  T a_next[4], b_next[4];
  if (K > 0) gemm_fetch<T, TRANS_A, TRANS_B>(A, B, M, N, K, m0, n0, 0, vec_a, vec_b, tid, a_next, b_next);
  for (int64_t k0 = 0; k0 < K; k0 += BK) {
    gemm_stage<T, TRANS_A, TRANS_B>(As, Bs, tid, a_next, b_next);
    __syncthreads();
    if (k0 + BK < K)  // overlap the next tile's global loads with this tile's math
      gemm_fetch<T, TRANS_A, TRANS_B>(A, B, M, N, K, m0, n0, k0 + BK, vec_a, vec_b, tid, a_next, b_next);
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // before the next stage overwrites the tiles
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    int64_t m = m0 + ty * TM + i;
    if (m >= M) break;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      int64_t n = n0 + tx * TN + j;
      if (n < N) {
        T v = acc[i][j];
        if (bias) v += bias[n];
        C[m * N + n] = activate(v, act);
      }
    }
  }
}

template <typename T>
void gemm(const T* A, const T* B, const T* bias, T* C, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          int act, void* stream) {
  using namespace gemm_tile;
  if (M == 0 || N == 0) return;
  require((M + BM - 1) / BM <= 65535, "gemm: M too large for the grid's y dimension");
  dim3 grid(blocks_for(N, BN), blocks_for(M, BM));
  // 16-byte loads need the contiguous dimension to keep every row start aligned.
  bool vec_a = aligned16(A) && ((trans_a ? M : K) % 4 == 0);
  bool vec_b = aligned16(B) && ((trans_b ? K : N) % 4 == 0);
  auto args = [&](auto kernel, const char* name) {
    launch(name, kernel, grid, dim3(THREADS), 0, stream, A, B, bias, C, M, N, K, act, vec_a, vec_b);
  };
  if (!trans_a && !trans_b) args(gemm_kernel<T, false, false>, "gemm_kernel<NN>");
  else if (!trans_a && trans_b) args(gemm_kernel<T, false, true>, "gemm_kernel<NT>");
  else if (trans_a && !trans_b) args(gemm_kernel<T, true, false>, "gemm_kernel<TN>");
  else args(gemm_kernel<T, true, true>, "gemm_kernel<TT>");
}

// Column sums: a block of 32 x 8 threads owns 32 columns; thread (x, y) sums rows y, y + 8, ...
// of column x (coalesced along the row), then the 8 partial sums meet in shared memory.
// Deterministic: no atomics.
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ dy, T* __restrict__ db, int64_t rows, int64_t cols) {
  __shared__ T partial[8][33];
  int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
  T sum = T(0);
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += 8) sum += dy[r * cols + c];
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    T total = T(0);
#pragma unroll
    for (int i = 0; i < 8; ++i) total += partial[i][threadIdx.x];
    db[c] = total;
  }
}

template <typename T>
void column_sum(const T* dy, T* db, int64_t rows, int64_t cols, void* stream) {
  if (cols == 0) return;
  launch("column_sum_kernel", column_sum_kernel<T>, dim3(blocks_for(cols, 32)), dim3(32, 8), 0, stream, dy, db, rows,
         cols);
}

// Elementwise kernels: grid-stride loops over n values, 64-bit indices.
constexpr int kElementwiseThreads = 256;
constexpr int64_t kElementwiseMaxBlocks = 4096;

inline dim3 elementwise_grid(int64_t n) {
  return dim3((unsigned)min64(blocks_for(n, kElementwiseThreads), kElementwiseMaxBlocks));
}

template <typename T>
__global__ void relu_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = relu(x[i]);
}

template <typename T>
__global__ void relu_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = x[i] > T(0) ? dy[i] : T(0);
}

template <typename T>
__global__ void sigmoid_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] = sigmoid(x[i]);
}

template <typename T>
__global__ void sigmoid_backward_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx,
                                        int64_t n) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dx[i] = dy[i] * y[i] * (T(1) - y[i]);
}

template <typename T>
void relu_forward(const T* x, T* y, int64_t n, void* stream) {
  if (n) launch("relu_forward_kernel", relu_forward_kernel<T>, elementwise_grid(n), dim3(kElementwiseThreads), 0, stream, x, y, n);
}
template <typename T>
void relu_backward(const T* dy, const T* x, T* dx, int64_t n, void* stream) {
  if (n) launch("relu_backward_kernel", relu_backward_kernel<T>, elementwise_grid(n), dim3(kElementwiseThreads), 0, stream, dy, x, dx, n);
}
template <typename T>
void sigmoid_forward(const T* x, T* y, int64_t n, void* stream) {
  if (n) launch("sigmoid_forward_kernel", sigmoid_forward_kernel<T>, elementwise_grid(n), dim3(kElementwiseThreads), 0, stream, x, y, n);
}
template <typename T>
void sigmoid_backward(const T* dy, const T* y, T* dx, int64_t n, void* stream) {
  if (n) launch("sigmoid_backward_kernel", sigmoid_backward_kernel<T>, elementwise_grid(n), dim3(kElementwiseThreads), 0, stream, dy, y, dx, n);
}

#define FC_INSTANTIATE_DENSE(T)                                                                              \
  template void gemm<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, bool, bool, int, void*); \
  template void column_sum<T>(const T*, T*, int64_t, int64_t, void*);                                        \
  template void relu_forward<T>(const T*, T*, int64_t, void*);                                               \
  template void relu_backward<T>(const T*, const T*, T*, int64_t, void*);                                    \
  template void sigmoid_forward<T>(const T*, T*, int64_t, void*);                                            \
  template void sigmoid_backward<T>(const T*, const T*, T*, int64_t, void*);
FC_INSTANTIATE_DENSE(float)
FC_INSTANTIATE_DENSE(double)
#undef FC_INSTANTIATE_DENSE

}  // namespace fc
