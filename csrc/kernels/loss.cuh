// Losses: softmax cross-entropy (class weights, label smoothing), binary cross-entropy with
// logits (pos_weight), mean squared error. Each is PyTorch's reduction="mean", natural log.
//
// Math
//   softmax cross-entropy, logits z (N, C), labels y (N), class weights w (C) (all 1 if absent),
//   smoothing e in [0, 1]:
//     m_i = max_c z_ic,  s_i = sum_c exp(z_ic - m_i),  log p_ic = (z_ic - m_i) - log s_i
//     (no exp overflows: every exponent is <= 0 and s_i >= 1; but z_ic - m_i, hence -log p_ic
//     and the row's loss, is +-inf where a row's logits span more than the type's maximum)
//     r_i = (1 - e) w_{y_i} (-log p_{i,y_i})  +  (e / C) sum_c w_c (-log p_ic)
//     loss = sum_i r_i / W,   W = sum_i w_{y_i}          (W = N without weights)
//   This is torch's definition: target distribution (1 - e) onehot + e/C, and with weights the
//   smoothing term is weighted per class and normalized by the same W as the NLL term.
//   The smoothing sum needs no second pass: sum_c w_c (-log p_ic) = S log s_i - sum_c w_c (z_ic - m_i),
//   S = sum_c w_c, and both terms are >= 0 (no cancellation).
//     dloss/dz_ic = [ p_ic ((1 - e) w_{y_i} + (e/C) S) - (1 - e) w_{y_i} [c = y_i] - (e/C) w_c ] / W
//   (without weights and smoothing: (p_ic - [c = y_i]) / N).
//   A NaN logit makes its row's max or sum NaN, hence its loss and the mean NaN (as in torch);
//   so does +inf (inf - inf), and a row of only -inf. A -inf logit alone has p = 0.
//   One pass for m and s (online softmax): a thread folds each batch of values x into its running
//   (m, s) as m' = max(m, max x), s' = s exp(m - m') + sum exp(x - m'); the threads of a row then
//   combine theirs: m_i = max m, s_i = sum s exp(m - m_i).
//
//   BCE with logits, x and t of n elements, pos_weight pw over the last dimension (1 if absent):
//     l = (1 - t) x + (1 + (pw - 1) t) softplus(-x),   softplus(-x) = log1p(exp(-|x|)) + max(-x, 0)
//     loss = sum l / n;   dloss/dx = [ (1 - t) sigmoid(x) - pw t sigmoid(-x) ] / n
//   exp(-|x|) <= 1, so both are finite for any finite x and t in [0, 1], but for l's products
//   with pw > 1, which overflow past the type's maximum as torch's do. The gradient's two terms are
//   each exact for a hard target (t = 0 or 1); the equal form (1 - t) - (1 + (pw - 1) t) sigmoid(-x)
//   cancelled to 0 for t = 0 and x below ~-17 in float (sigmoid(-x) rounds to 1), where it is e^x.
//
//   MSE: loss = sum (p - t)^2 / n;  dloss/dp = 2 (p - t) / n.
//
// Decomposition
//   Softmax cross-entropy, forward and fused forward + backward: one kernel template,
//   softmax_cross_entropy_rows_kernel<T, LANES, SHORT, GRAD>, blocks of 256 threads.
//     A row is owned by LANES consecutive lanes of a warp, the fewest of 1, 2, 4, ..., 32 that
//     cover it with 2 chunks each up to 32 classes (SHORT; LANES = 2 for 10: 16 rows per warp)
//     and with 8 each beyond (see cached_chunks; the same lanes for double, which keeps 4), 32 (a
//     warp) up to 4096 classes, and by the whole block beyond. A block owns 256 / LANES rows at a
//     time (one past 4096 classes) and takes the next ones grid-stride; at most 2048 blocks.
//     A row is cut into chunks of 4 values (a 16-byte load of float, two of double, when every
//     row is 16-byte aligned; else scalar loads); a thread (lane l of its row's LANES) owns chunks
//     l, l + LANES, ..., so one chunk index is contiguous over the lanes.
//   Per row, the logits are read once: a thread keeps its first chunks in registers (past 32
//   classes 32 floats or 16 doubles per thread: float rows of up to 1024 values in a warp, 8192 in
//   a block), all their loads issued first, and folds later chunks online (m, s), two loads in
//   flight at a time (float; one for double). Reduce m over the row's lanes; the registers become
//   exp(z - m) (one exp per value) and join s; reduce s; each thread writes its columns of
//   p = exp(z - m) / s (forward) or of dloss/dz (GRAD: the probs never reach memory; the gradient
//   is written once), later chunks re-read (L1/L2 hits, as many at a time) and exponentiated
//   again. With smoothing, sum_c w_c (z_c - m) and sum_c w_c come along (two more reductions).
//   Lane 0 of the row adds the row's r_i (and w_{y_i}) in double to its thread's sum.
//   Reductions over a row's lanes: an xor butterfly of shuffles inside the group (every lane gets
//   bit-identical results; all 32 lanes of the warp take part, a group past the last row with no
//   columns); over a block: one value per warp through shared memory, then a warp butterfly.
//   The mean, deterministic (no float atomics): each block reduces its threads' sums (fixed tree)
//   into one partial; a second one-block kernel sums the partials (thread-strided, then the tree)
//   and divides by W (the partial weights) or N. The number of blocks depends on N and C only, so
//   the result is bitwise reproducible, and the forward and fused op give the same loss. When one
//   block covers the batch (N <= 256 / LANES rows: the reference step's 128 x 10), that block
//   writes the mean itself, and with class weights also computes W and S first: one launch.
//   With class weights and more blocks, the fused op first reduces W and S with one block.
//   Elementwise losses (BCE, MSE) forward: a fixed number of blocks, loss_partial_count(n),
//   that depends on n only; each thread accumulates a grid-stride slice in double, the block
//   reduces it and writes one partial; the same mean kernel sums the partials.
//   Accumulation of the means is double for float32 and float64 inputs.
//   Backward kernels are elementwise grid-stride loops (the cross-entropy backward's items are
//   chunks of 4 columns of a row, 16-byte loads and stores where aligned); the weighted
//   cross-entropy backward first reduces W and S with one block (same fixed order).
//   Indices are 64-bit; every load is inside its array for any shape.
#pragma once

