"""Dense ops: matmul, linear layer forward/backward, ReLU and sigmoid."""
from __future__ import annotations

from .. import backend as _backend
from ._activation import check_activation
from ._check import flag, shape_str, tensor

__all__ = ["matmul", "linear_forward", "linear_backward", "relu_forward", "relu_backward", "sigmoid_forward",
           "sigmoid_backward"]


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b), where op transposes when trans_a / trans_b is set. Both 2-D."""
    be = _backend.current()
    trans_a, trans_b = flag(trans_a, "trans_a"), flag(trans_b, "trans_b")
    a = tensor(a, "a", be, ndim=2)
    b = tensor(b, "b", be, ndim=2, dtype=a.dtype)
    k_a = a.shape[0] if trans_a else a.shape[1]
    k_b = b.shape[1] if trans_b else b.shape[0]
    if k_a != k_b:
        op_a = shape_str(a.shape[::-1] if trans_a else a.shape)
        op_b = shape_str(b.shape[::-1] if trans_b else b.shape)
        raise ValueError(f"matmul: inner dimensions disagree: op(a) is {op_a}, op(b) is {op_b} "
                         f"(a {shape_str(a.shape)} trans_a={trans_a}, b {shape_str(b.shape)} trans_b={trans_b})")
    return be.matmul(a, b, trans_a, trans_b)


def _linear_inputs(be, x, w):
    x = tensor(x, "x", be, ndim=2)
    w = tensor(w, "w", be, ndim=2, dtype=x.dtype)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"linear: x is {shape_str(x.shape)} (N, in) but w is {shape_str(w.shape)} (out, in): "
                         f"in_features {x.shape[1]} != {w.shape[1]}")
    return x, w


def linear_forward(x, w, b=None, activation=None):
    """act(x @ w.T + b): x (N, in), w (out, in), b (out,) or None; activation None, "relu" or "sigmoid".

    Bias and activation are fused into the GEMM's epilogue.
    """
    be = _backend.current()
    check_activation(activation)
    x, w = _linear_inputs(be, x, w)
    if b is not None:
        b = tensor(b, "b", be, ndim=1, dtype=x.dtype)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"linear: b is {shape_str(b.shape)} but w is {shape_str(w.shape)}: b must be ({w.shape[0]},)")
    return be.linear_forward(x, w, b, activation)


def linear_backward(dy, x, w, bias=True, input_grad=True):
    """Gradients of z = x @ w.T + b given dy = dL/dz: returns (dx, dw, db); db is None when bias=False,
    dx is None (and not computed) when input_grad=False, e.g. for a network's first layer.

    When the forward fused an activation, pass dy through relu_backward / sigmoid_backward first.
    """
    be = _backend.current()
    bias, input_grad = flag(bias, "bias"), flag(input_grad, "input_grad")
    x, w = _linear_inputs(be, x, w)
    dy = tensor(dy, "dy", be, ndim=2, dtype=x.dtype)
    if dy.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"linear_backward: dy is {shape_str(dy.shape)} but x @ w.T is "
                         f"{shape_str((x.shape[0], w.shape[0]))} (x {shape_str(x.shape)}, w {shape_str(w.shape)})")
    return be.linear_backward(dy, x, w, bias, input_grad)


def _same_shape(be, first, first_name, second, second_name, op):
    a = tensor(first, first_name, be)
    b = tensor(second, second_name, be, dtype=a.dtype)
    if a.shape != b.shape:
        raise ValueError(f"{op}: {first_name} is {shape_str(a.shape)} but {second_name} is {shape_str(b.shape)}; "
                         "they must have the same shape")
    return a, b


def relu_forward(x):
    """max(x, 0) elementwise (NaN stays NaN, as in torch.relu)."""
    be = _backend.current()
    return be.relu_forward(tensor(x, "x", be))


def relu_backward(dy, x):
    """dy * [x > 0], with x the forward input (or its output: the same mask); 0 where x <= 0, dy
    elsewhere, so a NaN x passes dy on, as torch's ReLU backward does."""
    be = _backend.current()
    dy, x = _same_shape(be, dy, "dy", x, "x", "relu_backward")
    return be.relu_backward(dy, x)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)) elementwise, without overflow for any x."""
    be = _backend.current()
    return be.sigmoid_forward(tensor(x, "x", be))


def sigmoid_backward(dy, y):
    """dy * y * (1 - y), with y the forward output."""
    be = _backend.current()
    dy, y = _same_shape(be, dy, "dy", y, "y", "sigmoid_backward")
    return be.sigmoid_backward(dy, y)
