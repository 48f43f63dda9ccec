// Losses: softmax cross-entropy (class weights, label smoothing), binary cross-entropy with
// logits (pos_weight), mean squared error. Each is PyTorch's reduction="mean", natural log.
//
// Math
//   softmax cross-entropy, logits z (N, C), labels y (N), class weights w (C) (all 1 if absent),
//   smoothing e in [0, 1]:
//     m_i = max_c z_ic,  s_i = sum_c exp(z_ic - m_i),  log p_ic = (z_ic - m_i) - log s_i
//     (finite for any finite logits: every exponent is <= 0 and s_i >= 1)
//     r_i = (1 - e) w_{y_i} (-log p_{i,y_i})  +  (e / C) sum_c w_c (-log p_ic)
//     loss = sum_i r_i / W,   W = sum_i w_{y_i}          (W = N without weights)
//   This is torch's definition: target distribution (1 - e) onehot + e/C, and with weights the
//   smoothing term is weighted per class and normalized by the same W as the NLL term.
//   The smoothing sum needs no second pass: sum_c w_c (-log p_ic) = S log s_i - sum_c w_c (z_ic - m_i),
//   S = sum_c w_c, and both terms are >= 0 (no cancellation).
//     dloss/dz_ic = [ p_ic ((1 - e) w_{y_i} + (e/C) S) - (1 - e) w_{y_i} [c = y_i] - (e/C) w_c ] / W
//   (without weights and smoothing: (p_ic - [c = y_i]) / N).
//   A NaN logit makes its row's max or sum NaN, hence its loss and the mean NaN (as in torch).
//
//   BCE with logits, x and t of n elements, pos_weight pw over the last dimension (1 if absent):
//     l = (1 - t) x + (1 + (pw - 1) t) softplus(-x),   softplus(-x) = log1p(exp(-|x|)) + max(-x, 0)
//     loss = sum l / n;   dloss/dx = [ (1 - t) - (1 + (pw - 1) t) sigmoid(-x) ] / n
//   exp(-|x|) <= 1, so both are finite for any finite x.
//
//   MSE: loss = sum (p - t)^2 / n;  dloss/dp = 2 (p - t) / n.
//
// Decomposition
//   Cross-entropy forward: ONE fused kernel pass per row: a warp owns a row when C <= 256 (8 rows
//   per block), else a block of 288..512 threads does (grid-stride over rows); each thread owns
//   the columns c = lane, lane + lanes, ...; the owner reduces the row max, then in one sweep writes exp(z - m) into probs while summing s (and the
//   smoothing sums), rescales its own probs by 1/s, and lane 0 writes the row's loss and weight.
//   Reductions: warp shuffles (xor butterfly, so every lane gets bit-identical results), and for
//   a block-owned row one value per warp through shared memory, then a last warp butterfly.
//   Elementwise losses (BCE, MSE) forward: a fixed number of blocks, loss_partial_count(n),
//   that depends on n only; each thread accumulates a grid-stride slice in double, the block
//   reduces it and writes one partial.
//   Fused forward + backward (softmax_cross_entropy_with_grad, what a training step calls): the
//   same row kernel writes dloss/dz instead of p from each thread's own p_ic, so the logits are
//   read once and the gradient written once (the probs never reach memory); with class weights
//   the totals W and S are reduced first by one block.
//   Mean: a second kernel of one block sums the per-row (or per-block) doubles in a fixed order
//   (thread-strided, then the block tree) and divides by W or n. No float atomics anywhere, so
//   results are bitwise reproducible. Accumulation is double for float32 and float64 inputs.
//   Backward kernels are elementwise grid-stride loops; the weighted cross-entropy backward
//   first reduces W and S with one block (same fixed order).
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
// Max that keeps NaN: a NaN on either side wins.
struct MaxNaN {
  template <typename V>
  __device__ __forceinline__ V operator()(V a, V b) const { return (a > b || a != a) ? a : b; }
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

// Cross-entropy rows of up to kWarpRowMaxClasses classes are owned by one warp (8 rows per
// block of kWarpRowThreads); wider rows by a block of row_threads(C) threads: a multiple of 32
// covering C, at most 512.
constexpr int64_t kWarpRowMaxClasses = 256;
constexpr int kWarpRowThreads = 256;
inline int row_threads(int64_t C) { return (int)min64(512, ((C + 31) / 32) * 32); }

}  // namespace loss_detail

// ---- softmax cross-entropy --------------------------------------------------------------------

// The threads that own one row reduce with a warp butterfly (WARP_ROWS: a warp owns the row) or a
// block reduction (the block owns the row).
template <bool WARP_ROWS, typename V, typename Op>
__device__ __forceinline__ V row_reduce(V v, Op op, V identity, V* scratch) {
  if (WARP_ROWS) return loss_detail::warp_reduce(v, op);
  return loss_detail::block_reduce(v, op, identity, scratch);
}

