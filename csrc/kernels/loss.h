// Launchers of the loss kernels (loss.cuh). Pointers are device pointers under CUDA and host
// pointers under the emulator; `stream` is a cudaStream_t (ignored by the emulator). All arrays
// are C-contiguous; the Python layer has checked shapes, dtypes and label ranges.
//
// Every loss is a mean, written as a 0-d value `loss` (one T) by a deterministic two-stage
// reduction through a double workspace the caller allocates:
//   softmax cross-entropy: row_loss (N) and, with class weights, row_weight (N) (the row kernel
//   writes one partial sum per block there, at most min(N, 2048));
//   BCE-with-logits, MSE:   partials (loss_partial_count(n)).
#pragma once

#include "common.h"

namespace fc {

// Number of per-block partial sums the elementwise losses (BCE, MSE) write: depends on n only,
// so the summation order, and hence the result, is the same on every device and run.
int64_t loss_partial_count(int64_t n);

// logits (N, C), labels (N) in [0, C), weight (C) or null. Writes probs (N, C) = softmax(logits)
// and loss = the mean cross-entropy (PyTorch's weighted mean and label smoothing).
// row_weight may be null when weight is.
template <typename T>
void softmax_cross_entropy_forward(const T* logits, const int64_t* labels, const T* weight, double smoothing, T* probs,
                                   double* row_loss, double* row_weight, T* loss, int64_t N, int64_t C, void* stream);

// dlogits (N, C) of that mean loss, from probs = softmax(logits). totals (2 doubles: the sum of
// weight[labels] and the sum of weight) is a workspace, used only when weight is not null.
template <typename T>
void softmax_cross_entropy_backward(const T* probs, const int64_t* labels, const T* weight, double smoothing,
                                    double* totals, T* dlogits, int64_t N, int64_t C, void* stream);

// The forward and the backward in one pass: loss as softmax_cross_entropy_forward, and dlogits
// (N, C) as softmax_cross_entropy_backward would compute from its probs (the same bits).
// row_weight and totals may be null when weight is.
template <typename T>
void softmax_cross_entropy_with_grad(const T* logits, const int64_t* labels, const T* weight, double smoothing,
                                     T* dlogits, double* row_loss, double* row_weight, double* totals, T* loss,
                                     int64_t N, int64_t C, void* stream);

// logits, targets: n values whose last dimension has C entries; pos_weight (C) or null.
template <typename T>
void bce_with_logits_forward(const T* logits, const T* targets, const T* pos_weight, double* partials, T* loss,
                             int64_t n, int64_t C, void* stream);
template <typename T>
void bce_with_logits_backward(const T* logits, const T* targets, const T* pos_weight, T* dlogits, int64_t n, int64_t C,
                              void* stream);

template <typename T>
void mse_forward(const T* pred, const T* target, double* partials, T* loss, int64_t n, void* stream);
template <typename T>
void mse_backward(const T* pred, const T* target, T* dpred, int64_t n, void* stream);

}  // namespace fc
