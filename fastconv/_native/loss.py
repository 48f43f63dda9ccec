"""Losses on the native backends: the fused cross-entropy row kernel, BCE with logits and MSE, each
followed by the deterministic mean kernel; the gradients are elementwise kernels. The double
workspaces the reductions need are allocated here."""
import numpy as np

__all__ = ["softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "softmax_cross_entropy_with_grad",
           "bce_with_logits_forward", "bce_with_logits_backward", "mse_forward", "mse_backward"]


def _row_buffers(be, logits, weight):
    """What the cross-entropy row kernel writes: the (N, C) output (probs or dlogits), the 0-d
    loss, and N doubles each for the per-block partial sums of the loss and the weight (the latter
    only with class weights) that the mean kernel adds up."""
    n = logits.shape[0]
    row_weight = be.empty((n,), np.float64) if weight is not None else None
    return be.empty(logits.shape, logits.dtype), be.empty((), logits.dtype), be.empty((n,), np.float64), row_weight


def softmax_cross_entropy_forward(be, logits, labels, weight, smoothing):
    n, classes = logits.shape
    probs, loss, row_loss, row_weight = _row_buffers(be, logits, weight)
    be.kernel("softmax_cross_entropy_forward", logits.dtype)(
        be.ptr(logits), be.ptr(labels), be.ptr(weight), smoothing, be.ptr(probs), be.ptr(row_loss),
        be.ptr(row_weight), be.ptr(loss), n, classes, be.stream())
    return loss, probs


def softmax_cross_entropy_backward(be, probs, labels, weight, smoothing):
    n, classes = probs.shape
    dlogits = be.empty(probs.shape, probs.dtype)
    totals = be.empty((2,), np.float64) if weight is not None else None
    be.kernel("softmax_cross_entropy_backward", probs.dtype)(
        be.ptr(probs), be.ptr(labels), be.ptr(weight), smoothing, be.ptr(totals), be.ptr(dlogits), n, classes,
        be.stream())
    return dlogits


def softmax_cross_entropy_with_grad(be, logits, labels, weight, smoothing):
    n, classes = logits.shape
    dlogits, loss, row_loss, row_weight = _row_buffers(be, logits, weight)
    totals = be.empty((2,), np.float64) if weight is not None else None  # sum w[y_i], sum w_c
    be.kernel("softmax_cross_entropy_with_grad", logits.dtype)(
        be.ptr(logits), be.ptr(labels), be.ptr(weight), smoothing, be.ptr(dlogits), be.ptr(row_loss),
        be.ptr(row_weight), be.ptr(totals), be.ptr(loss), n, classes, be.stream())
    return loss, dlogits


def _last_dim(x):
    return x.shape[-1] if x.ndim else 1


def bce_with_logits_forward(be, logits, targets, pos_weight):
    loss = be.empty((), logits.dtype)
    partials = be.empty((be.ext.loss_partial_count(logits.size),), np.float64)
    be.kernel("bce_with_logits_forward", logits.dtype)(
        be.ptr(logits), be.ptr(targets), be.ptr(pos_weight), be.ptr(partials), be.ptr(loss), logits.size,
        _last_dim(logits), be.stream())
    return loss


def bce_with_logits_backward(be, logits, targets, pos_weight):
    dlogits = be.empty(logits.shape, logits.dtype)
    be.kernel("bce_with_logits_backward", logits.dtype)(
        be.ptr(logits), be.ptr(targets), be.ptr(pos_weight), be.ptr(dlogits), logits.size, _last_dim(logits),
        be.stream())
    return dlogits


def mse_forward(be, pred, target):
    loss = be.empty((), pred.dtype)
    partials = be.empty((be.ext.loss_partial_count(pred.size),), np.float64)
    be.kernel("mse_forward", pred.dtype)(be.ptr(pred), be.ptr(target), be.ptr(partials), be.ptr(loss), pred.size,
                                         be.stream())
    return loss


def mse_backward(be, pred, target):
    dpred = be.empty(pred.shape, pred.dtype)
    be.kernel("mse_backward", pred.dtype)(be.ptr(pred), be.ptr(target), be.ptr(dpred), pred.size, be.stream())
    return dpred