#include "common.cuh"
#include "loss.h"

namespace fc {

namespace loss_detail {

constexpr int kMeanThreads = 256;
constexpr int kElementwiseThreads = 256;
constexpr int64_t kMaxPartials = 1024;
constexpr int64_t kMaxRowBlocks = 1 << 20;
constexpr int64_t kMaxGridBlocks = 4096;
constexpr unsigned kFullMask = 0xffffffffu;

struct Sum {
  template <typename V>
  __device__ __forceinline__ V operator()(V a, V b) const { return a + b; }
};
// Max that ignores NaN (one instruction): a NaN logit still makes its row's sum, hence its loss
// and outputs, NaN, through exp(NaN - m).
struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};

template <typename V, typename Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Reduces v over the block and returns the result to every thread. blockDim.x is a multiple of
// 32 (at most 1024); every thread of the block must call it. scratch: 32 shared values.
// `identity` fills the lanes beyond the last warp.
template <typename V, typename Op>
__device__ V block_reduce(V v, Op op, V identity, V* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_reduce(v, op);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : identity;
  return warp_reduce(v, op);
}

// Sums values[0..n) (and weights[0..n) when given) in a fixed order and writes
// sum(values) / (weights ? sum(weights) : count) as one T. One block.
template <typename T>
__global__ void __launch_bounds__(kMeanThreads)
    mean_kernel(const double* __restrict__ values, const double* __restrict__ weights, int64_t n, double count,
                T* __restrict__ out) {
  __shared__ double scratch[32];
  double v = 0.0, w = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    v += values[i];
    if (weights) w += weights[i];
  }
  v = block_reduce(v, Sum(), 0.0, scratch);
  if (weights) w = block_reduce(w, Sum(), 0.0, scratch);
  if (threadIdx.x == 0) *out = T(v / (weights ? w : count));
}

template <typename T>
void mean(const double* values, const double* weights, int64_t n, double count, T* out, void* stream) {
  launch("mean_kernel", mean_kernel<T>, dim3(1), dim3(kMeanThreads), 0, stream, values, weights, n, count, out);
}

// Cross-entropy row kernels. A row is owned by a group of LANES consecutive threads of a warp
// (LANES = 1, 2, ..., 32) or, past kWarpRowMaxClasses, by the whole block (LANES = kBlockRow).
// A row is cut into chunks of kChunk values (one 16-byte load for float, two for double); lane l
// of the group owns chunks l, l + LANES, ..., so a warp's loads of one chunk index are contiguous.
constexpr int kRowThreads = 256;
constexpr int kBlockRow = 0;
constexpr int kChunk = 4;
constexpr int64_t kWarpRowMaxClasses = 4096;
// Chunks past the cached ones are read streamed_chunks per step, their loads issued together: two
// for float; one for double, whose registers are full already.
template <typename T>
constexpr int streamed_chunks() { return sizeof(T) == 4 ? 2 : 1; }
// Row-kernel blocks at most: each writes one partial loss sum, so the mean kernel sums few values.
// A constant (not the device's SM count), so the summation order depends on N and C only.
constexpr int64_t kMaxRowGrid = 2048;

