"""Dense path on the CPU: BLAS for the GEMMs (for float32 on AVX-512 and AVX2 hosts our gemm32, see
_linear_forward_gemm32), one fused parallel Numba pass for bias + activation,
and parallel elementwise ReLU / sigmoid (outputs past the last-level cache streamed: _stream.py;
the float32 sigmoid forward in AVX-512 or AVX2 where the host has it: _vecmath.sigmoid16, which the
fused epilogues then use too: epilogue_activation).

linear_forward / linear_backward split their GEMMs between the Numba threads (each runs a block
with single-threaded BLAS, then its share of the epilogue while it is in cache: see _blas.py),
so OpenBLAS's own threads never wake up and spin against the Numba loops that follow. Small layers
run as one GEMM on the calling thread instead (_on_calling_thread); narrow ones (_narrow) there by
gemm32_narrow, gemm32's bits from a kernel quick to compile.
Math: csrc/kernels/dense.cuh.
"""
import numba
import numpy as np
from numba import njit, prange

from ._blas import blas_guard, gemm
from ._gemm32 import NR, gemm32, gemm32_in_blocks, gemm32_narrow
from ._memory import empty, empty_like
from ._parallel import SERIAL_BELOW, block, run
from . import _vecmath
from ._stream import (PREFETCH_AHEAD, SPAN, _span, align_skip, prefetch, should_stream, store_fence, stream_map1,
                      stream_map2)
from ._activation import (RELU as _RELU, SIGMOID as _SIGMOID, SIGMOID16 as _SIGMOID16, ZERO as _ZERO,
                          epilogue_activation, relu as _relu, relu_grad as _relu_grad, sigmoid as _sigmoid,
                          sigmoid_grad as _sigmoid_grad, sigmoid_in_place)
from ._vecmath import sigmoid16_part, sigmoid16_span, sigmoid16_streamed

__all__ = ["matmul", "linear_forward", "linear_backward", "relu_forward", "relu_backward",
           "sigmoid_forward", "sigmoid_backward"]

@njit(parallel=True, cache=True)
def _relu_forward(x, y):
    for i in prange(x.size):
        y[i] = _relu(x[i])


@njit(parallel=True, cache=True)
def _relu_backward(dy, x, dx):
    for i in prange(x.size):
        dx[i] = _relu_grad(dy[i], x[i])


@njit(parallel=True, cache=True)
def _sigmoid_forward(x, y):
    for i in prange(x.size):
        y[i] = _sigmoid(x[i])


@njit(parallel=True, cache=True)
def _sigmoid_backward(dy, y, dx):
    for i in prange(y.size):
        dx[i] = _sigmoid_grad(dy[i], y[i])


# The same with the output streamed, for outputs past the last-level cache (see _stream.py; the
# last argument is the output's align_skip). Sigmoid's portable forward has none: it is bound by
# its exp, which ran 2-5x slower in the streamed path's block loops than in the plain loop above;
# the AVX-512 forward below streams with its own loop.
@njit(parallel=True, cache=True)
def _relu_forward_streamed(x, y, skip):
    stream_map1(_relu, x, y, skip)


@njit(parallel=True, cache=True)
def _relu_backward_streamed(dy, x, dx, skip):
    stream_map2(_relu_grad, dy, x, dx, skip)


@njit(parallel=True, cache=True)
def _sigmoid_backward_streamed(dy, y, dx, skip):
    stream_map2(_sigmoid_grad, dy, y, dx, skip)


