// 2-D convolution (cross-correlation, PyTorch's conv2d) as three implicit GEMMs; the bias gradient
// rides along with the weight gradient.
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
//     bias     db[o] = sum_{n,oh,ow} dy[n, o, oh, ow]  = the weight GEMM's extra row of A that is all ones
//
// Each is a GEMM C[M x Nc] = A[M x K] @ B[K x Nc] per group, whose operands are read straight from
// the tensors (implicit GEMM: no im2col buffer is ever materialized):
//                 rows M (C's fastest dim)  cols Nc   K                 A(m, k)          B(k, n)
//   forward       N*OH*OW  (n, oh, ow)      Cog       Cg*KH*KW (c,i,j)  x gathered, pad 0  w[g*Cog+n, k]
//   data          N*H*W    (n, h, v)        Cg        Cog*KH*KW         dy gathered       w[g*Cog+co, n, i, j]
//   weight        Cg*KH*KW (+1 for db)      Cog       N*OH*OW           x gathered (1s)   dy[n', g*Cog+n, oh, ow]
// The rows are always the dimension that is contiguous in the output tensor (pixels for y and dx,
// (c, i, j) for dw), so the epilogue's stores run along memory.
//
// Decomposition: one kernel template, implicit_gemm_kernel<Tile, Problem>. The Problem supplies the
// gathers (a row of A is decoded once per kernel, a k once per k-step and thread, then an element
// is a few adds, a bounds check and a load) and the epilogue; the Tile (ConvTile) fixes the block's
// BM x BN piece of C for one group (blockIdx.z), the k-step BK, and each thread's TM x TN values of
// C in registers: rows rt*4 + 0..3 (+ BM/2 when TM = 8), columns ct*4 + 0..3 (+ BN/2 when TN = 8),
// read from shared memory as 16-byte vectors. A k-step stages A[BM x BK] and B[BK x BN] in shared
// memory k-major (one stage; the next step's gathers go to registers while this step computes).
// Loads give each thread one k of the step (decoded once) and several rows of A and columns of B;
// 8 threads take 8 consecutive k (runs along memory where k is a pixel or a kernel column), and
// the shared-memory rows are padded by 4 so that a warp's 8 k x 4 rows stores hit 32 banks.
// Epilogue: the forward adds the bias and applies the activation; the forward and data gradient
// write a thread's 4 consecutive rows (pixels) of a column as one 16-byte store when the planes
// are a multiple of 4 long.
// Tiles, a pure function of the shape (same result on every device):
//   ConvTileWide   128 x 64 x 8,  8x4 per thread, 256 threads: forward / data with Nc > 32
//   ConvTileNarrow 128 x 32 x 8,  8x4 per thread, 128 threads: forward / data with Nc <= 32
//   ConvTileWgrad   64 x 64 x 16, 8x4 per thread, 128 threads: weight gradient
//   ConvTileWgradS  32 x 32 x 16, 4x4 per thread,  64 threads: weight gradient with M (db row included), Nc <= 32
// Weight gradient: K = N*OH*OW is long and M x Nc small, so K is split into `splits` slices
// (blockIdx.z = group * splits + slice, conv2d_backward_weight_slices) writing partial dw (and db)
// to a workspace, then summed over the slices by one warp per value in a fixed order:
// deterministic, no atomics.
// Indices are 32-bit (with multiply-shift division by the shape's extents) when every tensor and
// every intermediate coordinate stays below 2^30, else 64-bit (plain division): chosen at launch.
#pragma once

#include <type_traits>

#include "common.cuh"
#include "conv.h"

