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
//   Split-K: when the tile grid alone would leave most of the GPU idle (few tiles, long K, e.g.
//   a 128 x 3136 -> 128 linear layer is ONE 128 x 128 tile), K is cut into `splits` slices of
//   whole k-steps (blockIdx.z = slice); each slice stores its raw partial tile in a workspace
//   (splits x M x N) and gemm_reduce_kernel sums the slices in order s = 0, 1, ... and applies
//   bias and activation: no atomics, so the result is the same on every run. gemm_splits picks
//   the count from the shape alone, so it is the same on every device too.
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
// K is the operands' inner dimension (a leading dimension when K is contiguous); k values at or
// past k_end (K, or the end of this block's split-K slice) read as 0.
template <typename T, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void gemm_fetch(const T* __restrict__ A, const T* __restrict__ B, int64_t M, int64_t N,
                                           int64_t K, int64_t k_end, int64_t m0, int64_t n0, int64_t k0, bool vec_a,
                                           bool vec_b, int tid, T a[4], T b[4]) {
  using namespace gemm_tile;
  if (!TRANS_A) {  // A is M x K: 4 consecutive k of one row
    int64_t m = m0 + tid / 2, k = k0 + (tid % 2) * 4;
    int64_t valid = m < M ? min64(4, k_end - k) : 0;
    load4(A + m * K + k, vec_a, valid, a);
  } else {  // A is K x M: 4 consecutive m of one k
    int64_t k = k0 + tid / 32, m = m0 + (tid % 32) * 4;
    int64_t valid = k < k_end ? min64(4, M - m) : 0;
    load4(A + k * M + m, vec_a, valid, a);
  }
  if (!TRANS_B) {  // B is K x N: 4 consecutive n of one k
    int64_t k = k0 + tid / 32, n = n0 + (tid % 32) * 4;
    int64_t valid = k < k_end ? min64(4, N - n) : 0;
    load4(B + k * N + n, vec_b, valid, b);
  } else {  // B is N x K: 4 consecutive k of one n
    int64_t n = n0 + tid / 2, k = k0 + (tid % 2) * 4;
    int64_t valid = n < N ? min64(4, k_end - k) : 0;
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
                T* __restrict__ partials, int64_t M, int64_t N, int64_t K, int64_t k_chunk, int act, bool vec_a,
                bool vec_b) {
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

  // This block's slice of K (all of it without split-K). k_chunk is a multiple of BK, so the
  // slice's k-steps are the unsplit kernel's; loads stop at k_end, so slices never overlap.
  const int64_t k_begin = (int64_t)blockIdx.z * k_chunk, k_end = min64(K, k_begin + k_chunk);
  T a_next[4], b_next[4];
  if (k_begin < k_end)
    gemm_fetch<T, TRANS_A, TRANS_B>(A, B, M, N, K, k_end, m0, n0, k_begin, vec_a, vec_b, tid, a_next, b_next);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    gemm_stage<T, TRANS_A, TRANS_B>(As, Bs, tid, a_next, b_next);
    __syncthreads();
    if (k0 + BK < k_end)  // overlap the next tile's global loads with this tile's math
      gemm_fetch<T, TRANS_A, TRANS_B>(A, B, M, N, K, k_end, m0, n0, k0 + BK, vec_a, vec_b, tid, a_next, b_next);
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

  T* out = partials ? partials + (int64_t)blockIdx.z * M * N : C;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    int64_t m = m0 + ty * TM + i;
    if (m >= M) break;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      int64_t n = n0 + tx * TN + j;
      if (n < N) {
        T v = acc[i][j];
        if (!partials) {  // split-K applies bias and activation after the sum
          if (bias) v += bias[n];
          v = activate(v, act);
        }
        out[m * N + n] = v;
      }
    }
  }
}

