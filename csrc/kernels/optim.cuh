// Optimizer steps: torch.optim.SGD and torch.optim.Adam / AdamW, one fused elementwise pass each.
//
// Math (per element; p param, g grad; all updates in place; torch's single-tensor algorithm with
// its order of operations, so float32 results round as torch's do up to FMA contraction):
//   SGD (dampening 0)
//     g = g + weight_decay * p                              (when weight_decay != 0)
//     b = momentum * b + g                                  (when momentum != 0; b the velocity)
//     g = nesterov ? g + momentum * b : b
//     p = p - lr * g
//   torch starts the velocity as b = g on the first step; a zero-initialized b gives
//   momentum * 0 + g = g, the same value, so the caller passes zeros for a new buffer.
//   Adam (step t >= 1, bias corrections computed by the caller in double)
//     AdamW (decoupled): p = p * (1 - lr * weight_decay);  Adam (L2): g = g + weight_decay * p
//     m = lerp(m, g, 1 - beta1)         torch's lerp: w < 0.5 ? m + w (g - m) : g - (g - m)(1 - w)
//     v = beta2 * v + (1 - beta2) * g * g
//     p = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),  step_size = lr / (1 - beta1^t)
//   The scalars arrive as double and are rounded to T once (torch casts its Python floats the same way).
//
// Decomposition: a grid-stride loop over the n elements, one element per thread per iteration,
// 64-bit indices. Each element is read once and written once: memory-bound, 3 (SGD without
// momentum) to 7 (Adam) value streams.
// SGD foreach (all of a model's parameter tensors in one launch, as torch's foreach path): the
// tensors' pointers, sizes and first blocks travel in the kernel's arguments (up to
// kSgdForeachTensors per launch); each tensor gets the blocks sgd_step would give it alone, laid
// end to end in one grid, and a block finds its tensor by scanning the first blocks. A small
// model's step is bound by the host's launches, not by memory: 8 tensors, 1 launch instead of 8.
// Adam foreach the same way, each tensor with its own bias corrections (its own step count).
#pragma once

#include "common.cuh"
#include "optim.h"

namespace fc {

namespace optim_launch {
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;
inline dim3 grid_for(int64_t n) { return dim3((unsigned)min64(blocks_for(n, kThreads), kMaxBlocks)); }

// A foreach launch's grid: each of the first `here` tensors (n[k] values) gets the blocks its
// single-tensor launch would have, end to end from first_block[k]; the entries from `here` on
// hold the total (where the kernel's scan stops). Returns the total.
template <int kSlots>
int64_t lay_out_blocks(const int64_t (&n)[kSlots], int here, int64_t (&first_block)[kSlots + 1]) {
  int64_t blocks = 0;
  for (int k = 0; k < here; ++k) {
    first_block[k] = blocks;
    blocks += n[k] ? (int64_t)grid_for(n[k]).x : 0;
  }
  for (int k = here; k <= kSlots; ++k) first_block[k] = blocks;
  return blocks;
}
}  // namespace optim_launch

// Block `block` of the `blocks` that share one tensor's SGD step (a grid-stride loop over them).
template <typename T>
__device__ __forceinline__ void sgd_update(T* __restrict__ param, const T* __restrict__ grad,
                                           T* __restrict__ velocity, int64_t n, int64_t block, int64_t blocks, T lr,
                                           T momentum, T weight_decay, bool nesterov) {
  for (int64_t i = block * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x) {
    const T p = param[i];
    T g = grad[i];
    if (weight_decay != T(0)) g = g + weight_decay * p;
    if (momentum != T(0)) {
      const T b = velocity[i] * momentum + g;
      velocity[i] = b;
      g = nesterov ? g + momentum * b : b;
    }
    param[i] = p - lr * g;
  }
}

template <typename T>
__global__ void sgd_step_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ velocity,
                                int64_t n, T lr, T momentum, T weight_decay, bool nesterov) {
  sgd_update(param, grad, velocity, n, blockIdx.x, gridDim.x, lr, momentum, weight_decay, nesterov);
}

