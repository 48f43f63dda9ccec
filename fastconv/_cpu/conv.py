"""2-D convolution on the CPU: im2col + BLAS GEMM per group, with parallel Numba im2col / col2im
and one fused parallel pass for bias + activation.

Layouts (R = C_in/groups * kh * kw rows of the column matrix, P = OH * OW):
- forward: col is (N, R, P), so the batched GEMM W_g (C_out/g, R) @ col[n] lands directly in NCHW
  y[n, group's channels] (no transpose); bias + activation then run in place over y in one
  parallel pass. A 1x1, stride-1, unpadded convolution needs no im2col: col is x itself.
- backward data: dcol = W_g^T @ dy[n] (batched, (N, R, P), dy read as it is), then col2im, where
  one thread owns a whole (n, c) plane of dx (no races, deterministic). 1x1 unpadded: dx = W^T @ dy.
- backward weight: with R >= 64, dy is transposed once to (C_out, N*P) (the same pass sums db) and
  im2col builds (R, N*P), so dw_g is ONE large GEMM dyT_g @ col^T (BLAS reads the transpose in
  place); with a small R that GEMM is skinny (e.g. 32 x 9 outputs over K = 100352), which OpenBLAS
  ran ~10x slower than per-sample GEMMs over (N, R, P) summed over n, so small R takes that path.

Measured on this 2-core machine (NUMBA_NUM_THREADS=2, OpenBLAS, float32, batch 128, best of 7;
the machine was shared with other jobs (load 3-11), so absolute numbers are noisy, the ratios held
in every run):
  forward                               im2col+GEMM (N,R,P)  im2col+GEMM (R,N*P)  direct loops
  Conv2d(1, 32, 3, padding=1), 28x28        1.2 ms              8.7 ms            10.9 ms
  Conv2d(32, 64, 3, padding=1), 14x14      12.7 ms             18.0 ms           166 ms
  (a later run at load 11: im2col+GEMM 32 / 184 ms vs direct 57 / 396 ms.)
  The direct alternative was parallel over (n, o) with the tap loop innermost over output rows.
im2col + BLAS won; the (N, R, P) layout won the forward. Backward-weight GEMM parts, layer 1:
(N,R,P) 1.0 ms vs (R,N*P) 9.7 ms; layer 2: (R,N*P) 44 ms vs (N,R,P) 79 ms, hence the R threshold.
"""
import numpy as np
from numba import njit, prange

from ..ops._activation import ACTIVATIONS
from .dense import _sigmoid

__all__ = ["conv2d_forward", "conv2d_backward"]

_RELU, _SIGMOID = ACTIVATIONS["relu"], ACTIVATIONS["sigmoid"]
# From this many column-matrix rows (C_in/groups * kh * kw) on, the weight gradient is one GEMM over
# a transposed dy; below it, per-sample GEMMs (see _weight_gradient).
_ROWS_FOR_ONE_GEMM = 64


@njit(parallel=True, cache=True)
def _im2col(x, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, col):
    """col[(c*kh + i)*kw + j, n, a*ow + b] = x[n, c0 + c, a*sh - pt + i*dh, b*sw - pl + j*dw] (0 outside).

    col is (R, N, P): either that array or a transposed view of an (N, R, P) one.
    """
    n_img, _, h, w = x.shape
    for t in prange(n_img * cg):
        n, c = t // cg, t % cg
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                for a in range(oh):
                    ih = a * sh - pt + i * dh
                    row_inside = 0 <= ih < h
                    for b in range(ow):
                        iw = b * sw - pl + j * dw
                        col[r, n, a * ow + b] = x[n, c0 + c, ih, iw] if row_inside and 0 <= iw < w else 0


@njit(parallel=True, cache=True)
def _col2im(dcol, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, dx):
    """dx[n, c0 + c] = the sum of dcol's (R, N, P) entries that _im2col would have read from it."""
    n_img, _, h, w = dx.shape
    for t in prange(n_img * cg):
        n, c = t // cg, t % cg
        dx[n, c0 + c] = 0
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                for a in range(oh):
                    ih = a * sh - pt + i * dh
                    if 0 <= ih < h:
                        for b in range(ow):
                            iw = b * sw - pl + j * dw
                            if 0 <= iw < w:
                                dx[n, c0 + c, ih, iw] += dcol[r, n, a * ow + b]


@njit(parallel=True, cache=True)
def _bias_activation(src, b, has_bias, act, o0, y):
    """y[n, o0 + o, p] = act(src[n, o, p] + b[o0 + o]); src may be y itself (in place)."""
    n_img, co, p = src.shape
    for t in prange(n_img * co):
        n, o = t // co, t % co
        bias = b[o0 + o] if has_bias else 0
        for q in range(p):
            v = src[n, o, q] + bias
            if act == _RELU:
                v = 0 if v < 0 else v
            elif act == _SIGMOID:
                v = _sigmoid(v)
            y[n, o0 + o, q] = v


@njit(parallel=True, cache=True)
def _channel_sum(dy, db):
    """db[o] = sum of dy[:, o, :], per channel in a fixed order (deterministic)."""
    n_img, co, p = dy.shape
    for o in prange(co):
        total = 0.0
        for n in range(n_img):
            for q in range(p):
                total += dy[n, o, q]
        db[o] = total


