"""Losses with their gradients, PyTorch's semantics with reduction="mean": softmax cross-entropy
(class weights, label smoothing), binary cross-entropy with logits (pos_weight), mean squared error.

Each forward returns the loss as a 0-d array on the backend's device in the inputs' dtype
(float(loss) gives the number). Reductions are deterministic: the same inputs give the same bits
on every run. Differences from torch: an empty batch is refused (torch returns NaN); a NaN logit
gives a NaN loss, as in torch; when every label's class weight is 0 the weighted mean divides by
0: the loss and the gradient are NaN (0/0), as in torch, but with label smoothing, whose term is
then not 0, the loss is +inf and the gradient +-inf (NaN where p_c sum(w) = w_c; torch: NaN).
"""
from __future__ import annotations

from .. import backend as _backend
from ._check import labels as _labels
from ._check import flag, number, shape_str, tensor, value_range_start

__all__ = ["softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "softmax_cross_entropy_with_grad",
           "bce_with_logits_forward", "bce_with_logits_backward", "mse_forward", "mse_backward"]


def _class_labels(be, labels, n, classes, op):
    """(labels as contiguous int64 of shape (n,), check): check() raises ValueError unless every
    value is in [0, classes). The range is computed on the device (value_range_start): on the
    native backends while the op's kernel runs, see _cross_entropy_inputs."""
    y = _labels(labels, "labels", be, n)
    pending = value_range_start(y, be)

    def check():
        low, high = pending()
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            index = int(be.xp.flatnonzero(y == bad)[0])
            raise ValueError(f"{op}: labels must be class indices in [0, {classes}) for {classes} classes, "
                             f"got {bad} at index {index}")
    return y, check


def _class_weight(be, weight, classes, dtype, op):
    """(weight as (classes,) in dtype or None, check): check() raises ValueError unless every
    weight is >= 0 (and not NaN)."""
    if weight is None:
        return None, _nothing_to_check
    w = tensor(weight, "weight", be, ndim=1, dtype=dtype)
    if w.shape != (classes,):
        raise ValueError(f"{op}: weight is {shape_str(w.shape)} but there are {classes} classes: "
                         f"weight must be ({classes},)")

    def check():
        if not bool((w >= 0).all()):  # a device-to-host read on a GPU
            raise ValueError(f"{op}: weight must be non-negative (and not NaN), got min {float(w.min())}")
    return w, check


def _batch(be, name, x, op):
    x = tensor(x, name, be, ndim=2)
    n, classes = x.shape
    if n == 0:
        raise ValueError(f"{op}: {name} is {shape_str(x.shape)}: the batch is empty (torch would return NaN; "
                         "fastconv refuses an empty batch)")
    if classes == 0:
        raise ValueError(f"{op}: {name} is {shape_str(x.shape)}: there must be at least one class")
    return x


