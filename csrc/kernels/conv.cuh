// 2-D convolution (cross-correlation, PyTorch's conv2d) as three implicit GEMMs, and the bias
// gradient.
//
// Math (x (N, C, H, W), w (C_out, C/G, KH, KW), G groups, Cg = C/G, Cog = C_out/G; the output
// channel o belongs to group g = o / Cog and sees input channels g*Cg .. g*Cg + Cg - 1)
//   forward    y[n,o,oh,ow] = act(b[o] + sum_{c<Cg,i,j} x[n, g*Cg+c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]
//                                                      * w[o, c, i, j])           (x outside = 0)
//              OH = floor((H + pt + pb - dh*(KH-1) - 1) / sh) + 1, likewise OW.
//   backward   with dy = dL/d(pre-activation y):
//     data     dx[n, g*Cg+c, h, v] = sum_{co<Cog,i,j} dy[n, g*Cog+co, oh, ow] * w[g*Cog+co, c, i, j]
//              over the (i, j) where oh = (h + pt - i*dh) / sh and ow = (v + pl - j*dw) / sw divide
//              exactly and land inside the output (the gather form: no scatter, no atomics).
//     weight   dw[o, c, i, j] = sum_{n,oh,ow} dy[n, o, oh, ow] * x[n, g*Cg+c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]
//     bias     db[o] = sum_{n,oh,ow} dy[n, o, oh, ow]
//
// Each of the three is a GEMM C[M x Nc] = A[M x K] @ B[K x Nc] per group, whose operands are read
// straight from the tensors (implicit GEMM: no im2col buffer is ever materialized):
//                 rows M (C's fastest dim)  cols Nc   K                 A(m, k)          B(k, n)
//   forward       N*OH*OW  (n, oh, ow)      Cog       Cg*KH*KW (c,i,j)  x gathered, pad 0  w[g*Cog+n, k]
//   data          N*H*W    (n, h, v)        Cg        Cog*KH*KW         dy gathered       w[g*Cog+co, n, i, j]
//   weight        Cg*KH*KW (c, i, j)        Cog       N*OH*OW           x gathered        dy[n', g*Cog+n, oh, ow]
// The rows are always the dimension that is contiguous in the output tensor (pixels for y and dx,
// (c, i, j) for dw), so the epilogue's stores are coalesced.
//
// Decomposition (one kernel template, implicit_gemm_kernel<T, Problem>; the Problem supplies the
// A and B gathers and the epilogue): a block of 256 threads owns a 128 x 64 tile of C for one
// group (blockIdx.z) and walks its K range in steps of 8, staging A[128 x 8] and B[8 x 64] in
// shared memory k-major (8 KiB / 12 KiB for float / double); each thread owns 8 x 4 values of C in
// registers (rows rt, rt+16, ..., so that neighbouring threads store neighbouring pixels) and does
// 32 FMAs per k from 12 shared-memory reads. A thread loads 4 A values (one row, 4 consecutive k;
// the row's coordinates are decoded once) and 2 B values, gathering with bounds checks (outside
// the image or the matrix reads 0); the next k-step's values are fetched into registers while the
// current step computes. The forward epilogue adds the bias and applies the activation.
// Weight gradient: K = N*OH*OW is long and M x Nc small, so K is split into `splits` slices
// (blockIdx.z = group * splits + slice) writing partial dw to a workspace, summed afterwards in a
// fixed order: deterministic. Bias gradient: one block per channel, a fixed-shape tree reduction.
// Indices are 64-bit throughout.
#pragma once

#include "common.cuh"
#include "conv.h"

namespace fc {

namespace conv_tile {
constexpr int BM = 128, BN = 64, BK = 8, TM = 8, TN = 4;
constexpr int RT = BM / TM;                        // 16 thread rows
constexpr int THREADS = (BM / TM) * (BN / TN);     // 256
constexpr int A_PER_THREAD = BM * BK / THREADS;    // 4
constexpr int B_PER_THREAD = BN * BK / THREADS;    // 2
constexpr int B_COL_STEP = THREADS / BK;           // 32
static_assert(A_PER_THREAD * THREADS == BM * BK && B_PER_THREAD * B_COL_STEP == BN, "tile staging");
}  // namespace conv_tile

// ---- the three problems: gathers of A and B, and the epilogue ----

template <typename T>
struct ConvForwardProblem {
  const T* x;
  const T* w;
  const T* bias;
  T* y;
  ConvShape s;
  int act;
  int64_t M, N, K, splits, k_chunk;