// dloss/dz_ic from p_ic (see the math above): W = sum_i w_{y_i}, S = sum_c w_c, share = e / C.
// The backward kernel and the fused forward+backward use this one formula, so they agree bitwise.
template <typename T>
__device__ __forceinline__ T cross_entropy_grad(T p, bool is_label, T wy, T wc, T smoothing, T share, T S, T W) {
  const T true_part = (T(1) - smoothing) * wy;
  T g = p * (true_part + share * S) - share * wc;
  if (is_label) g -= true_part;
  return g / W;
}

// GRAD = false: probs = softmax(z). GRAD = true (the fused forward+backward): `probs` receives
// dloss/dz instead, from each thread's own just-computed p_ic; totals = (W, S) when weighted.
template <typename T, bool WARP_ROWS, bool GRAD>
__global__ void softmax_cross_entropy_forward_kernel(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                                                     const T* __restrict__ weight, T smoothing, T* __restrict__ probs,
                                                     double* __restrict__ row_loss, double* __restrict__ row_weight,
                                                     const double* __restrict__ totals, int64_t N, int64_t C) {
  using namespace loss_detail;
  __shared__ T scratch[32];
  const bool smooth = smoothing != T(0);
  const T W = totals ? (T)totals[0] : (T)N, S = totals ? (T)totals[1] : (T)C, share = smoothing / (T)C;
  // Who owns a row: a warp (lanes 0..31, blockDim.x / 32 rows per block) or the whole block.
  const int lane = WARP_ROWS ? threadIdx.x % 32 : threadIdx.x;
  const int lanes = WARP_ROWS ? 32 : blockDim.x;
  const int64_t rows_per_block = WARP_ROWS ? blockDim.x / 32 : 1;
  const int64_t first_row = (int64_t)blockIdx.x * rows_per_block + (WARP_ROWS ? threadIdx.x / 32 : 0);
  // The loop condition is uniform over the row's owner, so every reduction has all its threads.
  for (int64_t row = first_row; row < N; row += (int64_t)gridDim.x * rows_per_block) {
    const T* z = logits + row * C;
    T* p = probs + row * C;

    T m = z[0];  // C >= 1
    for (int64_t c = lane; c < C; c += lanes) m = MaxNaN()(m, z[c]);
    m = row_reduce<WARP_ROWS>(m, MaxNaN(), z[0], scratch);

    // exp(z - m) into probs; s, and for smoothing sum w (z - m) and sum w.
    T s = T(0), w_shift = T(0), w_total = T(0);
    for (int64_t c = lane; c < C; c += lanes) {
      T shifted = z[c] - m;
      T e = dev_exp(shifted);
      p[c] = e;
      s += e;
      if (smooth) {
        T wc = weight ? weight[c] : T(1);
        w_shift += wc * shifted;
        w_total += wc;
      }
    }
    s = row_reduce<WARP_ROWS>(s, Sum(), T(0), scratch);
    if (smooth) {
      w_shift = row_reduce<WARP_ROWS>(w_shift, Sum(), T(0), scratch);
      w_total = row_reduce<WARP_ROWS>(w_total, Sum(), T(0), scratch);
    }
    const T inv_s = T(1) / s;
    if (GRAD) {
      const int64_t y = labels[row];
      const bool valid = y >= 0 && y < C;
      const T wy = weight ? (valid ? weight[y] : T(NAN)) : T(1);
      for (int64_t c = lane; c < C; c += lanes) {  // this thread's own values
        const T g = cross_entropy_grad(p[c] * inv_s, c == y, wy, weight ? weight[c] : T(1), smoothing, share, S, W);
        p[c] = valid ? g : T(NAN);
      }
    } else {
      for (int64_t c = lane; c < C; c += lanes) p[c] *= inv_s;  // this thread's own values
    }

    if (lane == 0) {
      const T log_s = dev_log(s);
      const int64_t y = labels[row];
      T wy = T(1), nll = T(NAN);  // an out-of-range label (the host refuses them) gives NaN, not a stray read
      if (y >= 0 && y < C) {
        if (weight) wy = weight[y];
        nll = log_s - (z[y] - m);
      }
      T r = (T(1) - smoothing) * wy * nll;
      if (smooth) r += smoothing / T(C) * (w_total * log_s - w_shift);
      row_loss[row] = (double)r;
      if (row_weight) row_weight[row] = (double)wy;
    }
  }
}

template <typename T, bool GRAD>
void cross_entropy_rows(const T* logits, const int64_t* labels, const T* weight, double smoothing, T* out,
                        double* row_loss, double* row_weight, const double* totals, int64_t N, int64_t C,
                        void* stream) {
  using namespace loss_detail;
  if (C <= kWarpRowMaxClasses) {
    constexpr int rows_per_block = kWarpRowThreads / 32;
    launch("softmax_cross_entropy_forward_kernel<warp per row>", softmax_cross_entropy_forward_kernel<T, true, GRAD>,
           dim3((unsigned)min64((N + rows_per_block - 1) / rows_per_block, kMaxRowBlocks)), dim3(kWarpRowThreads), 0,
           stream, logits, labels, weight, (T)smoothing, out, row_loss, row_weight, totals, N, C);
  } else {
    launch("softmax_cross_entropy_forward_kernel<block per row>", softmax_cross_entropy_forward_kernel<T, false, GRAD>,
           dim3((unsigned)min64(N, kMaxRowBlocks)), dim3(row_threads(C)), 0, stream, logits, labels, weight,
           (T)smoothing, out, row_loss, row_weight, totals, N, C);
  }
}