// Chunks a thread keeps in registers between reading its values and writing the row's output
// (further chunks are re-read; they hit L1/L2). What bounds the kernel is the bytes in flight per
// SM: the loads a lane issues before their first use, times the warps that fit. So a lane's
// registers are filled, by one of two kernels:
//   short rows (up to kShortRowClasses values): 2 chunks per lane, 1, 2 or 4 lanes per row; float
//     40-59 registers (4 blocks per SM);
//   longer rows: 32 floats or 16 doubles per lane (8 or 4 chunks), 2 to 32 lanes per row (float
//     rows of up to 1024 values in a warp's registers) or the block (8192); float 120-128
//     registers (2 blocks per SM). Double, which only has to be right, 128-140.
// Measured on an H200 (same-card A/Bs, 2026-12-04, the fused op, % of copy): the plan before,
// 2 chunks per lane in groups of up to 16 lanes and a warp from 129 values, ran rows of 64 / 128 /
// 256 / 512 floats at 53-55 / 63-64 / 31-33 / 52-53%; 8 chunks per lane in 2 / 4 / 8 / 16 lanes at
// 67-68 / 68-71 / 73-74 / 76-77%. On short rows 8 chunks cost warps and gain nothing: 16 floats in
// 2 lanes 31%, and a lane per row of 32 floats (each 16-byte load of a warp in a different line)
// 31-33%, against 53-54% for both with 2 chunks.
constexpr int64_t kShortRowClasses = 32;
template <typename T, bool SHORT>
constexpr int cached_chunks() { return SHORT ? 2 : 32 / sizeof(T); }

// The plan for C classes: short rows or not, and the lanes per row, the fewest (a power of two)
// whose cached float chunks cover the row; a warp up to kWarpRowMaxClasses, the block beyond.
struct RowPlan {
  bool short_rows;
  int lanes;
};
inline RowPlan row_plan(int64_t C) {
  if (C > kWarpRowMaxClasses) return {false, kBlockRow};
  const bool short_rows = C <= kShortRowClasses;
  const int per_lane = short_rows ? cached_chunks<float, true>() : cached_chunks<float, false>();
  const int64_t chunks = (C + kChunk - 1) / kChunk;
  int lanes = 1;
  while (lanes < 32 && lanes * per_lane < chunks) lanes *= 2;
  return {short_rows, lanes};
}

// Reduces v over the LANES lanes of a row's group (an xor butterfly within the group: every lane
// gets bit-identical results; every lane of the warp takes part) or over the block.
template <int LANES, typename V, typename Op>
__device__ __forceinline__ V group_reduce(V v, Op op, V identity, V* scratch) {
  if constexpr (LANES == kBlockRow) {
    return block_reduce(v, op, identity, scratch);
  } else {
#pragma unroll
    for (int offset = LANES / 2; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
  }
}

// x[0..kChunk) = p[c0 ..] for the columns below `cols`, `pad` for the rest.
template <typename T>
__device__ __forceinline__ void load_chunk(const T* p, int64_t c0, int64_t cols, bool vec, T pad, T (&x)[kChunk]) {
  load4(p + c0, vec, cols - c0, x);
#pragma unroll
  for (int j = 0; j < kChunk; ++j)
    if (c0 + j >= cols) x[j] = pad;
}

// p[c0 ..] = x for the columns below `cols`: one 16-byte store (two for double) when `vec`.
template <typename T>
__device__ __forceinline__ void store_chunk(T* p, int64_t c0, int64_t cols, bool vec, const T (&x)[kChunk]) {
  if (vec && cols - c0 >= 4) {
    vec_store4(p + c0, x);
  } else {
#pragma unroll
    for (int j = 0; j < kChunk; ++j)
      if (c0 + j < cols) p[c0 + j] = x[j];
  }
}

// Online softmax sum: folds one chunk x into (m, s), s = sum exp(z - m) over the values folded so
// far: the chunk's max first, so one exp per value plus one to rescale s. Padding is -inf (exp
// gives 0). While m is -inf (nothing but -inf seen) the exponents are taken against 0, so s stays
// 0 rather than exp(-inf - -inf) = NaN; a NaN value makes s NaN, and so does +inf (+inf - +inf).
template <typename T>
__device__ __forceinline__ void fold(T& m, T& s, const T (&x)[kChunk]) {
  T new_m = m;
#pragma unroll
  for (int j = 0; j < kChunk; ++j) new_m = Max()(new_m, x[j]);
  const T base = new_m == -T(INFINITY) ? T(0) : new_m;
  T acc = s * dev_exp(m - base);
#pragma unroll
  for (int j = 0; j < kChunk; ++j) acc += dev_exp(x[j] - base);
  m = new_m;
  s = acc;
}

// label_sum = sum_i w[y_i] (NaN for a label outside [0, C)), class_sum = sum_c w_c. Every thread
// of the block calls it; a fixed order (thread-strided, then the block tree).
template <typename T>
__device__ void weight_totals(const int64_t* __restrict__ labels, const T* __restrict__ weight, int64_t N, int64_t C,
                              double* scratch, double& label_sum, double& class_sum) {
  label_sum = 0.0;
  class_sum = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    int64_t y = labels[i];
    label_sum += (y >= 0 && y < C) ? (double)weight[y] : (double)NAN;
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) class_sum += (double)weight[c];
  label_sum = block_reduce(label_sum, Sum(), 0.0, scratch);
  class_sum = block_reduce(class_sum, Sum(), 0.0, scratch);
}

}  // namespace loss_detail

