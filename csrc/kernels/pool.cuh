// 2-D max and average pooling, forward and backward (NCHW, PyTorch's semantics, ceil_mode=False).
//
// Math (per input plane x of H x W; output y of Ho x Wo; window kh x kw, stride (sh, sw),
// padding (ph, pw) with ph <= kh / 2, pw <= kw / 2):
//   window(ho, wo) = rows [ho*sh - ph, ho*sh - ph + kh) x cols [wo*sw - pw, wo*sw - pw + kw),
//                    clipped to the plane (never empty, since padding <= kernel / 2)
//   Ho = (H + 2 ph - kh) / sh + 1,  Wo = (W + 2 pw - kw) / sw + 1      (floor division)
//   max forward   y[ho, wo] = max over the window; idx[ho, wo] = h * W + w of the winner.
//                 Scanned in row-major window order with `v > best || isnan(v)`, starting from
//                 best = -inf at the window's first in-plane position: ties keep the first max,
//                 a NaN wins (the last NaN of the window), exactly PyTorch's CPU and CUDA rule.
//                 Padded positions are never read (implicit -inf).
//   max backward  dx[i] = sum of dy[o] over the outputs o of the plane with idx[o] == i.
//   avg forward   y[ho, wo] = (sum of x over the clipped window) / (kh * kw)
//                 (padding counts in the divisor: count_include_pad=True)
//   avg backward  dx[h, w] = (sum of dy[ho, wo] over the windows covering (h, w)) / (kh * kw);
//                 the covering windows of padded row hp = h + ph are
//                 ho in [hp < kh ? 0 : (hp - kh) / sh + 1, min(hp / sh, Ho - 1)], same for columns.
//   Both average sums run in double and are divided before the one rounding to T: as the cpu
//   backend's forward, so float32 windows near FLT_MAX (whose float32 sum overflowed) give the same
//   finite average there; a few double adds per element, against a memory-bound kernel.
//
// Decomposition: one thread per output element (forward) or per input element (backward), flat
// 64-bit index over (plane, row, col), grid-stride loops. No atomics anywhere: every result is
// deterministic (the max backward's bounds step below is the only user of shared memory).
//
// Max backward as a gather without the window geometry. The backward only receives the indices,
// so it cannot enumerate "the windows that cover (h, w)". Instead it derives, from the indices
// themselves, a range of output rows (cols) that can have picked input row h (col w):
//   1. bounds: for each output row ho, rmin/rmax[ho] = min/max of idx / W over all planes and wo
//      (for each output col wo, cmin/cmax[wo] from idx % W). One block per output row or col,
//      a shared-memory min/max reduction.
//   2. envelope: for each input row h, [lo_h, hi_h] = first/last ho with rmin[ho] <= h <= rmax[ho]
//      (empty when none); same for columns. One thread per input row or col.
//   3. gather: thread (plane, h, w) sums dy over ho in [lo_h, hi_h], wo in [lo_w, hi_w] where
//      idx == h * W + w, in row-major output order.
// Complete for ANY in-range indices: an output (ho, wo) whose index is (h, w) has
// rmin[ho] <= h <= rmax[ho] and cmin[wo] <= w <= cmax[wo], so it lies in both envelopes.
// An index outside [0, H * W) (possible only when the op's range check is skipped) is left out of
// the bounds and matches no input: its dy adds nowhere, and nothing is read or written out of bounds.
// Cheap for indices from a real pooling: a picked row lies in its window, so the envelope is
// inside the set of windows covering h (at most ceil(kh / sh) rows), as in PyTorch's gather.
// The sum runs in output order, so the result equals a sequential scatter-add bit for bit.
// Planes that fit in shared memory (max_pool2d_plane_fits) take one block per plane instead:
// the block loads the plane's indices and dy into shared memory once and runs the three steps
// on that plane alone (its own, tighter envelopes; the same argument makes them complete). The
// global steps 1-2 above use only Ho + Wo blocks, each reading every plane: latency-bound on a
// GPU (the reference CNN's pool backward: 246 us for 22 MB on an H200).
#pragma once

#include "common.cuh"
#include "pool.h"