  struct Row {
    int64_t base, ih0, iw0;  // offset of x[n, g*Cg, 0, 0]; top-left input coordinate of the window
  };
  __device__ __forceinline__ Row row(int64_t g, int64_t m) const {
    int64_t P = s.OH * s.OW, n = m / P, pix = m % P;
    Row r;
    r.base = (n * s.C + g * (s.C / s.groups)) * s.H * s.W;
    r.ih0 = (pix / s.OW) * s.stride_h - s.pad_h;
    r.iw0 = (pix % s.OW) * s.stride_w - s.pad_w;
    return r;
  }
  __device__ __forceinline__ T a(const Row& r, int64_t k) const {
    int64_t kk = s.KH * s.KW, c = k / kk, rem = k % kk;
    int64_t ih = r.ih0 + (rem / s.KW) * s.dil_h, iw = r.iw0 + (rem % s.KW) * s.dil_w;
    if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return T(0);
    return x[r.base + (c * s.H + ih) * s.W + iw];
  }
  __device__ __forceinline__ T b(int64_t g, int64_t k, int64_t n) const { return w[(g * N + n) * K + k]; }
  __device__ __forceinline__ void store(int64_t g, int64_t, int64_t m, int64_t n, T v) const {
    int64_t P = s.OH * s.OW, o = g * N + n;
    if (bias) v += bias[o];
    y[((m / P) * s.C_out + o) * P + m % P] = activate(v, act);
  }
};

template <typename T>
struct ConvBackwardDataProblem {
  const T* dy;
  const T* w;
  T* dx;
  ConvShape s;
  int64_t M, N, K, splits, k_chunk;

  struct Row {
    int64_t base, th0, tw0;  // offset of dy[n, g*Cog, 0, 0]; h + pt, v + pl
  };
  __device__ __forceinline__ Row row(int64_t g, int64_t m) const {
    int64_t HW = s.H * s.W, n = m / HW, pix = m % HW;
    Row r;
    r.base = (n * s.C_out + g * (s.C_out / s.groups)) * s.OH * s.OW;
    r.th0 = pix / s.W + s.pad_h;
    r.tw0 = pix % s.W + s.pad_w;
    return r;
  }
  __device__ __forceinline__ T a(const Row& r, int64_t k) const {
    int64_t kk = s.KH * s.KW, co = k / kk, rem = k % kk;
    int64_t th = r.th0 - (rem / s.KW) * s.dil_h, tw = r.tw0 - (rem % s.KW) * s.dil_w;
    if (th < 0 || tw < 0 || th % s.stride_h != 0 || tw % s.stride_w != 0) return T(0);
    int64_t oh = th / s.stride_h, ow = tw / s.stride_w;
    if (oh >= s.OH || ow >= s.OW) return T(0);
    return dy[r.base + (co * s.OH + oh) * s.OW + ow];
  }
  __device__ __forceinline__ T b(int64_t g, int64_t k, int64_t n) const {
    int64_t kk = s.KH * s.KW, co = k / kk, rem = k % kk;
    return w[((g * (s.C_out / s.groups) + co) * N + n) * kk + rem];
  }
  __device__ __forceinline__ void store(int64_t g, int64_t, int64_t m, int64_t n, T v) const {
    int64_t HW = s.H * s.W;
    dx[((m / HW) * s.C + g * N + n) * HW + m % HW] = v;
  }
};

template <typename T>
struct ConvBackwardWeightProblem {
  const T* dy;
  const T* x;
  T* out;  // dw, or the workspace (splits slices of the size of dw)
  ConvShape s;
  int64_t M, N, K, splits, k_chunk;

  struct Row {
    int64_t base, ioff, joff;  // offset of x[0, g*Cg + c, 0, 0]; i*dh - pt; j*dw - pl
  };
  __device__ __forceinline__ Row row(int64_t g, int64_t m) const {
    int64_t kk = s.KH * s.KW, c = m / kk, rem = m % kk;
    Row r;
    r.base = (g * (s.C / s.groups) + c) * s.H * s.W;
    r.ioff = (rem / s.KW) * s.dil_h - s.pad_h;
    r.joff = (rem % s.KW) * s.dil_w - s.pad_w;
    return r;
  }
  __device__ __forceinline__ T a(const Row& r, int64_t k) const {
    int64_t P = s.OH * s.OW, n = k / P, pix = k % P;
    int64_t ih = (pix / s.OW) * s.stride_h + r.ioff, iw = (pix % s.OW) * s.stride_w + r.joff;
    if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) return T(0);
    return x[n * s.C * s.H * s.W + r.base + ih * s.W + iw];
  }
  __device__ __forceinline__ T b(int64_t g, int64_t k, int64_t n) const {
    int64_t P = s.OH * s.OW;
    return dy[((k / P) * s.C_out + g * N + n) * P + k % P];
  }
  __device__ __forceinline__ void store(int64_t g, int64_t split, int64_t m, int64_t n, T v) const {
    out[split * (s.C_out * M) + (g * N + n) * M + m] = v;
  }
};