// ---- softmax cross-entropy --------------------------------------------------------------------

// dloss/dz_ic from p_ic (see the math above): inv_W = 1 / sum_i w_{y_i}, S = sum_c w_c, share = e / C.
// The backward kernel and the fused forward+backward use this one formula, so they agree bitwise.
template <typename T>
__device__ __forceinline__ T cross_entropy_grad(T p, bool is_label, T wy, T wc, T smoothing, T share, T S, T inv_W) {
  const T true_part = (T(1) - smoothing) * wy;
  T g = p * (true_part + share * S) - share * wc;
  if (is_label) g -= true_part;
  return g * inv_W;
}

// totals[0] = sum_i weight[labels[i]], totals[1] = sum_c weight[c]. One block, fixed order: the
// same function and block size as a single-block row kernel's own, so the same bits.
template <typename T>
__global__ void __launch_bounds__(loss_detail::kMeanThreads)
    cross_entropy_weight_totals_kernel(const int64_t* __restrict__ labels, const T* __restrict__ weight, int64_t N,
                                       int64_t C, double* __restrict__ totals) {
  __shared__ double scratch[32];
  double label_sum, class_sum;
  loss_detail::weight_totals(labels, weight, N, C, scratch, label_sum, class_sum);
  if (threadIdx.x == 0) {
    totals[0] = label_sum;
    totals[1] = class_sum;
  }
}
static_assert(loss_detail::kMeanThreads == loss_detail::kRowThreads, "W from either kernel must be the same bits");