template <typename T>
void softmax_cross_entropy_forward(const T* logits, const int64_t* labels, const T* weight, double smoothing, T* probs,
                                   double* row_loss, double* row_weight, T* loss, int64_t N, int64_t C, void* stream) {
  using namespace loss_detail;
  require(N > 0 && C > 0, "softmax_cross_entropy_forward: empty logits");
  require(!weight || row_weight, "softmax_cross_entropy_forward: weight needs the row_weight workspace");
  row_weight = weight ? row_weight : nullptr;
  cross_entropy_rows<T, false>(logits, labels, weight, smoothing, probs, row_loss, row_weight, nullptr, N, C, stream);
  mean<T>(row_loss, row_weight, N, (double)N, loss, stream);
}


// totals[0] = sum_i weight[labels[i]], totals[1] = sum_c weight[c]. One block, fixed order.
template <typename T>
__global__ void __launch_bounds__(loss_detail::kMeanThreads)
    cross_entropy_weight_totals_kernel(const int64_t* __restrict__ labels, const T* __restrict__ weight, int64_t N,
                                       int64_t C, double* __restrict__ totals) {
  using namespace loss_detail;
  __shared__ double scratch[32];
  double label_sum = 0.0, class_sum = 0.0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    int64_t y = labels[i];
    label_sum += (y >= 0 && y < C) ? (double)weight[y] : (double)NAN;
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) class_sum += (double)weight[c];
  label_sum = block_reduce(label_sum, Sum(), 0.0, scratch);
  class_sum = block_reduce(class_sum, Sum(), 0.0, scratch);
  if (threadIdx.x == 0) {
    totals[0] = label_sum;
    totals[1] = class_sum;
  }
}

template <typename T>
void softmax_cross_entropy_with_grad(const T* logits, const int64_t* labels, const T* weight, double smoothing,
                                     T* dlogits, double* row_loss, double* row_weight, double* totals, T* loss,
                                     int64_t N, int64_t C, void* stream) {
  using namespace loss_detail;
  require(N > 0 && C > 0, "softmax_cross_entropy_with_grad: empty logits");
  require(!weight || (row_weight && totals),
          "softmax_cross_entropy_with_grad: weight needs the row_weight and totals workspaces");
  if (weight)  // W and S first: every row's gradient is divided by W
    launch("cross_entropy_weight_totals_kernel", cross_entropy_weight_totals_kernel<T>, dim3(1), dim3(kMeanThreads), 0,
           stream, labels, weight, N, C, totals);
  else
    row_weight = totals = nullptr;
  cross_entropy_rows<T, true>(logits, labels, weight, smoothing, dlogits, row_loss, row_weight, totals, N, C, stream);
  mean<T>(row_loss, row_weight, N, (double)N, loss, stream);
}

template <typename T>
__global__ void softmax_cross_entropy_backward_kernel(const T* __restrict__ probs, const int64_t* __restrict__ labels,
                                                      const T* __restrict__ weight, T smoothing,
                                                      const double* __restrict__ totals, T* __restrict__ dlogits,
                                                      int64_t N, int64_t C) {
  const T W = totals ? (T)totals[0] : (T)N;  // sum_i w_{y_i}
  const T S = totals ? (T)totals[1] : (T)C;  // sum_c w_c
  const T share = smoothing / (T)C;          // e / C
  const int64_t n = N * C;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / C, c = i - row * C;
    const int64_t y = labels[row];
    const bool valid = y >= 0 && y < C;
    const T wy = weight ? (valid ? weight[y] : T(NAN)) : T(1);
    const T g = cross_entropy_grad(probs[i], c == y, wy, weight ? weight[c] : T(1), smoothing, share, S, W);
    dlogits[i] = valid ? g : T(NAN);
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
  const int64_t n = N * C;
  launch("softmax_cross_entropy_backward_kernel", softmax_cross_entropy_backward_kernel<T>,
         dim3((unsigned)min64(blocks_for(n, kElementwiseThreads), kMaxGridBlocks)), dim3(kElementwiseThreads), 0,
         stream, probs, labels, weight, (T)smoothing, weight ? (const double*)totals : (const double*)nullptr,
         dlogits, N, C);
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
    dx[i] = ((T(1) - t[i]) - (T(1) + (pw - T(1)) * t[i]) * sigmoid(-x[i])) / count;
  }
}

template <typename T>
__global__ void mse_backward_kernel(const T* __restrict__ p, const T* __restrict__ t, T* __restrict__ dp, int64_t n) {
  const T count = (T)n;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dp[i] = T(2) * (p[i] - t[i]) / count;
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