@njit(parallel=True, cache=True)
def _transpose_and_sum(dy, dyt, db, has_bias):
    """dyt[o, n, p] = dy[n, o, p], and db[o] = its sum over n and p."""
    n_img, co, p = dy.shape
    for o in prange(co):
        total = 0.0
        for n in range(n_img):
            for q in range(p):
                v = dy[n, o, q]
                dyt[o, n, q] = v
                total += v
        if has_bias:
            db[o] = total


def _geometry(x, w, stride, padding, dilation):
    kh, kw = w.shape[2:]
    oh = (x.shape[2] + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (x.shape[3] + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def _is_pointwise(w, stride, padding):
    """1x1, stride 1, unpadded: the column matrix is x itself."""
    return w.shape[2:] == (1, 1) and stride == (1, 1) and not any(padding)


def conv2d_forward(x, w, b, stride, padding, dilation, groups, activation):
    n, c, _, _ = x.shape
    c_out, cg, kh, kw = w.shape
    oh, ow = _geometry(x, w, stride, padding, dilation)
    cog, rows = c_out // groups, cg * kh * kw
    act = ACTIVATIONS[activation]
    has_bias = b is not None
    bias = b if has_bias else np.empty(0, x.dtype)
    y = np.empty((n, c_out, oh * ow), x.dtype)
    pointwise = _is_pointwise(w, stride, padding)
    col = None if pointwise else np.empty((n, rows, oh * ow), x.dtype)
    for g in range(groups):
        w_g = w[g * cog:(g + 1) * cog].reshape(cog, rows)
        if pointwise:
            col = x.reshape(n, c, oh * ow)[:, g * cg:(g + 1) * cg]
        else:
            _im2col(x, g * cg, cg, kh, kw, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1],
                    oh, ow, col.transpose(1, 0, 2))
        if groups == 1:
            np.matmul(w_g, col, out=y)  # (C_out, R) @ (N, R, P) -> (N, C_out, P): NCHW already
            if has_bias or act:
                _bias_activation(y, bias, has_bias, act, 0, y)
        else:
            _bias_activation(np.matmul(w_g, col), bias, has_bias, act, g * cog, y)
    return y.reshape(n, c_out, oh, ow)


def _weight_gradient(dy3, x, dw, g, cog, rows, conv, dyt):
    """dw for group g: one large GEMM over N*P with the (R, N*P) column matrix when R is large, else
    batched per-sample GEMMs over the (N, R, P) one summed over n (a tiny R makes the single GEMM
    skinny, which BLAS runs poorly)."""
    n, _, p = dy3.shape
    dw_g = dw[g * cog:(g + 1) * cog].reshape(cog, rows)
    if dyt is not None:
        col = np.empty((rows, n, p), x.dtype)
        _im2col(x, *conv, col)
        np.dot(dyt[g * cog:(g + 1) * cog].reshape(cog, n * p), col.reshape(rows, n * p).T, out=dw_g)
    else:
        col = np.empty((n, rows, p), x.dtype)
        _im2col(x, *conv, col.transpose(1, 0, 2))
        np.sum(np.matmul(dy3[:, g * cog:(g + 1) * cog], col.transpose(0, 2, 1)), axis=0, out=dw_g)


def conv2d_backward(dy, x, w, stride, padding, dilation, groups, bias):
    n, c, _, _ = x.shape
    c_out, cg, kh, kw = w.shape
    oh, ow = _geometry(x, w, stride, padding, dilation)
    cog, rows, p = c_out // groups, cg * kh * kw, oh * ow
    dy3 = dy.reshape(n, c_out, p)
    db = np.empty(c_out, dy.dtype) if bias else np.empty(0, dy.dtype)
    dyt = None
    if rows >= _ROWS_FOR_ONE_GEMM:
        dyt = np.empty((c_out, n, p), dy.dtype)
        _transpose_and_sum(dy3, dyt, db, bias)
    elif bias:
        _channel_sum(dy3, db)

    dx = np.empty_like(x)
    dw = np.empty_like(w)
    pointwise = _is_pointwise(w, stride, padding)
    for g in range(groups):
        conv = (g * cg, cg, kh, kw, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1], oh, ow)
        _weight_gradient(dy3, x, dw, g, cog, rows, conv, dyt)
        w_g = w[g * cog:(g + 1) * cog].reshape(cog, rows)
        dy_g = dy3[:, g * cog:(g + 1) * cog]
        if pointwise:  # dx[n, group] = W_g^T @ dy[n, group]: NCHW directly
            if groups == 1:
                np.matmul(w_g.T, dy3, out=dx.reshape(n, c, p))
            else:
                dx.reshape(n, c, p)[:, g * cg:(g + 1) * cg] = np.matmul(w_g.T, dy_g)
        else:
            dcol = np.matmul(w_g.T, dy_g)  # (N, R, P), no transpose of dy needed
            _col2im(dcol.transpose(1, 0, 2), *conv, dx)
    return dx, dw, db if bias else None