namespace fc {

namespace pool_launch {
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;
inline dim3 grid_for(int64_t n) { return dim3((unsigned)min64(blocks_for(n, kThreads), kMaxBlocks)); }
}  // namespace pool_launch

#define FC_GRID_STRIDE(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

template <typename T>
__global__ void max_pool2d_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t* __restrict__ indices,
                                          PoolGeometry g) {
  const int64_t total = g.planes * g.Ho * g.Wo;
  FC_GRID_STRIDE(i, total) {
    const int64_t wo = i % g.Wo, ho = (i / g.Wo) % g.Ho, plane = i / (g.Wo * g.Ho);
    const int64_t h_first = ho * g.sh - g.ph, w_first = wo * g.sw - g.pw;
    const int64_t h_end = min64(h_first + g.kh, g.H), w_end = min64(w_first + g.kw, g.W);
    const int64_t h0 = max64(h_first, 0), w0 = max64(w_first, 0);
    const T* plane_x = x + plane * g.H * g.W;
    T best = -static_cast<T>(INFINITY);
    int64_t best_index = h0 * g.W + w0;
    for (int64_t h = h0; h < h_end; ++h)
      for (int64_t w = w0; w < w_end; ++w) {
        const T v = plane_x[h * g.W + w];
        if (v > best || v != v) {  // v != v: NaN wins
          best = v;
          best_index = h * g.W + w;
        }
      }
    y[i] = best;
    indices[i] = best_index;
  }
}

// Workspace layout of the max backward (int64): rmin[Ho] rmax[Ho] cmin[Wo] cmax[Wo]
// lo_h[H] hi_h[H] lo_w[W] hi_w[W].
struct MaxBackwardWorkspace {
  int64_t *rmin, *rmax, *cmin, *cmax, *lo_h, *hi_h, *lo_w, *hi_w;
  __host__ __device__ MaxBackwardWorkspace(int64_t* ws, const PoolGeometry& g)
      : rmin(ws), rmax(ws + g.Ho), cmin(ws + 2 * g.Ho), cmax(ws + 2 * g.Ho + g.Wo),
        lo_h(ws + 2 * (g.Ho + g.Wo)), hi_h(ws + 2 * (g.Ho + g.Wo) + g.H),
        lo_w(ws + 2 * (g.Ho + g.Wo + g.H)), hi_w(ws + 2 * (g.Ho + g.Wo + g.H) + g.W) {}
};