# float32 sigmoid on AVX-512 and AVX2 hosts (_vecmath.SIMD): 16 values per instruction sequence,
# ~0.4 ns per value on one Zen 4 core against ~0.85 for _sigmoid's loop (on the Zen 3 AVX2 host the
# op went from 20% to 42% of the copy ceiling); every value, wherever it sits, gets
# sigmoid16's bits (the last few by a masked sigmoid16).
@njit(parallel=True, cache=True)
def _sigmoid_forward_simd(x, y):
    n = y.size
    for s in prange((n + SPAN - 1) // SPAN):
        sigmoid16_span(x, y, s * SPAN, min(n, (s + 1) * SPAN))


@njit(parallel=True, cache=True)
def _sigmoid_forward_simd_streamed(x, y, skip):
    """As _sigmoid_forward_simd with the whole lines of y written by non-temporal stores, the input
    prefetched ahead (see _stream.PREFETCH_AHEAD)."""
    n = y.size
    for s in prange((n + SPAN - 1) // SPAN):
        lo, hi, start = _span(n, s, skip)
        whole = start + (hi - start) // 16 * 16
        sigmoid16_part(x, y, lo, start)
        for b in range(start, whole, 16):
            if b + PREFETCH_AHEAD < n:
                prefetch(x, b + PREFETCH_AHEAD)
            sigmoid16_streamed(x, b, y, b)
        sigmoid16_part(x, y, whole, hi)
        store_fence()


def _op(a, trans):
    return a.T if trans else a


def matmul(a, b, trans_a, trans_b):
    """op(a) @ op(b): by gemm32_blocked (_linear_forward_gemm32 without bias or activation) for
    float32 on AVX-512 and AVX2 hosts where _by_gemm32 says so; else np.dot."""
    m, k = a.shape[::-1] if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    if not (a.dtype == b.dtype == np.float32 and _vecmath.SIMD and _by_gemm32(m, n, k)):
        return np.dot(_op(a, trans_a), _op(b, trans_b))
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)  # (ops.matmul's already are)
    y = empty((m, n), a.dtype)
    _linear_forward_gemm32(a, trans_a, b, trans_b, _NO_BIAS, False, _NO_ACTIVATION,
                           _gemm32_blocks(m, n, numba.get_num_threads()), y)
    return y


def _by_gemm32(m, n, k):
    """Whether matmul's product is gemm32's: from 2^20 multiply-adds, with at least 32 rows and 16
    columns, and a B (k n values) of at most 2^20 values or 8192 per row of A, or with AVX-512 any B
    from 128 rows. Each call copies B into strips, which pays where each of B's values serves many
    rows. Zen 4 host, two threads, each library in processes of its own, GFLOP/s ours (unblocked
    then) vs np.dot (m x n x k): 128^3 122-134 vs 68-121; 256^3 199-204 vs 121-174; 1024^3, 2048^3
    211-218 vs 164-207; 4096^3 207-210 vs 201; 32x1024x1024 170-178 vs 95-116; 1024x1024x32
    183-198 vs 39-50; 64x4096x64 174-179 vs 90-98; 512x2048x2048 207-208 vs 194-200;
    1024x1024x4096 212-214 vs 195-207. Left to np.dot: 100^3 77 vs 95; 16x4096x4096 16 vs 82;
    4096x1x4096 11 vs 20; 64x2048x2048 124-130 vs 131-146. With the cache blocking (thirty-second
    session), Zen 5 host, two threads: 128 x 2048 x 2048 285 vs 220, 128 x 8192 x 1024 249 vs 201,
    256 x 4096 x 4096 341 vs 234, 1024 x 4096 x 4096 375 vs 245 (unblocked 198 and 326), where 64
    rows still lose (64 x 2048 x 2048 168 vs 183, 64 x 4096 x 4096 155 vs 175): B read once from
    memory, copied, for few multiply-adds a value."""
    return m * n * k >= 1 << 20 and m >= 32 and n >= 16 and (k * n <= max(1 << 20, 8192 * m)
                                                            or (_vecmath.AVX512 and m >= 128))


def _gemm32_blocks(m, n, threads):
    """The blocks of matmul's and the linear forward's gemm32 products (_linear_forward_gemm32): one
    per thread (an uneven split left a thread idle long enough to fall asleep), of whole strips of
    columns where there are enough of them; else of rows, each block packing all of B's columns
    itself, so no more blocks than leave each as many rows as B has columns (NR-padded: the packing
    then costs a block no more than reading its rows of A) and no fewer than strips. gemm32 sums
    each value in the same order wherever its tile sits, so the split does not change the bits.
    The forward's blocks had been _blocks' (8 for 512 rows or more): Zen 5 host,
    two threads, GFLOP/s 8 -> 2 blocks, three interleaved runs: 16384x256->256 147-156 -> 260-275,
    8192x512->512 258-309 -> 303-362, 4096x1024->1024 283-310 -> 305-343; 1024^3, 2048^3, 512^3
    and 3000x8192->256 within their noise."""
    strips = -(-n // NR)
    if strips >= threads:
        return threads
    return max(1, strips, min(threads, m // max(1, strips * NR)))


_NO_BIAS = np.empty(0, np.float32)
_NO_ACTIVATION = epilogue_activation(None, np.float32)


@njit(inline="always")
def _epilogue(y, r0, r1, c0, c1, b, has_bias, act):
    """y[r0:r1, c0:c1] = act(y + b), y C-contiguous; under _SIGMOID16 the sigmoid is sigmoid16 over
    the block's rows after the bias (one span when they are whole rows)."""
    if has_bias or act != _SIGMOID16:
        for i in range(r0, r1):
            for j in range(c0, c1):
                v = y[i, j]
                if has_bias:
                    v += b[j]
                if act == _RELU:
                    v = _ZERO if v < _ZERO else v
                elif act == _SIGMOID:
                    v = _sigmoid(v)
                y[i, j] = v
    if act == _SIGMOID16:
        if c0 == 0 and c1 == y.shape[1]:
            sigmoid_in_place(y.reshape(-1), r0 * c1, r1 * c1)
        else:
            for i in range(r0, r1):
                sigmoid_in_place(y[i], c0, c1)


@njit(inline="always")
def _column_sums(dy, db):
    """db[j] = sum_i dy[i, j] (the bias gradient), rows in order, summed in float64: a float32
    running sum over a large batch loses digits (10^6 rows of 1/N each: 0.9% off, where torch's
    is 2e-7), and the float64 adds cost nothing beside the read of dy."""
    acc = np.zeros(dy.shape[1])
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            acc[j] += dy[i, j]
    for j in range(dy.shape[1]):
        db[j] = acc[j]


# gemm32 sums each value over all of K in one float32 register (no K blocking), and dW = dy^T x's K
# is the batch: over 2^20 rows of a mean loss's gradient (x ~ 1) dW came out 4e-3 off (torch 2e-6);
# the forward's is in_features: 10^6 inputs ~1 by weights 1/K, 5.5e-3 off (torch 2e-6). So the
# gemm32 kernels sum over K in blocks of _K_BLOCK, the blocks' products added in float64: one add
# per output value every _K_BLOCK multiply-adds into it, and the same bits as before for a K of
# one block. (OpenBLAS blocks K itself: its kernels pass dw_rows 0, one product.) 4096, not 1024:
# the reference CNN's 3136 -> 128 layer in one product (blocks of 1024 cost its forward 4%, 495 ->
# 516 us on the Zen 4 host, 2 threads); a block of 4096 of those worst cases errs 2e-5 at most.
_K_BLOCK = 4096


@njit(inline="always")
def _add_into(total, part):
    for i in range(part.shape[0]):
        for j in range(part.shape[1]):
            total[i, j] += part[i, j]


@njit(inline="always")
def _copy_into(c, total):
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            c[i, j] = total[i, j]


@njit(inline="always")
def _slice(a, along_rows, lo, hi):
    """a's rows (along_rows) or columns lo .. hi - 1: a product operand's block of K, or op(x)'s
    rows (x's columns when transposed)."""
    return a[lo:hi] if along_rows else a[:, lo:hi]


# _blocked_product's float32 part and float64 total hold this many rows of C at a time: whole, they
# came to three times C (a 4200x4100->2048 forward grew its process by 69 MiB for a 33 MiB output).
_PART_ROWS = 512


@njit(inline="always")
def _blocked_product(gemm, k_block, a, b, c, trans_a, trans_b):
    """c = op(a) @ op(b) by `gemm`: one product, or where k_block > 0 and K > k_block, the
    products of blocks of k_block of K added in float64 in order (for _PART_ROWS rows of c at a
    time: the same bits, as every gemm here sums each value alike wherever its row sits)."""
    k = a.shape[0] if trans_a else a.shape[1]
    if k_block == 0 or k <= k_block:
        gemm(a, b, c, 0.0, trans_a, trans_b)
        return
    rows = min(c.shape[0], _PART_ROWS)
    part = np.empty((rows, c.shape[1]), c.dtype)
    total = np.empty((rows, c.shape[1]))
    for r0 in range(0, c.shape[0], rows):
        r1 = min(c.shape[0], r0 + rows)
        a_rows = _slice(a, not trans_a, r0, r1)
        total[:] = 0.0
        for k0 in range(0, k, k_block):
            k1 = min(k, k0 + k_block)
            gemm(_slice(a_rows, trans_a, k0, k1), _slice(b, not trans_b, k0, k1), part[:r1 - r0], 0.0, trans_a,
                 trans_b)
            _add_into(total, part[:r1 - r0])
        _copy_into(c[r0:r1], total)


@njit(inline="always")
def _weight_grad(gemm, dw_rows, dy, x, dw):
    """dw = dy^T @ x for dy (N, out), x (N, in), N >= 1, in blocks of dw_rows rows (_blocked_product)."""
    _blocked_product(gemm, dw_rows, dy, x, dw, True, False)


@njit(inline="always")
def _linear_forward_body(gemm, x, w, b, has_bias, act, blocks, y):
    """y = act(x @ w.T + b), the rows of y (or its columns, when there are fewer rows than output
    features) split in `blocks` blocks, each one GEMM (by `gemm`) plus its epilogue."""
    rows, cols = y.shape
    by_rows = rows >= cols
    for t in prange(blocks):
        if by_rows:
            (r0, r1), c0, c1 = block(t, blocks, rows), 0, cols
        else:
            r0, r1, (c0, c1) = 0, rows, block(t, blocks, cols)
        if r1 > r0 and c1 > c0:
            gemm(x[r0:r1], w[c0:c1], y[r0:r1, c0:c1], 0.0, False, True)
            if has_bias or act:
                _epilogue(y, r0, r1, c0, c1, b, has_bias, act)


@njit(inline="always")
def _linear_backward_body(gemm, dw_rows, dy, x, w, has_bias, input_grad, split, dx, dw, db):
    """dx = dy @ w (when input_grad) and dw = dy^T @ x, each as `blocks` GEMMs over row or column
    blocks of its output, every one with the full K (no partial sums to add afterwards; dw's K in
    blocks of dw_rows rows, see _weight_grad), spread over the threads; db by column sums.
    split = (blocks, dx_by_rows, dw_by_rows), from _backward_split: one block count for both, so
    that every task has the same work."""
    blocks, dx_by_rows, dw_by_rows = split
    dx_tasks = blocks if input_grad else 0
    for task in prange(dx_tasks + blocks):
        k = task % blocks
        if task < dx_tasks:
            if dx_by_rows:
                r0, r1 = block(k, blocks, dx.shape[0])
                if r1 > r0:
                    gemm(dy[r0:r1], w, dx[r0:r1], 0.0, False, False)
            else:
                c0, c1 = block(k, blocks, dx.shape[1])
                if c1 > c0:
                    gemm(dy, w[:, c0:c1], dx[:, c0:c1], 0.0, False, False)
        elif dw_by_rows:
            r0, r1 = block(k, blocks, dw.shape[0])
            if r1 > r0:
                if dy.shape[0] == 0:
                    dw[r0:r1] = 0
                else:
                    _weight_grad(gemm, dw_rows, dy[:, r0:r1], x, dw[r0:r1])
        else:
            c0, c1 = block(k, blocks, dw.shape[1])
            if c1 > c0:
                if dy.shape[0] == 0:
                    dw[:, c0:c1] = 0
                else:
                    _weight_grad(gemm, dw_rows, dy, x[:, c0:c1], dw[:, c0:c1])
        if has_bias and task == dx_tasks:
            _column_sums(dy, db)


@njit(inline="always")
def _linear_forward_serial_body(gemm, k_block, x, w, b, has_bias, act):
    """_linear_forward as one GEMM on the calling thread (K in blocks of k_block: _blocked_product),
    for small layers (_on_calling_thread); y is allocated here (no _memory cache needed at this size:
    np.empty in Python cost ~1 us more)."""
    y = np.empty((x.shape[0], w.shape[0]), x.dtype)
    _blocked_product(gemm, k_block, x, w, y, False, True)
    if has_bias or act:
        _epilogue(y, 0, y.shape[0], 0, y.shape[1], b, has_bias, act)
    return y


@njit(inline="always")
def _linear_backward_serial_body(gemm, dw_rows, dy, x, w, has_bias, input_grad):
    """_linear_backward's GEMMs on the calling thread, for small layers (_on_calling_thread): (dx, dw,
    db), dx of shape (0, 0) without input_grad."""
    dx = np.empty(x.shape if input_grad else (0, 0), x.dtype)
    dw = np.empty(w.shape, x.dtype)
    db = np.zeros(w.shape[0], x.dtype)
    if input_grad:
        gemm(dy, w, dx, 0.0, False, False)
    if dy.shape[0] == 0:
        dw[:] = 0
    else:
        _weight_grad(gemm, dw_rows, dy, x, dw)
    if has_bias:
        _column_sums(dy, db)
    return dx, dw, db


# The linear kernels with OpenBLAS's GEMM (_blas.gemm) and, for float32 on AVX-512 and AVX2 hosts,
# with gemm32 (_gemm32.py: ~90% of a core's FMA peak where the environment pins OpenBLAS to its AVX2
# kernels; x @ w.T takes w^T packed in strips of NR columns by 16 x 16 register transposes). The
# gemm32 ones are compiled only when called, i.e. on hosts that have the instructions.
@njit(parallel=True, nogil=True, cache=True)
def _linear_forward(x, w, b, has_bias, act, blocks, y):
    _linear_forward_body(gemm, x, w, b, has_bias, act, blocks, y)


@njit(parallel=True, nogil=True, cache=True)
def _linear_forward_gemm32(x, trans_x, w, w_is_weight, b, has_bias, act, blocks, y):
    """y = act(op(x) @ B + b), B = w^T for a layer's weight w (w_is_weight), else w itself (matmul),
    in `blocks` blocks over the threads: of whole strips of NR columns where there are at least as
    many strips as blocks, else of rows. Each block is one gemm32_blocked product per _K_BLOCK of K
    (_blocked_product), which packs its columns of B block by block of KC (transposing a layer's
    weight) and runs A in panels of MC rows, then its epilogue while the block is in cache.
    gemm32 sums each value in the same order wherever its tile sits, so neither the split nor the
    blocking changes the bits.

    Until the thirty-second session each block packed its strips over all of K and ran every row of
    x past each strip in turn (no cache blocking), and past _GEMM32_UP_TO multiply-adds the forward
    was OpenBLAS's. Zen 5 host, two threads, GFLOP/s with bias and ReLU, OpenBLAS or unblocked ->
    blocked: 4096x1024->1024 223 -> 428; 1024^3 220 -> 427; 8192x512->512 218 -> 402; 8192x512->256
    212 -> 393; 3000x8192->256 (unblocked: a long K) 360 -> 433-463; 2048^3 (unblocked) 348 -> 420-447;
    128x3136->128, 512^3, 256x2048->512 the same (~415-450)."""
    rows, cols = y.shape
    n_strips = -(-cols // NR)
    by_columns = n_strips >= blocks
    for t in prange(blocks):
        if by_columns:
            r0, r1, (s0, s1) = 0, rows, block(t, blocks, n_strips)
        else:
            (r0, r1), s0, s1 = block(t, blocks, rows), 0, n_strips
        c0, c1 = s0 * NR, min(cols, s1 * NR)
        if r1 > r0 and c1 > c0:
            _blocked_product(gemm32_in_blocks, _K_BLOCK, _slice(x, not trans_x, r0, r1),
                             _slice(w, w_is_weight, c0, c1), y[r0:r1, c0:c1], trans_x, w_is_weight)
            if has_bias or act:
                _epilogue(y, r0, r1, c0, c1, b, has_bias, act)


@njit(parallel=True, nogil=True, cache=True)
def _linear_backward(dy, x, w, has_bias, input_grad, split, dx, dw, db):
    _linear_backward_body(gemm, 0, dy, x, w, has_bias, input_grad, split, dx, dw, db)


@njit(parallel=True, nogil=True, cache=True)
def _linear_backward_gemm32(dy, x, w, has_bias, input_grad, split, dx, dw, db):
    _linear_backward_body(gemm32_in_blocks, _K_BLOCK, dy, x, w, has_bias, input_grad, split, dx, dw, db)


@njit(nogil=True, cache=True)
def _linear_forward_serial(x, w, b, has_bias, act):
    return _linear_forward_serial_body(gemm, 0, x, w, b, has_bias, act)


@njit(nogil=True, cache=True)
def _linear_forward_serial_gemm32(x, w, b, has_bias, act):
    return _linear_forward_serial_body(gemm32, _K_BLOCK, x, w, b, has_bias, act)


@njit(nogil=True, cache=True)
def _linear_backward_serial(dy, x, w, has_bias, input_grad):
    return _linear_backward_serial_body(gemm, 0, dy, x, w, has_bias, input_grad)


@njit(nogil=True, cache=True)
def _linear_backward_serial_gemm32(dy, x, w, has_bias, input_grad):
    return _linear_backward_serial_body(gemm32_in_blocks, _K_BLOCK, dy, x, w, has_bias, input_grad)


# The same on the calling thread for narrow layers (_narrow) by gemm32_narrow: gemm32's bits from one
# tile shape, so a first call compiles in about a second, not gemm32's ~5-7 s (_gemm32.py).
@njit(nogil=True, cache=True)
def _linear_forward_narrow(x, w, b, has_bias, act):
    return _linear_forward_serial_body(gemm32_narrow, _K_BLOCK, x, w, b, has_bias, act)


@njit(nogil=True, cache=True)
def _linear_backward_narrow(dy, x, w, has_bias, input_grad):
    return _linear_backward_serial_body(gemm32_narrow, _K_BLOCK, dy, x, w, has_bias, input_grad)


_NARROW_UP_TO = 32


def _narrow(out_features, in_features):
    """Whether a layer's products on the calling thread go by gemm32_narrow (_linear_forward_narrow):
    at most _NARROW_UP_TO inputs and outputs, each product's result then one or two 16-wide tiles
    across, where gemm32 would run the same tiles or its 32-wide ones, masked. gemm32's bits either
    way: the choice changes only the speed and the first call's compile."""
    return out_features <= _NARROW_UP_TO and in_features <= _NARROW_UP_TO


# OpenBLAS runs a GEMM of at most 65536 * 4 multiply-adds on one thread whatever its thread count
# (SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD in its interface/gemm.c), so a layer that small
# needs neither the Numba threads (waking them: tens of us) nor single_threaded_blas. The choice
# depends on the shape alone, so the bits do not depend on the machine (see _blocks). Measured on
# the Zen 5 host, 128x128->10 with bias and ReLU: 17.7 us through the threads, NumPy 8.1 us.
_OWN_THREADS_BELOW = 65536 * 4


def _on_calling_thread(m, n, k, own):
    """Whether a linear layer's m x n x k products go by the _serial kernels: up to _OWN_THREADS_BELOW
    multiply-adds, or for gemm32's kernels (own) wherever _parallel.run would run the threaded kernel
    on one thread anyway (its work below SERIAL_BELOW: 3.3 M multiply-adds), which only added the
    thread count's switch and the parallel loop's set-up. Zen 5 host, us threaded kernel on one
    thread -> serial kernel, forward / backward: 32x512->64 (the digits CNN's first dense layer at
    its batch of 32) 20.0 -> 13.3 / 27.7 -> 20.8; 96x512->64 38.3 -> 29.9 / 68.0 -> 55.0; 16x784->256
    52.3 -> 55.9 / 86.4 -> 65.7. (From 3.3 M the two threads run: 128x512->64 28 / 47 against the
    serial kernels' 39 / 78.) Large outputs too, though the serial kernels allocate theirs with
    np.empty rather than the _memory cache: 2048x1->1500 1450 -> 300 / 1672 -> 1614; 1024x3->1024
    852 -> 350 / 636 -> 622."""
    return m * n * k <= _OWN_THREADS_BELOW or (own and _gemm_work(m, n, k) < SERIAL_BELOW)


def _blocks(n):
    """How many blocks the linear backward's gemm32 products are split into along a dimension of
    size n (OpenBLAS's: _openblas_blocks): a function of the size only, never of the thread count. BLAS
    may round an element differently depending on where the block edges fall (OpenBLAS's edge
    tiles do), so a thread-dependent split would make the bits depend on the machine; this split
    keeps them the same on any machine (up to 8 cores busy; blocks of >= 64 rows or columns)."""
    return max(1, min(8, n // 64))


# The least of the split dimension per block of the linear layers' OpenBLAS calls (forward and
# backward), past the first two blocks. Larger blocks repack less: dw = dy^T x on 8192x512->256 with
# 8 blocks of 64 columns ran at 47 GFLOP/s on a Zen 4 core, one block of 512 at 72. 256 -> 512 in
# the backward (thirteenth session; Zen 4, two threads, GFLOP/s of dx + dW + db, three runs each):
# 4096x1024->1024 176-179 -> 186-189, 2048^3 172-175 -> 187-188, 1024^3 172-180 -> 189-190,
# 512x4096->4096 and 1024x4096->1024 the same (8 blocks either way); with the AVX2 kernels,
# 256x1024->512 182-183 -> 190-193. The forward's blocks were _blocks' (>= 64): 1024^3 158 ->
# 191-192, 2048^3 183 -> 195-196, 4096x1024->1024 and 8192x512->256 within noise. Blocks of 1024
# gained 1-4% more on two cores, but fewer blocks leave more cores idle on larger hosts.
_OPENBLAS_BLOCK = 512


def _openblas_blocks(n):
    """How many blocks an OpenBLAS product is split into along a dimension of size n (by shape
    alone, as _blocks): up to 8 of >= _OPENBLAS_BLOCK, and never fewer than 2 where n has 64 for
    each, so that a layer of 128-1023 still keeps two cores busy (one block is one task: a forward
    on one core; and the backward's split must not depend on whether dx is wanted, or dW's bits
    would)."""
    return max(1, min(8, max(n // _OPENBLAS_BLOCK, min(2, n // 64))))


def _backward_split(m, n, k, own):
    """(blocks, dx_by_rows, dw_by_rows) for linear_backward's GEMMs, dy (m, n) and x (m, k): like
    _blocks, a function of the shape alone.

    gemm32 (own) splits both by columns of x's features, 8 blocks of >= 64 (it packs only B's
    strips, and a row block of dx would repack all of w). OpenBLAS packs both operands of each
    call, so each block repacks the whole operand that the split does not cut: a split along
    dx's rows repacks w (n k), along its columns dy (m n), so rows when k < m; along dw's rows
    repacks x (m k), along its columns dy (m n), so rows when k < n. A block repacks that operand
    for as many multiply-adds per element as the split dimension has per block, so blocks keep
    >= _OPENBLAS_BLOCK of it. dx and dw take the same count (the smaller), so that their tasks are
    the same size."""
    if own:
        return _blocks(k), False, False
    dx_by_rows, dw_by_rows = k < m, k < n
    blocks = min(_openblas_blocks(m if dx_by_rows else k), _openblas_blocks(n if dw_by_rows else k))
    return blocks, dx_by_rows, dw_by_rows


def _gemm_work(m, n, k):
    """A GEMM's work in _parallel.run's units: a core does ~100 multiply-adds in the time it
    streams one element, so (m n k) / 100 (a 128x128x10 layer: serial; 128x3136x128: parallel)."""
    return m * n * k // 100


# With AVX2 (6 x 16 tiles) the forward stays gemm32's up to this many multiply-adds and is
# OpenBLAS's past it (its AVX2 kernels, as ours); with AVX-512 it is gemm32's at any size, blocked
# for the caches since the thirty-second session (_linear_forward_gemm32). Before that blocking,
# gemm32 lost past this size on the Zen 4 host (8192x512->512 119 vs OpenBLAS 166 GFLOP/s; session
# 28, results/logs/cpu-2026-12-06-session28-dense-reruns.log) and tied on the Zen 5 (1024^3 190 vs
# 190), where blocked it runs ~2x OpenBLAS at every size measured (see _linear_forward_gemm32).
# Zen 4 (double-pumped AVX-512) with the blocking: unmeasured.
_GEMM32_UP_TO = 1 << 28


def _forward_with_gemm32(x, m, n, k):
    return x.dtype == np.float32 and _vecmath.SIMD and (_vecmath.AVX512 or m * n * k <= _GEMM32_UP_TO)


def linear_forward(x, w, b, activation):
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    has_bias = b is not None
    bias = b if has_bias else np.empty(0, x.dtype)
    own = _forward_with_gemm32(x, x.shape[0], w.shape[0], x.shape[1])
    if _on_calling_thread(x.shape[0], w.shape[0], x.shape[1], own):
        if own:
            kernel = _linear_forward_narrow if _narrow(*w.shape) else _linear_forward_serial_gemm32
        else:
            kernel = _linear_forward_serial
        return kernel(x, w, bias, has_bias, epilogue_activation(activation, x.dtype))
    y = empty((x.shape[0], w.shape[0]), x.dtype)
    blocks = _gemm32_blocks(*y.shape, numba.get_num_threads()) if own else _openblas_blocks(max(y.shape))
    with blas_guard(not own):
        work, act = _gemm_work(*y.shape, x.shape[1]), epilogue_activation(activation, x.dtype)
        if own:
            run(_linear_forward_gemm32, work, x, False, w, True, bias, has_bias, act, blocks, y)
        else:
            run(_linear_forward, work, x, w, bias, has_bias, act, blocks, y)
    return y


def linear_backward(dy, x, w, bias, input_grad):
    dy, x, w = np.ascontiguousarray(dy), np.ascontiguousarray(x), np.ascontiguousarray(w)
    own = x.dtype == np.float32 and _vecmath.SIMD
    # Through the threads, gemm32's backward wins with AVX-512 only. AVX2 kernels, interleaved A/B
    # on a Zen 4 host, GFLOP/s gemm32 vs OpenBLAS: 128x3136->128 148 vs 159, 256x1024->512 117 vs
    # 175, 512^3 156 vs 186 (its forwards 161-203 vs 143-166 stay ours); the Zen 3 AVX2 host's
    # benchmark runs agree: 128x3136->128 backward 73-86 by gemm32, 126 by OpenBLAS before it.
    # With AVX-512 at any size since its products went by gemm32_blocked (dx + dW, batch x in -> out;
    # Zen 5 host, two threads, medians of 7 interleaved, GFLOP/s gemm32 in place -> gemm32_blocked,
    # OpenBLAS): 128x3136->128 306 -> 311 (157); 512^3 297 -> 292 (183); 1024^3 237 -> 357 (205);
    # 4096x1024->1024 115 -> 334 (210); 2048^3 133 -> 365 (219); 784x512->2048 288 -> 347 (210);
    # 8192x512->256 165 -> 327 (193); 128x4096->4096 160 -> 221 (162). (Past _GEMM32_UP_TO these had
    # been OpenBLAS's.) Zen 4 (double-pumped AVX-512) unmeasured.
    threaded_own = own and _vecmath.AVX512
    # (gemm32's serial kernel past _OWN_THREADS_BELOW only where the threaded one would be gemm32's)
    if _on_calling_thread(*dy.shape, x.shape[1], threaded_own):
        if own:
            kernel = _linear_backward_narrow if _narrow(*w.shape) else _linear_backward_serial_gemm32
        else:
            kernel = _linear_backward_serial
        dx, dw, db = kernel(dy, x, w, bias, input_grad)
        return dx if input_grad else None, dw, db if bias else None
    dx = empty(x.shape if input_grad else (0, 0), x.dtype)
    dw = empty(w.shape, x.dtype)
    db = np.zeros(w.shape[0], x.dtype)
    with blas_guard(not threaded_own):
        run(_linear_backward_gemm32 if threaded_own else _linear_backward, _gemm_work(*dy.shape, x.shape[1]), dy, x,
            w, bias, input_grad, _backward_split(*dy.shape, x.shape[1], threaded_own), dx, dw, db)
    return dx if input_grad else None, dw, db if bias else None


def _flat_map(kernel, streamed_kernel, *inputs):
    out = empty_like(inputs[0])
    flat = [t.reshape(-1) for t in inputs] + [out.reshape(-1)]
    if streamed_kernel is not None and should_stream(out):
        run(streamed_kernel, out.size, *flat, align_skip(out))
    else:
        run(kernel, out.size, *flat)
    return out


def relu_forward(x):
    return _flat_map(_relu_forward, _relu_forward_streamed, x)


def relu_backward(dy, x):
    return _flat_map(_relu_backward, _relu_backward_streamed, dy, x)


def sigmoid_forward(x):
    if x.dtype == np.float32 and _vecmath.SIMD:
        return _flat_map(_sigmoid_forward_simd, _sigmoid_forward_simd_streamed, x)
    return _flat_map(_sigmoid_forward, None, x)


def sigmoid_backward(dy, y):
    return _flat_map(_sigmoid_backward, _sigmoid_backward_streamed, dy, y)
