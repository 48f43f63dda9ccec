// Launchers of the 2-D convolution kernels (conv.cuh). Pointers are device pointers under CUDA and
// host pointers under the emulator; `stream` is a cudaStream_t (ignored by the emulator).
// All arrays are C-contiguous NCHW; the Python layer has checked shapes, dtypes and ranges.
#pragma once

#include "common.h"

namespace fc {

// One convolution's geometry. x (N, C, H, W), w (C_out, C/groups, KH, KW), y (N, C_out, OH, OW);
// pad_h / pad_w are the top / left padding (the bottom / right padding only shapes OH / OW, which
// the caller computed).
struct ConvShape {
  int64_t N, C, H, W, C_out, KH, KW, OH, OW;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
};

// y = act(conv(x, w) + bias); bias (C_out) may be null.
template <typename T>
void conv2d_forward(const T* x, const T* w, const T* bias, T* y, const ConvShape& s, int act, void* stream);

// dx = d(sum(y * dy)) / dx for y = conv(x, w).
template <typename T>
void conv2d_backward_data(const T* dy, const T* w, T* dx, const ConvShape& s, void* stream);

// dw = d(sum(y * dy)) / dw and, when db is not null, db[o] = sum over n, oh, ow of dy[n, o, oh, ow].
// With splits > 1 the reduction over N*OH*OW is cut into `splits` slices whose partial results go
// to `workspace` (splits * C_out * (C/groups * KH * KW + (db ? 1 : 0)) values) and are then summed in
// a fixed order (deterministic, no atomics); with splits == 1 workspace may be null.
template <typename T>
void conv2d_backward_weight(const T* dy, const T* x, T* dw, T* db, T* workspace, int64_t splits, const ConvShape& s,
                            void* stream);

// The slice count conv2d_backward_weight is meant to get for this shape (a pure function of it).
int64_t conv2d_backward_weight_slices(const ConvShape& s, bool bias);

// Tensors and coordinates below `limit` elements use the 32-bit index kernels (default 2^30);
// tests lower it to run the 64-bit ones on small shapes.
void conv_set_index32_limit(int64_t limit);

}  // namespace fc