namespace fc {

// ---- index arithmetic ----

// n / d for 0 <= n. The 32-bit form is a multiply-high and a shift (Granlund-Montgomery, as in
// CUTLASS's FastDivmod): exact for n < 2^31 and 1 <= d <= 2^31; the 64-bit form divides.
template <typename I>
struct Div;
template <>
struct Div<int64_t> {
  int64_t d = 1;
  Div() = default;
  explicit Div(int64_t d_) : d(d_) {}
  __device__ __forceinline__ int64_t operator()(int64_t n) const { return n / d; }
};
template <>
struct Div<int32_t> {
  uint32_t mul = 1, shift = 0;
  Div() = default;
  explicit Div(int64_t d) {
    while ((int64_t(1) << shift) < d) ++shift;
    mul = (uint32_t)(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - (uint64_t)d)) / (uint64_t)d + 1);
  }
  __device__ __forceinline__ int32_t operator()(int32_t n) const {
    return (int32_t)((__umulhi((uint32_t)n, mul) + (uint32_t)n) >> shift);
  }
};

// 0 <= v < n, one unsigned compare.
template <typename I>
__device__ __forceinline__ bool inside(I v, I n) {
  using U = typename std::make_unsigned<I>::type;
  return (U)v < (U)n;
}

// ConvShape in the kernel's index type, with the divisors the gathers use.
template <typename I>
struct ConvGeom {
  I C, H, W, HW, C_out, KH, KW, KK, OH, OW, P, sh, sw, ph, pw, dh, dw, Cg, Cog;
  Div<I> by_KK, by_KW, by_HW, by_W, by_P, by_OW, by_sh, by_sw;
  ConvGeom() = default;
  explicit ConvGeom(const ConvShape& s)
      : C(s.C), H(s.H), W(s.W), HW(s.H * s.W), C_out(s.C_out), KH(s.KH), KW(s.KW), KK(s.KH * s.KW), OH(s.OH),
        OW(s.OW), P(s.OH * s.OW), sh(s.stride_h), sw(s.stride_w), ph(s.pad_h), pw(s.pad_w), dh(s.dil_h),
        dw(s.dil_w), Cg(s.C / s.groups), Cog(s.C_out / s.groups), by_KK(max64(KK, 1)), by_KW(max64(KW, 1)),
        by_HW(max64(HW, 1)), by_W(max64(W, 1)), by_P(max64(P, 1)), by_OW(max64(OW, 1)), by_sh(s.stride_h),
        by_sw(s.stride_w) {}
};

// Whether 32-bit indices are exact for this convolution: every tensor (workspace included), every
// coordinate and offset a gather forms (x offsets of window corners and rows of the padded and
// dilated image: within x with its spans of padding and strided windows added on each side; the w
// offsets that a masked k-step past K decodes) below `conv_index32_limit` (2^30: headroom for sums
// of two in-range terms). Tests lower the limit to run the 64-bit kernels on small shapes.
inline int64_t& conv_index32_limit() {
  static int64_t limit = int64_t(1) << 30;
  return limit;
}
inline bool conv_fits_int32(const ConvShape& s, int64_t workspace) {
  const int64_t span_h = s.H + s.pad_h + s.dil_h * s.KH + s.stride_h * s.OH + s.KH,
                span_w = s.W + s.pad_w + s.dil_w * s.KW + s.stride_w * s.OW + s.KW;
  const int64_t extents[] = {s.N * s.C * s.H * s.W, s.N * s.C * (s.H + span_h) * (s.W + span_w), span_h, span_w,
                             s.N * s.C_out * s.OH * s.OW, (s.C_out + 32) * (s.C / s.groups) * s.KH * s.KW + s.C_out,
                             workspace, s.N * s.OH * s.OW + 64};
  for (int64_t e : extents)
    if (e >= conv_index32_limit()) return false;
  return true;
}

