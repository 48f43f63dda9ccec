"""Per-sample im2col GEMMs (__init__.py has the math): the forward of strided layers the phases do
not take (fewer than 8 input channels a group, or no gemm32), and the backward of strides other
than 1. Each Numba thread owns a contiguous block of samples, its column matrix in its own buffer."""
import numpy as np
from numba import njit, prange

from .._blas import gemm
from .._gemm32 import gemm32, gemm32_in_blocks
from .._memory import empty
from .._activation import ZERO as _ZERO
from ._epilogue import _bias_activate
from ._shared import _FLUSH_POSITIONS, _sum, _threads, _uses_gemm32, _uses_tiles


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


@njit(inline="always")
def _backward_body(weight_grad, input_grad_columns, dy, x, w2, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow,
                   input_grad, cols, dcols, dw_parts, db_parts, scratch, dx):
    """dx (when input_grad); dw_parts[t] / db_parts[t] = thread t's share of dW (C_out, R) / db (C_out,).
    Per sample and group: weight_grad(dy_g, col, dw_g, scratch_t) adds dy_g @ col^T into dw_g, and
    input_grad_columns(w_g, dy_g, dcol) sets dcol = w_g^T @ dy_g, which _col2im scatters into dx."""
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
                _im2col(x, n, g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, col)
                weight_grad(dy_g, col, dw_t[g * cog:(g + 1) * cog], scratch[t])
                if input_grad:
                    input_grad_columns(w2[g * cog:(g + 1) * cog], dy_g, dcol)
                    _col2im(dcol, n, g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, dx)


@njit(inline="always")
def _weight_grad_blas(dy_g, col, dw_g, scratch):
    gemm(dy_g, col, dw_g, 1.0, False, True)  # (OpenBLAS blocks K, the positions, itself)


@njit(inline="always")
def _input_grad_columns_blas(w_g, dy_g, dcol):
    gemm(w_g, dy_g, dcol, 0.0, True, False)


@njit(inline="always")
def _weight_grad_gemm32(dy_g, col, dw_g, scratch):
    """dw_g += dy_g @ col^T by gemm32_blocked: products over at most _FLUSH_POSITIONS positions (one
    float32 chain each) and scratch's rows of dw_g (_SCRATCH_ROWS) at a time, each added into dw_g
    in float32, as OpenBLAS adds its blocks of K."""
    p, rows = col.shape[1], scratch.shape[0]
    for r0 in range(0, dw_g.shape[0], rows):
        r1 = min(dw_g.shape[0], r0 + rows)
        part = scratch[:r1 - r0, :dw_g.shape[1]]
        for p0 in range(0, p, _FLUSH_POSITIONS):
            p1 = min(p, p0 + _FLUSH_POSITIONS)
            gemm32_in_blocks(dy_g[r0:r1, p0:p1], col[:, p0:p1], part, 0.0, False, True)
            for i in range(r1 - r0):
                for j in range(dw_g.shape[1]):
                    dw_g[r0 + i, j] += part[i, j]


# _weight_grad_gemm32's scratch rows: a part's products for at most this many output channels at a
# time (whole groups up to 128 channels; a 512-channel layer's scratch a quarter of its dW part).
_SCRATCH_ROWS = 128


@njit(inline="always")
def _input_grad_columns_gemm32(w_g, dy_g, dcol):
    gemm32_in_blocks(w_g, dy_g, dcol, 0.0, True, False)


@njit(parallel=True, nogil=True, cache=True)
def _backward(dy, x, w2, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, input_grad, cols, dcols, dw_parts, db_parts,
              scratch, dx):
    _backward_body(_weight_grad_blas, _input_grad_columns_blas, dy, x, w2, groups, kh, kw, sh, sw, pt, pl, dh, dw,
                   oh, ow, input_grad, cols, dcols, dw_parts, db_parts, scratch, dx)


@njit(parallel=True, nogil=True, cache=True)
def _backward_gemm32(dy, x, w2, groups, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, input_grad, cols, dcols, dw_parts,
                     db_parts, scratch, dx):
    _backward_body(_weight_grad_gemm32, _input_grad_columns_gemm32, dy, x, w2, groups, kh, kw, sh, sw, pt, pl, dh,
                   dw, oh, ow, input_grad, cols, dcols, dw_parts, db_parts, scratch, dx)


def _forward_by_im2col(x, w, b, stride, padding, dilation, groups, oh, ow, act, y):
    """y by _forward (_forward_gemm32 for float32 with gemm32), b added by the product."""
    c_out, cg, kh, kw = w.shape
    w2 = np.ascontiguousarray(w).reshape(c_out, cg * kh * kw)
    kernel = _forward_gemm32 if _uses_gemm32(x) else _forward
    # b is added by the product (as the last k), with an activation or without: the same bits
    w2b = np.concatenate([w2, b.reshape(c_out, 1)], axis=1) if b is not None else w2
    kernel(x, w2b, act, groups, kh, kw, stride[0], stride[1], padding[0], padding[2],
           dilation[0], dilation[1], oh, ow, empty((_threads(x.shape[0]), w2b.shape[1] * oh * ow), x.dtype), y)


def _backward_by_im2col(dy3, x, w, w2, stride, padding, dilation, groups, oh, ow, parts, input_grad, dx):
    """_backward's buffers (_backward_gemm32's where _backward_uses_gemm32); (db_parts, dw_parts) as
    _conv2d_backward's."""
    c_out, cg, kh, kw = w.shape
    rows, p = cg * kh * kw, oh * ow
    cols = empty((parts, rows * p), x.dtype)
    dw_parts = np.zeros((parts, c_out, rows), x.dtype)  # zeros: an empty batch has no samples to write them
    db_parts = np.zeros((parts, c_out), x.dtype)
    own = _backward_uses_gemm32(x, w, groups, p)
    scratch = empty((parts, min(c_out // groups, _SCRATCH_ROWS), rows) if own else (parts, 0, 0), x.dtype)
    (_backward_gemm32 if own else _backward)(dy3, x, w2, groups, kh, kw, stride[0], stride[1], padding[0], padding[2],
                                             dilation[0], dilation[1], oh, ow, input_grad, cols,
                                             empty(cols.shape, x.dtype), dw_parts, db_parts, scratch, dx)
    return db_parts, dw_parts


def _backward_uses_gemm32(x, w, groups, positions):
    """The products by gemm32_blocked: float32 on AVX-512 hosts (the register tiles' hosts; OpenBLAS's
    AVX2 kernels elsewhere), for groups of at least a register tile's rows of output channels (8) and
    products of at least 2^16 multiply-adds: gemm32_blocked's packing and edge buffers cost more than
    OpenBLAS's calls on tiny ones (Zen 5, ms, OpenBLAS -> gemm32_blocked: a depthwise 512-channel 14x14
    layer 3.7 -> 4.1, 4x16->16 9x9 stride 3 0.04 -> 0.06; a 16x128->128 56x56 layer 15 -> 10)."""
    c_out, cg, kh, kw = w.shape
    cog = c_out // groups
    return _uses_tiles(x) and cog >= 8 and cog * cg * kh * kw * positions >= 1 << 16