// Step 1: block b < Ho reduces output row b over (plane, wo); block Ho + c reduces output col c
// over (plane, ho). (The workspace kernels do not depend on T: plain functions.)
__global__ void __launch_bounds__(pool_launch::kThreads)
    max_pool2d_bounds_kernel(const int64_t* __restrict__ indices, int64_t* workspace, PoolGeometry g) {
  __shared__ int64_t smin[pool_launch::kThreads];
  __shared__ int64_t smax[pool_launch::kThreads];
  MaxBackwardWorkspace ws(workspace, g);
  const int64_t b = blockIdx.x;
  const bool is_row = b < g.Ho;
  const int64_t line = is_row ? b : b - g.Ho;            // the output row or col this block owns
  const int64_t across = is_row ? g.Wo : g.Ho;           // positions of that line per plane
  int64_t lo = INT64_MAX, hi = -1;
  for (int64_t j = threadIdx.x; j < g.planes * across; j += blockDim.x) {
    const int64_t plane = j / across, k = j % across;
    const int64_t o = is_row ? (plane * g.Ho + line) * g.Wo + k : (plane * g.Ho + k) * g.Wo + line;
    const int64_t index = indices[o];
    if (index < 0 || index >= g.H * g.W) continue;  // adds nowhere (see the top)
    const int64_t v = is_row ? index / g.W : index % g.W;
    lo = min64(lo, v);
    hi = max64(hi, v);
  }
  smin[threadIdx.x] = lo;
  smax[threadIdx.x] = hi;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if ((int)threadIdx.x < half) {
      smin[threadIdx.x] = min64(smin[threadIdx.x], smin[threadIdx.x + half]);
      smax[threadIdx.x] = max64(smax[threadIdx.x], smax[threadIdx.x + half]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    (is_row ? ws.rmin : ws.cmin)[line] = smin[0];
    (is_row ? ws.rmax : ws.cmax)[line] = smax[0];
  }
}

// Step 2 for one input row or col at `pos`: [lo, hi] = the first and last of the `count` output
// lines whose bounds contain pos (lo = count, hi = -1: empty). I: the bounds' integer type.
template <typename I>
__device__ __forceinline__ void max_pool2d_envelope(const I* lows, const I* highs, I count, I pos, I* lo, I* hi) {
  I first = count, last = -1;  // empty unless some output line picked this position
  for (I o = 0; o < count; ++o)
    if (lows[o] <= pos && pos <= highs[o]) {
      if (first == count) first = o;
      last = o;
    }
  *lo = first;
  *hi = last;
}

// Step 3 for input position hw = (h, w) of one plane: the sum of dy over the outputs of its
// envelope that picked hw, in output order.
template <typename T, typename I>
__device__ __forceinline__ T max_pool2d_gather(const int64_t* plane_idx, const T* plane_dy, int64_t Wo, int64_t hw,
                                               I ho0, I ho1, I wo0, I wo1) {
  T sum = T(0);
  for (int64_t ho = ho0; ho <= ho1; ++ho)
    for (int64_t wo = wo0; wo <= wo1; ++wo)
      if (plane_idx[ho * Wo + wo] == hw) sum += plane_dy[ho * Wo + wo];
  return sum;
}

// Step 2: thread t < H finds input row t's envelope of output rows, thread H + c input col c's.
__global__ void max_pool2d_envelope_kernel(int64_t* workspace, PoolGeometry g) {
  MaxBackwardWorkspace ws(workspace, g);
  FC_GRID_STRIDE(t, g.H + g.W) {
    if (t < g.H) max_pool2d_envelope(ws.rmin, ws.rmax, g.Ho, t, ws.lo_h + t, ws.hi_h + t);
    else max_pool2d_envelope(ws.cmin, ws.cmax, g.Wo, t - g.H, ws.lo_w + (t - g.H), ws.hi_w + (t - g.H));
  }
}

// Step 3: the gather, one thread per input element.
template <typename T>
__global__ void max_pool2d_backward_kernel(const T* __restrict__ dy, const int64_t* __restrict__ indices,
                                           T* __restrict__ dx, int64_t* workspace, PoolGeometry g) {
  const MaxBackwardWorkspace ws(workspace, g);
  const int64_t total = g.planes * g.H * g.W;
  FC_GRID_STRIDE(i, total) {
    const int64_t hw = i % (g.H * g.W), plane = i / (g.H * g.W);
    const int64_t h = hw / g.W, w = hw % g.W;
    dx[i] = max_pool2d_gather(indices + plane * g.Ho * g.Wo, dy + plane * g.Ho * g.Wo, g.Wo, hw, ws.lo_h[h],
                              ws.hi_h[h], ws.lo_w[w], ws.hi_w[w]);
  }
}

// Shared memory of the per-plane max backward: idx[Ho*Wo] (int64), dy[Ho*Wo] (T), then int32
// rmin/rmax[Ho], cmin/cmax[Wo], lo/hi_h[H], lo/hi_w[W].
constexpr int64_t kPlaneSharedBytes = 48 * 1024;  // the default per-block limit: no opt-in needed

inline int64_t max_pool2d_plane_bytes(int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t itemsize) {
  return Ho * Wo * (int64_t)(sizeof(int64_t) + itemsize) + 2 * (Ho + Wo + H + W) * (int64_t)sizeof(int);
}

bool max_pool2d_plane_fits(int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t itemsize) {
  return max_pool2d_plane_bytes(H, W, Ho, Wo, itemsize) <= kPlaneSharedBytes;
}

template <typename T>
__global__ void __launch_bounds__(pool_launch::kThreads)
    max_pool2d_backward_plane_kernel(const T* __restrict__ dy, const int64_t* __restrict__ indices,
                                     T* __restrict__ dx, PoolGeometry g) {
  FC_DYNAMIC_SMEM(int64_t, idx);
  const int64_t P = g.Ho * g.Wo, HW = g.H * g.W;
  T* dys = reinterpret_cast<T*>(idx + P);
  int* rmin = reinterpret_cast<int*>(dys + P);
  int *rmax = rmin + g.Ho, *cmin = rmax + g.Ho, *cmax = cmin + g.Wo;
  int *lo_h = cmax + g.Wo, *hi_h = lo_h + g.H, *lo_w = hi_h + g.H, *hi_w = lo_w + g.W;
  for (int64_t plane = blockIdx.x; plane < g.planes; plane += gridDim.x) {
    for (int64_t o = threadIdx.x; o < P; o += blockDim.x) {
      idx[o] = indices[plane * P + o];
      dys[o] = dy[plane * P + o];
    }
    __syncthreads();
    // 1. bounds of each output row (thread t < Ho) and col (Ho <= t < Ho + Wo)
    for (int64_t t = threadIdx.x; t < g.Ho + g.Wo; t += blockDim.x) {
      const bool is_row = t < g.Ho;
      const int64_t line = is_row ? t : t - g.Ho, across = is_row ? g.Wo : g.Ho;
      int64_t lo = is_row ? g.H : g.W, hi = -1;  // an empty line (every index out of range) contains no position
      for (int64_t k = 0; k < across; ++k) {
        const int64_t index = is_row ? idx[line * g.Wo + k] : idx[k * g.Wo + line];
        if (index < 0 || index >= HW) continue;  // adds nowhere (see the top)
        const int64_t v = is_row ? index / g.W : index % g.W;
        lo = min64(lo, v);
        hi = max64(hi, v);
      }
      (is_row ? rmin : cmin)[line] = (int)lo;
      (is_row ? rmax : cmax)[line] = (int)hi;
    }
    __syncthreads();
    // 2. envelope of each input row (t < H) and col (H <= t < H + W)
    for (int t = threadIdx.x; t < g.H + g.W; t += blockDim.x) {
      const int r = t - (int)g.H;
      if (r < 0) max_pool2d_envelope(rmin, rmax, (int)g.Ho, t, lo_h + t, hi_h + t);
      else max_pool2d_envelope(cmin, cmax, (int)g.Wo, r, lo_w + r, hi_w + r);
    }
    __syncthreads();
    // 3. the gather, in output order
    for (int64_t hw = threadIdx.x; hw < HW; hw += blockDim.x) {
      const int64_t h = hw / g.W, w = hw % g.W;
      dx[plane * HW + hw] = max_pool2d_gather(idx, dys, g.Wo, hw, lo_h[h], hi_h[h], lo_w[w], hi_w[w]);
    }
    __syncthreads();  // before the next plane overwrites shared memory
  }
}

template <typename T>
__global__ void avg_pool2d_forward_kernel(const T* __restrict__ x, T* __restrict__ y, PoolGeometry g) {
  const int64_t total = g.planes * g.Ho * g.Wo;
  const double divisor = double(g.kh * g.kw);
  FC_GRID_STRIDE(i, total) {
    const int64_t wo = i % g.Wo, ho = (i / g.Wo) % g.Ho, plane = i / (g.Wo * g.Ho);
    const int64_t h_first = ho * g.sh - g.ph, w_first = wo * g.sw - g.pw;
    const int64_t h_end = min64(h_first + g.kh, g.H), w_end = min64(w_first + g.kw, g.W);
    const T* plane_x = x + plane * g.H * g.W;
    double sum = 0.0;
    for (int64_t h = max64(h_first, 0); h < h_end; ++h)
      for (int64_t w = max64(w_first, 0); w < w_end; ++w) sum += plane_x[h * g.W + w];
    y[i] = T(sum / divisor);
  }
}

template <typename T>
__global__ void avg_pool2d_backward_kernel(const T* __restrict__ dy, T* __restrict__ dx, PoolGeometry g) {
  const int64_t total = g.planes * g.H * g.W;
  const double divisor = double(g.kh * g.kw);
  FC_GRID_STRIDE(i, total) {
    const int64_t w = i % g.W, h = (i / g.W) % g.H, plane = i / (g.W * g.H);
    const int64_t hp = h + g.ph, wp = w + g.pw;  // position in the padded plane
    const int64_t ho0 = hp < g.kh ? 0 : (hp - g.kh) / g.sh + 1, ho1 = min64(hp / g.sh, g.Ho - 1);
    const int64_t wo0 = wp < g.kw ? 0 : (wp - g.kw) / g.sw + 1, wo1 = min64(wp / g.sw, g.Wo - 1);
    const T* plane_dy = dy + plane * g.Ho * g.Wo;
    double sum = 0.0;
    for (int64_t ho = ho0; ho <= ho1; ++ho)
      for (int64_t wo = wo0; wo <= wo1; ++wo) sum += plane_dy[ho * g.Wo + wo];
    dx[i] = T(sum / divisor);
  }
}

#undef FC_GRID_STRIDE

template <typename T>
void max_pool2d_forward(const T* x, T* y, int64_t* indices, PoolGeometry g, void* stream) {
  const int64_t n = g.planes * g.Ho * g.Wo;
  if (n == 0) return;
  launch("max_pool2d_forward_kernel", max_pool2d_forward_kernel<T>, pool_launch::grid_for(n),
         dim3(pool_launch::kThreads), 0, stream, x, y, indices, g);
}

template <typename T>
void max_pool2d_backward(const T* dy, const int64_t* indices, T* dx, int64_t* workspace, PoolGeometry g,
                         void* stream) {
  const int64_t n = g.planes * g.H * g.W;
  if (n == 0) return;
  require(g.Ho >= 1 && g.Wo >= 1 && g.Ho + g.Wo <= 2147483647, "max_pool2d_backward: bad output size");
  if (!workspace) {  // the caller checked max_pool2d_plane_fits
    require(max_pool2d_plane_fits(g.H, g.W, g.Ho, g.Wo, sizeof(T)),
            "max_pool2d_backward: the plane does not fit in shared memory; pass the workspace");
    launch("max_pool2d_backward_plane_kernel", max_pool2d_backward_plane_kernel<T>,
           dim3((unsigned)min64(g.planes, 1 << 20)), dim3(pool_launch::kThreads),
           (size_t)max_pool2d_plane_bytes(g.H, g.W, g.Ho, g.Wo, sizeof(T)), stream, dy, indices, dx, g);
    return;
  }
  launch("max_pool2d_bounds_kernel", max_pool2d_bounds_kernel, dim3((unsigned)(g.Ho + g.Wo)),
         dim3(pool_launch::kThreads), 0, stream, indices, workspace, g);
  launch("max_pool2d_envelope_kernel", max_pool2d_envelope_kernel, pool_launch::grid_for(g.H + g.W),
         dim3(pool_launch::kThreads), 0, stream, workspace, g);
  launch("max_pool2d_backward_kernel", max_pool2d_backward_kernel<T>, pool_launch::grid_for(n),
         dim3(pool_launch::kThreads), 0, stream, dy, indices, dx, workspace, g);
}

template <typename T>
void avg_pool2d_forward(const T* x, T* y, PoolGeometry g, void* stream) {
  const int64_t n = g.planes * g.Ho * g.Wo;
  if (n == 0) return;
  launch("avg_pool2d_forward_kernel", avg_pool2d_forward_kernel<T>, pool_launch::grid_for(n),
         dim3(pool_launch::kThreads), 0, stream, x, y, g);
}

template <typename T>
void avg_pool2d_backward(const T* dy, T* dx, PoolGeometry g, void* stream) {
  const int64_t n = g.planes * g.H * g.W;
  if (n == 0) return;
  launch("avg_pool2d_backward_kernel", avg_pool2d_backward_kernel<T>, pool_launch::grid_for(n),
         dim3(pool_launch::kThreads), 0, stream, dy, dx, g);
}

#define FC_INSTANTIATE_POOL(T)                                                                                 \
  template void max_pool2d_forward<T>(const T*, T*, int64_t*, PoolGeometry, void*);                           \
  template void max_pool2d_backward<T>(const T*, const int64_t*, T*, int64_t*, PoolGeometry, void*);          \
  template void avg_pool2d_forward<T>(const T*, T*, PoolGeometry, void*);                                      \
  template void avg_pool2d_backward<T>(const T*, T*, PoolGeometry, void*);
FC_INSTANTIATE_POOL(float)
FC_INSTANTIATE_POOL(double)
#undef FC_INSTANTIATE_POOL

}  // namespace fc