// ---- tiles ----

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct ConvTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int RT = BM / TM, CT = BN / TN;  // thread rows / columns of C
  static constexpr int THREADS = RT * CT;
  static constexpr int TPK = THREADS / BK;          // loader threads per k
  static constexpr int A_PER = BM / TPK, B_PER = BN / TPK;  // A rows / B columns a thread loads
  static_assert(TM % 4 == 0 && TN % 4 == 0 && TM <= 8 && TN <= 8, "fragments of 4, 16-byte shared loads");
  static_assert(BK % 8 == 0 && THREADS % BK == 0 && BN % TPK == 0 && BM % TPK == 0, "loader layout");
};
using ConvTileWide = ConvTile<128, 64, 8, 8, 4>;
using ConvTileNarrow = ConvTile<128, 32, 8, 8, 4>;
using ConvTileWgrad = ConvTile<64, 64, 16, 8, 4>;
using ConvTileWgradS = ConvTile<32, 32, 16, 4, 4>;

// ---- the three problems: gathers of A and B, and the epilogue ----
// row(g, m): what A's row m needs for every k; ka(k): what A's column k needs for every row; a():
// the element. kb(g, k) and b(): the same for B by column. out(g, split, m) and store(): C's row m.

template <typename T, typename I>
struct ConvForwardProblem {
  using value_type = T;
  using index_type = I;
  const T* x;
  const T* w;
  const T* bias;
  T* y;
  int act;
  ConvGeom<I> s;
  I M, N, K, splits, k_chunk;

  struct Row {
    I off, ih0, iw0;  // offset of x[n, g*Cg, ih0, iw0]; the window's top-left input coordinate
  };
  __device__ __forceinline__ Row row(I g, I m) const {
    I n = s.by_P(m), pix = m - n * s.P, oh = s.by_OW(pix), ow = pix - oh * s.OW;
    Row r;
    r.ih0 = oh * s.sh - s.ph;
    r.iw0 = ow * s.sw - s.pw;
    r.off = (n * s.C + g * s.Cg) * s.HW + r.ih0 * s.W + r.iw0;
    return r;
  }
  struct KA {
    I off, di, dj;  // c*H*W + i*dh*W + j*dw; i*dh; j*dw
  };
  __device__ __forceinline__ KA ka(I k) const {
    I c = s.by_KK(k), rem = k - c * s.KK, i = s.by_KW(rem), j = rem - i * s.KW;
    KA q;
    q.di = i * s.dh;
    q.dj = j * s.dw;
    q.off = c * s.HW + q.di * s.W + q.dj;
    return q;
  }
  __device__ __forceinline__ T a(const Row& r, const KA& q) const {
    if (!inside(r.ih0 + q.di, s.H) || !inside(r.iw0 + q.dj, s.W)) return T(0);
    return x[r.off + q.off];
  }
  struct KB {
    I off;
  };
  __device__ __forceinline__ KB kb(I g, I k) const { return KB{g * N * K + k}; }
  __device__ __forceinline__ T b(const KB& q, I n) const { return w[q.off + n * K]; }
  struct Out {
    I off, o0;  // offset of y[n, g*Cog, oh, ow]; g*Cog
  };
  __device__ __forceinline__ Out out(I g, I, I m) const {
    I n = s.by_P(m);
    return Out{(n * s.C_out + g * N) * s.P + (m - n * s.P), g * N};
  }
  __device__ __forceinline__ void store(const Out& o, I n, T v) const {
    if (bias) v += bias[o.o0 + n];
    y[o.off + n * s.P] = activate(v, act);
  }
  // Rows m .. m+3 (m % 4 == 0) at once: 4 consecutive pixels of one plane when OH*OW % 4 == 0.
  static constexpr bool kVec4 = true;
  bool vec4;  // OH*OW % 4 == 0 and y 16-byte aligned
  __device__ __forceinline__ void store4(const Out& o, I n, T v[4]) const {
    if (bias) {
      const T b = bias[o.o0 + n];
#pragma unroll
      for (int q = 0; q < 4; ++q) v[q] += b;
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) v[q] = activate(v[q], act);
    vec_store4(&y[o.off + n * s.P], v);
  }
};

// Strided: a stride other than 1 x 1 (the gather then tests that the stride divides the offset;
// with unit stride that is one bounds check per coordinate).
template <typename T, typename I, bool Strided>
struct ConvBackwardDataProblem {
  using value_type = T;
  using index_type = I;
  const T* dy;
  const T* w;
  T* dx;
  ConvGeom<I> s;
  I M, N, K, splits, k_chunk;