// The rows of logits (N, C), LANES threads per row (see loss_detail above). GRAD = false: out =
// softmax(z). GRAD = true (the fused forward+backward): out = dloss/dz, from each thread's own
// just-computed p_ic. Each block writes the sum of its rows' losses (and label weights) to
// partial_loss[blockIdx.x] (partial_weight), or, when it is the only block and `loss` is given,
// the mean itself. totals = (W, S) when weighted and GRAD; a single block may be given none and
// then reduces them itself first. vec: logits, out (and weight) rows are 16-byte aligned.
template <typename T, int LANES, bool SHORT, bool GRAD>
__global__ void __launch_bounds__(loss_detail::kRowThreads)
    softmax_cross_entropy_rows_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                                      const T* __restrict__ weight, T smoothing, T* __restrict__ out,
                                      double* __restrict__ partial_loss, double* __restrict__ partial_weight,
                                      const double* __restrict__ totals, T* __restrict__ loss, int64_t N, int64_t C,
                                      bool vec) {
  using namespace loss_detail;
  constexpr bool BLOCK = LANES == kBlockRow;
  constexpr int CACHED = cached_chunks<T, SHORT>(), STREAMED = streamed_chunks<T>();
  __shared__ T scratch[32];
  __shared__ double dscratch[32];
  const bool smooth = smoothing != T(0);
  double W = (double)N, S = (double)C;
  if (GRAD && weight) {
    if (totals) {
      W = totals[0];
      S = totals[1];
    } else {
      weight_totals(labels, weight, N, C, dscratch, W, S);
    }
  }
  const T inv_W = T(1) / (T)W, share = smoothing / (T)C;

  const int lanes = BLOCK ? (int)blockDim.x : LANES;
  const int lane = BLOCK ? (int)threadIdx.x : (int)threadIdx.x % LANES;  // within the row's group
  const int64_t rows_per_block = BLOCK ? 1 : blockDim.x / LANES;
  const int64_t group = BLOCK ? 0 : threadIdx.x / LANES;
  double sum_loss = 0.0, sum_weight = 0.0;  // of the rows whose lane 0 this thread is
  // `first` is uniform over the block, so every shuffle and barrier has all its threads; a group
  // past the last row takes part with no columns.
  for (int64_t first = (int64_t)blockIdx.x * rows_per_block; first < N; first += (int64_t)gridDim.x * rows_per_block) {
    const int64_t row = first + group;
    const int64_t cols = row < N ? C : 0;
    const T* z = logits + min64(row, N - 1) * C;
    T* o = out + min64(row, N - 1) * C;

    // The label first: its load flies with the row's.
    const int64_t y = row < N ? labels[row] : 0;
    const bool valid = y >= 0 && y < C;  // the host refuses other labels; NaN rather than a stray read
    const T wy = weight ? (valid ? weight[y] : T(NAN)) : T(1);
    auto chunk_col = [&](int k) { return (int64_t)(lane + k * lanes) * kChunk; };  // k-th chunk's first column
    const int64_t stride = (int64_t)lanes * kChunk;

    // Read the row once. The first CACHED chunks stay in registers (all their loads issued before
    // any use) and give the thread's max; later chunks are folded online (m, s) as they arrive.
    T v[CACHED][kChunk];
#pragma unroll
    for (int k = 0; k < CACHED; ++k) load_chunk(z, chunk_col(k), cols, vec, -T(INFINITY), v[k]);
    const T z_y = lane == 0 && valid ? z[y] : T(0);  // for the loss; its load flies with the row's
    T m = -T(INFINITY), s = T(0);  // s: of the later chunks, against m
#pragma unroll
    for (int k = 0; k < CACHED; ++k)
#pragma unroll
      for (int j = 0; j < kChunk; ++j) m = Max()(m, v[k][j]);
    // (A short row lies in the cached chunks (row_plan): its kernels compile no loop over later ones.)
    for (int64_t c0 = chunk_col(CACHED); !SHORT && c0 < cols; c0 += STREAMED * stride) {
      T x[STREAMED][kChunk];  // every load in flight before the first fold
#pragma unroll
      for (int u = 0; u < STREAMED; ++u) load_chunk(z, c0 + u * stride, cols, vec, -T(INFINITY), x[u]);
#pragma unroll
      for (int u = 0; u < STREAMED; ++u) fold(m, s, x[u]);  // a chunk past the row is all -inf: s, m unchanged
    }
    const T row_m = group_reduce<LANES>(m, Max(), -T(INFINITY), scratch);
    s *= dev_exp(m - (row_m == -T(INFINITY) ? T(0) : row_m));  // to the row's max (0 stays 0)

    // The registers become exp(z - m) (one exp per value); s, and the smoothing sums.
    T w_shift = T(0), w_total = T(0);  // sum_c w_c (z_c - m), sum_c w_c
    auto smoothing_terms = [&](const T (&x)[kChunk], int64_t c0) {
      T wc[kChunk] = {T(1), T(1), T(1), T(1)};
      if (weight) load4(weight + c0, vec, cols - c0, wc);
#pragma unroll
      for (int j = 0; j < kChunk; ++j)
        if (c0 + j < cols) {
          w_shift += wc[j] * (x[j] - row_m);
          w_total += wc[j];
        }
    };
#pragma unroll
    for (int k = 0; k < CACHED; ++k) {
      if (chunk_col(k) >= cols) continue;
      if (smooth) smoothing_terms(v[k], chunk_col(k));
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        v[k][j] = dev_exp(v[k][j] - row_m);  // padding: exp(-inf) = 0
        s += v[k][j];
      }
    }
    s = group_reduce<LANES>(s, Sum(), T(0), scratch);
    const T inv_s = T(1) / s;

    // Write the row: p = exp(z - m) / s, or its gradient; later chunks re-read (L1/L2 hits).
    const int64_t label_col = valid ? y : -1;
    auto write_chunk = [&](const T (&e)[kChunk], int64_t c0) {
      T wc[kChunk] = {T(1), T(1), T(1), T(1)};
      if (GRAD && weight) load4(weight + c0, vec, cols - c0, wc);
      const int64_t label_j = label_col - c0;  // the label's place in this chunk, if in [0, kChunk)
      T r[kChunk];
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        const T p = e[j] * inv_s;
        if (GRAD)
          r[j] = valid ? cross_entropy_grad(p, label_j == j, wy, wc[j], smoothing, share, (T)S, inv_W) : T(NAN);
        else
          r[j] = p;
      }
      store_chunk(o, c0, cols, vec, r);
    };
#pragma unroll
    for (int k = 0; k < CACHED; ++k)
      if (chunk_col(k) < cols) write_chunk(v[k], chunk_col(k));
    for (int64_t c0 = chunk_col(CACHED); !SHORT && c0 < cols; c0 += STREAMED * stride) {
      T x[STREAMED][kChunk];
#pragma unroll
      for (int u = 0; u < STREAMED; ++u) load_chunk(z, c0 + u * stride, cols, vec, -T(INFINITY), x[u]);
#pragma unroll
      for (int u = 0; u < STREAMED; ++u) {  // a chunk past the row reads, adds and writes nothing
        if (smooth) smoothing_terms(x[u], c0 + u * stride);
#pragma unroll
        for (int j = 0; j < kChunk; ++j) x[u][j] = dev_exp(x[u][j] - row_m);
        write_chunk(x[u], c0 + u * stride);
      }
    }
    if (smooth) {
      w_shift = group_reduce<LANES>(w_shift, Sum(), T(0), scratch);
      w_total = group_reduce<LANES>(w_total, Sum(), T(0), scratch);
    }

    if (lane == 0 && row < N) {
      const T log_s = dev_log(s);
      T wl = T(1), nll = T(NAN);  // an out-of-range label gives NaN
      if (valid) {
        if (weight) wl = weight[y];
        nll = log_s - (z_y - row_m);
      }
      T r = (T(1) - smoothing) * wl * nll;
      if (smooth) r += share * (w_total * log_s - w_shift);
      sum_loss += (double)r;
      sum_weight += (double)wl;
    }
  }

  sum_loss = block_reduce(sum_loss, Sum(), 0.0, dscratch);
  if (weight) sum_weight = block_reduce(sum_weight, Sum(), 0.0, dscratch);
  if (threadIdx.x == 0) {
    if (loss) {
      *loss = T(sum_loss / (weight ? sum_weight : (double)N));  // as mean_kernel would from this one partial
    } else {
      partial_loss[blockIdx.x] = sum_loss;
      if (weight) partial_weight[blockIdx.x] = sum_weight;
    }
  }
}

