"""2-D convolution on the CPU: per-sample GEMMs, each Numba thread owning a contiguous block of
samples and calling single-threaded BLAS itself (_blas.py says why), in per-thread buffers that
stay in the core's cache. For float32 on AVX-512 hosts the stride-1 kernels use our own code
instead (_forward_taps_avx512, _backward_taps_avx512): register tiles over all taps for the
forward and for dx (_taps32.py), our GEMM for dW (_gemm32.py: twice OpenBLAS's AVX2 kernels here);
on AVX2 hosts the wide kernels below with our GEMM (_forward_wide_gemm32, _backward_wide_gemm32).
On both, 3x3 layers (dilation 1, groups 1) with 16 or more channels in and out go by Winograd's
algorithm instead (_winograd32.py): the forward (_forward_winograd) by F(4x4, 3x3) where its tiles
fit the output (4x fewer multiply-adds), else F(2x2, 3x3) (2.25x fewer); with padding <= 2 the
backward too (dW by F(2x2): _weight_grad_winograd, or _weight_grad_winograd_planes for many
channels; dx as the forward of dy with w flipped), unless the op's algorithm is "direct".

Stride 1 (the common case) uses the "wide" layout described above _forward_wide: no im2col for
layers with >= 8 input channels per group (one accumulating GEMM per kernel tap on shifted slices
of the padded sample), contiguous copies otherwise. Other strides: the forward of float32 layers
with >= 8 input channels per group by the same shifted GEMMs over the input's phases
(_forward_phases), the rest and the backward by per-sample im2col (_forward / _backward). A 1x1
layer on a few positions a sample runs as a product over the whole batch (_forward_pointwise,
_backward_pointwise). For im2col, per sample n and group g:
- forward: y[n, g's channels] = W_g @ col, then bias + activation while y[n] is in cache;
- backward: dW_g += dy[n, g] @ col^T into a partial dW (GEMM with beta = 1), dcol = W_g^T @ dy[n, g]
  scattered back into dx[n]; db from the same dy[n] rows. The partial dW / db are over blocks of
  samples fixed by the batch size (_GRADIENT_PARTS), added in order: the same bits on any thread
  count.

Measured on this 2-core machine (float32, batch 128, 2 threads, one CPU time per part, one thread):
conv2 (32->64, 14x14, k3) forward: im2col 6.3 ms + GEMM 7.7 ms; the 9 shifted GEMMs 7.5 ms in all.
For 1 input channel the 9 shifted GEMMs (K = 1) took 2.6 ms against 0.5 ms for one GEMM over
copied rows, hence the channel threshold. Before/after numbers of each change: this file's git log.
Math (forward, dx, dW, db): csrc/kernels/conv.cuh.
"""
import os

import numba
import numpy as np
from numba import njit, prange

from .._kernel_abi import ACTIVATIONS, PoolGeometry, conv_output_size
from . import _vecmath
from ._blas import gemm, single_threaded_blas
from ._gemm32 import NR as GEMM_NR, gemm32, gemm32_runs
from ._memory import empty
from ._pool32 import max_pool_2x2_plane, unpool_2x2_plane
from ._stream import prefetch_all
from ._taps32 import CR, CW, MR, NR, RR, channels_tile, row_tile, taps_tile, transpose16_block
from ._winograd32 import (LANES, grad_tile16, input_tile16, input_tile36, output_tile16, output_tile36, products,
                          tile_rows, weight_grad_transformed, weights_transformed)
from ._vecmath import copy_rows16
from ._activation import (ONE as _ONE, RELU as _RELU, SIGMOID as _SIGMOID, SIGMOID16 as _SIGMOID16, ZERO as _ZERO,
                          epilogue_activation, relu as _relu, relu_grad as _relu_grad, sigmoid as _sigmoid,
                          sigmoid_in_place)
from .dense import linear_backward, relu_backward, sigmoid_backward
from .pool import is_2x2_stride_2_jit, max_pool2d_backward, max_pool2d_forward, max_pool_plane, window_of

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_max_pool2d_forward", "conv2d_max_pool2d_backward"]


