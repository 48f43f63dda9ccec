// Dense path: GEMM with a fused epilogue, the bias-gradient column sum, ReLU and sigmoid.
//
// Math
//   linear forward   y  = act(x @ W^T + b)          x (N, in), W (out, in), b (out)
//   linear backward  dx = dz @ W,  dW = dz^T @ x,  db = sum_rows dz      (dz = dy * act'(z))
//   relu             y = max(x, 0);       dx = dy * [x > 0]  (NaN x: dx = dy, as torch)
//   sigmoid          y = 1 / (1 + e^-x);  dx = dy * y * (1 - y)
// so the GEMM is C = act(op(A) @ op(B) + bias), op = identity or transpose, and the backward
// uses the transposed variants: dx = gemm(dz, W), dW = gemm(dz, x, trans_a).
//
// GEMM decomposition (the register-blocked, warp-tiled FFMA SGEMM of CUTLASS's SIMT kernels and
// siboehm's kernels 9-10): one kernel, templated on a tile config (GemmTile), three configs; the
// plan (gemm_tile, then gemm_splits) is picked from the shape alone, so the result is the same on
// every device:
//   large  a block of 256 threads (8 warps) owns a 128 x 128 tile of C; a warp owns 64 x 32;
//   wide   a block of 256 threads owns a 128 x 256 tile; a warp owns 64 x 64 (one block per SM);
//   small  a block of 128 threads (4 warps) owns a  64 x  64 tile of C; a warp owns 32 x 32;
//   large from 96 of its tiles up; below, wide when K is long enough to split into slices that
//   fill a 132-SM GPU's waves, else small (measurements beside gemm_tile).
//   A thread owns FM x FN fragments of 4 x 4 values of C (2 x 2 in large, 2 x 4 in wide, 1 x 2 in
//   small): the warp's lanes form an 8 x 4 grid (lane / 4, lane % 4) and fragment (i, j) of lane
//   (lm, ln) is rows 32 i + 4 lm .. + 3, columns 16 j + 4 ln .. + 3 of the warp's tile, so one
//   16-byte shared load gives a thread 4 values and a warp's loads touch 128 (A) and 64 (B)
//   contiguous bytes.
//   The block walks K in steps of BK: 8 in large (BK = 16 spills there at the 128 registers that
//   let 2 blocks share an SM) and wide (16 measured 10% slower), 16 in small, 8 for double (its
//   two stages stay at 32 KB):
//   op(A)[BM x BK] and op(B)[BK x BN] are staged in shared memory k-major (A is transposed on the
//   way in), in two stages: while the block computes on one stage, each thread's global loads
//   of the next step are in flight into registers (one group of 4 values of A and of B at a time,
//   KK_A and KK_B k of math each) and are stored into the other stage, so one __syncthreads per
//   k-step suffices (a stage is rewritten only after every thread has passed the barrier that
//   ended its last use). Per k a thread does 4 FM FN FMAs
//   from FM + FN 16-byte shared loads (64 from 4 in large, 128 from 6 in wide).
//   Global loads are 16-byte vectors along the contiguous dimension when the leading dimension
//   and base pointer allow it (else scalar with bounds checks); stores of C likewise.
//   Bias and activation are applied in the epilogue, before the single store of C.
//   Split-K: when the tile grid alone would leave most of the GPU idle (few tiles, long K, e.g.
//   a 128 x 3136 -> 128 linear layer is four 64 x 64 tiles), K is cut into `splits` slices of
//   whole k-steps (blockIdx.z = slice); each slice stores its raw partial tile in a workspace
//   (splits x M x N) and gemm_reduce_kernel sums the slices in order s = 0, 1, ... and applies
//   bias and activation: no atomics, so the result is the same on every run. gemm_splits picks
//   the count from the shape alone (the fill of a 132-SM GPU's waves), the same on every device.
//   Edges: out-of-range loads read 0 and out-of-range outputs are not stored, so any M, N, K
//   (including 1, primes and K = 0) is exact. Indices are 64-bit.
#pragma once

#include <type_traits>

#include "common.cuh"
#include "dense.h"

