"""What the convolution's algorithms share: the output's size, the thread and gradient-part counts
(the parts fixed by the batch size, for the same bits on any thread count), which of our kernels
the host runs (_uses_gemm32, _uses_tiles), w with its taps first, sums in a fixed order (_sum,
_channel_sums), and a fused max pooling's output gradient rebuilt by the unfused ops."""
import numba
import numpy as np
from numba import njit, prange

from ..._kernel_abi import PoolGeometry, conv_output_size
from .. import _vecmath
from ..dense import relu_backward, sigmoid_backward
from ..pool import max_pool2d_backward


@njit(inline="always")
def _sum(row):
    """The sum of a 1-D array in float64 (_sum_of)."""
    return _sum_of(row, 0, row.size)


@njit(inline="always")
def _sum_of(a, lo, hi):
    """The sum of a[lo:hi] in float64, as 8 interleaved partial sums added in a fixed order (the same
    bits on every run): a single running sum waits on each add's latency. (By offsets: a view of a
    plane costs a reference count on an array the threads share.)"""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    end = lo + (hi - lo) // 8 * 8
    for i in range(lo, end, 8):
        s0 += a[i]
        s1 += a[i + 1]
        s2 += a[i + 2]
        s3 += a[i + 3]
        s4 += a[i + 4]
        s5 += a[i + 5]
        s6 += a[i + 6]
        s7 += a[i + 7]
    for i in range(end, hi):
        s0 += a[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


# The stride-1 backward's products accumulate a task's dW and db in float32 (gemm32 with beta 1, sample
# after sample): one chain of N/8 * OH * OW terms per value, 1.6e-4 off float64 for 4 images of
# 1024 x 1024 (OpenBLAS, which blocks K, 5e-7). So the products go over at most this many output
# positions at a time (a sample's rows in blocks), and after every this many the task's float32 sums
# are added into its float64 totals and restarted (_flush_into): chains of < 2 * 4096 terms, as the
# linear layers' K blocks (dense._K_BLOCK). (The strided backward's products by gemm32 also take at
# most this many positions each: _im2col._weight_grad_gemm32.)
_FLUSH_POSITIONS = 4096


@njit(inline="always")
def _flush_into(part, total):
    """total += part, then part = 0, for 3-D float32 partial sums of a task (groups, rows, C_out/g; or
    Winograd's dU planes) and its float64 totals."""
    for g in range(part.shape[0]):
        for i in range(part.shape[1]):
            p, q = part[g, i], total[g, i]
            for j in range(p.size):
                q[j] += p[j]
                p[j] = 0


@njit(inline="always")
def _settle(part, total):
    """part = total + part, rounded once: the flushed sums and those since, for _flush_into's arrays."""
    for g in range(part.shape[0]):
        for i in range(part.shape[1]):
            p, q = part[g, i], total[g, i]
            for j in range(p.size):
                p[j] = q[j] + p[j]


@njit(inline="always")
def _block_rows(ow):
    """How many output rows the stride-1 backward's products take at a time: <= _FLUSH_POSITIONS
    positions, one row at least (the register tiles' and the wide kernel's alike: their bits agree)."""
    return max(1, _FLUSH_POSITIONS // ow) if ow > 0 else 1


@njit(inline="always")
def _flush_before_sample(part, total, since, positions, blocked):
    """A task's positions in part's sums once the next sample's are in: part flushed into total first
    where they would pass _FLUSH_POSITIONS (unless blocked: a sample in blocks of rows flushes after
    each block itself)."""
    since += positions
    if since > _FLUSH_POSITIONS and not blocked:
        _flush_into(part, total)
        since = positions
    return since


def _uses_gemm32(x):
    """gemm32 for the GEMMs: float32 on AVX-512 or AVX2 hosts."""
    return x.dtype == np.float32 and _vecmath.SIMD


def _uses_tiles(x):
    """The register-tiled kernels (_taps32.py, _winograd32.py): float32 on AVX-512 hosts (their
    tiles fill 32 zmm registers)."""
    return x.dtype == np.float32 and _vecmath.AVX512


def _output_size(x, w, stride, padding, dilation):
    kh, kw = w.shape[2:]
    return (conv_output_size(x.shape[2], kh, stride[0], padding[0], padding[1], dilation[0]),
            conv_output_size(x.shape[3], kw, stride[1], padding[2], padding[3], dilation[1]))


def _threads(n):
    return max(1, min(numba.get_num_threads(), n))


# Backward passes sum partial weight/bias gradients over blocks of samples. The number of blocks is
# a function of the batch size only, never of the thread count, so that dw and db (and so training)
# are bit-identical on any machine; 8 blocks keep up to 8 cores busy.
_GRADIENT_PARTS = 8


def _parts(n):
    return max(1, min(_GRADIENT_PARTS, n))


def _taps_first(w):
    """w as (kh*kw, C_out, C_in/g): each tap's (C_out/g, C_in/g) block is a plain 2-D slice."""
    c_out, cg, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw, c_out, cg)


_NO_POOL = (0, 0, 0, 0, 0, 0)


@njit(parallel=True, nogil=True, cache=True)
def _channel_sums(dy, db):
    """db[o] = the sum of dy[:, o] (N, C, P) in float64 (_sum of each plane), sample after sample."""
    for o in prange(dy.shape[1]):
        total = 0.0
        for n in range(dy.shape[0]):
            total += _sum(dy[n, o])
        db[o] = total


def _unpooled_gradient(dy, y, activation, indices, n, c_out, oh, ow):
    """The convolution's output gradient (n, c_out, oh, ow) from the pooled one: the activation's
    backward at the pooled outputs y, then max_pool2d_backward's scatter (the unfused ops)."""
    if activation is not None:
        dy = relu_backward(dy, y) if activation == "relu" else sigmoid_backward(dy, y)
    return max_pool2d_backward(dy, indices, PoolGeometry(n, c_out, oh, ow, dy.shape[2], dy.shape[3]))