// C[i] = act(sum_s partials[s * M * N + i] + bias[i % N]), slices summed in order.
template <typename T>
__global__ void gemm_reduce_kernel(const T* __restrict__ partials, const T* __restrict__ bias, T* __restrict__ C,
                                   int64_t M, int64_t N, int64_t splits, int act) {
  const int64_t n = M * N;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    T v = T(0);
    for (int64_t s = 0; s < splits; ++s) v += partials[s * n + i];
    if (bias) v += bias[i % N];
    C[i] = activate(v, act);
  }
}

int64_t gemm_splits(int64_t M, int64_t N, int64_t K) {
  using namespace gemm_tile;
  // Aim for about 192 blocks (some 1.5 waves of a 132-SM H100; any GPU of the last years has
  // fewer SMs), each slice keeping at least 128 k values (16 k-steps) of work.
  constexpr int64_t kTargetBlocks = 192, kMinKPerSlice = 128, kMaxSplits = 64;
  const int64_t tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN);
  if (tiles == 0 || tiles >= kTargetBlocks / 2) return 1;  // (an empty C needs no launch)
  return max64(1, min64(min64((kTargetBlocks + tiles - 1) / tiles, K / kMinKPerSlice), kMaxSplits));
}

template <typename T>
void gemm(const T* A, const T* B, const T* bias, T* C, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          int act, T* workspace, int64_t splits, void* stream) {
  using namespace gemm_tile;
  if (M == 0 || N == 0) return;
  require((M + BM - 1) / BM <= 65535, "gemm: M too large for the grid's y dimension");
  require(splits >= 1 && splits <= 65535, "gemm: splits must be in [1, 65535]");
  require(splits == 1 || workspace != nullptr, "gemm: splits > 1 needs a workspace of splits * M * N values");
  int64_t k_chunk = (K + splits - 1) / splits;
  k_chunk = max64(BK, (k_chunk + BK - 1) / BK * BK);  // slices start on a k-step boundary
  T* partials = splits > 1 ? workspace : nullptr;
  dim3 grid(blocks_for(N, BN), blocks_for(M, BM), (unsigned)splits);
  // 16-byte loads need the contiguous dimension to keep every row start aligned.
  bool vec_a = aligned16(A) && ((trans_a ? M : K) % 4 == 0);
  bool vec_b = aligned16(B) && ((trans_b ? K : N) % 4 == 0);
  auto args = [&](auto kernel, const char* name) {
    launch(name, kernel, grid, dim3(THREADS), 0, stream, A, B, bias, C, partials, M, N, K, k_chunk, act, vec_a,
           vec_b);
  };
  if (!trans_a && !trans_b) args(gemm_kernel<T, false, false>, "gemm_kernel<NN>");
  else if (!trans_a && trans_b) args(gemm_kernel<T, false, true>, "gemm_kernel<NT>");
  else if (trans_a && !trans_b) args(gemm_kernel<T, true, false>, "gemm_kernel<TN>");
  else args(gemm_kernel<T, true, true>, "gemm_kernel<TT>");
  if (partials)
    launch("gemm_reduce_kernel", gemm_reduce_kernel<T>, dim3((unsigned)min64(blocks_for(M * N, 256), 4096)), dim3(256),
           0, stream, (const T*)partials, bias, C, M, N, splits, act);
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
  template void gemm<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, bool, bool, int, T*, int64_t, \
                        void*);                                                                              \
  template void column_sum<T>(const T*, T*, int64_t, int64_t, void*);                                        \
  template void relu_forward<T>(const T*, T*, int64_t, void*);                                               \
  template void relu_backward<T>(const T*, const T*, T*, int64_t, void*);                                    \
  template void sigmoid_forward<T>(const T*, T*, int64_t, void*);                                            \
  template void sigmoid_backward<T>(const T*, const T*, T*, int64_t, void*);
FC_INSTANTIATE_DENSE(float)
FC_INSTANTIATE_DENSE(double)
#undef FC_INSTANTIATE_DENSE

}  // namespace fc