template <typename T, int LANES, bool SHORT, bool GRAD>
void launch_cross_entropy_rows(const char* name, dim3 grid, void* stream, const T* logits, const int64_t* labels,
                               const T* weight, T smoothing, T* out, double* partial_loss, double* partial_weight,
                               const double* totals, T* loss, int64_t N, int64_t C, bool vec) {
  launch(name, softmax_cross_entropy_rows_kernel<T, LANES, SHORT, GRAD>, grid, dim3(loss_detail::kRowThreads), 0,
         stream, logits, labels, weight, smoothing, out, partial_loss, partial_weight, totals, loss, N, C, vec);
}

// The row kernel (and, for more than one block, the weight totals first and the mean after):
// out = probs (GRAD = false) or dlogits, loss = the mean. partial_loss and partial_weight hold at
// least min(N, kMaxRowGrid) doubles; totals 2 (used when GRAD, weighted and more than one block).
template <typename T, bool GRAD>
void cross_entropy_rows(const T* logits, const int64_t* labels, const T* weight, double smoothing, T* out,
                        double* partial_loss, double* partial_weight, double* totals, T* loss, int64_t N, int64_t C,
                        void* stream) {
  using namespace loss_detail;
  const RowPlan plan = row_plan(C);
  const int64_t rows_per_block = plan.lanes == kBlockRow ? 1 : kRowThreads / plan.lanes;
  const int64_t blocks = min64((N + rows_per_block - 1) / rows_per_block, kMaxRowGrid);
  const bool one_block = blocks == 1;  // then one launch does it all (the reference step's 128 x 10)
  const bool vec = (C * (int64_t)sizeof(T)) % 16 == 0 && aligned16(logits) && aligned16(out) &&
                   (!weight || aligned16(weight));
  if (GRAD && weight && !one_block)  // W and S first: every row's gradient is divided by W
    launch("cross_entropy_weight_totals_kernel", cross_entropy_weight_totals_kernel<T>, dim3(1), dim3(kMeanThreads), 0,
           stream, labels, weight, N, C, totals);
  const double* row_totals = GRAD && weight && !one_block ? totals : nullptr;
  T* row_mean = one_block ? loss : nullptr;
  const dim3 grid((unsigned)blocks);
  const T e = (T)smoothing;
#define FC_CE_ROWS(L, SHORT)                                                                                          \
  launch_cross_entropy_rows<T, L, SHORT, GRAD>("softmax_cross_entropy_rows_kernel<" #L " lanes per row, " #SHORT     \
                                               " short>", grid, stream, logits, labels, weight, e, out, partial_loss, \
                                               partial_weight, row_totals, row_mean, N, C, vec)
  if (plan.short_rows) {
    switch (plan.lanes) {
      case 1: FC_CE_ROWS(1, true); break;
      case 2: FC_CE_ROWS(2, true); break;
      default: FC_CE_ROWS(4, true); break;
    }
  } else {
    switch (plan.lanes) {
      case 2: FC_CE_ROWS(2, false); break;
      case 4: FC_CE_ROWS(4, false); break;
      case 8: FC_CE_ROWS(8, false); break;
      case 16: FC_CE_ROWS(16, false); break;
      case 32: FC_CE_ROWS(32, false); break;
      default: FC_CE_ROWS(kBlockRow, false); break;
    }
  }
#undef FC_CE_ROWS
  if (!one_block) mean<T>(partial_loss, weight ? partial_weight : nullptr, blocks, (double)N, loss, stream);
}

template <typename T>
void softmax_cross_entropy_forward(const T* logits, const int64_t* labels, const T* weight, double smoothing, T* probs,
                                   double* row_loss, double* row_weight, T* loss, int64_t N, int64_t C, void* stream) {
  require(N > 0 && C > 0, "softmax_cross_entropy_forward: empty logits");
  require(!weight || row_weight, "softmax_cross_entropy_forward: weight needs the row_weight workspace");
  cross_entropy_rows<T, false>(logits, labels, weight, smoothing, probs, row_loss, row_weight, nullptr, loss, N, C,
                               stream);
}