  struct Row {
    I off, th0, tw0;  // offset of dy[n, g*Cog, 0, 0]; h + pt, v + pl
  };
  __device__ __forceinline__ Row row(I g, I m) const {
    I n = s.by_HW(m), pix = m - n * s.HW, h = s.by_W(pix);
    Row r;
    r.off = (n * s.C_out + g * s.Cog) * s.P;
    r.th0 = h + s.ph;
    r.tw0 = pix - h * s.W + s.pw;
    return r;
  }
  struct KA {
    I off, di, dj;  // co*OH*OW; i*dh; j*dw
  };
  __device__ __forceinline__ KA ka(I k) const {
    I co = s.by_KK(k), rem = k - co * s.KK, i = s.by_KW(rem);
    return KA{co * s.P, i * s.dh, (rem - i * s.KW) * s.dw};
  }
  __device__ __forceinline__ T a(const Row& r, const KA& q) const {
    I oh = r.th0 - q.di, ow = r.tw0 - q.dj;
    if constexpr (Strided) {
      if (oh < 0 || ow < 0) return T(0);
      I th = oh, tw = ow;
      oh = s.by_sh(th);
      ow = s.by_sw(tw);
      if (oh * s.sh != th || ow * s.sw != tw) return T(0);
    }
    if (!inside(oh, s.OH) || !inside(ow, s.OW)) return T(0);
    return dy[r.off + q.off + oh * s.OW + ow];
  }
  struct KB {
    I off;  // offset of w[g*Cog + co, 0, i, j]
  };
  __device__ __forceinline__ KB kb(I g, I k) const {
    I co = s.by_KK(k);
    return KB{(g * s.Cog + co) * N * s.KK + (k - co * s.KK)};
  }
  __device__ __forceinline__ T b(const KB& q, I n) const { return w[q.off + n * s.KK]; }
  struct Out {
    I off;  // offset of dx[n, g*Cg, h, v]
  };
  __device__ __forceinline__ Out out(I g, I, I m) const {
    I n = s.by_HW(m);
    return Out{(n * s.C + g * N) * s.HW + (m - n * s.HW)};
  }
  __device__ __forceinline__ void store(const Out& o, I n, T v) const { dx[o.off + n * s.HW] = v; }
  static constexpr bool kVec4 = true;
  bool vec4;  // H*W % 4 == 0 and dx 16-byte aligned
  __device__ __forceinline__ void store4(const Out& o, I n, T v[4]) const { vec_store4(&dx[o.off + n * s.HW], v); }
};

template <typename T, typename I>
struct ConvBackwardWeightProblem {
  using value_type = T;
  using index_type = I;
  const T* dy;
  const T* x;
  T* dw;
  T* db;         // null: no bias gradient (then M == Mw)
  T* workspace;  // splits > 1: slice s's values at s * C_out * M, laid out as (C_out, M)
  ConvGeom<I> s;
  I Mw;  // rows of dw (Cg*KH*KW); row Mw, when M = Mw + 1, is db
  I M, N, K, splits, k_chunk;