// ---- the generic implicit GEMM ----

// This thread's A values (row a_m, k = k0 + a_k .. +3) and B values (k = k0 + b_k, cols b_n, b_n + 32).
template <typename T, typename Problem>
__device__ __forceinline__ void conv_fetch(const Problem& p, const typename Problem::Row& row, bool a_live,
                                           int64_t g, int64_t k0, int64_t k_end, int64_t n0, int tid,
                                           T a[conv_tile::A_PER_THREAD], T b[conv_tile::B_PER_THREAD]) {
  using namespace conv_tile;
  const int64_t a_k = k0 + (tid / BM) * A_PER_THREAD;
#pragma unroll
  for (int j = 0; j < A_PER_THREAD; ++j) a[j] = (a_live && a_k + j < k_end) ? p.a(row, a_k + j) : T(0);
  const int64_t b_k = k0 + tid % BK;
#pragma unroll
  for (int j = 0; j < B_PER_THREAD; ++j) {
    int64_t n = n0 + tid / BK + j * B_COL_STEP;
    b[j] = (b_k < k_end && n < p.N) ? p.b(g, b_k, n) : T(0);
  }
}

template <typename T, typename Problem>
__global__ void __launch_bounds__(conv_tile::THREADS) implicit_gemm_kernel(const Problem p) {
  using namespace conv_tile;
  __shared__ __align__(16) T As[BK][BM];
  __shared__ __align__(16) T Bs[BK][BN];

  const int tid = threadIdx.x;
  const int rt = tid % RT, ct = tid / RT;
  const int64_t g = blockIdx.z / p.splits, split = blockIdx.z % p.splits;
  const int64_t m0 = (int64_t)blockIdx.x * BM, n0 = (int64_t)blockIdx.y * BN;
  const int64_t k_begin = split * p.k_chunk, k_end = min64(p.K, k_begin + p.k_chunk);

  // The A row this thread loads stays the same for every k-step: decode it once (clamped, so that
  // a row past M never forms an out-of-range offset; its values are masked to 0 anyway).
  const int64_t a_m = m0 + tid % BM;
  const bool a_live = a_m < p.M;
  const typename Problem::Row row = p.row(g, a_live ? a_m : p.M - 1);

  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  T a_next[A_PER_THREAD], b_next[B_PER_THREAD];
  if (k_begin < k_end) conv_fetch<T>(p, row, a_live, g, k_begin, k_end, n0, tid, a_next, b_next);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
    for (int j = 0; j < A_PER_THREAD; ++j) As[(tid / BM) * A_PER_THREAD + j][tid % BM] = a_next[j];
#pragma unroll
    for (int j = 0; j < B_PER_THREAD; ++j) Bs[tid % BK][tid / BK + j * B_COL_STEP] = b_next[j];
    __syncthreads();
    if (k0 + BK < k_end)  // overlap the next step's gathers with this step's math
      conv_fetch<T>(p, row, a_live, g, k0 + BK, k_end, n0, tid, a_next, b_next);
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[kk][rt + i * RT];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[kk][ct * TN + j];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // before the next step overwrites the tiles
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    int64_t m = m0 + rt + i * RT;
    if (m >= p.M) break;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      int64_t n = n0 + ct * TN + j;
      if (n < p.N) p.store(g, split, m, n, acc[i][j]);
    }
  }
}

template <typename T, typename Problem>
void run_implicit_gemm(const char* name, Problem p, int64_t groups, void* stream) {
  using namespace conv_tile;
  if (p.M == 0 || p.N == 0) return;
  require(p.splits >= 1, std::string(name) + ": splits must be >= 1");
  p.k_chunk = (p.K + p.splits - 1) / p.splits;
  p.k_chunk = (p.k_chunk + BK - 1) / BK * BK;  // slices start on a k-step boundary
  require((p.N + BN - 1) / BN <= 65535, std::string(name) + ": too many output columns for the grid");
  require(groups * p.splits <= 65535, std::string(name) + ": groups * splits too large for the grid");
  dim3 grid(blocks_for(p.M, BM), blocks_for(p.N, BN), (unsigned)(groups * p.splits));
  launch(name, implicit_gemm_kernel<T, Problem>, grid, dim3(THREADS), 0, stream, p);
}

