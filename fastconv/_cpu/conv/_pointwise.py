"""1x1 layers (stride 1, no padding, groups 1) on few positions a sample, float32 with gemm32: the
forward as one product over the batch's columns, the backward by the linear layer's
(dense.linear_backward) on the channels-last batch."""
import numba
import numpy as np
from numba import njit, prange

from .._gemm32 import NR as GEMM_NR, gemm32
from .._memory import empty
from .._taps32 import transpose16_block
from .._winograd32 import LANES
from .._activation import ZERO as _ZERO
from ..dense import linear_backward
from ._epilogue import _bias_activate
from ._shared import _channel_sums, _uses_gemm32


# A 1x1 convolution (stride 1, no padding, groups 1) is a linear layer over the positions: y[n, :, q]
# = W x[n, :, q]. With few positions a sample (a deep layer's 7x7 maps) the per-sample products are
# thin: the tiles' dW took K = 49 a product into a 4 MiB partial dW per part (512 -> 2048 channels),
# dx 49 columns. So those layers' backward goes by linear_backward on the channels-last batch (N * P
# rows, one product each for dx and dW), with a transpose each way. Zen 4, 2 threads, backward:
# 512 -> 2048 on 7x7 (batch 16) 35.0 -> 18.7 ms, 2048 -> 512 34.7 -> 19.5, 2048 -> 2048 on 4x4
# (batch 8) 88.9 -> 14.1, 64 -> 64 on 8x8 (batch 64) 0.88 -> 0.50; 10x10 a tie, and on 14x14 the
# tiles stay faster (1024 -> 256: 18.8 against 22.5).
_POINTWISE_POSITIONS = 64
_POINTWISE_ROWS = 8192


@njit(parallel=True, nogil=True, cache=True)
def _transposed_planes(a, out):
    """out[n, s, r] = a[n, r, s] for float32 a (N, R, S), 16 x 16 blocks through the registers."""
    n_img, r_n, s_n = a.shape
    src, dst = a.reshape(-1), out.reshape(-1)
    blocks = -(-r_n // LANES)
    for t in prange(n_img * blocks):
        n, r0 = t // blocks, t % blocks * LANES
        for s0 in range(0, s_n, LANES):
            transpose16_block(src, (n * r_n + r0) * s_n + s0, s_n, min(LANES, r_n - r0), min(LANES, s_n - s0), dst,
                              (n * s_n + s0) * r_n + r0, r_n)


def _backward_is_pointwise(x, w, stride, padding, groups):
    return (_uses_gemm32(x) and w.shape[2:] == (1, 1) and stride == (1, 1) and not any(padding) and groups == 1
            and x.shape[2] * x.shape[3] <= _POINTWISE_POSITIONS)


# Their forward, where a sample's positions are not a whole number of gemm32's NR-column strips (7x7,
# 6x6; 4x4 with AVX-512), goes by one product over the batch: with a sample's P columns the last
# strip ran part empty (49 of 64 columns) and W streamed from memory again for every sample (16 MiB
# for 2048 -> 2048). The batch as columns takes a copy each way. Zen 4, 2 threads, best of 9,
# per-sample tiles -> batch: 512 -> 2048 on 7x7 (batch 16) 10.0 -> 7.7 ms, 1024 -> 256 on 7x7
# 2.77 -> 2.01, 2048 -> 2048 on 4x4 20.3 -> 10.3, 64 -> 256 on 7x7 (batch 64) 0.79 -> 0.59, 128 ->
# 128 on 6x6 0.43 -> 0.38; on 8x8 (whole strips) it lost: 512 -> 512 2.66 against 3.45 ms.
def _forward_is_pointwise(x, w, stride, padding, groups):
    return _backward_is_pointwise(x, w, stride, padding, groups) and x.shape[2] * x.shape[3] % GEMM_NR != 0


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_pointwise(x, w2, b, has_bias, act, block_rows, xc, yc, y):
    """y (N, C_out, P) = act(w2 @ x[n] + b) for a 1x1 layer (x as (N, C, P)), as one product over the
    batch's columns: xc (C, N*P) = the batch side by side, yc (C_out, N*P) = w2 @ xc by gemm32 in
    blocks of block_rows output channels (the threads share the blocks; a block of w2 stays in cache
    across all the columns), then each sample's plane copied out with the bias and activation. Each
    value sums over the channels in order, as every gemm32 product does."""
    n_img, c, p = x.shape
    c_out = w2.shape[0]
    for ci in prange(c):
        for n in range(n_img):
            src, dst = x[n, ci], xc[ci, n * p:(n + 1) * p]
            for q in range(p):
                dst[q] = src[q]
    blocks = -(-c_out // block_rows)
    for t in prange(blocks):
        r0, r1 = t * block_rows, min(c_out, (t + 1) * block_rows)
        gemm32(w2[r0:r1], xc, yc[r0:r1], 0.0, False, False)
        for o in range(r0, r1):
            for n in range(n_img):
                _bias_activate(yc[o, n * p:(n + 1) * p], y[n, o], 1, p, p, b[o] if has_bias else _ZERO, act)


def _forward_by_pointwise(x, w, b, act, y):
    n, c, h, w_in = x.shape
    c_out = w.shape[0]
    # blocks of at most 128 channels (w2's 128 x C in cache), at least one a thread, whole 8-row tiles
    block_rows = max(8, min(128, -(-c_out // numba.get_num_threads()) // 8 * 8))
    _forward_pointwise(x.reshape(n, c, h * w_in), np.ascontiguousarray(w).reshape(c_out, c),
                       b if b is not None else np.empty(0, x.dtype), b is not None, act, block_rows,
                       empty((c, n * h * w_in), x.dtype), empty((c_out, n * h * w_in), x.dtype), y)


def _backward_pointwise(dy, x, w, bias, input_grad):
    """(dx or None, dW, db or None) of a 1x1 convolution by linear_backward (see above), in chunks of
    _POINTWISE_ROWS rows: dW's float32 sums no longer than the tiles' parts made them (one product
    over 4096 x 64 rows missed float32's tolerance), the chunks added in float64; db in float64."""
    n, c, h, w_in = x.shape
    k, p = w.shape[0], h * w_in
    x3, dy3, w2 = (np.ascontiguousarray(a).reshape(shape) for a, shape in ((x, (n, c, p)), (dy, (n, k, p)),
                                                                           (w, (k, c))))
    x2, dy2 = empty((n, p, c), x.dtype), empty((n, p, k), x.dtype)
    _transposed_planes(x3, x2)
    _transposed_planes(dy3, dy2)
    dx = empty(x.shape, x.dtype) if input_grad else None
    dw_parts = []
    per = max(1, _POINTWISE_ROWS // max(1, p))  # samples a chunk
    for s0 in range(0, n, per):
        s1 = min(n, s0 + per)
        dx2, dw_part, _ = linear_backward(dy2[s0:s1].reshape(-1, k), x2[s0:s1].reshape(-1, c), w2, False, input_grad)
        dw_parts.append(dw_part)
        if input_grad:
            _transposed_planes(dx2.reshape(s1 - s0, p, c), dx[s0:s1].reshape(s1 - s0, c, p))
    if len(dw_parts) == 1:
        dw = dw_parts[0]
    elif dw_parts:
        dw = np.add.reduce(dw_parts, axis=0, dtype=np.float64).astype(x.dtype)
    else:  # no samples
        dw = np.zeros((k, c), x.dtype)
    db = None
    if bias:
        db = np.empty(k)
        _channel_sums(dy3, db)
        db = db.astype(x.dtype)
    return dx, dw.reshape(w.shape), db