  struct Row {
    I off, ioff, joff;  // offset of x[0, g*Cg + c, i*dh - pt, j*dw - pl]; i*dh - pt; j*dw - pl
    T fill;             // the value outside the image: 0, or 1 for the bias row (whose ioff is out of range)
  };
  __device__ __forceinline__ Row row(I g, I m) const {
    I c = s.by_KK(m), rem = m - c * s.KK, i = s.by_KW(rem);
    Row r;
    r.fill = m < Mw ? T(0) : T(1);
    r.ioff = m < Mw ? i * s.dh - s.ph : -s.H - s.sh * s.OH;  // the bias row: never inside
    r.joff = (rem - i * s.KW) * s.dw - s.pw;
    r.off = m < Mw ? (g * s.Cg + c) * s.HW + r.ioff * s.W + r.joff : 0;
    return r;
  }
  struct KA {
    I off, ih, iw;  // offset of x[n', 0, oh*sh, ow*sw]; oh*sh; ow*sw
  };
  __device__ __forceinline__ KA ka(I k) const {
    I n = s.by_P(k), pix = k - n * s.P, oh = s.by_OW(pix);
    KA q;
    q.ih = oh * s.sh;
    q.iw = (pix - oh * s.OW) * s.sw;
    q.off = n * s.C * s.HW + q.ih * s.W + q.iw;
    return q;
  }
  __device__ __forceinline__ T a(const Row& r, const KA& q) const {
    return inside(q.ih + r.ioff, s.H) && inside(q.iw + r.joff, s.W) ? x[q.off + r.off] : r.fill;
  }
  struct KB {
    I off;  // offset of dy[n', g*Cog, oh, ow]
  };
  __device__ __forceinline__ KB kb(I g, I k) const {
    I n = s.by_P(k);
    return KB{(n * s.C_out + g * N) * s.P + (k - n * s.P)};
  }
  __device__ __forceinline__ T b(const KB& q, I n) const { return dy[q.off + n * s.P]; }
  struct Out {
    T* p;
    I off, stride;
  };
  __device__ __forceinline__ Out out(I g, I split, I m) const {
    if (splits > 1) return Out{workspace, split * s.C_out * M + g * N * M + m, M};
    if (m < Mw) return Out{dw, g * N * Mw + m, Mw};
    return Out{db, g * N, 1};
  }
  __device__ __forceinline__ void store(const Out& o, I n, T v) const { o.p[o.off + n * o.stride] = v; }
  static constexpr bool kVec4 = false;  // (a small output: scalar stores)
};

// ---- the generic implicit GEMM ----

