"""2-D pooling on the CPU: Numba, parallel over the N * C planes (each plane's output is owned by one
thread, so the backward scatter-adds need no atomics and run in output order, deterministically).
`g` is a PoolGeometry (fastconv._kernel_abi) the ops validated. Math: csrc/kernels/pool.cuh."""
import numpy as np
from numba import njit, prange

from . import _vecmath
from ._memory import empty
from ._pool32 import max_pool_2x2_plane, unpool_2x2_plane

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"]


@njit(inline="always")
def _better(v, best):
    return (v > best) | (v != v)  # ties keep the first maximum; NaN wins (torch's rule)


@njit(inline="always")
def max_pool_plane(x, H, W, y, indices, kh, kw, sh, sw, ph, pw):
    """y, indices (Ho, Wo) = max pooling of the plane x[:H, :W]; x may have more columns than W (the
    convolution's wide grid: they are never read); indices are h * W + w.

    A 2x2 window without padding is unrolled and branch-free: the general loop nest with its
    per-window bounds took 7.3 ms on 128x32x28x28 (one thread), the unrolled one 0.9 ms."""
    Ho, Wo = y.shape
    if kh == 2 and kw == 2 and ph == 0 and pw == 0:
        for ho in range(Ho):
            h = ho * sh
            for wo in range(Wo):
                w = wo * sw
                best, index = x[h, w], h * W + w
                v = x[h, w + 1]
                take = _better(v, best)
                best, index = (v, index + 1) if take else (best, index)
                v = x[h + 1, w]
                take = _better(v, best)
                best, index = (v, (h + 1) * W + w) if take else (best, index)
                v = x[h + 1, w + 1]
                take = _better(v, best)
                best, index = (v, (h + 1) * W + w + 1) if take else (best, index)
                y[ho, wo] = best
                indices[ho, wo] = index
        return
    for ho in range(Ho):
        h_first = ho * sh - ph
        h0, h_end = max(h_first, 0), min(h_first + kh, H)
        for wo in range(Wo):
            w_first = wo * sw - pw
            w0, w_end = max(w_first, 0), min(w_first + kw, W)
            best = -np.inf
            best_index = h0 * W + w0
            for h in range(h0, h_end):
                for w in range(w0, w_end):
                    v = x[h, w]
                    if _better(v, best):
                        best = v
                        best_index = h * W + w
            y[ho, wo] = best
            indices[ho, wo] = best_index


@njit(parallel=True, cache=True)
def _max_forward(x, y, indices, kh, kw, sh, sw, ph, pw):
    planes, H, W = x.shape
    for p in prange(planes):
        max_pool_plane(x[p], H, W, y[p], indices[p], kh, kw, sh, sw, ph, pw)


@njit(inline="always")
def _max_backward_plane(dy, indices, flat):
    """flat (a plane of dx) = 0, then each dy added at the position its index names."""
    flat[:] = 0
    Ho, Wo = dy.shape
    for ho in range(Ho):
        for wo in range(Wo):
            i = indices[ho, wo]
            if 0 <= i < flat.size:  # unchecked indices (check_indices=False) never write out of bounds
                flat[i] += dy[ho, wo]


@njit(parallel=True, cache=True)
def _max_backward(dy, indices, dx):
    for p in prange(dy.shape[0]):
        _max_backward_plane(dy[p], indices[p], dx[p].reshape(-1))


@njit(parallel=True, cache=True)
def _max_backward_2x2_avx512(dy, indices, dx):
    """_max_backward for dy of a 2x2 / stride 2 pooling's shape by _pool32.unpool_2x2_plane, eight
    windows at a time, every position written once (no zeroing pass first); the same bits. A plane
    with an index outside its own 2x2 block (another pooling's, or unchecked indices) is redone by
    _max_backward_plane."""
    planes, Ho, Wo = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    pooled, flat = dy.reshape((1, planes, Ho * Wo)), dx.reshape(-1)
    flat_indices = indices.reshape((1, planes, Ho * Wo))
    for p in prange(planes):
        if not unpool_2x2_plane(pooled, pooled, 0, flat_indices, 0, p, Wo, H, W, W, flat, p * H * W):
            _max_backward_plane(dy[p], indices[p], dx[p].reshape(-1))


@njit(parallel=True, cache=True)
def _avg_forward(x, y, kh, kw, sh, sw, ph, pw):
    planes, H, W = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    divisor = kh * kw
    for p in prange(planes):
        for ho in range(Ho):
            h_first = ho * sh - ph
            for wo in range(Wo):
                w_first = wo * sw - pw
                total = 0.0
                for h in range(max(h_first, 0), min(h_first + kh, H)):
                    for w in range(max(w_first, 0), min(w_first + kw, W)):
                        total += x[p, h, w]
                y[p, ho, wo] = total / divisor


@njit(parallel=True, cache=True)
def _avg_backward(dy, dx, kh, kw, sh, sw, ph, pw):
    planes, Ho, Wo = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    divisor = kh * kw
    for p in prange(planes):
        dx[p] = 0
        for ho in range(Ho):
            h_first = ho * sh - ph
            for wo in range(Wo):
                w_first = wo * sw - pw
                share = dy[p, ho, wo] / divisor
                for h in range(max(h_first, 0), min(h_first + kh, H)):
                    for w in range(max(w_first, 0), min(w_first + kw, W)):
                        dx[p, h, w] += share