namespace fc {

// A GEMM tile config: the block's BM x BN tile of C, its k-step BK, the warp's WM x WN tile, a
// thread's FM x FN fragments of 4 x 4, and how many blocks per SM the registers must allow.
template <int BM_, int BN_, int BK_, int WM_, int WN_, int FM_, int FN_, int MIN_BLOCKS_>
struct GemmTile {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_, FM = FM_, FN = FN_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int LM = WM / (4 * FM), LN = WN / (4 * FN);  // the warp's lane grid
  static constexpr int WARPS_N = BN / WN, THREADS = 32 * (BM / WM) * WARPS_N;
  // Global -> shared staging: each thread moves LOADS_A groups of 4 values of A and LOADS_B of B
  // per k-step, one group of each in flight at a time, during KK_A (KK_B) k of math.
  static constexpr int LOADS_A = BM * BK / (4 * THREADS), LOADS_B = BN * BK / (4 * THREADS);
  static constexpr int KK_A = BK / LOADS_A, KK_B = BK / LOADS_B;
  static_assert(LM * LN == 32, "a warp's lanes tile its warp tile");
  static_assert(BM % WM == 0 && BN % WN == 0 && BK % 4 == 0, "warps tile the block tile");
  static_assert(LOADS_A * 4 * THREADS == BM * BK && BK % LOADS_A == 0, "loads cover A's tile");
  static_assert(LOADS_B * 4 * THREADS == BN * BK && BK % LOADS_B == 0, "loads cover B's tile");
};

// The configs per type, indexed by GemmTileId (double only needs to be correct: BK = 8 keeps its
// two stages at 32 KB, its registers are not capped, and it has no wide config).
enum GemmTileId : int { kGemmSmall = 0, kGemmLarge = 1, kGemmWide = 2, kGemmTiles = 3 };
template <typename T, int ID>
struct GemmConfigOf;
template <typename T>
struct GemmConfigOf<T, kGemmSmall> {
  using type = GemmTile<64, 64, sizeof(T) == 4 ? 16 : 8, 32, 32, 1, 2, sizeof(T) == 4 ? 4 : 1>;
};
template <typename T>
struct GemmConfigOf<T, kGemmLarge> {
  using type = GemmTile<128, 128, 8, 64, 32, 2, 2, sizeof(T) == 4 ? 2 : 1>;
};
template <typename T>
struct GemmConfigOf<T, kGemmWide> {
  using type = typename std::conditional<sizeof(T) == 4, GemmTile<128, 256, 8, 64, 64, 2, 4, 1>,
                                         typename GemmConfigOf<T, kGemmLarge>::type>::type;
};
template <typename T, int ID>
using GemmConfig = typename GemmConfigOf<T, ID>::type;

// One operand's global -> register loads for one thread: the thread moves LOADS groups of 4
// values per k-step, each group along the operand's contiguous dimension (consecutive threads
// take consecutive groups, so a warp's loads are coalesced). Set up once per block: where each
// group starts and how many of its 4 values along m or n exist (4 inside C, fewer or none past
// its edge); each step then only adds a constant to the pointers and checks k against k_end.
// K_CONTIGUOUS: the operand is stored (M or N) x K, so a group is 4 consecutive k of one row;
// else it is stored K x (M or N), so a group is 4 consecutive m (n) of one k.
template <typename T, int LOADS, int THREADS, int BMN, int BK, bool K_CONTIGUOUS>
struct GemmLoader {
  const T* p[LOADS];
  int kq[LOADS];    // the group's first k, relative to the step's k0
  int valid[LOADS];  // values of the group inside the tile's m (n) range
  int64_t step;      // elements from one k-step to the next

  // X is the operand, MN its M or N, ld its leading dimension (K or MN).
  __device__ __forceinline__ GemmLoader(const T* X, int64_t MN, int64_t K, int64_t mn0, int64_t k_begin, int tid) {
    step = K_CONTIGUOUS ? BK : (int64_t)BK * MN;
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
      const int g = tid + l * THREADS;
      int64_t mn;
      if (K_CONTIGUOUS) {
        mn = mn0 + g / (BK / 4), kq[l] = (g % (BK / 4)) * 4;
        valid[l] = mn < MN ? 4 : 0;
      } else {
        kq[l] = g / (BMN / 4), mn = mn0 + (g % (BMN / 4)) * 4;
        valid[l] = (int)max64(0, min64(4, MN - mn));
      }
      // (a group wholly outside the operand keeps a pointer to its start: it is never read)
      p[l] = valid[l] ? X + (K_CONTIGUOUS ? mn * K + k_begin + kq[l] : (k_begin + kq[l]) * MN + mn) : X;
    }
  }