template <typename Tile, typename Problem>
__global__ void __launch_bounds__(Tile::THREADS) implicit_gemm_kernel(const Problem p) {
  using T = typename Problem::value_type;
  using I = typename Problem::index_type;
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, TM = Tile::TM, TN = Tile::TN, RT = Tile::RT,
                CT = Tile::CT, TPK = Tile::TPK, A_PER = Tile::A_PER, B_PER = Tile::B_PER;
  // +4: rows stay 16-byte aligned, and the k-fixed stores (8 k x 4 rows per warp) hit 32 banks
  __shared__ __align__(16) T As[BK][BM + 4];
  __shared__ __align__(16) T Bs[BK][BN + 4];

  const int tid = threadIdx.x;
  const int rt = tid % RT, ct = tid / RT;
  const I g = (I)blockIdx.z / p.splits, split = (I)blockIdx.z % p.splits;
  const I m0 = (I)blockIdx.x * BM, n0 = (I)blockIdx.y * BN;
  const I k_begin = split * p.k_chunk, k_end = p.K - k_begin < p.k_chunk ? p.K : k_begin + p.k_chunk;

  // Loader coordinates: k = k0 + k_lo, A rows and B columns j_lo + r*TPK.
  const int k_lo = tid % 8 + 8 * (tid / 8 / TPK), j_lo = tid / 8 % TPK;

  // The A rows this thread loads, decoded once (a row past M is masked; it decodes row M - 1).
  typename Problem::Row rows[A_PER];
  bool live[A_PER];
#pragma unroll
  for (int r = 0; r < A_PER; ++r) {
    const I m = m0 + j_lo + r * TPK;
    live[r] = m < p.M;
    rows[r] = p.row(g, live[r] ? m : p.M - 1);
  }

  // This thread's A and B values of the k-step at k0 (0 past k_end, past M, past N).
  auto fetch = [&](I k0, T (&a)[A_PER], T (&b)[B_PER]) {
    const I k = k0 + k_lo;
    const typename Problem::KA qa = p.ka(k);
#pragma unroll
    for (int r = 0; r < A_PER; ++r) a[r] = (k < k_end && live[r]) ? p.a(rows[r], qa) : T(0);
    const typename Problem::KB qb = p.kb(g, k);
#pragma unroll
    for (int r = 0; r < B_PER; ++r) {
      const I n = n0 + j_lo + r * TPK;
      b[r] = (k < k_end && n < p.N) ? p.b(qb, n) : T(0);
    }
  };

  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

  T a_next[A_PER], b_next[B_PER];
  if (k_begin < k_end) fetch(k_begin, a_next, b_next);
  for (I k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
    for (int r = 0; r < A_PER; ++r) As[k_lo][j_lo + r * TPK] = a_next[r];
#pragma unroll
    for (int r = 0; r < B_PER; ++r) Bs[k_lo][j_lo + r * TPK] = b_next[r];
    __syncthreads();
    if (k0 + BK < k_end) fetch(k0 + BK, a_next, b_next);  // the next step's gathers overlap this step's math
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T a[TM], b[TN];
#pragma unroll
      for (int f = 0; f < TM / 4; ++f) vec_load4(&As[kk][f * RT * 4 + rt * 4], &a[f * 4]);
#pragma unroll
      for (int f = 0; f < TN / 4; ++f) vec_load4(&Bs[kk][f * CT * 4 + ct * 4], &b[f * 4]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // before the next step overwrites the tiles
  }

#pragma unroll
  for (int f = 0; f < TM / 4; ++f) {
    const I mb = m0 + f * RT * 4 + rt * 4;  // this fragment's rows mb .. mb + 3
    if constexpr (Problem::kVec4) {
      if (p.vec4 && mb + 3 < p.M) {  // one 16-byte store per column
        const typename Problem::Out o = p.out(g, split, mb);
#pragma unroll
        for (int j = 0; j < TN; ++j) {
          const I n = n0 + (j / 4) * CT * 4 + ct * 4 + j % 4;
          T v[4] = {acc[f * 4][j], acc[f * 4 + 1][j], acc[f * 4 + 2][j], acc[f * 4 + 3][j]};
          if (n < p.N) p.store4(o, n, v);
        }
        continue;
      }
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const I m = mb + q;
      if (m >= p.M) continue;
      const typename Problem::Out o = p.out(g, split, m);
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const I n = n0 + (j / 4) * CT * 4 + ct * 4 + j % 4;
        if (n < p.N) p.store(o, n, acc[f * 4 + q][j]);
      }
    }
  }
}

template <typename Tile, typename Problem>
void run_implicit_gemm(const char* name, Problem p, int64_t groups, void* stream) {
  if (p.M == 0 || p.N == 0) return;
  require(p.splits >= 1, std::string(name) + ": splits must be >= 1");
  const int64_t chunk = ((int64_t)p.K + p.splits - 1) / p.splits;
  // slices start on a k-step boundary
  p.k_chunk = (typename Problem::index_type)((chunk + Tile::BK - 1) / Tile::BK * Tile::BK);
  require(((int64_t)p.N + Tile::BN - 1) / Tile::BN <= 65535,
          std::string(name) + ": too many output columns for the grid");
  require(groups * p.splits <= 65535, std::string(name) + ": groups * splits too large for the grid");
  dim3 grid(blocks_for(p.M, Tile::BM), blocks_for(p.N, Tile::BN), (unsigned)(groups * p.splits));
  launch(name, implicit_gemm_kernel<Tile, Problem>, grid, dim3(Tile::THREADS), 0, stream, p);
}

// ---- the slices' reduction ----

