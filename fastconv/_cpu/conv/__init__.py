"""2-D convolution on the CPU: per-sample GEMMs, each Numba thread owning a contiguous block of
samples and calling single-threaded BLAS itself (_blas.py says why), in per-thread buffers that
stay in the core's cache. For float32 on AVX-512 hosts the stride-1 kernels use our own code
instead (_forward_taps_avx512, _backward_taps_avx512): register tiles over all taps for the
forward and for dx (_taps32.py), our GEMM for dW (_gemm32.py: twice OpenBLAS's AVX2 kernels here);
on AVX2 hosts the wide kernels with our GEMM (_forward_wide_gemm32, _backward_wide_gemm32).
On both, 3x3 layers (dilation 1, groups 1) with 16 or more channels in and out go by Winograd's
algorithm instead (_winograd32.py): the forward (_forward_winograd) by F(4x4, 3x3) where its tiles
fit the output (4x fewer multiply-adds), else F(2x2, 3x3) (2.25x fewer); with padding <= 2 the
backward too (dW by F(2x2): _weight_grad_winograd, or _weight_grad_winograd_planes for many
channels; dx as the forward of dy with w flipped), unless the op's algorithm is "direct".

Stride 1 (the common case) uses the "wide" layout described in _wide.py: no im2col for
layers with >= 8 input channels per group (one accumulating GEMM per kernel tap on shifted slices
of the padded sample), contiguous copies otherwise. Other strides: the forward of float32 layers
over the input's phases (_phases.py), where every tap reads one phase at a constant shift: on
AVX-512 hosts every such layer by the stride-1 forward's register tiles (_forward_by_taps with a
stride), elsewhere those with >= 8 input channels per group by the same shifted GEMMs
(_forward_phases); the rest and the backward by per-sample im2col (_forward / _backward). A 1x1
layer on a few positions a sample runs as a product over the whole batch (_forward_pointwise,
_backward_pointwise), and a stride-1 depthwise layer (one input channel a group) plane by plane in
vector registers (_depthwise.py), fused pooling as the two ops. For im2col, per sample n and group g:
- forward: y[n, g's channels] = W_g @ col, then bias + activation while y[n] is in cache;
- backward: dW_g += dy[n, g] @ col^T into a partial dW (OpenBLAS with beta = 1; with AVX-512,
  gemm32_blocked over blocks of positions and output channels, each block's product added in:
  _im2col._weight_grad_gemm32), dcol = W_g^T @ dy[n, g] scattered back into dx[n]; db from the same
  dy[n] rows. The partial dW / db are over blocks of
  samples fixed by the batch size (_GRADIENT_PARTS), added in order: the same bits on any thread
  count.

Measured on this 2-core machine (float32, batch 128, 2 threads, one CPU time per part, one thread):
conv2 (32->64, 14x14, k3) forward: im2col 6.3 ms + GEMM 7.7 ms; the 9 shifted GEMMs 7.5 ms in all.
For 1 input channel the 9 shifted GEMMs (K = 1) took 2.6 ms against 0.5 ms for one GEMM over
copied rows, hence the channel threshold. Before/after numbers of each change: the git log of these
files and, before they were split out of it, of fastconv/_cpu/conv.py. Math (forward, dx, dW, db):
csrc/kernels/conv.cuh.

This module: the op functions and which algorithm a layer takes (_conv2d_forward, _conv2d_backward,
_uses_winograd); one module per algorithm: _im2col.py, _phases.py, _wide.py, _taps.py (AVX-512),
_winograd.py, _pointwise.py, _depthwise.py; _direct.py the stride-1 forward's choice between _taps and _wide;
_epilogue.py (bias, activation, pooling of a finished plane) and _shared.py (sizes, thread and
part counts, host checks, sums) what they share.
"""
import os

import numpy as np

from .._blas import blas_guard
from .._memory import empty
from .._activation import epilogue_activation
from ..pool import max_pool2d_forward, window_of
from ._depthwise import _backward_by_depthwise, _forward_by_depthwise, _is_depthwise
from ._direct import _forward_direct
from ._im2col import _backward_by_im2col, _backward_uses_gemm32, _forward_by_im2col
from ._phases import _forward_by_phases, _uses_phases
from ._pointwise import _backward_is_pointwise, _backward_pointwise, _forward_by_pointwise, _forward_is_pointwise
from ._shared import _NO_POOL, _output_size, _parts, _unpooled_gradient, _uses_gemm32, _uses_tiles
from ._taps import _backward_by_tiles, _backward_uses_tiles, _forward_by_taps
from ._wide import _backward_by_wide
from ._winograd import _backward_by_winograd, _forward_by_winograd

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_max_pool2d_forward", "conv2d_max_pool2d_backward"]


def conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, algorithm):
    return _conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, None, algorithm)


def conv2d_max_pool2d_forward(x, w, b, stride, padding, dilation, groups, activation, pool, algorithm):
    """(y, indices) = max pooling (pool: the validated ops.pool.PoolGeometry of the convolution's
    output) of the convolution, fused for stride 1: each output plane is pooled while in cache."""
    if stride != (1, 1) or _forward_is_pointwise(x, w, stride, padding, groups) or _is_depthwise(x, w, stride, groups):
        # no fused kernel: the two ops
        return max_pool2d_forward(conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, algorithm),
                                  pool)
    return _conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, pool, algorithm)


def _conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, pool, algorithm):
    n, c_out = x.shape[0], w.shape[0]
    oh, ow = _output_size(x, w, stride, padding, dilation)
    x = np.ascontiguousarray(x)
    act = epilogue_activation(activation, x.dtype)
    y = empty((n, c_out, oh * ow) if pool is None else (0, 0, 0), x.dtype)
    pool_shape = (0, 0, 0, 0) if pool is None else pool.out_shape
    pooled, indices = empty(pool_shape, x.dtype), empty(pool_shape, np.int64)
    window = _NO_POOL if pool is None else window_of(pool)
    if n == 0:  # (every path sizes its scratch for at least one sample: 260 MB for 16 channels of 2048^2)
        return y.reshape(n, c_out, oh, ow) if pool is None else (pooled, indices)
    with blas_guard(not _uses_gemm32(x)):  # (every forward path's products are gemm32's where it can)
        if _is_depthwise(x, w, stride, groups):
            _forward_by_depthwise(x, w, b, padding, dilation, oh, ow, act, y)
        elif _uses_winograd(x, w, stride, dilation, groups, algorithm):
            _forward_by_winograd(x, w, b, padding, oh, ow, act, window, y, pooled, indices)
        elif pool is None and _forward_is_pointwise(x, w, stride, padding, groups):
            _forward_by_pointwise(x, w, b, act, y)
        elif stride == (1, 1):
            _forward_direct(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices)
        elif _uses_tiles(x):
            _forward_by_taps(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices, stride)
        elif _uses_phases(x, w, groups):
            _forward_by_phases(x, w, b, stride, padding, dilation, groups, oh, ow, act, y)
        else:
            _forward_by_im2col(x, w, b, stride, padding, dilation, groups, oh, ow, act, y)
    return y.reshape(n, c_out, oh, ow) if pool is None else (pooled, indices)


# Winograd's algorithm (F(4x4, 3x3) or F(2x2, 3x3) for the forward: _winograd._winograd_side) takes the
# 3x3 stride-1 float32 layers with at least WINOGRAD_MIN_CHANNELS input and output channels (below it
# the transforms, linear in C + K, outweigh F(2x2)'s 2.25x fewer multiply-adds), unless the op's
# algorithm is "direct" (a layer's choice: Conv2d(algorithm=)) or FASTCONV_WINOGRAD=0 (the whole
# process's) keeps them on the direct kernel and its rounding (_winograd32.py compares the two).
WINOGRAD = os.environ.get("FASTCONV_WINOGRAD", "").strip() != "0"
WINOGRAD_MIN_CHANNELS = 16


def _uses_winograd(x, w, stride, dilation, groups, algorithm):
    c_out, cg, kh, kw = w.shape
    return (WINOGRAD and algorithm == "auto" and _uses_gemm32(x) and stride == (1, 1) and dilation == (1, 1)
            and groups == 1 and (kh, kw) == (3, 3) and min(cg, c_out) >= WINOGRAD_MIN_CHANNELS)


def _backward_uses_winograd(x, w, stride, padding, dilation, groups, algorithm):
    """The layers whose forward goes by Winograd, when dx can too: dx is the stride-1 correlation of
    the output gradient with w's taps reversed and its channel axes swapped, padded by 2 - padding
    on each side, which needs each padding <= 2."""
    return max(padding) <= 2 and _uses_winograd(x, w, stride, dilation, groups, algorithm)


def conv2d_backward(dy, x, w, stride, padding, dilation, groups, bias, input_grad, algorithm):
    return _conv2d_backward(dy, None, None, None, x, w, stride, padding, dilation, groups, bias, input_grad,
                            algorithm)


