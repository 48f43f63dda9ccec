"""Stride 1 on the "wide" layout (see below): the forward and backward by shifted GEMMs (OpenBLAS's,
or gemm32 for float32), and what the AVX-512 tiles (_taps.py) share with them: the padded sample,
the output gradient on the wide grid, and the geometry and per-thread scratch (_Wide)."""
import numpy as np
from numba import njit, prange

from ..._kernel_abi import ACTIVATIONS
from .._blas import gemm
from .._gemm32 import gemm32
from .._memory import empty
from .._taps32 import NR
from .._vecmath import copy_rows16
from .._activation import ONE as _ONE, RELU as _RELU, SIGMOID as _SIGMOID, ZERO as _ZERO, relu_grad as _relu_grad
from ._epilogue import _bias_activate, _pool_plane
from ._shared import _block_rows, _flush_before_sample, _flush_into, _taps_first, _threads, _uses_gemm32


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
def _backward_wide_body(gemm, dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, wp, oh, ow,
                        input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, totals,
                        dx):
    """Stride-1 backward, its products by `gemm` (see _backward_wide): dx (when input_grad); thread
    t's share of (db, dW^T) in totals[t] (groups, 1 + R, C_out/g; float64): row 0 is db, rows 1.. dW^T,
    its float32 sums in grad_parts[t] flushed there every _FLUSH_POSITIONS output positions (a large
    sample's rows in blocks of that many: _shared.py says why).

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
    block_rows = _block_rows(ow)
    for t in prange(threads):
        xp, dxp = xps[t], dxps[t]
        xp[:] = 0
        dyw = dyws[t, :cog * length].reshape(cog, length)
        dyw[:] = 0  # the discarded columns stay 0, so they add nothing to dW, db or dx
        col, dcol = cols[t].reshape(-1, length), dcols[t].reshape(-1, length)
        col[0] = 1  # the ones row: (col @ dy^T)[0] = db
        grad_parts[t] = 0
        totals[t] = 0
        since = 0  # output positions in grad_parts[t]'s sums since they were last flushed into totals[t]
        wide = _wide_positions(oh * ow if from_pool else 0, ow, wp)
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            since = _flush_before_sample(grad_parts[t], totals[t], since, oh * ow, block_rows < oh)
            for g in range(groups):
                _gather_output_grad(dy, from_pool, y, act, indices, wide, n, g * cog, oh, ow, wp, dyw)
                _pad(x, n, g * cg, cg, pt, pl, wp, xp)
                for c0 in range(0, cg, block):
                    c1 = min(cg, c0 + block)
                    _copy_taps(xp[c0:c1], kh, kw, dh, dw, wp, col[1:1 + (c1 - c0) * taps])
                    if exact_nonfinite:
                        _zero_discarded(xp[c0:c1], kh, kw, wp, ow, col[1:1 + (c1 - c0) * taps])
                    lo = 0 if c0 == 0 else 1 + c0 * taps  # (the first block with the ones row)
                    for a0 in range(0, oh, block_rows):  # the output's rows in blocks of <= _FLUSH_POSITIONS
                        k0, k1 = a0 * wp, min(oh, a0 + block_rows) * wp
                        gemm(col[lo - c0 * taps:1 + (c1 - c0) * taps, k0:k1], dyw[:, k0:k1],
                             grad_parts[t, g, lo:1 + c1 * taps], 1.0, False, True)
                        if block_rows < oh:
                            rows = slice(lo, 1 + c1 * taps)
                            _flush_into(grad_parts[t, g:g + 1, rows], totals[t, g:g + 1, rows])
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
        _flush_into(grad_parts[t], totals[t])


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
def _backward_wide(dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, wp, oh, ow,
                   input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, totals, dx):
    _backward_wide_body(gemm, dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, wp, oh,
                        ow, input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, totals, dx)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_wide_gemm32(x, w2, wt, b, has_bias, act, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow, pool, xps, cols,
                         yws, y, pooled, indices):
    _forward_wide_body(gemm32, True, x, w2, wt, b, has_bias, act, groups, kh, kw, dh, dw, pt, pl, hp, wp, oh, ow, pool,
                       xps, cols, yws, y, pooled, indices)


@njit(parallel=True, nogil=True, cache=True)
def _backward_wide_gemm32(dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, wp, oh, ow,
                          input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, totals, dx):
    _backward_wide_body(gemm32, dy, from_pool, y, act, indices, x, w2, wt, groups, kh, kw, dh, dw, pt, pl, wp,
                        oh, ow, input_grad, exact_nonfinite, block, xps, dxps, cols, dcols, dyws, grad_parts, totals,
                        dx)


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


def _forward_by_wide(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices):
    """y, or pooled and indices, by _forward_wide (_forward_wide_gemm32 for float32 with gemm32)."""
    c_out, cg, kh, kw = w.shape
    s = _Wide(x, w, padding, dilation, groups, oh, ow, _threads(x.shape[0]), backward=False)
    kernel = _forward_wide_gemm32 if _uses_gemm32(x) else _forward_wide
    kernel(x, np.ascontiguousarray(w).reshape(c_out, cg * kh * kw), s.wt, b if b is not None else np.empty(0, x.dtype),
           b is not None, act, groups, kh, kw, dilation[0], dilation[1], padding[0], padding[2], s.hp, s.wp, oh, ow,
           window, s.xps, s.cols, s.outs, y, pooled, indices)


def _backward_by_wide(dy3, from_pool, y3, activation, indices3, x, w, w2, padding, dilation, groups, oh, ow, parts,
                      input_grad, dx):
    """_backward_wide's (_backward_wide_gemm32's for float32 with gemm32) buffers, and its second run
    where dW is not finite; (db_parts, dw_parts) as _conv2d_backward's."""
    c_out, cg, kh, kw = w.shape
    rows = cg * kh * kw
    s = _Wide(x, w, padding, dilation, groups, oh, ow, parts, backward=True)
    # zeros: as _backward_by_im2col's dw_parts
    grad_parts = np.zeros((parts, groups, 1 + rows, c_out // groups), x.dtype)
    totals = np.zeros(grad_parts.shape)
    kernel = _backward_wide_gemm32 if _uses_gemm32(x) else _backward_wide
    for exact_nonfinite in (False, True):
        kernel(dy3, from_pool, y3, ACTIVATIONS[activation], indices3, x, w2, s.wt, groups, kh, kw, dilation[0],
               dilation[1], padding[0], padding[2], s.wp, oh, ow, input_grad, exact_nonfinite, s.block,
               s.xps, s.dxps, s.cols, s.dcols, s.outs, grad_parts, totals, dx)
        # inf or NaN in dW: again with the discarded columns zeroed (_zero_discarded), whose
        # non-finite values are then a direct sum's; the common case pays one finiteness check
        if exact_nonfinite or np.isfinite(totals).all():
            break
    db_parts = totals[:, :, 0].reshape(parts, c_out)
    dw_parts = totals[:, :, 1:].transpose(0, 1, 3, 2)  # (parts, groups, C_out/g, R): dW's own layout
    return db_parts, dw_parts