def _cross_entropy_inputs(be, first, first_name, labels, weight, label_smoothing, check_weight, op):
    """The checked inputs and check_values(), which raises for a label out of range, then for a
    negative weight (with check_weight). Shapes are checked here. The values are checked here on the
    cpu backend, before any kernel sees them; on the native backends, whose kernels tolerate bad
    labels (NaN for a label out of range, never a read outside the logits), the op calls
    check_values() after launching its kernel, so that the label range's sync waits for the op
    instead of leaving the device idle before it (with a weight check, a second sync follows)."""
    smoothing = number(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    check_weight = flag(check_weight, "check_weight")
    x = _batch(be, first_name, first, op)
    n, classes = x.shape
    y, check_labels = _class_labels(be, labels, n, classes, op)
    w, check_weights = _class_weight(be, weight, classes, x.dtype, op)

    def check_values():
        check_labels()
        if check_weight:
            check_weights()
    if be.kernels_tolerate_bad_indices:
        return x, y, w, smoothing, check_values
    check_values()
    return x, y, w, smoothing, _nothing_to_check


def _nothing_to_check():
    """check_values when there is nothing (left) to check."""


def _cross_entropy_op(op, first, first_name, labels, weight, label_smoothing, check_weight):
    """The backend's `op` on the checked inputs; the values' checks after its launch."""
    be = _backend.current()
    x, y, w, smoothing, check_values = _cross_entropy_inputs(be, first, first_name, labels, weight, label_smoothing,
                                                             check_weight, op)
    result = getattr(be, op)(x, y, w, smoothing)
    check_values()  # on a native backend: after the launch (see _cross_entropy_inputs)
    return result


def softmax_cross_entropy_forward(logits, labels, weight=None, label_smoothing=0.0, check_weight=True):
    """(loss, probs) for logits (N, C) and integer labels (N,) in [0, C).

    loss = mean over the batch of -log softmax(logits)[i, labels[i]], as
    torch.nn.functional.cross_entropy: with weight (C,) the weighted mean
    sum_i w[y_i] l_i / sum_i w[y_i]; with label_smoothing e the target is (1 - e) onehot + e/C,
    the smoothing term weighted per class and normalized by the same sum_i w[y_i] (torch's rule).
    probs = softmax(logits) (N, C), what the backward takes. For finite logits the probs and the
    gradient are finite, and so is the loss unless a row's loss overflows the dtype: a row's
    w[y] (-log p_y) (-log p: a class's gap below the row's largest logit) and, with
    label_smoothing, its sum_c w_c (-log p_c) are computed in the dtype, as torch computes them;
    where one passes the dtype's maximum (~3.4e38 for float32) the loss is +inf, as in torch
    (float32 logits [3e38, -3e38, 0] with label 1: 6e38; [2e38, 0, 0] with label 1 and that
    class's weight 2, or with label_smoothing (2e38 + 2e38): 4e38). The mean over the rows is
    accumulated in float64 on every backend: rows that each stay below the maximum give a finite
    mean (torch sums them in the dtype: +inf once their sum passes it). A NaN logit makes the loss
    NaN.

    check_weight=False skips the check that every weight is >= 0 (a device-to-host read on a GPU)
    for a caller that has checked them already, as CrossEntropyLoss does once at construction; the
    same for the two ops below.
    """
    return _cross_entropy_op("softmax_cross_entropy_forward", logits, "logits", labels, weight, label_smoothing,
                             check_weight)


def softmax_cross_entropy_backward(probs, labels, weight=None, label_smoothing=0.0, check_weight=True):
    """dloss/dlogits (N, C) of softmax_cross_entropy_forward's mean loss, from its probs:
    [p (((1 - e) w[y] + (e/C) sum(w)) - (1 - e) w[y] onehot - (e/C) w] / sum_i w[y_i]
    (= (probs - onehot) / N without weight and smoothing)."""
    return _cross_entropy_op("softmax_cross_entropy_backward", probs, "probs", labels, weight, label_smoothing,
                             check_weight)


def softmax_cross_entropy_with_grad(logits, labels, weight=None, label_smoothing=0.0, check_weight=True):
    """(loss, dlogits): softmax_cross_entropy_forward's loss and softmax_cross_entropy_backward's
    gradient in one pass over the logits (read once, the gradient written once; the probs are
    never stored) — what a training step needs. The same values as the two ops."""
    return _cross_entropy_op("softmax_cross_entropy_with_grad", logits, "logits", labels, weight, label_smoothing,
                             check_weight)


def _binary_inputs(be, logits, targets, pos_weight, op):
    x = tensor(logits, "logits", be)
    t = tensor(targets, "targets", be, dtype=x.dtype)
    if t.shape != x.shape:
        raise ValueError(f"{op}: targets is {shape_str(t.shape)} but logits is {shape_str(x.shape)}; "
                         "they must have the same shape")
    if x.size == 0:
        raise ValueError(f"{op}: logits is {shape_str(x.shape)}: empty (torch would return NaN; fastconv refuses)")
    pw = None
    if pos_weight is not None:
        pw = tensor(pos_weight, "pos_weight", be, ndim=1, dtype=x.dtype)
        classes = x.shape[-1] if x.ndim else 1  # 0-d logits: one value, one pos_weight (torch 2.13 refuses (1,))
        if pw.shape != (classes,):
            want = f"({classes},), one per entry of logits' last dimension" if x.ndim else "(1,) for 0-d logits"
            raise ValueError(f"{op}: pos_weight is {shape_str(pw.shape)} but logits is {shape_str(x.shape)}: "
                             f"expected {want}")
    return x, t, pw


def bce_with_logits_forward(logits, targets, pos_weight=None):
    """Mean over all elements of binary cross-entropy on logits, as
    torch.nn.functional.binary_cross_entropy_with_logits: targets (same shape) are 0/1 labels or
    probabilities; pos_weight (C,) weighs the positive term along the last dimension ((1,) for 0-d
    logits).
    l = (1 - t) x + (1 + (pw - 1) t) (log1p(exp(-|x|)) + max(-x, 0)): for finite x and targets in
    [0, 1], finite unless pos_weight > 1 takes a term past the dtype's maximum (float32 x = -3e38,
    t = 1, pos_weight 10: 3e39, +inf; torch too); the gradient is finite."""
    be = _backend.current()
    x, t, pw = _binary_inputs(be, logits, targets, pos_weight, "bce_with_logits_forward")
    return be.bce_with_logits_forward(x, t, pw)


def bce_with_logits_backward(logits, targets, pos_weight=None):
    """dloss/dlogits of bce_with_logits_forward's mean: [(1 - t) sigmoid(x) - pw t sigmoid(-x)] / n."""
    be = _backend.current()
    x, t, pw = _binary_inputs(be, logits, targets, pos_weight, "bce_with_logits_backward")
    return be.bce_with_logits_backward(x, t, pw)


def _regression_inputs(be, pred, target, op):
    p = tensor(pred, "pred", be)
    t = tensor(target, "target", be, dtype=p.dtype)
    if t.shape != p.shape:
        raise ValueError(f"{op}: target is {shape_str(t.shape)} but pred is {shape_str(p.shape)}; "
                         "they must have the same shape")
    if p.size == 0:
        raise ValueError(f"{op}: pred is {shape_str(p.shape)}: empty (torch would return NaN; fastconv refuses)")
    return p, t


def mse_forward(pred, target):
    """Mean of (pred - target)^2 over all elements (torch.nn.functional.mse_loss)."""
    be = _backend.current()
    return be.mse_forward(*_regression_inputs(be, pred, target, "mse_forward"))


def mse_backward(pred, target):
    """dloss/dpred = 2 (pred - target) / n."""
    be = _backend.current()
    return be.mse_backward(*_regression_inputs(be, pred, target, "mse_backward"))
