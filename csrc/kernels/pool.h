// Launchers of the 2-D pooling kernels (pool.cuh). Pointers are device pointers under CUDA and
// host pointers under the emulator; `stream` is a cudaStream_t (ignored by the emulator).
// All arrays are C-contiguous NCHW; the Python layer has checked shapes, dtypes, the geometry
// (Ho, Wo >= 1, padding <= kernel / 2) and that every index lies in [0, H * W).
#pragma once

#include "common.h"

namespace fc {

// One pooling: `planes` = N * C input planes of H x W, each pooled to Ho x Wo with a kh x kw
// window, stride (sh, sw) and zero/-inf padding (ph, pw):
//   Ho = (H + 2 ph - kh) / sh + 1,  Wo = (W + 2 pw - kw) / sw + 1.
struct PoolGeometry {
  int64_t planes, H, W, Ho, Wo;
  int64_t kh, kw, sh, sw, ph, pw;
};

// y (planes, Ho, Wo) = window max; indices = h * W + w of the winner within its plane.
template <typename T>
void max_pool2d_forward(const T* x, T* y, int64_t* indices, PoolGeometry g, void* stream);

// dx (planes, H, W) = scatter-add of dy (planes, Ho, Wo) to the recorded indices, computed as a
// deterministic gather. Only planes, H, W, Ho, Wo of `g` are used (the window is not needed).
// `workspace`: null when max_pool2d_plane_fits (one block per plane, in shared memory), else
// 2 * (Ho + Wo + H + W) int64 values.
// Whether max_pool2d_backward can gather a whole plane in one block's shared memory; then it
// takes no workspace (null), else it needs 2 * (Ho + Wo + H + W) int64 of workspace.
bool max_pool2d_plane_fits(int64_t H, int64_t W, int64_t Ho, int64_t Wo, int64_t itemsize);

template <typename T>
void max_pool2d_backward(const T* dy, const int64_t* indices, T* dx, int64_t* workspace, PoolGeometry g,
                         void* stream);

// y = window sum / (kh * kw) (padding counts in the divisor, as count_include_pad=True).
template <typename T>
void avg_pool2d_forward(const T* x, T* y, PoolGeometry g, void* stream);

// dx[h, w] = sum over the windows covering (h, w) of dy / (kh * kw).
template <typename T>
void avg_pool2d_backward(const T* dy, T* dx, PoolGeometry g, void* stream);

}  // namespace fc