template <typename T>
struct SgdTensors {  // one launch's tensors, passed by value in the kernel's arguments (1.3 KiB)
  T* param[kSgdForeachTensors];
  const T* grad[kSgdForeachTensors];
  T* velocity[kSgdForeachTensors];
  int64_t n[kSgdForeachTensors];
  int64_t first_block[kSgdForeachTensors + 1];  // tensor k owns blocks [first_block[k], first_block[k + 1])
};

template <typename T>
__global__ void sgd_step_foreach_kernel(SgdTensors<T> t, T lr, T momentum, T weight_decay, bool nesterov) {
  int k = 0;
  while ((int64_t)blockIdx.x >= t.first_block[k + 1]) ++k;  // at most 32 steps, the same for the whole block
  sgd_update(t.param[k], t.grad[k], t.velocity[k], t.n[k], blockIdx.x - t.first_block[k],
             t.first_block[k + 1] - t.first_block[k], lr, momentum, weight_decay, nesterov);
}

// Block `block` of the `blocks` that share one tensor's Adam step (a grid-stride loop over them).
template <typename T>
__device__ __forceinline__ void adam_update(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ m,
                                            T* __restrict__ v, int64_t n, int64_t block, int64_t blocks,
                                            T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay,
                                            bool decoupled, T decay, T step_size, T bias_correction2_sqrt) {
  const bool small_weight = one_minus_beta1 < T(0.5);
  for (int64_t i = block * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x) {
    T p = param[i], g = grad[i];
    if (weight_decay != T(0)) {
      if (decoupled) p = p * decay;
      else g = g + weight_decay * p;
    }
    T mi = m[i];
    mi = small_weight ? mi + one_minus_beta1 * (g - mi) : g - (g - mi) * (T(1) - one_minus_beta1);
    const T vi = v[i] * beta2 + one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const T denom = dev_sqrt(vi) / bias_correction2_sqrt + eps;
    param[i] = p - step_size * mi / denom;
  }
}

template <typename T>
__global__ void adam_step_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ m,
                                 T* __restrict__ v, int64_t n, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                 T weight_decay, bool decoupled, T decay, T step_size, T bias_correction2_sqrt) {
  adam_update(param, grad, m, v, n, blockIdx.x, gridDim.x, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
              decoupled, decay, step_size, bias_correction2_sqrt);
}

template <typename T>
struct AdamTensors {  // one launch's tensors, passed by value in the kernel's arguments (2.0 KiB)
  T* param[kAdamForeachTensors];
  const T* grad[kAdamForeachTensors];
  T* m[kAdamForeachTensors];
  T* v[kAdamForeachTensors];
  int64_t n[kAdamForeachTensors];
  T step_size[kAdamForeachTensors];
  T bias_correction2_sqrt[kAdamForeachTensors];
  int64_t first_block[kAdamForeachTensors + 1];  // tensor k owns blocks [first_block[k], first_block[k + 1])
};

template <typename T>
__global__ void adam_step_foreach_kernel(AdamTensors<T> t, T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                         T weight_decay, bool decoupled, T decay) {
  int k = 0;
  while ((int64_t)blockIdx.x >= t.first_block[k + 1]) ++k;  // at most 32 steps, the same for the whole block
  adam_update(t.param[k], t.grad[k], t.m[k], t.v[k], t.n[k], blockIdx.x - t.first_block[k],
              t.first_block[k + 1] - t.first_block[k], one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay,
              decoupled, decay, t.step_size[k], t.bias_correction2_sqrt[k]);
}

template <typename T>
void sgd_step(T* param, const T* grad, T* velocity, int64_t n, double lr, double momentum, double weight_decay,
              bool nesterov, void* stream) {
  if (n == 0) return;
  require(momentum == 0 || velocity != nullptr, "sgd_step: momentum needs a velocity buffer");
  launch("sgd_step_kernel", sgd_step_kernel<T>, optim_launch::grid_for(n), dim3(optim_launch::kThreads), 0, stream,
         param, grad, velocity, n, T(lr), T(momentum), T(weight_decay), nesterov);
}

