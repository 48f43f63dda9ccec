"""The forward of strided float32 layers over the input's phases (see below), no im2col: their
geometry (_Phases), used by the AVX-512 register tiles too (_taps._forward_by_taps), and on other
hosts, for layers with 8 or more input channels a group, one gemm32 product per tap
(_forward_phases)."""
import numpy as np
from numba import njit, prange

from .._gemm32 import gemm32
from .._memory import empty
from .._activation import ZERO as _ZERO
from ._epilogue import _bias_activate
from ._shared import _taps_first, _threads, _uses_gemm32
from ._wide import _MIN_CHANNELS_FOR_SHIFTED_GEMMS


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


def _uses_phases(x, w, groups):
    """A strided layer's products by phases (_forward_phases, on hosts without AVX-512: with it,
    every strided float32 forward takes _forward_by_taps): float32 with gemm32, and at least
    _MIN_CHANNELS_FOR_SHIFTED_GEMMS input channels a group (each tap's GEMM has that K)."""
    return _uses_gemm32(x) and w.shape[1] >= _MIN_CHANNELS_FOR_SHIFTED_GEMMS


class _Phases:
    """A strided layer's phase geometry and per-thread scratch: wq, the phases' row length (the wide
    grid's); slots[phase] = where phase (r, q) = r * sw + q sits in a thread's buffer, -1 for those no
    tap reads; xps (threads, phases read, C_in/g, row), a row being a phase's plane (hq rows of wq,
    and the last tap's column shift past them: the discarded columns' reads) and `pad` floats more;
    shifts[tap] = where a tap's reads start in a thread's buffer as (phases read * C_in/g) rows: its
    phase's first row plus its shift in the phase."""

    def __init__(self, x, w, stride, padding, dilation, threads, pad=0):
        c_out, cg, kh, kw = w.shape
        (sh, sw), (dh, dw) = stride, dilation
        hq = -(-(x.shape[2] + padding[0] + padding[1]) // sh)
        self.wq = -(-(x.shape[3] + padding[2] + padding[3]) // sw)
        taps = [(i * dh, j * dw) for i in range(kh) for j in range(kw)]  # each tap's offset in the padded sample
        phase = [i % sh * sw + j % sw for i, j in taps]
        read = sorted(set(phase))
        self.slots = np.full(sh * sw, -1, np.int64)
        self.slots[read] = np.arange(len(read))
        row = hq * self.wq + (kw - 1) * dw // sw + pad
        self.xps = empty((threads, len(read), cg, row), x.dtype)
        self.shifts = np.array([self.slots[p] * cg * row + i // sh * self.wq + j // sw
                                for p, (i, j) in zip(phase, taps)], np.int64)


def _forward_by_phases(x, w, b, stride, padding, dilation, groups, oh, ow, act, y):
    c_out, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    threads = _threads(x.shape[0])
    s = _Phases(x, w, stride, padding, dilation, threads)
    _forward_phases(x, _taps_first(w), b if b is not None else np.empty(0, x.dtype), b is not None, act, groups, kh,
                    kw, sh, sw, dh, dw, padding[0], padding[2], s.wq, oh, ow, s.slots, s.xps,
                    empty((threads, c_out // groups * oh * s.wq), x.dtype), y)