// ---- reductions ----

// out[i] = sum over s of parts[s * n + i], in the order s = 0, 1, ...
template <typename T>
__global__ void sum_slices_kernel(const T* __restrict__ parts, T* __restrict__ out, int64_t n, int64_t slices) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    T total = T(0);
    for (int64_t s = 0; s < slices; ++s) total += parts[s * n + i];
    out[i] = total;
  }
}

// One block per channel o (grid-stride over channels): the 256 threads sum strided elements of the
// (N, OH*OW) slice of channel o, then a tree reduction in shared memory.
constexpr int kBiasThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kBiasThreads)
    conv_bias_grad_kernel(const T* __restrict__ dy, T* __restrict__ db, int64_t N, int64_t C_out, int64_t P) {
  __shared__ T partial[kBiasThreads];
  for (int64_t o = blockIdx.x; o < C_out; o += gridDim.x) {
    T sum = T(0);
    for (int64_t e = threadIdx.x; e < N * P; e += kBiasThreads) sum += dy[((e / P) * C_out + o) * P + e % P];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = kBiasThreads / 2; half > 0; half /= 2) {
      if ((int)threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) db[o] = partial[0];
    __syncthreads();  // partial[0] is read before the next channel overwrites it
  }
}

// ---- launchers ----

template <typename T>
void conv2d_forward(const T* x, const T* w, const T* bias, T* y, const ConvShape& s, int act, void* stream) {
  ConvForwardProblem<T> p{x, w, bias, y, s, act, s.N * s.OH * s.OW, s.C_out / s.groups,
                          (s.C / s.groups) * s.KH * s.KW, 1, 0};
  run_implicit_gemm<T>("conv2d_forward_kernel", p, s.groups, stream);
}

template <typename T>
void conv2d_backward_data(const T* dy, const T* w, T* dx, const ConvShape& s, void* stream) {
  ConvBackwardDataProblem<T> p{dy, w, dx, s, s.N * s.H * s.W, s.C / s.groups, (s.C_out / s.groups) * s.KH * s.KW,
                               1, 0};
  run_implicit_gemm<T>("conv2d_backward_data_kernel", p, s.groups, stream);
}

template <typename T>
void conv2d_backward_weight(const T* dy, const T* x, T* dw, T* workspace, int64_t splits, const ConvShape& s,
                            void* stream) {
  require(splits == 1 || workspace != nullptr, "conv2d_backward_weight: splits > 1 needs a workspace");
  ConvBackwardWeightProblem<T> p{dy, x, splits > 1 ? workspace : dw, s, (s.C / s.groups) * s.KH * s.KW,
                                 s.C_out / s.groups, s.N * s.OH * s.OW, splits, 0};
  run_implicit_gemm<T>("conv2d_backward_weight_kernel", p, s.groups, stream);
  if (splits > 1) {
    int64_t n = s.C_out * p.M;
    launch("sum_slices_kernel", sum_slices_kernel<T>, dim3((unsigned)min64(blocks_for(n, 256), 4096)), dim3(256), 0,
           stream, (const T*)workspace, dw, n, splits);
  }
}

template <typename T>
void conv2d_backward_bias(const T* dy, T* db, const ConvShape& s, void* stream) {
  if (s.C_out == 0) return;
  launch("conv_bias_grad_kernel", conv_bias_grad_kernel<T>, dim3((unsigned)min64(s.C_out, 65535)), dim3(kBiasThreads),
         0, stream, dy, db, s.N, s.C_out, s.OH * s.OW);
}

#define FC_INSTANTIATE_CONV(T)                                                                                    \
  template void conv2d_forward<T>(const T*, const T*, const T*, T*, const ConvShape&, int, void*);               \
  template void conv2d_backward_data<T>(const T*, const T*, T*, const ConvShape&, void*);                        \
  template void conv2d_backward_weight<T>(const T*, const T*, T*, T*, int64_t, const ConvShape&, void*);         \
  template void conv2d_backward_bias<T>(const T*, T*, const ConvShape&, void*);
FC_INSTANTIATE_CONV(float)
FC_INSTANTIATE_CONV(double)
#undef FC_INSTANTIATE_CONV

}  // namespace fc