template <typename T>
void sgd_step_foreach(T* const* param, const T* const* grad, T* const* velocity, const int64_t* n, int count,
                      double lr, double momentum, double weight_decay, bool nesterov, void* stream) {
  for (int first = 0; first < count; first += kSgdForeachTensors) {
    const int here = count - first < kSgdForeachTensors ? count - first : kSgdForeachTensors;
    SgdTensors<T> t{};
    for (int k = 0; k < here; ++k) {
      t.param[k] = param[first + k];
      t.grad[k] = grad[first + k];
      t.velocity[k] = velocity[first + k];
      t.n[k] = n[first + k];
      require(momentum == 0 || t.n[k] == 0 || t.velocity[k] != nullptr,
              "sgd_step_foreach: momentum needs a velocity buffer");
    }
    const int64_t blocks = optim_launch::lay_out_blocks(t.n, here, t.first_block);
    if (blocks == 0) continue;
    launch("sgd_step_foreach_kernel", sgd_step_foreach_kernel<T>, dim3((unsigned)blocks),
           dim3(optim_launch::kThreads), 0, stream, t, T(lr), T(momentum), T(weight_decay), nesterov);
  }
}

template <typename T>
void adam_step(T* param, const T* grad, T* m, T* v, int64_t n, double beta1, double beta2, double eps,
               double weight_decay, bool decoupled, double decay, double step_size, double bias_correction2_sqrt,
               void* stream) {
  if (n == 0) return;
  launch("adam_step_kernel", adam_step_kernel<T>, optim_launch::grid_for(n), dim3(optim_launch::kThreads), 0, stream,
         param, grad, m, v, n, T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(eps), T(weight_decay), decoupled, T(decay),
         T(step_size), T(bias_correction2_sqrt));
}

template <typename T>
void adam_step_foreach(T* const* param, const T* const* grad, T* const* m, T* const* v, const int64_t* n,
                       const double* step_size, const double* bias_correction2_sqrt, int count, double beta1,
                       double beta2, double eps, double weight_decay, bool decoupled, double decay, void* stream) {
  for (int first = 0; first < count; first += kAdamForeachTensors) {
    const int here = count - first < kAdamForeachTensors ? count - first : kAdamForeachTensors;
    AdamTensors<T> t{};
    for (int k = 0; k < here; ++k) {
      t.param[k] = param[first + k];
      t.grad[k] = grad[first + k];
      t.m[k] = m[first + k];
      t.v[k] = v[first + k];
      t.n[k] = n[first + k];
      t.step_size[k] = T(step_size[first + k]);
      t.bias_correction2_sqrt[k] = T(bias_correction2_sqrt[first + k]);
    }
    const int64_t blocks = optim_launch::lay_out_blocks(t.n, here, t.first_block);
    if (blocks == 0) continue;
    launch("adam_step_foreach_kernel", adam_step_foreach_kernel<T>, dim3((unsigned)blocks),
           dim3(optim_launch::kThreads), 0, stream, t, T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(eps),
           T(weight_decay), decoupled, T(decay));
  }
}

#define FC_INSTANTIATE_OPTIM(T)                                                                                  \
  template void sgd_step<T>(T*, const T*, T*, int64_t, double, double, double, bool, void*);                    \
  template void sgd_step_foreach<T>(T* const*, const T* const*, T* const*, const int64_t*, int, double, double,  \
                                    double, bool, void*);                                                         \
  template void adam_step<T>(T*, const T*, T*, T*, int64_t, double, double, double, double, bool, double, double, \
                             double, void*);                                                                      \
  template void adam_step_foreach<T>(T* const*, const T* const*, T* const*, T* const*, const int64_t*,             \
                                     const double*, const double*, int, double, double, double, double, bool,     \
                                     double, void*);
FC_INSTANTIATE_OPTIM(float)
FC_INSTANTIATE_OPTIM(double)
#undef FC_INSTANTIATE_OPTIM

}  // namespace fc