  // Loads group l of the step at k0, of which k_left (clamped to BK) k values remain before k_end
  // (the rest read as 0), and moves the group on to the next step. FULL: the caller knows the
  // group is whole and 16-byte aligned (an interior block, see gemm_kernel): one vector load.
  template <bool FULL>
  __device__ __forceinline__ void fetch(int l, int k_left, bool vec, T out[4]) {
    if (FULL) {
      vec_load4(p[l], out);
    } else {
      const int n = K_CONTIGUOUS ? min(valid[l], max(0, k_left - kq[l])) : (kq[l] < k_left ? valid[l] : 0);
      load4(p[l], vec, n, out);
    }
    p[l] += step;  // (a pointer of an empty group is never read)
  }
};

// Stores group l of one operand into one stage, k-major (Xs is BK x BMN): a group along m or n is
// one 16-byte store, a group along k (K_CONTIGUOUS) is 4 scalar stores down a column.
template <typename T, int THREADS, int BMN, int BK, bool K_CONTIGUOUS>
__device__ __forceinline__ void gemm_stage(T (*Xs)[BMN], int tid, int l, const T x[4]) {
  const int g = tid + l * THREADS;
  if (K_CONTIGUOUS) {
#pragma unroll
    for (int j = 0; j < 4; ++j) Xs[(g % (BK / 4)) * 4 + j][g / (BK / 4)] = x[j];
  } else {
    vec_store4(&Xs[g / (BMN / 4)][(g % (BMN / 4)) * 4], x);
  }
}

template <typename T, class Cfg, bool TRANS_A, bool TRANS_B>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    gemm_kernel(const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ bias, T* __restrict__ C,
                T* __restrict__ partials, int64_t M, int64_t N, int64_t K, int64_t k_chunk, int act, bool vec_a,
                bool vec_b, bool vec_c) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, FM = Cfg::FM, FN = Cfg::FN;
  __shared__ __align__(16) T As[2][BK][BM];
  __shared__ __align__(16) T Bs[2][BK][BN];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // This thread's fragments start at rows wm + 4 * Cfg::LM * i and columns wn + 4 * Cfg::LN * j
  // of the block's tile.
  const int wm = (warp / Cfg::WARPS_N) * Cfg::WM + (lane / Cfg::LN) * 4;
  const int wn = (warp % Cfg::WARPS_N) * Cfg::WN + (lane % Cfg::LN) * 4;
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;

  T acc[FM * 4][FN * 4];
#pragma unroll
  for (int i = 0; i < FM * 4; ++i)