// dw / db value i (of C_out * M, laid out (C_out, M), row Mw of each channel being db) = the sum
// over the slices of workspace[s * C_out * M + i]. One warp per value: lane l adds slices l, l+32, ...
// in order, then a fixed butterfly: the same bits on every run.
constexpr int kSumThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kSumThreads)
    sum_slices_kernel(const T* __restrict__ parts, T* __restrict__ dw, T* __restrict__ db, int64_t values,
                      int64_t M, int64_t Mw, int64_t slices) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = (int64_t)gridDim.x * (kSumThreads / 32);
  for (int64_t i = (int64_t)blockIdx.x * (kSumThreads / 32) + threadIdx.x / 32; i < values; i += warps) {
    T total = T(0);
    // unrolled: 4 loads in flight; the adds stay in slice order
#pragma unroll 4
    for (int64_t s = lane; s < slices; s += 32) total += parts[s * values + i];
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
    if (lane == 0) {
      int64_t o = i / M, m = i % M;
      if (m < Mw) dw[o * Mw + m] = total;
      else db[o] = total;
    }
  }
}

// ---- launchers ----

template <typename T, typename I>
void conv2d_forward_as(const T* x, const T* w, const T* bias, T* y, const ConvShape& s, int act, void* stream) {
  ConvForwardProblem<T, I> p;
  p.x = x; p.w = w; p.bias = bias; p.y = y; p.act = act; p.s = ConvGeom<I>(s);
  p.vec4 = (s.OH * s.OW) % 4 == 0 && aligned16(y);
  p.M = (I)(s.N * s.OH * s.OW); p.N = (I)(s.C_out / s.groups); p.K = (I)((s.C / s.groups) * s.KH * s.KW);
  p.splits = 1; p.k_chunk = 0;
  if (p.N <= ConvTileNarrow::BN) run_implicit_gemm<ConvTileNarrow>("conv2d_forward_kernel", p, s.groups, stream);
  else run_implicit_gemm<ConvTileWide>("conv2d_forward_kernel", p, s.groups, stream);
}

template <typename T>
void conv2d_forward(const T* x, const T* w, const T* bias, T* y, const ConvShape& s, int act, void* stream) {
  if (conv_fits_int32(s, 0)) conv2d_forward_as<T, int32_t>(x, w, bias, y, s, act, stream);
  else conv2d_forward_as<T, int64_t>(x, w, bias, y, s, act, stream);
}

template <typename T, typename I, bool Strided>
void conv2d_backward_data_as(const T* dy, const T* w, T* dx, const ConvShape& s, void* stream) {
  ConvBackwardDataProblem<T, I, Strided> p;
  p.dy = dy; p.w = w; p.dx = dx; p.s = ConvGeom<I>(s);
  p.vec4 = (s.H * s.W) % 4 == 0 && aligned16(dx);
  p.M = (I)(s.N * s.H * s.W); p.N = (I)(s.C / s.groups); p.K = (I)((s.C_out / s.groups) * s.KH * s.KW);
  p.splits = 1; p.k_chunk = 0;
  if (p.N <= ConvTileNarrow::BN) run_implicit_gemm<ConvTileNarrow>("conv2d_backward_data_kernel", p, s.groups, stream);
  else run_implicit_gemm<ConvTileWide>("conv2d_backward_data_kernel", p, s.groups, stream);
}

template <typename T>
void conv2d_backward_data(const T* dy, const T* w, T* dx, const ConvShape& s, void* stream) {
  const bool wide = !conv_fits_int32(s, 0), strided = s.stride_h != 1 || s.stride_w != 1;
  if (!wide && !strided) conv2d_backward_data_as<T, int32_t, false>(dy, w, dx, s, stream);
  else if (!wide) conv2d_backward_data_as<T, int32_t, true>(dy, w, dx, s, stream);
  else if (!strided) conv2d_backward_data_as<T, int64_t, false>(dy, w, dx, s, stream);
  else conv2d_backward_data_as<T, int64_t, true>(dy, w, dx, s, stream);
}

// The weight gradient's tile and slice count: a pure function of the shape. Slices are added until
// the grid holds about kWgradTargetThreads threads (about 4 waves of resident blocks on an H100,
// so that the last wave's idle SMs cost little; the workspace they add is small beside the GEMM's
// reads), keeping at least kWgradMinK values of K per slice.
constexpr int64_t kWgradTargetThreads = 262144, kWgradMinK = 256, kWgradMaxSlices = 1024;