# 2x2 windows at stride 2 without padding (the common pooling): the same sums, in the same order
# and precision, as _avg_forward / _avg_backward, whose general window bounds kept the loops scalar.
@njit(parallel=True, cache=True)
def _avg_forward_2x2(x, y):
    planes, Ho, Wo = y.shape
    for p in prange(planes):
        for ho in range(Ho):
            top, bottom, out = x[p, 2 * ho], x[p, 2 * ho + 1], y[p, ho]
            for wo in range(Wo):
                total = 0.0 + top[2 * wo]  # (0.0 + first: as the general loop, -0.0 sums to +0.0)
                total += top[2 * wo + 1]
                total += bottom[2 * wo]
                total += bottom[2 * wo + 1]
                out[wo] = total / 4


@njit(parallel=True, cache=True)
def _avg_backward_2x2(dy, dx):
    """Each position of dx written once (the windows do not overlap): no zeroing pass and no read of
    dx, which made this loop half as fast as a copy."""
    planes, Ho, Wo = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    for p in prange(planes):
        for ho in range(Ho):
            top, bottom, d = dx[p, 2 * ho], dx[p, 2 * ho + 1], dy[p, ho]
            for wo in range(Wo):
                share = d[wo] / 4 + 0.0  # (+ 0.0: -0.0 gives +0.0, as the general loop's 0 + share)
                top[2 * wo] = share
                top[2 * wo + 1] = share
                bottom[2 * wo] = share
                bottom[2 * wo + 1] = share
            if W > 2 * Wo:  # a last odd column is in no window
                top[W - 1] = 0
                bottom[W - 1] = 0
        if H > 2 * Ho:  # nor a last odd row
            dx[p, H - 1] = 0


def _planes(a):
    return a.reshape(-1, a.shape[2], a.shape[3])


def is_2x2_stride_2(window):
    """Whether a pooling window (kh, kw, sh, sw, ph, pw) is the 2x2 / stride 2 / unpadded one (max:
    _pool32.py in AVX-512 or AVX2; average: _avg_*_2x2)."""
    return (window[0] == 2 and window[1] == 2 and window[2] == 2 and window[3] == 2 and window[4] == 0
            and window[5] == 0)


# The same test in jitted code (conv's max pooling fused into the forward)
is_2x2_stride_2_jit = njit(inline="always")(is_2x2_stride_2)


def window_of(g):
    """A PoolGeometry's window as is_2x2_stride_2 and the kernels take it: (kh, kw, sh, sw, ph, pw)."""
    return (*g.kernel, *g.stride, *g.padding)


@njit(parallel=True, cache=True)
def _max_forward_2x2_simd(x, y, indices):
    planes, H, W = x.shape
    for p in prange(planes):
        max_pool_2x2_plane(x[p].reshape(-1), W, W, y[p], indices[p])


def max_pool2d_forward(x, g):
    y = empty(g.out_shape, x.dtype)
    indices = empty(g.out_shape, np.int64)
    if x.dtype == np.float32 and _vecmath.SIMD and is_2x2_stride_2(window_of(g)):
        # the same values and indices as _max_forward, ~2.6x faster on conv2's planes (_pool32.py)
        _max_forward_2x2_simd(_planes(np.ascontiguousarray(x)), _planes(y), _planes(indices))
    else:
        _max_forward(_planes(x), _planes(y), _planes(indices), *g.kernel, *g.stride, *g.padding)
    return y, indices


def max_pool2d_backward(dy, indices, g):
    dx = empty(g.in_shape, dy.dtype)
    # (The backward is not told the window: dy the shape a 2x2 / stride 2 pooling gives is enough,
    # since unpool_2x2_plane checks that every index lies in its own 2x2 block.)
    # (AVX-512 only: its runs end in masked stores, which AVX2 hosts run slower than this loop)
    if dy.dtype == np.float32 and _vecmath.AVX512 and (g.out_h, g.out_w) == (g.h // 2, g.w // 2):
        _max_backward_2x2_avx512(_planes(np.ascontiguousarray(dy)), _planes(np.ascontiguousarray(indices)),
                                 _planes(dx))
    else:
        _max_backward(_planes(dy), _planes(indices), _planes(dx))
    return dx


def avg_pool2d_forward(x, g):
    y = empty(g.out_shape, x.dtype)
    if is_2x2_stride_2(window_of(g)):
        _avg_forward_2x2(_planes(x), _planes(y))
    else:
        _avg_forward(_planes(x), _planes(y), *g.kernel, *g.stride, *g.padding)
    return y


def avg_pool2d_backward(dy, g):
    dx = empty(g.in_shape, dy.dtype)
    if is_2x2_stride_2(window_of(g)):
        _avg_backward_2x2(_planes(dy), _planes(dx))
    else:
        _avg_backward(_planes(dy), _planes(dx), *g.kernel, *g.stride, *g.padding)
    return dx