#pragma unroll
    for (int j = 0; j < FN * 4; ++j) acc[i][j] = T(0);

  // This block's slice of K (all of it without split-K). k_chunk is a multiple of BK, so the
  // slice's k-steps are the unsplit kernel's; loads stop at k_end, so slices never overlap.
  const int64_t k_begin = (int64_t)blockIdx.z * k_chunk, k_end = min64(K, k_begin + k_chunk);
  GemmLoader<T, Cfg::LOADS_A, Cfg::THREADS, BM, BK, !TRANS_A> a_loader(A, M, K, m0, k_begin, tid);
  GemmLoader<T, Cfg::LOADS_B, Cfg::THREADS, BN, BK, TRANS_B> b_loader(B, N, K, n0, k_begin, tid);
  auto stage_a = [&](int s, int l, const T x[4]) {
    gemm_stage<T, Cfg::THREADS, BM, BK, !TRANS_A>(As[s], tid, l, x);
  };
  auto stage_b = [&](int s, int l, const T x[4]) {
    gemm_stage<T, Cfg::THREADS, BN, BK, TRANS_B>(Bs[s], tid, l, x);
  };
  // The k loop, in two copies: FULL for an interior block (its tile inside C, every k-step whole,
  // both operands 16-byte aligned: unconditional vector loads, none of the edge arithmetic in the
  // loop) and the general one for the others.
  auto k_loop = [&](auto full) {
    constexpr bool FULL = decltype(full)::value;
    T a_next[4], b_next[4];
    if (k_begin < k_end) {
      const int k_left = (int)min64(BK, k_end - k_begin);
#pragma unroll
      for (int l = 0; l < Cfg::LOADS_A; ++l)
        a_loader.template fetch<FULL>(l, k_left, vec_a, a_next), stage_a(0, l, a_next);
#pragma unroll
      for (int l = 0; l < Cfg::LOADS_B; ++l)
        b_loader.template fetch<FULL>(l, k_left, vec_b, b_next), stage_b(0, l, b_next);
    }
    __syncthreads();
    int stage = 0;
    for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
      const bool more = k0 + BK < k_end;
      const int k_left = (int)min64(BK, k_end - (k0 + BK));
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        // The next step's groups, one of each operand at a time (few registers held): a group's
        // global loads are in flight during KK_A (KK_B) k of math, then it goes to the other stage.
        constexpr int KA = Cfg::KK_A, KB = Cfg::KK_B;
        if (more && kk % KA == 0) a_loader.template fetch<FULL>(kk / KA, k_left, vec_a, a_next);
        if (more && kk % KB == 0) b_loader.template fetch<FULL>(kk / KB, k_left, vec_b, b_next);
        T a[FM][4], b[FN][4];
#pragma unroll
        for (int i = 0; i < FM; ++i) vec_load4(&As[stage][kk][wm + 4 * Cfg::LM * i], a[i]);
#pragma unroll
        for (int j = 0; j < FN; ++j) vec_load4(&Bs[stage][kk][wn + 4 * Cfg::LN * j], b[j]);
#pragma unroll
        for (int i = 0; i < FM * 4; ++i)
#pragma unroll
          for (int j = 0; j < FN * 4; ++j) acc[i][j] += a[i / 4][i % 4] * b[j / 4][j % 4];
        if (more && kk % KA == KA - 1) stage_a(stage ^ 1, kk / KA, a_next);
        if (more && kk % KB == KB - 1) stage_b(stage ^ 1, kk / KB, b_next);
      }
      __syncthreads();  // the other stage is written; this one may be overwritten next step
      stage ^= 1;
    }
  };
  const bool interior = vec_a && vec_b && m0 + BM <= M && n0 + BN <= N && (k_end - k_begin) % BK == 0;
  if (interior) k_loop(std::true_type{});
  else k_loop(std::false_type{});

  T* out = partials ? partials + (int64_t)blockIdx.z * M * N : C;