inline bool wgrad_small_tile(int64_t M, int64_t N) { return M <= ConvTileWgradS::BM && N <= ConvTileWgradS::BN; }

int64_t conv2d_backward_weight_slices(const ConvShape& s, bool bias) {
  const int64_t M = (s.C / s.groups) * s.KH * s.KW + (bias ? 1 : 0), N = s.C_out / s.groups, K = s.N * s.OH * s.OW;
  const bool small = wgrad_small_tile(M, N);
  const int64_t bm = small ? ConvTileWgradS::BM : ConvTileWgrad::BM;
  const int64_t bn = small ? ConvTileWgradS::BN : ConvTileWgrad::BN;
  const int64_t threads = small ? ConvTileWgradS::THREADS : ConvTileWgrad::THREADS;
  const int64_t tiles = s.groups * ((M + bm - 1) / bm) * ((N + bn - 1) / bn);
  const int64_t want = (kWgradTargetThreads / threads + tiles - 1) / tiles;
  return max64(1, min64(min64(want, kWgradMaxSlices), min64(K / kWgradMinK, 65535 / max64(s.groups, 1))));
}

template <typename T, typename I>
void conv2d_backward_weight_as(const T* dy, const T* x, T* dw, T* db, T* workspace, int64_t splits,
                               const ConvShape& s, void* stream) {
  ConvBackwardWeightProblem<T, I> p;
  p.dy = dy; p.x = x; p.dw = dw; p.db = db; p.workspace = workspace; p.s = ConvGeom<I>(s);
  p.Mw = (I)((s.C / s.groups) * s.KH * s.KW); p.M = p.Mw + (db ? 1 : 0);
  p.N = (I)(s.C_out / s.groups); p.K = (I)(s.N * s.OH * s.OW);
  p.splits = (I)splits; p.k_chunk = 0;
  if (wgrad_small_tile(p.M, p.N))
    run_implicit_gemm<ConvTileWgradS>("conv2d_backward_weight_kernel", p, s.groups, stream);
  else
    run_implicit_gemm<ConvTileWgrad>("conv2d_backward_weight_kernel", p, s.groups, stream);
  if (splits > 1) {
    int64_t values = s.C_out * (int64_t)p.M;
    launch("sum_slices_kernel", sum_slices_kernel<T>, dim3(blocks_for(values, kSumThreads / 32)), dim3(kSumThreads),
           0, stream, (const T*)workspace, dw, db, values, (int64_t)p.M, (int64_t)p.Mw, splits);
  }
}

template <typename T>
void conv2d_backward_weight(const T* dy, const T* x, T* dw, T* db, T* workspace, int64_t splits, const ConvShape& s,
                            void* stream) {
  require(splits == 1 || workspace != nullptr, "conv2d_backward_weight: splits > 1 needs a workspace");
  const int64_t rows = (s.C / s.groups) * s.KH * s.KW + (db ? 1 : 0);
  if (conv_fits_int32(s, splits > 1 ? splits * s.C_out * rows : 0))
    conv2d_backward_weight_as<T, int32_t>(dy, x, dw, db, workspace, splits, s, stream);
  else
    conv2d_backward_weight_as<T, int64_t>(dy, x, dw, db, workspace, splits, s, stream);
}

#define FC_INSTANTIATE_CONV(T)                                                                                    \
  template void conv2d_forward<T>(const T*, const T*, const T*, T*, const ConvShape&, int, void*);               \
  template void conv2d_backward_data<T>(const T*, const T*, T*, const ConvShape&, void*);                        \
  template void conv2d_backward_weight<T>(const T*, const T*, T*, T*, T*, int64_t, const ConvShape&, void*);
FC_INSTANTIATE_CONV(float)
FC_INSTANTIATE_CONV(double)
#undef FC_INSTANTIATE_CONV

void conv_set_index32_limit(int64_t limit) { conv_index32_limit() = limit; }

}  // namespace fc
