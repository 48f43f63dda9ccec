// Launchers of the optimizer-step kernels (optim.cuh). Pointers are device pointers under CUDA and
// host pointers under the emulator; `stream` is a cudaStream_t (ignored by the emulator).
// All arrays hold n contiguous values and do not overlap; the Python layer has checked the
// hyperparameters. Scalars arrive as double and are rounded to T once, as torch's Python floats are.
#pragma once

#include "common.h"

namespace fc {

// torch.optim.SGD (dampening 0), in place on param and (when momentum != 0) velocity:
//   g = grad + weight_decay * param
//   velocity = momentum * velocity + g;  g = nesterov ? g + momentum * velocity : velocity
//   param -= lr * g
// velocity may be null when momentum == 0.
template <typename T>
void sgd_step(T* param, const T* grad, T* velocity, int64_t n, double lr, double momentum, double weight_decay,
              bool nesterov, void* stream);

// The same SGD step on `count` tensors at once (torch's foreach): tensor k has n[k] values at
// param[k], grad[k], velocity[k] (velocity[k] null when momentum == 0). No array overlaps another
// that is written. One launch per kSgdForeachTensors tensors.
constexpr int kSgdForeachTensors = 32;
template <typename T>
void sgd_step_foreach(T* const* param, const T* const* grad, T* const* velocity, const int64_t* n, int count,
                      double lr, double momentum, double weight_decay, bool nesterov, void* stream);

// torch.optim.Adam / AdamW, in place on param, m, v. step_size = lr / (1 - beta1^step) and
// bias_correction2_sqrt = sqrt(1 - beta2^step) are computed by the caller in double;
// decay = 1 - lr * weight_decay is used when decoupled (AdamW).
template <typename T>
void adam_step(T* param, const T* grad, T* m, T* v, int64_t n, double beta1, double beta2, double eps,
               double weight_decay, bool decoupled, double decay, double step_size, double bias_correction2_sqrt,
               void* stream);

// The same Adam step on `count` tensors at once: tensor k has n[k] values at param[k], grad[k],
// m[k], v[k], and its own step_size[k] and bias_correction2_sqrt[k] (parameters may have taken
// different numbers of steps). No array overlaps another that is written. One launch per
// kAdamForeachTensors tensors.
constexpr int kAdamForeachTensors = 32;
template <typename T>
void adam_step_foreach(T* const* param, const T* const* grad, T* const* m, T* const* v, const int64_t* n,
                       const double* step_size, const double* bias_correction2_sqrt, int count, double beta1,
                       double beta2, double eps, double weight_decay, bool decoupled, double decay, void* stream);

}  // namespace fc
