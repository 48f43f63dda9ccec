"""Dense path on the native backends: GEMM with fused bias + activation, column sums, ReLU, sigmoid."""
from .._kernel_abi import ACTIVATIONS

__all__ = ["matmul", "linear_forward", "linear_backward", "relu_forward", "relu_backward",
           "sigmoid_forward", "sigmoid_backward"]


# The GEMM kernels take C's rows in the grid's y dimension, at most 65535 blocks of BM >= 64 rows
# (csrc/kernels/dense.cuh, gemm_launch): a product of more rows (a linear layer over 4M+ pixels'
# features) runs in blocks of this many rows of A and C, one launch each.
GEMM_MAX_ROWS = 65535 * 64


def _gemm(be, a, b, bias, trans_a, trans_b, activation):
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    c = be.empty((m, n), a.dtype)
    for m0 in range(0, m, GEMM_MAX_ROWS):
        m1 = min(m, m0 + GEMM_MAX_ROWS)
        # op(A)'s rows m0:m1: A's rows, or (transposed) its columns, copied to a contiguous block
        rows = a if m1 - m0 == m else (be.xp.ascontiguousarray(a[:, m0:m1]) if trans_a else a[m0:m1])
        _gemm_rows(be, rows, b, bias, c[m0:m1], trans_a, trans_b, activation)
    return c


def _gemm_rows(be, a, b, bias, c, trans_a, trans_b, activation):
    """c (m, n), C-contiguous, = act(op(a) @ op(b) + bias), m within the grid (GEMM_MAX_ROWS)."""
    (m, n), k = c.shape, (a.shape[0] if trans_a else a.shape[1])
    tile = be.ext.gemm_tile(m, n, k)
    splits = be.ext.gemm_splits(m, n, k, tile)  # split-K for few tiles and a long K (see dense.cuh)
    workspace = be.empty((splits, m, n), a.dtype) if splits > 1 else None
    be.kernel("gemm", a.dtype)(be.ptr(a), be.ptr(b), be.ptr(bias), be.ptr(c), m, n, k, trans_a, trans_b,
                               ACTIVATIONS[activation], be.ptr(workspace), tile, splits, be.stream())


def matmul(be, a, b, trans_a, trans_b):
    return _gemm(be, a, b, None, trans_a, trans_b, None)


def linear_forward(be, x, w, b, activation):
    return _gemm(be, x, w, b, False, True, activation)


def linear_backward(be, dy, x, w, bias, input_grad):
    dx = _gemm(be, dy, w, None, False, False, None) if input_grad else None  # (N, out) @ (out, in)
    dw = _gemm(be, dy, x, None, True, False, None)   # (N, out)^T @ (N, in)
    db = None
    if bias:
        db = be.empty((dy.shape[1],), dy.dtype)
        be.kernel("column_sum", dy.dtype)(be.ptr(dy), be.ptr(db), dy.shape[0], dy.shape[1], be.stream())
    return dx, dw, db


def _elementwise(be, name, *inputs):
    out = be.empty(inputs[0].shape, inputs[0].dtype)
    be.kernel(name, out.dtype)(*(be.ptr(t) for t in inputs), be.ptr(out), out.size, be.stream())
    return out


def relu_forward(be, x):
    return _elementwise(be, "relu_forward", x)


def relu_backward(be, dy, x):
    return _elementwise(be, "relu_backward", dy, x)


def sigmoid_forward(be, x):
    return _elementwise(be, "sigmoid_forward", x)


def sigmoid_backward(be, dy, y):
    return _elementwise(be, "sigmoid_backward", dy, y)