@njit(inline="always")
def _valid_columns(j, kw_, sw, pl, dw, w, ow):
    """The output columns b whose input column b*sw - pl + j*dw lies inside [0, w): [lo, hi)."""
    off = j * dw - pl
    lo = 0 if off >= 0 else min(ow, (-off + sw - 1) // sw)
    hi = 0 if w - 1 - off < 0 else min(ow, (w - 1 - off) // sw + 1)
    return off, lo, max(lo, hi)


@njit(nogil=True)
def _im2col(x, n, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, col):
    """col[(c*kh + i)*kw + j, a*ow + b] = x[n, c0 + c, a*sh - pt + i*dh, b*sw - pl + j*dw] (0 outside)."""
    h, w = x.shape[2], x.shape[3]
    for c in range(cg):
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off, lo, hi = _valid_columns(j, kw, sw, pl, dw, w, ow)
                dst_row = col[r]
                for a in range(oh):
                    ih = a * sh - pt + i * dh
                    out = dst_row[a * ow:(a + 1) * ow]  # slices from 0: the copies vectorize (see _pad)
                    if 0 <= ih < h:
                        for b in range(lo):
                            out[b] = 0
                        if sw == 1:
                            src = x[n, c0 + c, ih, lo + off:hi + off]
                            seg = out[lo:hi]
                            for b in range(hi - lo):
                                seg[b] = src[b]
                        else:
                            for b in range(lo, hi):
                                out[b] = x[n, c0 + c, ih, b * sw + off]
                        for b in range(hi, ow):
                            out[b] = 0
                    else:
                        for b in range(ow):
                            out[b] = 0


@njit(nogil=True)
def _col2im(dcol, n, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, dx):
    """dx[n, c0:c0 + cg] = the sum of dcol's entries that _im2col would have read from there."""
    h, w = dx.shape[2], dx.shape[3]
    for c in range(cg):
        dx[n, c0 + c] = 0
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off, lo, hi = _valid_columns(j, kw, sw, pl, dw, w, ow)
                for a in range(oh):
                    ih = a * sh - pt + i * dh
                    if 0 <= ih < h:
                        q = a * ow
                        for b in range(lo, hi):
                            dx[n, c0 + c, ih, b * sw + off] += dcol[r, q + b]


@njit(inline="always")
def _sum(row):
    """The sum of a 1-D array in float64, as 8 interleaved partial sums added in a fixed order (the
    same bits on every run): a single running sum waits on each add's latency."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n = row.size // 8 * 8
    for i in range(0, n, 8):
        s0 += row[i]
        s1 += row[i + 1]
        s2 += row[i + 2]
        s3 += row[i + 3]
        s4 += row[i + 4]
        s5 += row[i + 5]
        s6 += row[i + 6]
        s7 += row[i + 7]
    for i in range(n, row.size):
        s0 += row[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(nogil=True, error_model="numpy", cache=True)
def _bias_activate(src, dst, rows, stride, width, bias, act):
    """dst[r * width + q] = act(src[r * stride + q] + bias) for r < rows, q < width: 1-D src and dst
    (dst may be src when stride == width); under _SIGMOID16 the bias first, then sigmoid16 over dst.
    The activation is chosen once, outside the loops, under error_model="numpy": with the choice
    inside the loop, or the default model's ZeroDivisionError check on sigmoid's division, the loop
    stayed scalar (conv1's epilogue, 32 x 784 values per sample, measured 30 us against 8 for its
    GEMM). In place, the loops read and write one array: through two views of the same memory LLVM's
    overlap check sent them to its scalar loop (the portable sigmoid 0.5 -> 6 ns a value)."""
    if rows == 1 and stride == width and src.ctypes.data == dst.ctypes.data:
        _activate_in_place(dst, width, bias, act)
    else:
        for r in range(rows):
            _activate(src[r * stride:r * stride + width], dst[r * width:(r + 1) * width], width, bias, act)
    if act == _SIGMOID16:
        sigmoid_in_place(dst, 0, rows * width)


@njit(nogil=True, error_model="numpy", cache=True)
def _activate(s, d, width, bias, act):
    """d[q] = act(s[q] + bias) for q < width (just the bias under _SIGMOID16): _bias_activate's loops,
    functions of their own (IR inlining of the sigmoid warned NumbaIRAssumptionWarning)."""
    if act == _RELU:
        for q in range(width):
            d[q] = _relu(s[q] + bias)
    elif act == _SIGMOID:
        for q in range(width):
            d[q] = _sigmoid(s[q] + bias)
    else:
        for q in range(width):
            d[q] = s[q] + bias


@njit(nogil=True, error_model="numpy", cache=True)
def _activate_in_place(d, width, bias, act):
    """_activate with s = d, through the one array."""
    if act == _RELU:
        for q in range(width):
            d[q] = _relu(d[q] + bias)
    elif act == _SIGMOID:
        for q in range(width):
            d[q] = _sigmoid(d[q] + bias)
    else:
        for q in range(width):
            d[q] = d[q] + bias


@njit(inline="always")
def _forward_body(gemm, x, w2, act, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, cols, y):
    """y (N, C_out, P) = act(conv(x, w) + b); w2 is w as (C_out, R), with b appended as a last column
    when the layer has one (w2 then has cg*kh*kw + 1 columns: the product adds b, col's last row
    being ones; a pass over y follows only for an activation); cols (threads, w2's columns * P)
    scratch; the products by `gemm` (see _forward)."""
    n_img, c = x.shape[0], x.shape[1]
    c_out, k = w2.shape
    cg, cog, p = c // groups, c_out // groups, oh * ow
    bias_in_product = k > cg * kh * kw
    threads = cols.shape[0]
    for t in prange(threads):
        col = cols[t, :k * p].reshape(k, p)
        if bias_in_product:
            col[k - 1] = 1
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            for g in range(groups):
                _im2col(x, n, g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, col)
                gemm(w2[g * cog:(g + 1) * cog], col, y[n, g * cog:(g + 1) * cog], 0.0, False, False)
            if act:
                for o in range(c_out):
                    _bias_activate(y[n, o], y[n, o], 1, p, p, _ZERO, act)


# With OpenBLAS, and with gemm32 for float32 on AVX-512 and AVX2 hosts (strides other than 1, fewer
# than 8 input channels a group: the others go by _forward_phases, and stride 1 by _forward_direct).
@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward(x, w2, act, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, cols, y):
    _forward_body(gemm, x, w2, act, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, cols, y)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_gemm32(x, w2, act, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, cols, y):
    _forward_body(gemm32, x, w2, act, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, cols, y)


# Strided layers with enough channels (_uses_phases) skip im2col: phase (r, q) of a padded sample
# holds its rows r, r + sh, ... and columns q, q + sw, ... (_split_phases). Tap (i, j) of output
# (a, b) reads the padded sample at (a sh + i dh, b sw + j dw), which is phase ((i dh) % sh,
# (j dw) % sw) at row a + (i dh) // sh, column b + (j dw) // sw: every output's tap at one constant
# shift of one phase. So the products are the stride-1 layers' shifted GEMMs (see _forward_wide_body),
# one per tap over a phase's channels, on the phases' wide grid (rows of wq, OW outputs and the rest
# discarded). im2col wrote and the GEMM read kh*kw / (sh*sw) times the input per sample (9/4 for
# 3x3 / stride 2); the phases are one copy of it.
@njit(inline="always")
def _deinterleave(row, even, odd):
    """even[m] = row[2m], odd[m] = row[2m + 1]: one loop over the pairs, which LLVM vectorizes by
    permutes of whole vectors. Zen 4 host, one thread, 16 x 128 x 56 x 56: 0.82 ns a value by the
    strided copies one phase at a time, 0.45 by this loop; an AVX-512 intrinsic that also does the
    row's last pairs (LLVM leaves 12 of a 56-wide row's 28 to scalar code) 0.38, ~1% of the layer."""
    half = row.size // 2
    for m in range(half):
        even[m] = row[2 * m]
        odd[m] = row[2 * m + 1]
    if row.size % 2:
        even[half] = row[row.size - 1]


@njit(nogil=True)
def _split_phases(x, n, c0, cg, pt, pl, sh, sw, wq, slots, xq):
    """xq[slots[(i % sh) * sw + j % sw], c, (i // sh) * wq + j // sw] = x[n, c0 + c, h, w] at the
    padded position (i, j) = (pt + h, pl + w), for the phases some tap reads (slots >= 0: xq holds
    those only); the rest of xq is left as it is (zeros)."""
    h_in, w_in = x.shape[2], x.shape[3]
    for c in range(cg):
        src = x[n, c0 + c]
        for h in range(h_in):
            row = src[h]
            if sw == 2:  # the common stride, both column phases from one pass over the row
                base = (pt + h) // sh * wq
                even = slots[(pt + h) % sh * 2 + pl % 2]  # columns w = 0, 2, ...: padded pl, pl + 2, ...
                odd = slots[(pt + h) % sh * 2 + (pl + 1) % 2]
                if even >= 0 and odd >= 0:
                    _deinterleave(row, xq[even, c, base + pl // 2:], xq[odd, c, base + (pl + 1) // 2:])
                    continue
            for q in range(sw):
                slot = slots[(pt + h) % sh * sw + q]
                w0 = (q - pl) % sw  # the first column of phase column q
                if slot < 0 or w0 >= w_in:
                    continue
                base = (pt + h) // sh * wq + (pl + w0) // sw
                out = xq[slot, c, base:base + (w_in - w0 + sw - 1) // sw]
                for m in range(out.size):
                    out[m] = row[w0 + m * sw]


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_phases(x, wt, b, has_bias, act, groups, kh, kw, sh, sw, dh, dw, pt, pl, wq, oh, ow, slots, xqs, yws, y):
    """y (N, C_out, OH*OW) = act(conv(x, w) + b) for stride (sh, sw) by gemm32 over the phases (see
    above): wt is w as (kh*kw, C_out, C_in/g); per-thread scratch xqs (threads, phases read, C_in/g, plane)
    and yws (threads, C_out/g * OH*wq). Each output sums tap by tap, channels in order within a
    tap: the same bits with or without an activation, on any number of threads."""
    n_img, c = x.shape[0], x.shape[1]
    cg, cog, length = c // groups, wt.shape[1] // groups, oh * wq
    threads = xqs.shape[0]
    for t in prange(threads):
        xq = xqs[t]
        xq[:] = 0
        yw = yws[t, :cog * length].reshape(cog, length)
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            for g in range(groups):
                _split_phases(x, n, g * cg, cg, pt, pl, sh, sw, wq, slots, xq)
                for tap in range(kh * kw):
                    i, j = tap // kw * dh, tap % kw * dw
                    at = i // sh * wq + j // sw
                    gemm32(wt[tap, g * cog:(g + 1) * cog], xq[slots[i % sh * sw + j % sw], :, at:at + length], yw,
                           1.0 if tap else 0.0, False, False)
                for o in range(cog):
                    _bias_activate(yw[o], y[n, g * cog + o], oh, wq, ow, b[g * cog + o] if has_bias else _ZERO, act)


@njit(parallel=True, nogil=True, cache=True)
def _backward(dy, x, w2, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, input_grad, cols, dcols, dw_parts, db_parts,
              dx):
    """dx (when input_grad); dw_parts[t] / db_parts[t] = thread t's share of dW (C_out, R) / db (C_out,)."""
    n_img, c = x.shape[0], x.shape[1]
    c_out, rows = w2.shape
    cg, cog, p = c // groups, c_out // groups, oh * ow
    threads = cols.shape[0]
    for t in prange(threads):
        col = cols[t, :rows * p].reshape(rows, p)
        dcol = dcols[t, :rows * p].reshape(rows, p)
        dw_t, db_t = dw_parts[t], db_parts[t]
        dw_t[:] = 0
        db_t[:] = 0
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            for o in range(c_out):
                db_t[o] += _sum(dy[n, o])
            for g in range(groups):
                dy_g = dy[n, g * cog:(g + 1) * cog]
                w_g = w2[g * cog:(g + 1) * cog]
                _im2col(x, n, g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, col)
                gemm(dy_g, col, dw_t[g * cog:(g + 1) * cog], 1.0, False, True)
                if input_grad:
                    gemm(w_g, dy_g, dcol, 0.0, True, False)
                    _col2im(dcol, n, g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, dx)


# ---- stride 1: the "wide" layout -------------------------------------------------------------
# With stride 1, the input pixel under tap (i, j) of output (a, b) sits at a fixed offset
# s(i, j) = i*dh*Wp + j*dw from the output's own position a*Wp + b in the zero-padded image
# (Hp x Wp, flattened). Computing outputs over the padded width (L = OH * Wp columns, the last
# Wp - OW of each row are discarded) turns every tap into a plain shift: the column matrix's row
# (c, i, j) is the contiguous slice xp[c, s(i, j) : s(i, j) + L]. With many channels per group the
# GEMMs read those slices in place (one GEMM per tap with K = C_in/groups, accumulating: no im2col
# at all); with few channels the rows are copied into a (R, L) matrix (contiguous copies) for one
# GEMM with K = R. Backward uses the same shifts: dW from copied rows (see _backward_wide), dx by
# adding each tap's rows back into a padded dx at its shift (float32 on AVX-512 hosts: see
# _backward_taps_avx512). xp has (kw-1)*dw + NR floats of slack at the end, for the discarded
# columns' reads and the tiles' reads past them.
_MIN_CHANNELS_FOR_SHIFTED_GEMMS = 8
_COL_BYTES = 1 << 20  # backward's copied rows per thread: well inside a core's L2


@njit(inline="always")
def _shift(tap, kw, dh, dw, wp):
    return (tap // kw) * dh * wp + (tap % kw) * dw


@njit(nogil=True)
def _pad(x, n, c0, cg, pt, pl, wp, xp):
    """xp[c, (pt + h)*wp + pl + w] = x[n, c0 + c, h, w]; the rest of xp stays as it is (zeros)."""
    h_in, w_in = x.shape[2], x.shape[3]
    for c in range(cg):
        src, dst = x[n, c0 + c], xp[c]
        for h in range(h_in):
            row = src[h]
            base = (pt + h) * wp + pl
            out = dst[base:base + w_in]  # slices from 0: the copy vectorizes (conv2's sample 3.5 -> 2.1 us)
            for w in range(w_in):
                out[w] = row[w]


@njit(nogil=True)
def _pad_avx512(x, n, c0, cg, pt, pl, wp, xp):
    """_pad for float32 on AVX-512 hosts: each row in runs of up to 16 by _vecmath.copy16 (conv2's
    sample, 14-wide rows: 1.35-1.7 -> 0.86 us)."""
    h_in, w_in = x.shape[2], x.shape[3]
    for c in range(cg):
        copy_rows16(x[n, c0 + c].reshape(-1), 0, w_in, xp[c], pt * wp + pl, wp, h_in, w_in)


@njit(nogil=True)
def _copy_taps(xp, kh, kw, dh, dw, wp, col):
    """col[c*kh*kw + tap] = xp[c, shift(tap) : shift(tap) + L]."""
    taps, length = kh * kw, col.shape[1]
    for c in range(xp.shape[0]):
        src = xp[c]
        for tap in range(taps):
            s = _shift(tap, kw, dh, dw, wp)
            seg, dst = src[s:s + length], col[c * taps + tap]
            for q in range(length):  # slices from 0: the copy vectorizes (see _pad)
                dst[q] = seg[q]


@njit(nogil=True)
def _zero_discarded(xp, kh, kw, wp, ow, col):
    """Zeroes the wide grid's discarded columns (each row's last wp - ow) of _copy_taps' rows, for
    dW where x is not all finite: dy is 0 there, but the x copied there may be inf or NaN (a padded
    row's last columns), and 0 * inf made NaN in dW values a direct sum keeps finite."""
    oh = col.shape[1] // wp
    for r in range(xp.shape[0] * kh * kw):
        row = col[r]
        for a in range(oh):
            for q in range(a * wp + ow, (a + 1) * wp):
                row[q] = 0


@njit(inline="always")
def _forward_wide_body(gemm, vector_pool, x, w2, wt, b, has_bias, act, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh,
                       ow, pool, xps, cols, yws, y, pooled, indices):
    """Stride-1 forward, its products by `gemm` (see _forward_wide). w2: w as (C_out, R); wt: w as
    (kh*kw, C_out, C_in/g); per-thread scratch xps (threads, cg, Lp), cols (threads, R*L or 0),
    yws (threads, C_out/g * L).

    pool = (kh, kw, sh, sw, ph, pw) of a max pooling applied to each output plane while it is in
    the cache, into pooled / indices (N, C_out, Ho, Wo): y is then never written (pool[0] = 0: no
    pooling, y (N, C_out, OH*OW) is the output); vector_pool: a 2x2 / stride 2 pooling by _pool32
    (on hosts with AVX-512 or AVX2)."""
    n_img, c = x.shape[0], x.shape[1]
    c_out, rows = w2.shape
    cg, cog, length, taps = c // groups, c_out // groups, oh * wp, kh * kw
    shifted = cg >= _MIN_CHANNELS_FOR_SHIFTED_GEMMS
    threads = xps.shape[0]
    for t in prange(threads):
        xp = xps[t]
        xp[:] = 0
        yw = yws[t, :cog * length].reshape(cog, length)
        col = cols[t].reshape(-1, length)
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            for g in range(groups):
                _pad(x, n, g * cg, cg, pt, pl, wp, xp)
                if shifted:
                    for tap in range(taps):
                        s = _shift(tap, kw, dh, dw, wp)
                        gemm(wt[tap, g * cog:(g + 1) * cog], xp[:, s:s + length], yw, 1.0 if tap else 0.0,
                             False, False)
                else:
                    _copy_taps(xp, kh, kw, dh, dw, wp, col)
                    gemm(w2[g * cog:(g + 1) * cog], col, yw, 0.0, False, False)
                for o in range(cog):
                    bias = b[g * cog + o] if has_bias else _ZERO
                    if pool[0]:  # in place, then pooled
                        plane = yw[o]
                        _bias_activate(plane, plane, 1, length, length, bias, act)
                        _pool_plane(plane, wp, oh, ow, pool, vector_pool, pooled[n, g * cog + o],
                                    indices[n, g * cog + o])
                    else:
                        _bias_activate(yw[o], y[n, g * cog + o], oh, wp, ow, bias, act)


@njit(inline="always")
def _wide_positions(count, ow, wp):
    """wide[q] = the wide-grid position of output q (row q // ow, column q % ow), q < count: looked up
    per scattered pooled value (an integer division per value cost more than the GEMMs)."""
    wide = np.empty(count, np.int64)
    for q in range(count):
        wide[q] = (q // ow) * wp + q % ow
    return wide


@njit(inline="always")
def _gather_output_grad(dy, from_pool, y, act, indices, wide, n, o0, oh, ow, wp, dyw):
    """dyw (C, L) = the gradient at the outputs o0 .. o0 + C of sample n on the wide grid (its extra
    columns left as they are: 0). From dy (N, C_out, OH*OW), or when from_pool from the gradient at
    a max pooling of them, dy (N, C_out, Ho*Wo), with the pooled outputs y for the activation act's
    derivative and the pool's indices (conv output positions h * OW + w), scatter-added in output
    order (as max_pool2d_backward); wide[i] is conv output position i's wide position."""
    for o in range(dyw.shape[0]):
        if from_pool:
            dyw[o] = 0
            for q in range(dy.shape[2]):
                d = dy[n, o0 + o, q]
                if act == _RELU:  # relu_backward / sigmoid_backward of the pooled value
                    d = _relu_grad(d, y[n, o0 + o, q])
                elif act == _SIGMOID:
                    d = d * y[n, o0 + o, q] * (_ONE - y[n, o0 + o, q])
                i = indices[n, o0 + o, q]
                if 0 <= i < wide.size:  # unchecked indices never write out of bounds
                    dyw[o, wide[i]] += d
        else:
            src, dst = dy[n, o0 + o], dyw[o]
            for a in range(oh):
                row, out = src[a * ow:(a + 1) * ow], dst[a * wp:a * wp + ow]
                for bb in range(ow):  # slices from 0, as everywhere here: see _pad
                    out[bb] = row[bb]


@njit(inline="always")
def _backward_wide_body(gemm, dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow,
                        input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, dx):
    """Stride-1 backward, its products by `gemm` (see _backward_wide): dx (when input_grad); thread
    t's share of (db, dW^T) in grad_parts[t] (groups, 1 + R, C_out/g): row 0 is db, rows 1.. dW^T.

    dy is (N, C_out, OH*OW); or, when from_pool, the gradient at a max pooling of the output,
    (N, C_out, Ho*Wo), with the pooled output y (for the derivative of the activation act, applied
    to each pooled value first) and the pool's indices: each sample's full-size gradient is then
    scatter-added in the cache (in output order, as max_pool2d_backward) and never exists in memory.

    (db, dW^T) += col @ dy^T with col a row of ones (for db) over the copied tap rows of `block`
    channels at a time: one GEMM with N = C_out/g and K = L, 118 GFLOP/s on one core here, where the
    9 per-tap GEMMs with N = C_in/g reading the slices in place ran at 72, and summing db in a loop
    cost as much as conv1's whole GEMM. dx as the forward: per-tap GEMMs added at each shift (many
    channels) or one GEMM into copied rows, scattered back (few)."""
    n_img, c, h_in, w_in = x.shape
    cg, cog, length, taps = c // groups, w2.shape[0] // groups, oh * wp, kh * kw
    shifted = cg >= _MIN_CHANNELS_FOR_SHIFTED_GEMMS
    threads = xps.shape[0]
    for t in prange(threads):
        xp, dxp = xps[t], dxps[t]
        xp[:] = 0
        dyw = dyws[t, :cog * length].reshape(cog, length)
        dyw[:] = 0  # the discarded columns stay 0, so they add nothing to dW, db or dx
        col, dcol = cols[t].reshape(-1, length), dcols[t].reshape(-1, length)
        col[0] = 1  # the ones row: (col @ dy^T)[0] = db
        grad_parts[t] = 0
        wide = _wide_positions(oh * ow if from_pool else 0, ow, wp)
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            for g in range(groups):
                _gather_output_grad(dy, from_pool, y, act, indices, wide, n, g * cog, oh, ow, wp, dyw)
                _pad(x, n, g * cg, cg, pt, pl, wp, xp)
                for c0 in range(0, cg, block):
                    c1 = min(cg, c0 + block)
                    _copy_taps(xp[c0:c1], kh, kw, dh, dw, wp, col[1:1 + (c1 - c0) * taps])
                    if exact_nonfinite:
                        _zero_discarded(xp[c0:c1], kh, kw, wp, ow, col[1:1 + (c1 - c0) * taps])
                    if c0 == 0:  # with the ones row
                        gemm(col[:1 + c1 * taps], dyw, grad_parts[t, g, :1 + c1 * taps], 1.0, False, True)
                    else:
                        gemm(col[1:1 + (c1 - c0) * taps], dyw, grad_parts[t, g, 1 + c0 * taps:1 + c1 * taps], 1.0,
                             False, True)
                if not input_grad:
                    continue
                dxp[:] = 0
                if shifted:
                    for tap in range(taps):
                        s = _shift(tap, kw, dh, dw, wp)
                        gemm(wt[tap, g * cog:(g + 1) * cog], dyw, dxp[:, s:s + length], 1.0, True, False)
                else:
                    gemm(w2[g * cog:(g + 1) * cog], dyw, dcol, 0.0, True, False)
                    for cc in range(cg):
                        for tap in range(taps):
                            s = _shift(tap, kw, dh, dw, wp)
                            out, src = dxp[cc, s:s + length], dcol[cc * taps + tap]
                            for q in range(length):
                                out[q] += src[q]
                for cc in range(cg):
                    plane = dx[n, g * cg + cc]
                    for hh in range(h_in):
                        base = (pt + hh) * wp + pl
                        row, src = plane[hh], dxp[cc, base:base + w_in]
                        for ww in range(w_in):
                            row[ww] = src[ww]


# The wide kernels with OpenBLAS's GEMM (_blas.gemm), and with gemm32 for float32: on AVX2 hosts
# forward and backward (there AVX2's 6 x 16 tile took conv2 (32 -> 64, 14x14) from 0.47x PyTorch
# to 0.68x forward, Winograd then to 1.07x), on AVX-512 hosts the backward where
# _backward_taps_avx512 does not serve (dx of layers with < 8 channels per group; _gemm32.py: 2x
# OpenBLAS's AVX2 kernels). The gemm32 ones are compiled only when called, i.e. on hosts that have
# the instructions.
@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_wide(x, w2, wt, b, has_bias, act, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow, pool, xps, cols, yws,
                  y, pooled, indices):
    _forward_wide_body(gemm, False, x, w2, wt, b, has_bias, act, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow, pool,
                       xps, cols, yws, y, pooled, indices)


@njit(parallel=True, nogil=True, cache=True)
def _backward_wide(dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow,
                   input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, dx):
    _backward_wide_body(gemm, dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh,
                        ow, input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, dx)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_wide_gemm32(x, w2, wt, b, has_bias, act, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow, pool, xps, cols,
                         yws, y, pooled, indices):
    _forward_wide_body(gemm32, True, x, w2, wt, b, has_bias, act, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow, pool,
                       xps, cols, yws, y, pooled, indices)


@njit(parallel=True, nogil=True, cache=True)
def _backward_wide_gemm32(dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow,
                          input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, dx):
    _backward_wide_body(gemm32, dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, hp, wp,
                        oh, ow, input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, dx)


@njit(inline="always")
def _packed_run(q0, length, wp, ow, wide):
    """For the 16 wide-grid positions from q0: the bit mask of those stored (those below length and,
    unless wide, in their row's first ow columns), and where the first of them goes (in y's compact
    plane; unless wide: then at q0 of the wide plane)."""
    keep = 0
    for lane in range(16):
        q = q0 + lane
        if q < length and (wide or q % wp < ow):
            keep |= 1 << lane
    return keep, q0 if wide else q0 // wp * ow + min(q0 % wp, ow)


@njit(inline="always")
def _finish_planes(out, y_off, count, o0, plane_width, oh, ow, act, pool, n, pooled, indices):
    """The last step of a stride-1 forward for `count` output planes in `out` (channels o0, o0 + 1, ...):
    with no pooling (pool[0] == 0) the sigmoid, if act asks for it, of out[y_off : y_off + count*oh*ow]
    (bias and ReLU came with the tile); with one, each plane (oh rows of plane_width, the first ow of
    them outputs, from out[0]) gets its sigmoid and is pooled into pooled[n, o0 + o] / indices."""
    if pool[0] == 0:
        if act == _SIGMOID or act == _SIGMOID16:
            outputs = out[y_off:y_off + count * oh * ow]
            _bias_activate(outputs, outputs, 1, outputs.size, outputs.size, _ZERO, act)
        return
    plane = oh * plane_width
    for o in range(count):
        channel = out[o * plane:(o + 1) * plane]
        if act == _SIGMOID or act == _SIGMOID16:
            _bias_activate(channel, channel, 1, plane, plane, _ZERO, act)
        _pool_plane(channel, plane_width, oh, ow, pool, True, pooled[n, o0 + o], indices[n, o0 + o])


@njit(inline="always")
def _pool_plane(channel, plane_width, oh, ow, pool, vector, pooled, indices):
    """pooled, indices = the max pooling `pool` of a plane (oh rows of plane_width, the first ow of
    them outputs): a 2x2 / stride 2 one by _pool32's vector runs where `vector` (the same values
    and indices as max_pool_plane's; a wide conv1 sample, fused with its ReLU, 14 -> 6 ms on the
    AVX2 host), else by max_pool_plane."""
    if vector and is_2x2_stride_2_jit(pool):
        max_pool_2x2_plane(channel, plane_width, ow, pooled, indices)
    else:
        max_pool_plane(channel.reshape((oh, plane_width)), oh, ow, pooled, indices, pool[0], pool[1], pool[2], pool[3],
                       pool[4], pool[5])


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_taps_avx512(x, wt, b, wc, bc, tile, act, groups, pt, pl, wp, oh, ow, pool, xps, shifts, yws, y, pooled,
                         indices):
    """Stride-1 float32 forward on AVX-512 hosts by one of _taps32's register tiles, which sum every
    tap in registers and add the bias and ReLU before their one store: no per-tap products and no
    pass over y for them. `tile` (_forward_tile's choice): _TAPS_TILE, taps_tile (8 channels x 32
    wide-grid positions; wt: w as (kh*kw, C_out, C_in/g), b: C_out values, zeros without a bias);
    _CHANNELS_TILE, channels_tile (32 channels x 14 positions of a row; wc: w as (groups, blocks,
    kh*kw, C_in/g, 32), each group's C_out/g channels in blocks of 32, zero-padded, so a block's
    (tap, channel) rows follow one another (2% faster in cache than rows at C_out's stride); bc: b so
    padded, as (groups, blocks * 32)); _ROW_TILE, row_tile (16 channels x 16 positions of a row, wc
    and bc as channels_tile's). y (N, C_out, OH*OW) gets the output;
    with a pooling (pool as in _forward_wide) each group's planes go to the thread's yws instead
    (wide or compact, as the tile writes them), are pooled into pooled / indices, and y is not
    written. shifts: each tap's offset along the padded sample; xps as _Wide's."""
    n_img = x.shape[0]
    taps, c_out, cg = wt.shape
    cog, length, p = c_out // groups, oh * wp, oh * ow
    pooling, relu, w, w_lanes, b_lanes = pool[0] != 0, act == _RELU, wt.reshape(-1), wc.reshape(-1), bc.reshape(-1)
    plane_width = wp if tile == _TAPS_TILE else ow  # of the planes the tile writes
    blocks = wc.shape[1]  # of 32 channels in wc (row_tile and channels_tile)
    threads = xps.shape[0]
    for t in prange(threads):
        xp = xps[t]
        xp[:] = 0
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            out = yws[t] if pooling else y[n].reshape(-1)
            if n + 1 < n_img:  # the next sample on its way to the cache while this one computes
                prefetch_all(x[n + 1].reshape(-1))
            for g in range(groups):
                _pad_avx512(x, n, g * cg, cg, pt, pl, wp, xp)
                y_off = 0 if pooling else g * cog * p
                if tile == _ROW_TILE:
                    for block in range(blocks):
                        for o0 in range(block * CW, min(cog, (block + 1) * CW), RR):
                            for a in range(oh):
                                for w0 in range(0, ow, 16):
                                    row_tile(w_lanes, (g * blocks + block) * taps * cg * CW + o0 - block * CW,
                                             cg * CW, CW, cg, xp, xp.shape[1], shifts, a * wp + w0, out,
                                             y_off + o0 * p + a * ow + w0, p, min(16, ow - w0), min(RR, cog - o0),
                                             b_lanes, g * blocks * CW + o0, relu)
                elif tile == _CHANNELS_TILE:
                    for block in range(blocks):
                        o0 = block * CW
                        for a in range(oh):
                            for w0 in range(0, ow, CR):
                                channels_tile(w_lanes, (g * blocks + block) * taps * cg * CW, cg * CW, CW, cg, xp,
                                              xp.shape[1], shifts, a * wp + w0, out, y_off + o0 * p + a * ow + w0, p,
                                              min(CR, ow - w0), min(CW, cog - o0), b_lanes, g * blocks * CW + o0,
                                              relu)
                else:
                    ldy = length if pooling else p
                    for q0 in range(0, length, NR):
                        keep_lo, dst_lo = _packed_run(q0, length, wp, ow, pooling)
                        keep_hi, dst_hi = _packed_run(q0 + NR // 2, length, wp, ow, pooling)
                        for o0 in range(0, cog, MR):
                            taps_tile(w, (g * cog + o0) * cg, cg, c_out * cg, cg, xp, xp.shape[1], shifts, q0, out,
                                      y_off + o0 * ldy, ldy, min(MR, cog - o0), b, g * cog + o0, relu,
                                      keep_lo, keep_hi, dst_lo, dst_hi)
                _finish_planes(out, y_off, cog, g * cog, plane_width, oh, ow, act, pool, n, pooled, indices)


@njit(inline="always")
def _channels_last(x, n, r0, r1, pt, pl, wx, cp, xh):
    """xh[((pt + r - r0) * wx + pl + q) * cp + c] = x[n, c, r, q] for the rows r0 <= r < r1 of the
    4-D x (xh flat, rows of wx positions of cp channels; the rest as it was), by 16 x 16 blocks
    through the registers."""
    _, c, h, w = x.shape
    x_flat = x.reshape(-1)
    for r in range(r0, r1):
        for c0 in range(0, c, LANES):
            for w0 in range(0, w, LANES):
                transpose16_block(x_flat, ((n * c + c0) * h + r) * w + w0, h * w, min(LANES, c - c0), min(LANES, w - w0),
                                  xh, ((pt + r - r0) * wx + pl + w0) * cp + c0, cp)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_winograd(x, u, b, act, pt, pl, oh, ow, pool, side, band, group, rows, xhs, vs, ms, yhs, yws, y, pooled,
                      indices, suspect):
    """The 3x3 stride-1 float32 forward (groups 1) by Winograd's F(s x s, 3x3), s = side (2 or 4), on
    AVX-512 or AVX2 hosts (_winograd32.py has the math; P = (s + 2)^2 positions xi: 16 or 36). Each
    thread takes its samples `group` at a time (group > 1 only when band covers a whole image: the
    GEMMs then take all the group's tiles, so that each u[xi] is read once per group rather than
    once per sample), in its own buffers:
    - xh (s*TH + 2, s*TW + 2, Cp): a zero-padded sample, channels last (16 x 16 blocks through the
      registers), TH x TW the tiles of s x s outputs, Cp and Kp the channel counts rounded up to 16;
    then per band of `band` tile rows (bands bound the scratch for large images):
    - v (P, T, Cp): the band's transformed input tiles, the group's samples one after another, T
      their tile count rounded up to a multiple of `rows`; m[xi] = v[xi] @ u[xi]
      (_winograd32.products, u packed), m (P, T, Kp). Rows past the tiles hold zeros or earlier
      values: their products are computed and not used;
    - yh (s*band, s*TW, Kp): a sample's band of outputs, with b (Kp values) and the ReLU, channels
      last; their part inside OH x OW, transposed, goes to y[n] (N, C_out, OH*OW) or, with a pooling
      (pool as in _forward_wide), to the thread's plane buffer yws for _finish_planes.
    Each tile's sums are its own: any band and group give the same bits. suspect[n] = 1 where any
    output computed came out inf or NaN (also those then dropped: the rows and columns past OH and
    OW, the channels past C_out): the caller redoes those samples directly."""
    n_img = x.shape[0]
    c_out = y.shape[1] if pool[0] == 0 else pooled.shape[1]
    p = oh * ow
    cp, kp = vs.shape[3], ms.shape[3]
    wx, t_max = xhs.shape[2], vs.shape[2]
    th, tw = -(-oh // side), -(-ow // side)
    wy = side * tw
    relu, pooling = act == _RELU, pool[0] != 0
    threads = xhs.shape[0]
    for t in prange(threads):
        xh, v, m, yh = xhs[t].reshape(-1), vs[t], ms[t], yhs[t].reshape(-1)
        xh[:] = 0
        v[:] = 0
        v_flat, m_flat = v.reshape(-1), m.reshape(-1)
        last = (t + 1) * n_img // threads
        for g0 in range(t * n_img // threads, last, group):
            g1 = min(last, g0 + group)
            for ty0 in range(0, th, band):
                ty1 = min(th, ty0 + band)
                tiles = (ty1 - ty0) * tw
                for n in range(g0, g1):
                    if ty0 == 0:
                        if n + 1 < n_img:  # the next sample on its way to the cache while this one computes
                            prefetch_all(x[n + 1].reshape(-1))
                            if not pooling:
                                prefetch_all(y[n + 1].reshape(-1))
                        _channels_last(x, n, 0, x.shape[2], pt, pl, wx, cp, xh)
                    first = (n - g0) * tiles  # the sample's first tile in v and m
                    for ty in range(ty0, ty1):
                        for tx in range(tw):
                            for c0 in range(0, cp, LANES):
                                at = side * (ty * wx + tx) * cp + c0
                                v_at = (first + (ty - ty0) * tw + tx) * cp + c0
                                if side == 2:
                                    input_tile16(xh, at, wx * cp, cp, v_flat, v_at, t_max * cp)
                                else:
                                    input_tile36(xh, at, wx * cp, cp, v_flat, v_at, t_max * cp)
                used = -(-(g1 - g0) * tiles // rows) * rows
                products(v[:, :used], u, m[:, :used], rows)
                for n in range(g0, g1):
                    out = yws[t] if pooling else y[n].reshape(-1)
                    first = (n - g0) * tiles
                    bad = 0
                    for ty in range(ty0, ty1):
                        for tx in range(tw):
                            for k0 in range(0, kp, LANES):
                                at = (first + (ty - ty0) * tw + tx) * kp + k0
                                y_at = side * ((ty - ty0) * wy + tx) * kp + k0
                                if side == 2:
                                    bad |= output_tile16(m_flat, at, t_max * kp, b, k0, relu, yh, y_at, wy * kp, kp)
                                else:
                                    bad |= output_tile36(m_flat, at, t_max * kp, b, k0, relu, yh, y_at, wy * kp, kp)
                    for a in range(side * ty0, min(oh, side * ty1)):
                        for k0 in range(0, c_out, LANES):
                            for w0 in range(0, ow, LANES):
                                transpose16_block(yh, ((a - side * ty0) * wy + w0) * kp + k0, kp, min(LANES, ow - w0),
                                                  min(LANES, c_out - k0), out, k0 * p + a * ow + w0, p)
                    suspect[n] |= bad
                    if ty1 == th:
                        _finish_planes(out, 0, c_out, 0, ow, oh, ow, act, pool, n, pooled, indices)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _weight_grad_winograd(x, dy, pt, pl, oh, ow, band, group, xhs, vs, dyhs, zs, du_parts, db_parts):
    """dW and db of the 3x3 stride-1 float32 convolution (groups 1) by Winograd's F(2x2, 3x3) on
    AVX-512 or AVX2 hosts (_winograd32.py has the math), as per-part sums: part j takes the samples
    [j*N/parts, (j+1)*N/parts) (parts and group functions of the shapes alone: the same bits on any
    thread count), `group` at a time (more than one only when band covers a whole image).
    Per sample, in the part's own buffers: xh as _forward_winograd's; then per band of
    `band` tile rows, the group's samples one after another in v (16, T, Cp), the input tiles
    transformed (input_tile16), and z (16, T, Kp), the tiles of dyh transformed (grad_tile16):
    dyh (2*band, 2*TW, Kp) a sample's band of dy (N, C_out, OH, OW) channels-last, zero past OH, OW
    and C_out. Then du_parts[j][xi] += v[xi]^T @ z[xi] over the group's tiles (gemm32).
    db_parts[j] (float64) += each dy plane's sum."""
    n_img, k = x.shape[0], dy.shape[1]
    cp, kp = vs.shape[3], zs.shape[3]
    wx, t_max = xhs.shape[2], vs.shape[2]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    wy = 2 * tw
    parts = du_parts.shape[0]
    for part in prange(parts):
        xh, v, dyh, z, du, db = xhs[part].reshape(-1), vs[part], dyhs[part].reshape(-1), zs[part], du_parts[part], \
            db_parts[part]
        xh[:] = 0
        dyh[:] = 0
        du[:] = 0
        db[:] = 0
        v_flat, z_flat = v.reshape(-1), z.reshape(-1)
        last = (part + 1) * n_img // parts
        for g0 in range(part * n_img // parts, last, group):
            g1 = min(last, g0 + group)
            for ty0 in range(0, th, band):
                ty1 = min(th, ty0 + band)
                tiles = (ty1 - ty0) * tw
                for n in range(g0, g1):
                    if ty0 == 0:
                        if n + 1 < n_img:  # the next sample on its way to the cache while this one computes
                            prefetch_all(x[n + 1].reshape(-1))
                            prefetch_all(dy[n + 1].reshape(-1))
                        for o in range(k):
                            db[o] += _sum(dy[n, o].reshape(-1))
                        _channels_last(x, n, 0, x.shape[2], pt, pl, wx, cp, xh)
                    _channels_last(dy, n, 2 * ty0, min(oh, 2 * ty1), 0, 0, wy, kp, dyh)
                    for a in range(oh, 2 * ty1):  # an odd OH's extra row (another band's rows before): zero
                        dyh[(a - 2 * ty0) * wy * kp:(a - 2 * ty0 + 1) * wy * kp] = 0
                    first = (n - g0) * tiles  # the sample's first tile in v and z
                    for ty in range(ty0, ty1):
                        for tx in range(tw):
                            t = first + (ty - ty0) * tw + tx
                            for c0 in range(0, cp, LANES):
                                input_tile16(xh, (2 * ty * wx + 2 * tx) * cp + c0, wx * cp, cp, v_flat, t * cp + c0,
                                             t_max * cp)
                            for k0 in range(0, kp, LANES):
                                grad_tile16(dyh, (2 * (ty - ty0) * wy + 2 * tx) * kp + k0, wy * kp, kp, z_flat,
                                            t * kp + k0, t_max * kp)
                used = (g1 - g0) * tiles
                for xi in range(16):
                    gemm32(v[xi, :used], z[xi, :used], du[xi], 1.0, True, False)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _weight_grad_winograd_planes(x, dy, pt, pl, oh, ow, pieces, starts, tiles, xhs, dyhs, v, z, du):
    """dW as _weight_grad_winograd, for layers with many channels: one dU, the threads split
    over its 16 planes xi rather than over the samples. The work comes in passes, each a run of
    pieces (pieces[i] = (sample, first tile row, end tile row, first tile in the pass's v and z);
    pass p the pieces starts[p] .. starts[p + 1] - 1, tiles[p] tiles), in two parallel steps:
    - each piece in its own slot: xh (2*band + 2, 2*TW + 2, Cp) its rows of the zero-padded sample,
      dyh (2*band, 2*TW, Kp) its rows of dy, channels last, zero past OH, OW and C_out; their tiles
      transformed into v (16, T, Cp) and z (16, T, Kp) (input_tile16, grad_tile16);
    - each plane: du[xi] (+)= v[xi]^T @ z[xi] over the pass's tiles (gemm32, beta 0 on the first).
    gemm32 adds each tile's products into du in order, so the bits do not depend on the passes or
    the thread count."""
    cp, kp = v.shape[2], z.shape[2]
    wx, wy, t_max = xhs.shape[2], dyhs.shape[2], v.shape[1]
    tw = (ow + 1) // 2
    v_flat, z_flat = v.reshape(-1), z.reshape(-1)
    if starts.size == 1:  # no samples
        du[:] = 0
    for p in range(starts.size - 1):
        first = starts[p]
        for s in prange(starts[p + 1] - first):
            n, ty0, ty1, t0 = pieces[first + s, 0], pieces[first + s, 1], pieces[first + s, 2], pieces[first + s, 3]
            xh, dyh = xhs[s].reshape(-1), dyhs[s].reshape(-1)
            xh[:] = 0
            dyh[:] = 0
            r0, r1 = max(0, 2 * ty0 - pt), min(x.shape[2], 2 * ty1 + 2 - pt)  # x's rows in the piece's xh
            _channels_last(x, n, r0, r1, r0 - 2 * ty0 + pt, pl, wx, cp, xh)
            _channels_last(dy, n, 2 * ty0, min(oh, 2 * ty1), 0, 0, wy, kp, dyh)
            for ty in range(ty0, ty1):
                for tx in range(tw):
                    t = t0 + (ty - ty0) * tw + tx
                    for c0 in range(0, cp, LANES):
                        input_tile16(xh, (2 * (ty - ty0) * wx + 2 * tx) * cp + c0, wx * cp, cp, v_flat, t * cp + c0,
                                     t_max * cp)
                    for k0 in range(0, kp, LANES):
                        grad_tile16(dyh, (2 * (ty - ty0) * wy + 2 * tx) * kp + k0, wy * kp, kp, z_flat, t * kp + k0,
                                    t_max * kp)
        for xi in prange(16):
            gemm32(v[xi, :tiles[p]], z[xi, :tiles[p]], du[xi], 1.0 if p > 0 else 0.0, True, False)


@njit(parallel=True, nogil=True, cache=True)
def _backward_taps_avx512(dy, from_pool, pooled_w, y, act, indices, x, wd, zeros, groups, pt, pl, wp, oh, ow, margin,
                          shifts, dx_shifts, input_grad, xps, dyps, dyts, cols, grad_parts, dx):
    """Stride-1 float32 backward on AVX-512 hosts (for the layers _backward_uses_tiles names). Per
    sample and group, in the task's own buffers:
    - dyw, the output gradient on the wide grid (_gather_output_grad; dy and from_pool as in
      _backward_wide), sits in dyp (C_out/g, Ld) between zero margins of `margin` (the largest tap
      shift); dyT (OH * OW, C_out/g) is the transpose of its output positions (not the wide grid's
      extra columns), in 16 x 16 blocks through the registers;
    - db += the column sums of dyT; dW_t^T += xp[:, s_t + P] @ dyT for each tap t, P the output
      positions on the wide grid: gemm32_runs reads the padded sample's shifted rows in place (no
      copied tap rows), in runs of OW every Wp columns, and dy once transposed (not a panel per
      product). Over the wide grid instead, conv2's products spent 1/8 of their work on zeros.
      With cols (tasks, R8, OH * OW) not empty (C_in/g not a whole number of gemm32's 8-row
      tiles) the tap rows' output positions are copied into col, R8 = taps * C_in/g rounded up to
      8, and one product does all taps. grad_parts[task] (groups, 1 + max(taps * C_in/g, R8),
      C_out/g): row 0 db, row 1 + tap * C_in/g + c dW[:, c, tap];
    - dx (input_grad) = _taps32.channels_tile over dyp, dx's channels in the lanes:
      dx[c, P] = sum_t sum_o W[o, c, t] dyw[o, P - s_t] = ... dyp[o, dx_shifts[t] + P] with
      dx_shifts[t] = margin - s_t, for P the padded grid's interior positions, stored compact into
      dx (N, C_in * H * W). wd: W as (groups, blocks, taps, C_out/g, 32), dx's channels in blocks
      of 32 zero-padded; zeros: 32 zeros (no bias). The sums run over dyp's zero margins and extra
      columns too, so an infinite weight makes NaN (inf * 0) in more of dx than the exact sum
      would (which of dx's values an inf or NaN weight spoils differs between kernels anyway).
    pooled_w: the pooled gradient's width when from_pool (the 2x2 scatter's runs, _pool32.unpool_2x2_plane)."""
    n_img, c, h_in, w_in = x.shape
    cg, cog, taps = c // groups, grad_parts.shape[3], shifts.size
    length, plane = oh * wp, h_in * w_in
    blocks, wd_flat = wd.shape[1], wd.reshape(-1)
    threads = xps.shape[0]
    copied = cols.shape[1] > 0
    for t in prange(threads):
        xp, dyp, dyt, col = xps[t], dyps[t], dyts[t], cols[t]
        xp[:] = 0
        col[:] = 0  # the rows past taps * C_in/g stay 0
        dyp[:] = 0  # margins and the wide grid's extra columns stay 0: they add nothing
        dyw = dyp[:, margin:margin + length]
        dyp_flat, dyt_flat = dyp.reshape(-1), dyt.reshape(-1)
        ld = dyp.shape[1]
        grad_parts[t] = 0
        wide = _wide_positions(oh * ow if from_pool else 0, ow, wp)
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            if n + 1 < n_img:  # the next sample's inputs on their way to the cache (with copy16: 48 -> 43 us)
                prefetch_all(x[n + 1].reshape(-1))
                prefetch_all(dy[n + 1].reshape(-1))
            for g in range(groups):
                if from_pool:
                    for o in range(cog):
                        if not unpool_2x2_plane(dy, y, act, indices, n, g * cog + o, pooled_w, oh, ow, wp, dyp_flat,
                                           o * ld + margin):
                            _gather_output_grad(dy, from_pool, y, act, indices, wide, n, g * cog + o, oh, ow, wp,
                                                dyw[o:o + 1])
                else:  # dy's rows into the wide grid by masked 16-value copies (as _pad_avx512)
                    for o in range(cog):
                        copy_rows16(dy[n, g * cog + o], 0, ow, dyp_flat, o * ld + margin, wp, oh, ow)
                for o0 in range(0, cog, 16):  # dyT of the output positions only, row by row
                    for a in range(oh):
                        for b0 in range(0, ow, 16):
                            transpose16_block(dyp_flat, o0 * ld + margin + a * wp + b0, ld, min(16, cog - o0),
                                              min(16, ow - b0), dyt_flat, (a * ow + b0) * cog + o0, cog)
                db = grad_parts[t, g, 0]
                for q in range(oh * ow):  # db in position order, vectorized over the channels
                    row = dyt[q]
                    for o in range(cog):
                        db[o] += row[o]
                _pad_avx512(x, n, g * cg, cg, pt, pl, wp, xp)
                if copied:  # the tap rows' output positions copied, one product over whole 8-row tiles
                    for tap in range(taps):
                        s = shifts[tap]
                        for cc in range(cg):
                            copy_rows16(xp[cc], s, wp, col[tap * cg + cc], 0, ow, oh, ow)
                    gemm32(col, dyt, grad_parts[t, g, 1:1 + col.shape[0]], 1.0, False, False)
                else:  # the tap's rows read in place, the output's runs of ow every wp columns
                    for tap in range(taps):
                        s = shifts[tap]
                        gemm32_runs(xp[:, s:s + length], dyt, grad_parts[t, g, 1 + tap * cg:1 + (tap + 1) * cg], 1.0,
                                    ow, wp)
                if not input_grad:
                    continue
                out = dx[n]
                for block in range(blocks):
                    c0 = block * CW
                    for hh in range(h_in):
                        for w0 in range(0, w_in, CR):
                            channels_tile(wd_flat, (g * blocks + block) * taps * cog * CW, cog * CW, CW, cog, dyp, ld,
                                          dx_shifts, (pt + hh) * wp + pl + w0, out,
                                          (g * cg + c0) * plane + hh * w_in + w0, plane, min(CR, w_in - w0),
                                          min(CW, cg - c0), zeros, 0, False)


_TAPS_TILE, _CHANNELS_TILE, _ROW_TILE = 0, 1, 2
# row_tile for layers with fewer input channels per group than this: their few multiply-adds per
# output (9 per input channel for 3x3) leave channels_tile's transposes a large share. One Zen 4
# core, in cache, 28x28 -> 32 channels, GFLOP/s row_tile vs channels_tile (same bits): C_in 1 78-85
# vs 65-69, 3 100 vs 92-95, 4 100-101 vs 97-101, 8 92-102 vs 106-108. Its 16 rows of multiply-adds
# lose to taps_tile's 8 where a group has few output channels (a review's single-thread probe, ms,
# taps_tile vs row_tile: 3 -> 4 channels 0.71 vs 1.22, 3 -> 8 0.40 vs 0.51, 16 groups of 2 -> 4 4.71
# vs 5.27), except with one input channel (depthwise, 16 groups of 1 -> 4: 12.7 vs 10.3).
_ROW_TILE_BELOW = 4


def _forward_tile(cg, cog, oh, ow, wp):
    """Which of _taps32's tiles the forward takes: row_tile for one input channel per group, or 2-3
    with 16 or more output channels per group; otherwise channels_tile where it does less work than
    taps_tile: the lanes each computes, whole tiles, over the efficiency each tile reached in cache
    on conv2 (92% and 95% of peak)."""
    if cg == 1 or (cg < _ROW_TILE_BELOW and cog >= RR):
        return _ROW_TILE
    positions_in_lanes = -(-cog // MR) * MR * -(-(oh * wp) // NR) * NR / 0.95
    channels_in_lanes = -(-cog // CW) * CW * oh * -(-ow // CR) * CR / 0.92
    return _CHANNELS_TILE if channels_in_lanes < positions_in_lanes else _TAPS_TILE


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


class _Wide:
    """Stride-1 geometry and per-thread scratch for the wide layout."""

    def __init__(self, x, w, padding, dilation, groups, oh, ow, threads, backward):
        c_out, cg, kh, kw = w.shape
        self.hp, self.wp = x.shape[2] + padding[0] + padding[1], x.shape[3] + padding[2] + padding[3]
        length = oh * self.wp
        rows = cg * kh * kw
        copied = rows * length if cg < _MIN_CHANNELS_FOR_SHIFTED_GEMMS else 0
        # each padded channel with NR floats after its last tap's: _taps32's tile reads 31 past it
        self.xps = empty((threads, cg, self.hp * self.wp + (kw - 1) * dilation[1] + NR), x.dtype)
        self.outs = empty((threads, c_out // groups * length), x.dtype)  # y or dy over the wide grid
        if backward:
            # dW's copied tap rows, `block` channels at a time: about _COL_BYTES per thread
            self.block = max(1, min(cg, _COL_BYTES // max(1, kh * kw * length * x.itemsize)))
            self.cols = empty((threads, (1 + self.block * kh * kw) * length), x.dtype)
            self.dxps = empty(self.xps.shape, x.dtype)
            self.dcols = empty((threads, copied), x.dtype)  # dx's copied rows (few channels)
        else:
            self.cols = empty((threads, copied), x.dtype)
        self.wt = _taps_first(w)


_NO_POOL = (0, 0, 0, 0, 0, 0)


def conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, algorithm):
    return _conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, None, algorithm)


def conv2d_max_pool2d_forward(x, w, b, stride, padding, dilation, groups, activation, pool, algorithm):
    """(y, indices) = max pooling (pool: the validated ops.pool.PoolGeometry of the convolution's
    output) of the convolution, fused for stride 1: each output plane is pooled while in cache."""
    if stride != (1, 1) or _forward_is_pointwise(x, w, stride, padding, groups):  # no fused kernel: the two ops
        return max_pool2d_forward(conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, algorithm),
                                  pool)
    return _conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, pool, algorithm)


def _conv2d_forward(x, w, b, stride, padding, dilation, groups, activation, pool, algorithm):
    n, c, _, _ = x.shape
    c_out, cg, kh, kw = w.shape
    oh, ow = _output_size(x, w, stride, padding, dilation)
    rows, p = cg * kh * kw, oh * ow
    has_bias = b is not None
    x = np.ascontiguousarray(x)
    w2 = np.ascontiguousarray(w).reshape(c_out, rows)
    bias = b if has_bias else np.empty(0, x.dtype)
    act = epilogue_activation(activation, x.dtype)
    y = empty((n, c_out, p) if pool is None else (0, 0, 0), x.dtype)
    pool_shape = (0, 0, 0, 0) if pool is None else pool.out_shape
    pooled, indices = empty(pool_shape, x.dtype), empty(pool_shape, np.int64)
    threads = _threads(n)
    window = _NO_POOL if pool is None else window_of(pool)
    with single_threaded_blas():
        if _uses_winograd(x, w, stride, dilation, groups, algorithm):
            _forward_by_winograd(x, w, b, padding, oh, ow, act, window, y, pooled, indices)
        elif pool is None and _forward_is_pointwise(x, w, stride, padding, groups):
            _forward_by_pointwise(x, w, b, act, y)
        elif stride == (1, 1):
            _forward_direct(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices)
        elif _uses_phases(x, w, groups):
            _forward_by_phases(x, w, b, stride, padding, dilation, groups, oh, ow, act, y)
        else:
            kernel = _forward_gemm32 if _uses_gemm32(x) else _forward
            # b is added by the product (as the last k), with an activation or without: the same bits
            w2b = np.concatenate([w2, bias.reshape(c_out, 1)], axis=1) if has_bias else w2
            kernel(x, w2b, act, groups, kh, kw, stride[0], stride[1], padding[0], padding[2],
                   dilation[0], dilation[1], oh, ow, empty((threads, w2b.shape[1] * p), x.dtype), y)
    return y.reshape(n, c_out, oh, ow) if pool is None else (pooled, indices)


def _uses_phases(x, w, groups):
    """A strided layer's products by phases (_forward_phases): float32 with gemm32, and at least
    _MIN_CHANNELS_FOR_SHIFTED_GEMMS input channels a group (each tap's GEMM has that K)."""
    return _uses_gemm32(x) and w.shape[1] >= _MIN_CHANNELS_FOR_SHIFTED_GEMMS


def _forward_by_phases(x, w, b, stride, padding, dilation, groups, oh, ow, act, y):
    c_out, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    hq, wq = -(-(x.shape[2] + padding[0] + padding[1]) // sh), -(-(x.shape[3] + padding[2] + padding[3]) // sw)
    read = sorted({i * dh % sh * sw + j * dw % sw for i in range(kh) for j in range(kw)})
    slots = np.full(sh * sw, -1, np.int64)
    slots[read] = np.arange(len(read))
    threads = _threads(x.shape[0])
    # a phase's plane: hq rows of wq, and the last tap's column shift past them (the discarded columns' reads)
    plane = hq * wq + (kw - 1) * dw // sw
    _forward_phases(x, _taps_first(w), b if b is not None else np.empty(0, x.dtype), b is not None, act, groups, kh,
                    kw, sh, sw, dh, dw, padding[0], padding[2], wq, oh, ow, slots,
                    empty((threads, len(read), cg, plane), x.dtype), empty((threads, c_out // groups * oh * wq), x.dtype),
                    y)


# Winograd's F(2x2, 3x3) takes the 3x3 stride-1 float32 layers with at least WINOGRAD_MIN_CHANNELS
# input and output channels (below it the transforms, linear in C + K, outweigh the 2.25x fewer
# multiply-adds), unless the op's algorithm is "direct" (a layer's choice: Conv2d(algorithm=)) or
# FASTCONV_WINOGRAD=0 (the whole process's) keeps them on the direct kernel and its rounding
# (_winograd32.py compares the two).
WINOGRAD = os.environ.get("FASTCONV_WINOGRAD", "").strip() != "0"
WINOGRAD_MIN_CHANNELS = 16


def _uses_winograd(x, w, stride, dilation, groups, algorithm):
    c_out, cg, kh, kw = w.shape
    return (WINOGRAD and algorithm == "auto" and _uses_gemm32(x) and stride == (1, 1) and dilation == (1, 1)
            and groups == 1 and (kh, kw) == (3, 3) and min(cg, c_out) >= WINOGRAD_MIN_CHANNELS)


# Each thread's transformed tiles (v and m) are kept to about this, in cache, by taking the tiles in
# bands of whole tile rows (at least one): conv2's 7 rows of 7 tiles (294 KiB) in one band; a
# 224-wide image with 64 channels in and out one row of 112 tiles (896 KiB) at a time.
_WINOGRAD_BAND_BYTES = 1 << 19
# Unless U itself (16 * Cp * Kp floats) is larger than _WINOGRAD_CACHED_U_BYTES and so comes from
# memory on every pass over the tiles: then a pass may take up to _WINOGRAD_PASS_TILES tiles (whole
# tile rows, or whole samples when the images are small; at least one row). Measured in one
# process, forward, 2 threads: 512 channels in and out (U 16 MiB) on 7x7 images, batch 32, 38.6 ms
# in passes of 8 tiles, 31.6 in passes of 128; on 14x14, batch 8, 51.2 and 24.1. With 256 channels
# (U 4 MiB, which the last-level cache keeps) passes of 128 tiles were 7-16% slower than the small
# ones.
_WINOGRAD_CACHED_U_BYTES = 8 << 20
_WINOGRAD_PASS_TILES = 128


def _winograd_blocking(c, c_out, oh, ow, itemsize, side=2):
    """(Cp, Kp, TH, TW, band, group): the channel counts rounded up to LANES, the tiles of side x side
    outputs, the tile rows per band and the samples per pass (more than one only when a band is a
    whole image), from the tiles a pass may hold: _WINOGRAD_BAND_BYTES of v and m, or
    _WINOGRAD_PASS_TILES where U is larger than _WINOGRAD_CACHED_U_BYTES."""
    cp, kp = -(-c // LANES) * LANES, -(-c_out // LANES) * LANES
    th, tw = -(-oh // side), -(-ow // side)
    planes = (side + 2) ** 2
    tiles = _WINOGRAD_BAND_BYTES // (planes * (cp + kp) * itemsize)  # per pass
    if planes * cp * kp * itemsize > _WINOGRAD_CACHED_U_BYTES:
        tiles = max(tiles, _WINOGRAD_PASS_TILES)
    band = max(1, min(th, tiles // tw))
    return cp, kp, th, tw, band, max(1, tiles // (th * tw)) if band == th else 1


# F(4x4, 3x3) takes 36 products (per channel pair) for a tile of 16 outputs, F(2x2, 3x3) 16 for 4:
# 1.78x fewer, where the output's sides are multiples of 4. Elsewhere F(4x4) computes up to 3 rows
# and columns past them, and its tiles, 4x fewer, make shorter GEMMs. Zen 4, 2 threads, F(2x2)'s
# time over F(4x4)'s, forward / backward (dx by the same forward, dW by F(2x2) in both), medians of
# 7 alternating rounds: 28x28 outputs (32 to 128 channels) 1.30-1.39 / 1.10-1.13; 56x56 (64) 1.48 /
# 1.17; 7x7 (32 to 512 channels, batch 16 to 64) 1.04-1.28 / 1.05-1.12; 14x14 (32 to 256) 0.87-1.06
# / 0.93-1.07; 4x4 (256, batch 32: one tile a sample) 0.75 / 0.98. So F(4x4) where its products are
# at most _WINOGRAD4_PRODUCTS of F(2x2)'s (28x28 and 7x7: 0.56, 14x14: 0.73) over at least
# _WINOGRAD4_TILES tiles in the batch. A function of the shapes alone, as the bits depend on it.
_WINOGRAD4_PRODUCTS = 0.6
_WINOGRAD4_TILES = 64


def _winograd_side(n, oh, ow):
    """Outputs per tile side for the forward of n samples: 4 (F(4x4, 3x3)) or 2 (F(2x2, 3x3))."""
    tiles = lambda side: -(-oh // side) * -(-ow // side)  # noqa: E731
    fewer = tiles(4) * 36 <= _WINOGRAD4_PRODUCTS * tiles(2) * 16
    return 4 if fewer and n * tiles(4) >= _WINOGRAD4_TILES else 2


def _forward_by_winograd(x, w, b, padding, oh, ow, act, window, y, pooled, indices):
    """y, or pooled and indices, by _forward_winograd; the samples it flags (an output not
    finite) again by the direct kernel, whose inf and NaN are a direct sum's. A weight or bias
    that is not finite would flag every sample: such a layer goes to the direct kernel at once."""
    if not (np.isfinite(w).all() and (b is None or np.isfinite(b).all())):
        _forward_direct(x, w, b, padding, (1, 1), 1, oh, ow, act, window, y, pooled, indices)
        return
    n, c = x.shape[:2]
    c_out = w.shape[0]
    side = _winograd_side(n, oh, ow)
    cp, kp, th, tw, band, group = _winograd_blocking(c, c_out, oh, ow, x.itemsize, side)
    threads = _threads(n)
    group = max(1, min(group, -(-n // threads)))  # no larger than a thread's share
    bias = np.zeros(kp, x.dtype)
    if b is not None:
        bias[:c_out] = b
    rows = tile_rows(group * band * tw)
    t_max = -(-group * band * tw // rows) * rows
    scratch = lambda *shape: empty((threads, *shape), x.dtype)  # noqa: E731
    suspect = np.zeros(n, np.uint8)
    planes = (side + 2) ** 2
    _forward_winograd(x, weights_transformed(w, cp, kp, side), bias, act, padding[0], padding[2], oh, ow, window,
                      side, band, group, rows, scratch(side * th + 2, side * tw + 2, cp), scratch(planes, t_max, cp),
                      scratch(planes, t_max, kp), scratch(side * band, side * tw, kp),
                      scratch(c_out * oh * ow if window[0] else 0), y, pooled, indices, suspect)
    redo = np.flatnonzero(suspect)
    if redo.size:
        y_redo = np.empty((redo.size, *y.shape[1:]), x.dtype)
        pooled_redo, indices_redo = np.empty((redo.size, *pooled.shape[1:]), x.dtype), np.empty(
            (redo.size, *indices.shape[1:]), indices.dtype)
        _forward_direct(x[redo], w, b, padding, (1, 1), 1, oh, ow, act, window, y_redo, pooled_redo, indices_redo)
        if window[0]:
            pooled[redo], indices[redo] = pooled_redo, indices_redo
        else:
            y[redo] = y_redo


def _forward_direct(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices):
    """The stride-1 forward's direct sums into y, or pooled and indices: by _forward_taps_avx512
    where the host has AVX-512, else the wide kernels (with gemm32 for float32 on AVX2 hosts)."""
    if _uses_tiles(x):
        _forward_by_taps(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices)
        return
    c_out, cg, kh, kw = w.shape
    s = _Wide(x, w, padding, dilation, groups, oh, ow, _threads(x.shape[0]), backward=False)
    kernel = _forward_wide_gemm32 if _uses_gemm32(x) else _forward_wide
    kernel(x, np.ascontiguousarray(w).reshape(c_out, cg * kh * kw), s.wt, b if b is not None else np.empty(0, x.dtype),
           b is not None, act, groups, kh, kw, dilation[0], dilation[1], padding[0], padding[2], s.hp, s.wp, oh, ow,
           window, s.xps, s.cols, s.outs, y, pooled, indices)


def _forward_by_taps(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices):
    """y, or pooled and indices, by _forward_taps_avx512 (stride 1, float32, AVX-512)."""
    c_out, cg, kh, kw = w.shape
    s = _Wide(x, w, padding, dilation, groups, oh, ow, _threads(x.shape[0]), backward=False)
    shifts = _tap_shifts(kh, kw, dilation, s.wp)
    b_flat = np.ascontiguousarray(b) if b is not None else np.zeros(c_out, x.dtype)
    cog = c_out // groups
    wc, bc = np.empty((0, 0, 0, 0), x.dtype), np.empty((0, 0), x.dtype)
    tile = _forward_tile(cg, cog, oh, ow, s.wp)
    if tile != _TAPS_TILE:
        blocks = -(-cog // CW)
        padded = np.zeros((groups, blocks * CW, cg, kh * kw), x.dtype)
        padded[:, :cog] = w.reshape(groups, cog, cg, kh * kw)
        wc = np.ascontiguousarray(padded.reshape(groups, blocks, CW, cg, kh * kw).transpose(0, 1, 4, 3, 2))
        bc = np.zeros((groups, blocks * CW), x.dtype)
        bc[:, :cog] = b_flat.reshape(groups, cog)
    _forward_taps_avx512(x, s.wt, b_flat, wc, bc, tile, act, groups, padding[0], padding[2], s.wp, oh, ow, window,
                         s.xps, shifts, s.outs, y, pooled, indices)


def _tap_shifts(kh, kw, dilation, wp):
    """Each tap's offset along a padded sample of row length wp (_shift's, as an array for the tiles)."""
    return np.array([i * dilation[0] * wp + j * dilation[1] for i in range(kh) for j in range(kw)], np.int64)


def _backward_uses_tiles(x, w, stride, input_grad):
    """_backward_taps_avx512 for float32 stride-1 layers on AVX-512 hosts, unless dx is wanted with
    fewer than 8 input channels per group (channels_tile would fill a quarter of its lanes or less)."""
    return (stride == (1, 1) and _uses_tiles(x)
            and (w.shape[1] >= _MIN_CHANNELS_FOR_SHIFTED_GEMMS or not input_grad))


def _backward_by_tiles(dy3, from_pool, pooled_w, y3, activation, indices3, x, w, padding, dilation, groups, oh, ow,
                       parts, input_grad, dx):
    """_backward_taps_avx512's buffers and weight layout; (db_parts, dw_parts) as _conv2d_backward's."""
    n, c, h_in, w_in = x.shape
    c_out, cg, kh, kw = w.shape
    cog, taps = c_out // groups, kh * kw
    wp = w_in + padding[2] + padding[3]
    length = oh * wp
    shifts = _tap_shifts(kh, kw, dilation, wp)
    margin = int(shifts.max())
    # each padded channel with NR floats after its last tap's (_taps32's tiles read past it)
    xps = empty((parts, cg, (x.shape[2] + padding[0] + padding[1]) * wp + (kw - 1) * dilation[1] + NR), x.dtype)
    dyps = empty((parts, cog, 2 * margin + length + NR), x.dtype)
    dyts = empty((parts, oh * ow, cog), x.dtype)
    rows = taps * cg
    copied = -(-rows // 8) * 8 if cg % 8 else 0  # (gemm32 pads a partial 8-row tile per call)
    cols = empty((parts, copied, oh * ow if copied else 0), x.dtype)
    grad_parts = empty((parts, groups, 1 + max(rows, copied), cog), x.dtype)
    blocks = -(-cg // CW)
    padded = np.zeros((groups, cog, blocks * CW, taps), x.dtype)
    padded[:, :, :cg] = w.reshape(groups, cog, cg, taps)
    wd = np.ascontiguousarray(padded.reshape(groups, cog, blocks, CW, taps).transpose(0, 2, 4, 1, 3))
    _backward_taps_avx512(dy3, from_pool, pooled_w, y3, ACTIVATIONS[activation], indices3, x, wd, np.zeros(CW, x.dtype),
                          groups, padding[0], padding[2], wp, oh, ow, margin, shifts, margin - shifts, input_grad, xps,
                          dyps, dyts, cols, grad_parts, dx.reshape(dx.shape[0], int(np.prod(dx.shape[1:]))))
    db_parts = grad_parts[:, :, 0].reshape(parts, c_out)
    dw_parts = grad_parts[:, :, 1:1 + rows].reshape(parts, groups, taps, cg, cog).transpose(0, 1, 4, 3, 2)
    return db_parts, dw_parts.reshape(parts, groups, cog, cg * taps)


def _backward_uses_winograd(x, w, stride, padding, dilation, groups, algorithm):
    """The layers whose forward goes by Winograd, when dx can too: dx is the stride-1 correlation of
    the output gradient with w's taps reversed and its channel axes swapped, padded by 2 - padding
    on each side, which needs each padding <= 2."""
    return max(padding) <= 2 and _uses_winograd(x, w, stride, dilation, groups, algorithm)


# The Winograd weight gradient's per-part dU is 16 * Cp * Kp floats (16 MiB at 512 channels): from
# _WINOGRAD_PLANES_DU_BYTES on, the threads split over dU's planes instead (one dU, no parts to zero,
# add and transform; the GEMMs take a whole pass's tiles, where a part's took a few samples' or one
# band's). Passes of up to _WINOGRAD_PLANES_PASS_BYTES of v and z (256 tiles at 512 channels, 512 at
# 256: 128 to 512 timed the same), in pieces of whole tile rows, at least
# _WINOGRAD_PLANES_PIECES a pass where the images allow (the transforms' parallelism). On the Zen 4
# host, 2 threads, batch 16, the whole backward (dx, dW, db), medians of 5 alternating processes:
# 512 channels on 7x7 44.7 -> 31.6 ms, 256 on 14x14 27.4 -> 23.0. But dW alone of 128 channels on
# 28x28 (batch 8) went 12 -> 19 ms (CPU time, a busy host): its parts' bands stay in cache.
_WINOGRAD_PLANES_DU_BYTES = 4 << 20
_WINOGRAD_PLANES_PASS_BYTES = 16 << 20
_WINOGRAD_PLANES_PIECES = 8


def _winograd_gradient_passes(n, th, tw, cp, kp, itemsize):
    """(pieces, starts, tiles, band) of _weight_grad_winograd_planes, tiles[p] pass p's tile count:
    functions of the shapes alone."""
    most = max(tw, _WINOGRAD_PLANES_PASS_BYTES // (16 * (cp + kp) * itemsize))  # tiles a pass
    band = max(1, min(th, most // (_WINOGRAD_PLANES_PIECES * tw)))
    pieces, starts, tiles = [], [], []
    for sample in range(n):
        for ty0 in range(0, th, band):
            size = (min(th, ty0 + band) - ty0) * tw
            if not tiles or tiles[-1] + size > most:
                starts.append(len(pieces))
                tiles.append(0)
            pieces.append((sample, ty0, min(th, ty0 + band), tiles[-1]))
            tiles[-1] += size
    starts.append(len(pieces))
    return np.array(pieces, np.int64).reshape(-1, 4), np.array(starts, np.int64), np.array(tiles, np.int64), band


def _weight_grad_by_planes(x, dy, padding, oh, ow, cp, kp, th, tw):
    """(dU as (1, 16, Cp, Kp) by _weight_grad_winograd_planes, db in float64 by _channel_sums)."""
    pieces, starts, tiles, band = _winograd_gradient_passes(x.shape[0], th, tw, cp, kp, x.itemsize)
    slots, t_max = int(np.diff(starts).max(initial=1)), int(tiles.max(initial=1))
    du, db = empty((1, 16, cp, kp), x.dtype), np.empty(dy.shape[1])
    _weight_grad_winograd_planes(x, dy, padding[0], padding[2], oh, ow, pieces, starts, tiles,
                                 empty((slots, 2 * band + 2, 2 * tw + 2, cp), x.dtype),
                                 empty((slots, 2 * band, 2 * tw, kp), x.dtype), empty((16, t_max, cp), x.dtype),
                                 empty((16, t_max, kp), x.dtype), du[0])
    _channel_sums(dy.reshape(dy.shape[0], dy.shape[1], -1), db)
    return du, db


def _weight_grad_by_parts(x, dy, padding, oh, ow, cp, kp, th, tw, band, group):
    """(dU as (parts, 16, Cp, Kp), db (parts, C_out) float64) by _weight_grad_winograd."""
    n = x.shape[0]
    parts = _parts(n)
    group = max(1, min(group, -(-n // parts)))  # no larger than a part (the same groups)
    scratch = lambda *shape: empty((parts, *shape), x.dtype)  # noqa: E731
    du_parts, db_parts = scratch(16, cp, kp), np.empty((parts, dy.shape[1]))
    _weight_grad_winograd(x, dy, padding[0], padding[2], oh, ow, band, group, scratch(2 * th + 2, 2 * tw + 2, cp),
                          scratch(16, group * band * tw, cp), scratch(2 * band, 2 * tw, kp),
                          scratch(16, group * band * tw, kp), du_parts, db_parts)
    return du_parts, db_parts


def _backward_by_winograd(dy, y, activation, indices, x, w, padding, oh, ow, input_grad, dx):
    """(dW, db) by _weight_grad_winograd(_planes), and dx (if input_grad) by _forward_by_winograd of
    the output gradient. With indices, dy is the pooled gradient: the activation's backward and the
    unpooling run first, as the unfused ops (the same bits; the output gradient is built whole)."""
    n, c, h, w_in = x.shape
    c_out = w.shape[0]
    if indices is not None:
        dy = _unpooled_gradient(dy, y, activation, indices, n, c_out, oh, ow)
    dy = np.ascontiguousarray(dy)
    cp, kp, th, tw, band, group = _winograd_blocking(c, c_out, oh, ow, x.itemsize)
    if 16 * cp * kp * x.itemsize >= _WINOGRAD_PLANES_DU_BYTES:
        du_parts, db_parts = _weight_grad_by_planes(x, dy, padding, oh, ow, cp, kp, th, tw)
    else:
        du_parts, db_parts = _weight_grad_by_parts(x, dy, padding, oh, ow, cp, kp, th, tw, band, group)
    if input_grad:
        flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        _forward_by_winograd(dy, flipped, None, tuple(2 - p for p in padding), h, w_in, ACTIVATIONS[None], _NO_POOL,
                             dx.reshape(n, c, h * w_in), np.empty((0, 0, 0, 0), x.dtype),
                             np.empty((0, 0, 0, 0), np.int64))
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN here send the caller to the direct kernel
        return weight_grad_transformed(du_parts, c, c_out), db_parts.reshape(-1, c_out).sum(axis=0).astype(x.dtype)


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


@njit(parallel=True, nogil=True, cache=True)
def _channel_sums(dy, db):
    """db[o] = the sum of dy[:, o] (N, C, P) in float64 (_sum of each plane), sample after sample."""
    for o in prange(dy.shape[1]):
        total = 0.0
        for n in range(dy.shape[0]):
            total += _sum(dy[n, o])
        db[o] = total


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


def conv2d_backward(dy, x, w, stride, padding, dilation, groups, bias, input_grad, algorithm):
    return _conv2d_backward(dy, None, None, None, x, w, stride, padding, dilation, groups, bias, input_grad,
                            algorithm)


def _unpooled_gradient(dy, y, activation, indices, n, c_out, oh, ow):
    """The convolution's output gradient (n, c_out, oh, ow) from the pooled one: the activation's
    backward at the pooled outputs y, then max_pool2d_backward's scatter (the unfused ops)."""
    if activation is not None:
        dy = relu_backward(dy, y) if activation == "relu" else sigmoid_backward(dy, y)
    return max_pool2d_backward(dy, indices, PoolGeometry(n, c_out, oh, ow, dy.shape[2], dy.shape[3]))


def conv2d_max_pool2d_backward(dy, y, indices, x, w, stride, padding, dilation, groups, activation, bias, input_grad,
                               algorithm):
    """conv2d_backward of max_pool2d_backward(activation's backward(dy, y), indices, <the
    convolution's output shape>), fused for stride 1: the full-size gradient is only ever built one
    sample at a time, in cache (except for the layers the Winograd backward or the 1x1 one by the
    linear layer takes, which build it whole by those ops and then run conv2d_backward's own path:
    its bits)."""
    if stride != (1, 1):  # no fused kernel for this case: the ops one after another
        oh, ow = _output_size(x, w, stride, padding, dilation)
        dz = _unpooled_gradient(dy, y, activation, indices, x.shape[0], w.shape[0], oh, ow)
        return conv2d_backward(dz, x, w, stride, padding, dilation, groups, bias, input_grad, algorithm)
    return _conv2d_backward(dy, y, activation, indices, x, w, stride, padding, dilation, groups, bias, input_grad,
                            algorithm)


def _conv2d_backward(dy, y, activation, indices, x, w, stride, padding, dilation, groups, bias, input_grad,
                     algorithm):
    """indices None: dy is the convolution's output gradient; else the pooled one (stride 1 only)."""
    if _backward_is_pointwise(x, w, stride, padding, groups):
        if indices is not None:  # the output gradient whole by the unfused ops, then this path: its bits
            dy = _unpooled_gradient(dy, y, activation, indices, x.shape[0], w.shape[0], x.shape[2], x.shape[3])
        return _backward_pointwise(dy, x, w, bias, input_grad)
    n, c, _, _ = x.shape
    c_out, cg, kh, kw = w.shape
    oh, ow = _output_size(x, w, stride, padding, dilation)
    rows, p = cg * kh * kw, oh * ow
    parts = _parts(n)
    x = np.ascontiguousarray(x)
    from_pool = indices is not None
    dy3 = np.ascontiguousarray(dy).reshape(n, c_out, dy.shape[2] * dy.shape[3])
    indices3 = indices.reshape(dy3.shape) if from_pool else np.empty((0, 0, 0), np.int64)
    y3 = y.reshape(dy3.shape) if y is not None else np.empty((0, 0, 0), x.dtype)
    w2 = np.ascontiguousarray(w).reshape(c_out, rows)
    dx = empty(x.shape if input_grad else (0, 0, 0, 0), x.dtype)
    if _backward_uses_winograd(x, w, stride, padding, dilation, groups, algorithm):
        with single_threaded_blas():
            dw, db = _backward_by_winograd(dy, y, activation, indices, x, w, padding, oh, ow, input_grad, dx)
        if np.isfinite(dw).all():
            return dx if input_grad else None, dw, db if bias else None
        # inf or NaN in dW (inf - inf in the transforms, or an overflow a direct sum avoids): all of
        # it again by the direct kernel below, whose non-finite values are a direct sum's
    with single_threaded_blas():
        if _backward_uses_tiles(x, w, stride, input_grad):
            db_parts, dw_parts = _backward_by_tiles(dy3, from_pool, dy.shape[3], y3, activation, indices3, x, w, padding,
                                                    dilation, groups, oh, ow, parts, input_grad, dx)
        elif stride == (1, 1):
            s = _Wide(x, w, padding, dilation, groups, oh, ow, parts, backward=True)
            grad_parts = np.zeros((parts, groups, 1 + rows, c_out // groups), x.dtype)  # zeros: as dw_parts below
            kernel = _backward_wide_gemm32 if _uses_gemm32(x) else _backward_wide
            for exact_nonfinite in (False, True):
                kernel(dy3, from_pool, y3, ACTIVATIONS[activation], indices3, x, w2, s.wt, groups, kh, kw, dilation[0],
                       dilation[1], padding[0], padding[2], s.hp, s.wp, oh, ow, input_grad, exact_nonfinite, s.block,
                       s.xps, s.dxps, s.cols, s.dcols, s.outs, grad_parts, dx)
                # inf or NaN in dW: again with the discarded columns zeroed (_zero_discarded), whose
                # non-finite values are then a direct sum's; the common case pays one finiteness check
                if exact_nonfinite or np.isfinite(grad_parts).all():
                    break
            db_parts = grad_parts[:, :, 0].reshape(parts, c_out)
            dw_parts = grad_parts[:, :, 1:].transpose(0, 1, 3, 2)  # (parts, groups, C_out/g, R): dW's own layout
        else:
            cols = empty((parts, rows * p), x.dtype)
            dw_parts = np.zeros((parts, c_out, rows), x.dtype)  # zeros: an empty batch has no samples to write them
            db_parts = np.zeros((parts, c_out), x.dtype)
            _backward(dy3, x, w2, groups, kh, kw, stride[0], stride[1], padding[0], padding[2], dilation[0],
                      dilation[1], oh, ow, input_grad, cols, empty(cols.shape, x.dtype), dw_parts, db_parts, dx)
    # (copies of one part: a view would keep its whole scratch buffer out of the cache)
    dw = np.array(dw_parts.sum(axis=0) if parts > 1 else dw_parts[0], order="C").reshape(w.shape)
    db = db_parts.sum(axis=0) if parts > 1 else db_parts[0].copy()
    return dx if input_grad else None, dw, db if bias else None