#pragma unroll
  for (int i = 0; i < FM * 4; ++i) {
    const int64_t m = m0 + wm + 4 * Cfg::LM * (i / 4) + i % 4;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      const int64_t n = n0 + wn + 4 * Cfg::LN * j;
      T v[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        v[c] = acc[i][4 * j + c];
        if (!partials && n + c < N) {  // split-K applies bias and activation after the sum
          if (bias) v[c] += bias[n + c];
          v[c] = activate(v[c], act);
        }
      }
      if (vec_c && n + 4 <= N) {
        vec_store4(out + m * N + n, v);
      } else {
#pragma unroll
        for (int c = 0; c < 4; ++c)
          if (n + c < N) out[m * N + n + c] = v[c];
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

// The float configs' shape facts that the plan needs (the plan is the same for every type, so
// that a shape always gets the same tiles and slices).
struct GemmTileShape { int64_t bm, bn, blocks_per_sm; };
template <int ID>
constexpr GemmTileShape gemm_tile_shape() {
  using Cfg = GemmConfig<float, ID>;
  return {Cfg::BM, Cfg::BN, Cfg::MIN_BLOCKS};
}
static GemmTileShape gemm_tile_shape(int tile) {
  require(tile >= 0 && tile < kGemmTiles, "gemm: tile must be 0 (small), 1 (large) or 2 (wide)");
  constexpr GemmTileShape shapes[kGemmTiles] = {gemm_tile_shape<kGemmSmall>(), gemm_tile_shape<kGemmLarge>(),
                                                gemm_tile_shape<kGemmWide>()};
  return shapes[tile];
}

// The share of its waves that `blocks` blocks fill, a wave being the blocks a notional 132-SM
// GPU (H100/H200) holds at once with this tile: the same on every device, so that the plan and
// hence the result are too.
static double gemm_wave_fill(int64_t blocks, const GemmTileShape& t) {
  constexpr int64_t kSMs = 132;
  const int64_t wave = kSMs * t.blocks_per_sm, waves = (blocks + wave - 1) / wave;
  return (double)blocks / (double)(waves * wave);
}

static int64_t gemm_tile_count(int64_t M, int64_t N, const GemmTileShape& t) {
  return ((M + t.bm - 1) / t.bm) * ((N + t.bn - 1) / t.bn);
}

int64_t gemm_splits(int64_t M, int64_t N, int64_t K, int tile) {
  // Split-K against the wave quantization of a 132-SM GPU (H100/H200: a notional wave, the same on
  // every device, so that the result is too): a wave is 132 x the blocks per SM the config's launch
  // bounds allow (1 wide, 2 large, 4 small). The count is the smallest s whose s x tiles blocks fill
  // at least 80% of the waves they take, else the s that fills them best; each slice keeps at least
  // 128 k values of work, and there are at most 64. Measured on an H200 with every count forced
  // (benchmarks/gpu_gemm_sweep.py, results/logs/cuda-h200-2026-11-26-session4-call2-gemm-sweep.log):
  // 1536^3 is 144 large tiles, 55% of a wave: 23.1 TFLOP/s unsplit, 29.8 in 3 slices; 768^3 small
  // 12.3 -> 14.0 (3); 1024 x 1024 x 4096 wide 10.0 -> 34.4 (4); 2048^3 and 4096^3 fill their
  // waves unsplit and are fastest so.
  constexpr int64_t kMinKPerSlice = 128, kMaxSplits = 64;
  const GemmTileShape t = gemm_tile_shape(tile);
  const int64_t tiles = gemm_tile_count(M, N, t);
  if (tiles == 0) return 1;  // an empty C needs no launch
  const int64_t most = max64(1, min64(K / kMinKPerSlice, kMaxSplits));
  int64_t best = 1;
  double best_fill = 0;
  for (int64_t s = 1; s <= most; ++s) {
    const double fill = gemm_wave_fill(tiles * s, t);
    if (fill >= 0.8) return s;
    if (fill > best_fill) best = s, best_fill = fill;
  }
  return best;
}

int gemm_tile(int64_t M, int64_t N, int64_t K) {
  // Measured on an H200 with every tile and slice count forced (benchmarks/gpu_gemm_sweep.py,
  // 2026-11-26, results/logs/cuda-h200-2026-11-26-session4-call{1,2}-gemm-sweep.log: call 1 before
  // the interior-block loop, call 2 with it, on another machine), TFLOP/s:
  //   large (128 x 128, 2 blocks per SM) wherever there are at least 96 of its tiles: 4096^3 40.5,
  //     then 44.9 (wide 39.8 / 40.8, small 33.9 / 34.9), 2048^3 38.3 / 41.2 (wide 37.3 / 37.2);
  //   wide (128 x 256, 1 block per SM) when there are fewer, if K is long enough for the slices
  //     that fill its waves to keep 256 k each: 1024^3 in 4 slices 25.8 / 22.2 (small in 2: 24.0 /
  //     20.7; large in 2: 24.6 / 24.2, a close call), 1024 x 1024 x 4096 34.4 / 34.4 (small 28.8 / 29.1);
  //   small (64 x 64, 4 blocks per SM) for the rest: 768^3 16.3, 512^3 8.2, 128 x 128 x 3136.
  if (gemm_tile_count(M, N, gemm_tile_shape(kGemmLarge)) >= 96) return kGemmLarge;
  const GemmTileShape wide = gemm_tile_shape(kGemmWide);
  const int64_t tiles = gemm_tile_count(M, N, wide), splits = gemm_splits(M, N, K, kGemmWide);
  if (tiles > 0 && gemm_wave_fill(tiles * splits, wide) >= 0.8 && K / splits >= 256) return kGemmWide;
  return kGemmSmall;
}

template <typename T, class Cfg>
void gemm_launch(const T* A, const T* B, const T* bias, T* C, int64_t M, int64_t N, int64_t K, bool trans_a,
                 bool trans_b, int act, T* partials, int64_t splits, void* stream) {
  require((M + Cfg::BM - 1) / Cfg::BM <= 65535, "gemm: M too large for the grid's y dimension");
  int64_t k_chunk = (K + splits - 1) / splits;
  k_chunk = max64(Cfg::BK, (k_chunk + Cfg::BK - 1) / Cfg::BK * Cfg::BK);  // slices start on a k-step boundary
  dim3 grid(blocks_for(N, Cfg::BN), blocks_for(M, Cfg::BM), (unsigned)splits);
  // 16-byte loads and stores need the contiguous dimension to keep every row start aligned.
  const bool vec_a = aligned16(A) && ((trans_a ? M : K) % 4 == 0);
  const bool vec_b = aligned16(B) && ((trans_b ? K : N) % 4 == 0);
  const bool vec_c = aligned16(partials ? (const T*)partials : (const T*)C) && N % 4 == 0;
  auto args = [&](auto kernel, const char* name) {
    launch(name, kernel, grid, dim3(Cfg::THREADS), 0, stream, A, B, bias, C, partials, M, N, K, k_chunk, act, vec_a,
           vec_b, vec_c);
  };
  if (!trans_a && !trans_b) args(gemm_kernel<T, Cfg, false, false>, "gemm_kernel<NN>");
  else if (!trans_a && trans_b) args(gemm_kernel<T, Cfg, false, true>, "gemm_kernel<NT>");
  else if (trans_a && !trans_b) args(gemm_kernel<T, Cfg, true, false>, "gemm_kernel<TN>");
  else args(gemm_kernel<T, Cfg, true, true>, "gemm_kernel<TT>");
}

template <typename T>
void gemm(const T* A, const T* B, const T* bias, T* C, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
          int act, T* workspace, int tile, int64_t splits, void* stream) {
  gemm_tile_shape(tile);  // checks the id
  if (M == 0 || N == 0) return;
  require(splits >= 1 && splits <= 65535, "gemm: splits must be in [1, 65535]");
  require(splits == 1 || workspace != nullptr, "gemm: splits > 1 needs a workspace of splits * M * N values");
  T* partials = splits > 1 ? workspace : nullptr;
  auto run = [&](auto config) {
    using Cfg = decltype(config);
    gemm_launch<T, Cfg>(A, B, bias, C, M, N, K, trans_a, trans_b, act, partials, splits, stream);
  };
  if (tile == kGemmSmall) run(GemmConfig<T, kGemmSmall>{});
  else if (tile == kGemmLarge) run(GemmConfig<T, kGemmLarge>{});
  else run(GemmConfig<T, kGemmWide>{});
  if (partials)
    launch("gemm_reduce_kernel", gemm_reduce_kernel<T>, dim3((unsigned)min64(blocks_for(M * N, 256), 4096)), dim3(256),
           0, stream, (const T*)partials, bias, C, M, N, splits, act);
}

// Column sums: a block of 32 x 8 threads owns 32 columns; thread (x, y) sums rows y, y + 8, ...
// of column x (coalesced along the row), then the 8 partial sums meet in shared memory.
// Summed in double for every T: a float running sum over a long batch rounds each add at its
// total's ulp (10^6 rows of 1/N each: 0.9% off), and one double add per value read costs nothing
// in a loop that waits on memory. Deterministic: no atomics.
template <typename T>
__global__ void column_sum_kernel(const T* __restrict__ dy, T* __restrict__ db, int64_t rows, int64_t cols) {
  __shared__ double partial[8][33];
  int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
  double sum = 0.0;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += 8) sum += (double)dy[r * cols + c];
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double total = 0.0;
#pragma unroll
    for (int i = 0; i < 8; ++i) total += partial[i][threadIdx.x];
    db[c] = (T)total;
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
    dx[i] = x[i] <= T(0) ? T(0) : dy[i];  // a NaN x passes dy on, as torch's threshold_backward
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
  template void gemm<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, bool, bool, int, T*, int, int64_t, \
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
