"""Dense path on the CPU: BLAS for the GEMMs, one fused parallel Numba pass for bias + activation,
and parallel elementwise ReLU / sigmoid."""
import numba
import numpy as np
from numba import njit, prange

from ..ops._activation import ACTIVATIONS
from ._vecmath import exp_nonpositive

__all__ = ["matmul", "linear_forward", "linear_backward", "relu_forward", "relu_backward",
           "sigmoid_forward", "sigmoid_backward"]

_RELU, _SIGMOID = ACTIVATIONS["relu"], ACTIVATIONS["sigmoid"]


# Constants are float32 so that float32 math stays float32 (an int literal would promote it to
# float64, halving the vector width); with float64 inputs they promote exactly.
_ONE = np.float32(1)
_ZERO = np.float32(0)


@njit(inline="always")
def _sigmoid(v):
    e = exp_nonpositive(-abs(v))  # never overflows; vectorizes
    return _ONE / (_ONE + e) if v >= _ZERO else e / (_ONE + e)


@njit(parallel=True, cache=True)
def _bias_activation_inplace(y, b, has_bias, act):
    rows, cols = y.shape
    for i in prange(rows):
        for j in range(cols):
            v = y[i, j]
            if has_bias:
                v += b[j]
            if act == _RELU:
                v = _ZERO if v < _ZERO else v
            elif act == _SIGMOID:
                v = _sigmoid(v)
            y[i, j] = v


@njit(parallel=True, cache=True)
def _column_sum(dy, bands):
    # Each thread sums a band of rows (contiguous reads); the bands' partial sums are then added.
    rows, cols = dy.shape
    partial = np.zeros((bands, cols), dtype=dy.dtype)
    for t in prange(bands):
        for i in range(t * rows // bands, (t + 1) * rows // bands):
            for j in range(cols):
                partial[t, j] += dy[i, j]
    out = np.zeros(cols, dtype=dy.dtype)
    for t in range(bands):
        for j in range(cols):
            out[j] += partial[t, j]
    return out


@njit(parallel=True, cache=True)
def _relu_forward(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = _ZERO if v < _ZERO else v


@njit(parallel=True, cache=True)
def _relu_backward(dy, x, dx):
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > _ZERO else _ZERO


@njit(parallel=True, cache=True)
def _sigmoid_forward(x, y):
    for i in prange(x.size):
        y[i] = _sigmoid(x[i])


@njit(parallel=True, cache=True)
def _sigmoid_backward(dy, y, dx):
    for i in prange(y.size):
        dx[i] = dy[i] * y[i] * (_ONE - y[i])


def _bands(rows):
    """Row bands of the column sum: a function of the size only, never of the thread count, so the
    summation order (and every bit of db) is the same on any machine."""
    return max(1, min(64, rows // 128))


def _op(a, trans):
    return a.T if trans else a


def matmul(a, b, trans_a, trans_b):
    return np.dot(_op(a, trans_a), _op(b, trans_b))


def linear_forward(x, w, b, activation):
    y = np.dot(x, w.T)
    act = ACTIVATIONS[activation]
    if b is not None or act:
        _bias_activation_inplace(y, b if b is not None else np.empty(0, y.dtype), b is not None, act)
    return y


def linear_backward(dy, x, w, bias):
    dx = np.dot(dy, w)
    dw = np.dot(dy.T, x)
    db = _column_sum(dy, _bands(dy.shape[0])) if bias else None
    return dx, dw, db


def _flat_map(kernel, *inputs):
    out = np.empty_like(inputs[0])
    kernel(*(t.reshape(-1) for t in inputs), out.reshape(-1))
    return out


def relu_forward(x):
    return _flat_map(_relu_forward, x)


def relu_backward(dy, x):
    return _flat_map(_relu_backward, dy, x)


def sigmoid_forward(x):
    return _flat_map(_sigmoid_forward, x)


def sigmoid_backward(dy, y):
    return _flat_map(_sigmoid_backward, dy, y)