template <typename T>
void softmax_cross_entropy_with_grad(const T* logits, const int64_t* labels, const T* weight, double smoothing,
                                     T* dlogits, double* row_loss, double* row_weight, double* totals, T* loss,
                                     int64_t N, int64_t C, void* stream) {
  require(N > 0 && C > 0, "softmax_cross_entropy_with_grad: empty logits");
  require(!weight || (row_weight && totals),
          "softmax_cross_entropy_with_grad: weight needs the row_weight and totals workspaces");
  cross_entropy_rows<T, true>(logits, labels, weight, smoothing, dlogits, row_loss, row_weight, totals, loss, N, C,
                              stream);
}
template <typename T>
__global__ void softmax_cross_entropy_backward_kernel(const T* __restrict__ probs, const int64_t* __restrict__ labels,
                                                      const T* __restrict__ weight, T smoothing,
                                                      const double* __restrict__ totals, T* __restrict__ dlogits,
                                                      int64_t N, int64_t C, bool vec) {
  const T inv_W = T(1) / (totals ? (T)totals[0] : (T)N);  // 1 / sum_i w_{y_i}
  const T S = totals ? (T)totals[1] : (T)C;                // sum_c w_c
  const T share = smoothing / (T)C;                        // e / C
  // A thread takes chunks of kChunk columns of one row (16-byte loads and stores when `vec`): one
  // division per chunk, not per value.
  using loss_detail::kChunk;
  const int64_t row_chunks = (C + kChunk - 1) / kChunk, chunks = N * row_chunks;
  for (int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; q < chunks; q += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = q / row_chunks, c0 = (q - row * row_chunks) * kChunk;
    const int64_t y = labels[row];
    const bool valid = y >= 0 && y < C;
    const T wy = weight ? (valid ? weight[y] : T(NAN)) : T(1);
    T p[kChunk], wc[kChunk] = {T(1), T(1), T(1), T(1)}, g[kChunk];
    loss_detail::load_chunk(probs + row * C, c0, C, vec, T(0), p);
    if (weight) load4(weight + c0, vec, C - c0, wc);
#pragma unroll
    for (int j = 0; j < kChunk; ++j)
      g[j] = valid ? cross_entropy_grad(p[j], c0 + j == y, wy, wc[j], smoothing, share, S, inv_W) : T(NAN);
    loss_detail::store_chunk(dlogits + row * C, c0, C, vec, g);
  }
}

template <typename T>
void softmax_cross_entropy_backward(const T* probs, const int64_t* labels, const T* weight, double smoothing,
                                    double* totals, T* dlogits, int64_t N, int64_t C, void* stream) {
  using namespace loss_detail;
  require(N > 0 && C > 0, "softmax_cross_entropy_backward: empty probs");
  require(!weight || totals, "softmax_cross_entropy_backward: weight needs the totals workspace");
  if (weight)
    launch("cross_entropy_weight_totals_kernel", cross_entropy_weight_totals_kernel<T>, dim3(1), dim3(kMeanThreads), 0,
           stream, labels, weight, N, C, totals);
  const bool vec = (C * (int64_t)sizeof(T)) % 16 == 0 && aligned16(probs) && aligned16(dlogits) &&
                   (!weight || aligned16(weight));
  launch("softmax_cross_entropy_backward_kernel", softmax_cross_entropy_backward_kernel<T>,
         dim3((unsigned)min64(blocks_for(N * ((C + kChunk - 1) / kChunk), kElementwiseThreads), kMaxGridBlocks)),
         dim3(kElementwiseThreads), 0, stream, probs, labels, weight, (T)smoothing,
         weight ? (const double*)totals : (const double*)nullptr, dlogits, N, C, vec);
}

// ---- elementwise losses: BCE with logits, MSE -------------------------------------------------

int64_t loss_partial_count(int64_t n) {
  return min64(blocks_for(n, loss_detail::kElementwiseThreads), loss_detail::kMaxPartials);
}

template <typename T>
__device__ __forceinline__ T bce_term(T x, T t, T pw) {
  T softplus_neg = dev_log1p(dev_exp(-dev_abs(x))) + (x < T(0) ? -x : T(0));  // log(1 + e^-x), stable
  return (T(1) - t) * x + (T(1) + (pw - T(1)) * t) * softplus_neg;
}