def conv2d_max_pool2d_backward(dy, y, indices, x, w, stride, padding, dilation, groups, activation, bias, input_grad,
                               algorithm):
    """conv2d_backward of max_pool2d_backward(activation's backward(dy, y), indices, <the
    convolution's output shape>), fused for stride 1: the full-size gradient is only ever built one
    sample at a time, in cache (except for the layers the Winograd backward or the 1x1 one by the
    linear layer takes, which build it whole by those ops and then run conv2d_backward's own path:
    its bits)."""
    if stride != (1, 1) or _is_depthwise(x, w, stride, groups):  # no fused kernel for these: the ops one by one
        oh, ow = _output_size(x, w, stride, padding, dilation)
        dz = _unpooled_gradient(dy, y, activation, indices, x.shape[0], w.shape[0], oh, ow)
        return conv2d_backward(dz, x, w, stride, padding, dilation, groups, bias, input_grad, algorithm)
    return _conv2d_backward(dy, y, activation, indices, x, w, stride, padding, dilation, groups, bias, input_grad,
                            algorithm)


def _conv2d_backward(dy, y, activation, indices, x, w, stride, padding, dilation, groups, bias, input_grad,
                     algorithm):
    """indices None: dy is the convolution's output gradient; else the pooled one (stride 1 only)."""
    if x.shape[0] == 0:  # (as the forward: no sample's scratch for an empty batch)
        dx = empty(x.shape, x.dtype) if input_grad else None
        return dx, np.zeros(w.shape, x.dtype), np.zeros(w.shape[0], x.dtype) if bias else None
    if _is_depthwise(x, w, stride, groups):
        return _backward_by_depthwise(dy, np.ascontiguousarray(x), w, padding, dilation, bias, input_grad)
    if _backward_is_pointwise(x, w, stride, padding, groups):
        if indices is not None:  # the output gradient whole by the unfused ops, then this path: its bits
            dy = _unpooled_gradient(dy, y, activation, indices, x.shape[0], w.shape[0], x.shape[2], x.shape[3])
        return _backward_pointwise(dy, x, w, bias, input_grad)
    n, c, _, _ = x.shape
    c_out, cg, kh, kw = w.shape
    oh, ow = _output_size(x, w, stride, padding, dilation)
    rows = cg * kh * kw
    parts = _parts(n)
    x = np.ascontiguousarray(x)
    from_pool = indices is not None
    dy3 = np.ascontiguousarray(dy).reshape(n, c_out, dy.shape[2] * dy.shape[3])
    indices3 = indices.reshape(dy3.shape) if from_pool else np.empty((0, 0, 0), np.int64)
    y3 = y.reshape(dy3.shape) if y is not None else np.empty((0, 0, 0), x.dtype)
    w2 = np.ascontiguousarray(w).reshape(c_out, rows)
    dx = empty(x.shape if input_grad else (0, 0, 0, 0), x.dtype)
    if _backward_uses_winograd(x, w, stride, padding, dilation, groups, algorithm):
        dw, db = _backward_by_winograd(dy, y, activation, indices, x, w, padding, oh, ow, input_grad, dx)  # (gemm32)
        if np.isfinite(dw).all():
            return dx if input_grad else None, dw, db if bias else None
        # inf or NaN in dW (inf - inf in the transforms, or an overflow a direct sum avoids): all of
        # it again by the direct kernel below, whose non-finite values are a direct sum's
    tiles = _backward_uses_tiles(x, w, stride, input_grad)
    # BLAS's products: the wide kernels' without gemm32, im2col's where not _backward_uses_gemm32
    with blas_guard(not tiles and (not _uses_gemm32(x)
                                   or (stride != (1, 1) and not _backward_uses_gemm32(x, w, groups, oh * ow)))):
        if tiles:
            db_parts, dw_parts = _backward_by_tiles(dy3, from_pool, dy.shape[3], y3, activation, indices3, x, w, padding,
                                                    dilation, groups, oh, ow, parts, input_grad, dx)
        elif stride == (1, 1):
            db_parts, dw_parts = _backward_by_wide(dy3, from_pool, y3, activation, indices3, x, w, w2, padding,
                                                   dilation, groups, oh, ow, parts, input_grad, dx)
        else:
            db_parts, dw_parts = _backward_by_im2col(dy3, x, w, w2, stride, padding, dilation, groups, oh, ow, parts,
                                                     input_grad, dx)
    # (copies of one part: a view would keep its whole scratch buffer out of the cache)
    # (the parts' sums are float64 where the kernel keeps totals: _shared._flush_into)
    dw = np.array(dw_parts.sum(axis=0) if parts > 1 else dw_parts[0], dtype=x.dtype, order="C").reshape(w.shape)
    db = np.array(db_parts.sum(axis=0) if parts > 1 else db_parts[0], dtype=x.dtype)
    return dx if input_grad else None, dw, db if bias else None
