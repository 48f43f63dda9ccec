// Device helpers shared by the kernels: overloads that pick the float or double intrinsic,
// the fused activations, and aligned vector loads.
#pragma once

#include "../compat.h"
#include "../launch.h"
#include "common.h"

namespace fc {

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double dev_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float dev_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dev_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double dev_abs(double x) { return fabs(x); }

// relu keeps NaN (as torch.relu does): only a value known to be negative becomes 0.
template <typename T>
__device__ __forceinline__ T relu(T x) { return x < T(0) ? T(0) : x; }

// 1 / (1 + e^-x) without overflow: e^-|x| never exceeds 1.
template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  T e = dev_exp(-dev_abs(x));
  return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T>
__device__ __forceinline__ T activate(T x, int act) {
  if (act == kActRelu) return relu(x);
  if (act == kActSigmoid) return sigmoid(x);
  return x;
}

// 4 consecutive values from / to 16-byte aligned memory (shared or global): one 16-byte access
// for float, two for double.
__device__ __forceinline__ void vec_load4(const float* p, float out[4]) {
  float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
__device__ __forceinline__ void vec_load4(const double* p, double out[4]) {
  double2 v0 = reinterpret_cast<const double2*>(p)[0], v1 = reinterpret_cast<const double2*>(p)[1];
  out[0] = v0.x; out[1] = v0.y; out[2] = v1.x; out[3] = v1.y;
}
__device__ __forceinline__ void vec_store4(float* p, const float v[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void vec_store4(double* p, const double v[4]) {
  reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
  reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}

// Loads p[0..3] into out: one vector load when `vec` (caller checked alignment) and all four are
// in bounds, else scalar loads of the first `valid` and zeros for the rest.
template <typename T>
__device__ __forceinline__ void load4(const T* p, bool vec, int64_t valid, T out[4]) {
  if (vec && valid >= 4) {
    vec_load4(p, out);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = j < valid ? p[j] : T(0);
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace fc