// Forward of an elementwise loss: each block writes the sum of its grid-stride slice to
// partials[blockIdx.x]. kind 0: BCE with logits (b = targets), kind 1: squared error.
template <typename T, int KIND>
__global__ void __launch_bounds__(loss_detail::kElementwiseThreads)
    elementwise_loss_partials_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                     const T* __restrict__ pos_weight, int64_t n, int64_t C,
                                     double* __restrict__ partials) {
  using namespace loss_detail;
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    if (KIND == 0) {
      acc += (double)bce_term(a[i], b[i], pos_weight ? pos_weight[i % C] : T(1));
    } else {
      T d = a[i] - b[i];
      acc += (double)(d * d);
    }
  }
  acc = block_reduce(acc, Sum(), 0.0, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

template <typename T, int KIND>
void elementwise_loss(const char* name, const T* a, const T* b, const T* pos_weight, double* partials, T* loss,
                      int64_t n, int64_t C, void* stream) {
  using namespace loss_detail;
  require(n > 0 && C > 0, std::string(name) + ": empty input");
  const int64_t blocks = loss_partial_count(n);
  launch(name, elementwise_loss_partials_kernel<T, KIND>, dim3((unsigned)blocks), dim3(kElementwiseThreads), 0,
         stream, a, b, pos_weight, n, C, partials);
  mean<T>(partials, nullptr, blocks, (double)n, loss, stream);
}

template <typename T>
void bce_with_logits_forward(const T* logits, const T* targets, const T* pos_weight, double* partials, T* loss,
                             int64_t n, int64_t C, void* stream) {
  elementwise_loss<T, 0>("bce_with_logits_partials_kernel", logits, targets, pos_weight, partials, loss, n, C, stream);
}

template <typename T>
void mse_forward(const T* pred, const T* target, double* partials, T* loss, int64_t n, void* stream) {
  elementwise_loss<T, 1>("mse_partials_kernel", pred, target, (const T*)nullptr, partials, loss, n, 1, stream);
}

template <typename T>
__global__ void bce_with_logits_backward_kernel(const T* __restrict__ x, const T* __restrict__ t,
                                                const T* __restrict__ pos_weight, T* __restrict__ dx, int64_t n,
                                                int64_t C) {
  const T count = (T)n;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const T pw = pos_weight ? pos_weight[i % C] : T(1);
    dx[i] = ((T(1) - t[i]) * sigmoid(x[i]) - pw * t[i] * sigmoid(-x[i])) / count;
  }
}

template <typename T>
__global__ void mse_backward_kernel(const T* __restrict__ p, const T* __restrict__ t, T* __restrict__ dp, int64_t n) {
  const T count = (T)n;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dp[i] = T(2) * ((p[i] - t[i]) / count);  // (the same bits as 2 (p - t) / n, which overflowed past FLT_MAX / 2)
}

inline dim3 loss_elementwise_grid(int64_t n) {
  return dim3((unsigned)min64(blocks_for(n, loss_detail::kElementwiseThreads), loss_detail::kMaxGridBlocks));
}

template <typename T>
void bce_with_logits_backward(const T* logits, const T* targets, const T* pos_weight, T* dlogits, int64_t n, int64_t C,
                              void* stream) {
  require(n > 0 && C > 0, "bce_with_logits_backward: empty input");
  launch("bce_with_logits_backward_kernel", bce_with_logits_backward_kernel<T>, loss_elementwise_grid(n),
         dim3(loss_detail::kElementwiseThreads), 0, stream, logits, targets, pos_weight, dlogits, n, C);
}

template <typename T>
void mse_backward(const T* pred, const T* target, T* dpred, int64_t n, void* stream) {
  require(n > 0, "mse_backward: empty input");
  launch("mse_backward_kernel", mse_backward_kernel<T>, loss_elementwise_grid(n), dim3(loss_detail::kElementwiseThreads),
         0, stream, pred, target, dpred, n);
}

#define FC_INSTANTIATE_LOSS(T)                                                                                     \
  template void softmax_cross_entropy_forward<T>(const T*, const int64_t*, const T*, double, T*, double*, double*, \
                                                 T*, int64_t, int64_t, void*);                                     \
  template void softmax_cross_entropy_backward<T>(const T*, const int64_t*, const T*, double, double*, T*, int64_t, \
                                                  int64_t, void*);                                                 \
  template void softmax_cross_entropy_with_grad<T>(const T*, const int64_t*, const T*, double, T*, double*, double*, \
                                                   double*, T*, int64_t, int64_t, void*);                          \
  template void bce_with_logits_forward<T>(const T*, const T*, const T*, double*, T*, int64_t, int64_t, void*);    \
  template void bce_with_logits_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, void*);            \
  template void mse_forward<T>(const T*, const T*, double*, T*, int64_t, void*);                                   \
  template void mse_backward<T>(const T*, const T*, T*, int64_t, void*);
FC_INSTANTIATE_LOSS(float)
FC_INSTANTIATE_LOSS(double)
#undef FC_INSTANTIATE_LOSS

}  // namespace fc
