"""float32 layers on AVX-512 hosts by _taps32's register tiles, which sum every tap in registers:
the forward (_forward_taps_avx512, its tile chosen by _forward_tile; stride 1 on the padded sample,
other strides on its phases, _phases.py) and the stride-1 backward (_backward_taps_avx512: dW by
gemm32 over the padded sample's shifted rows, dx by channels_tile).

A strided layer's tap (i, j) reads one phase of the padded sample at a constant shift (see
_phases.py), so with the phases one after another in a thread's buffer each tap is again one shift
along it, and the tiles run unchanged on the phases' wide grid. Against the gemm32 product per tap
(the same sums, the same bits), Zen 4, 2 threads, alternating process pairs: 128 -> 128 on 56x56,
stride 2 (batch 16) 139-156 -> 171-179 GFLOP/s; in one process, 64 -> 128 on 28x28 (batch 32)
114 -> 148, 256 -> 256 on 28x28 151 -> 179. With few input channels (im2col before): a 7x7 stem, 3
-> 64 on 224x224 (batch 8) 89 -> 204 (PyTorch 69), 4 -> 32 3x3 on 64x64 (batch 32) 61 -> 108."""
import numpy as np
from numba import njit, prange

from ..._kernel_abi import ACTIVATIONS
from .._gemm32 import gemm32, gemm32_runs
from .._memory import empty
from .._pool32 import unpool_2x2_plane
from .._stream import prefetch_all
from .._taps32 import CR, CW, MR, NR, RR, channels_tile, row_tile, taps_tile, transpose16_block
from .._vecmath import copy_rows16
from .._activation import RELU as _RELU
from ._epilogue import _finish_planes
from ._phases import _Phases, _split_phases
from ._shared import _block_rows, _flush_before_sample, _flush_into, _taps_first, _threads, _uses_tiles
from ._wide import _MIN_CHANNELS_FOR_SHIFTED_GEMMS, _Wide, _gather_output_grad, _pad_avx512, _wide_positions


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


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_taps_avx512(x, wt, b, wc, bc, tile, act, groups, pt, pl, wp, sh, sw, slots, oh, ow, pool, xps, shifts, yws,
                         y, pooled, indices):
    """float32 forward on AVX-512 hosts by one of _taps32's register tiles, which sum every tap in
    registers and add the bias and ReLU before their one store: no per-tap products and no pass over
    y for them. Stride 1 (sh = sw = 1) on the padded sample; else on its phases (slots, and wp the
    phases' wq, as _phases._Phases's; no pooling). `tile` (_forward_tile's choice): _TAPS_TILE,
    taps_tile (8 channels x 32 wide-grid positions; wt: w as (kh*kw, C_out, C_in/g), b: C_out
    values, zeros without a bias); _CHANNELS_TILE, channels_tile (32 channels x 14 positions of a
    row; wc: w as (groups, blocks, kh*kw, C_in/g, 32), each group's C_out/g channels in blocks of
    32, zero-padded, so a block's (tap, channel) rows follow one another (2% faster in cache than
    rows at C_out's stride); bc: b so padded, as (groups, blocks * 32)); _ROW_TILE, row_tile (16
    channels x 16 positions of a row, wc and bc as channels_tile's). y (N, C_out, OH*OW) gets the
    output; with a pooling (pool as in _forward_wide) each group's planes go to the thread's yws
    instead (wide or compact, as the tile writes them), are pooled into pooled / indices, and y is
    not written. shifts: each tap's offset along the padded sample (or its phases); xps as _Wide's (or
    _Phases's, its rows the phases' channels one after another)."""
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
                if sh == 1 and sw == 1:
                    _pad_avx512(x, n, g * cg, cg, pt, pl, wp, xp)
                else:  # the sample's phases, one after another (_phases._Phases)
                    _split_phases(x, n, g * cg, cg, pt, pl, sh, sw, wp, slots, xp.reshape(-1, cg, xp.shape[1]))
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


@njit(parallel=True, nogil=True, cache=True)
def _backward_taps_avx512(dy, from_pool, pooled_w, y, act, indices, x, wd, zeros, groups, pt, pl, wp, oh, ow, margin,
                          shifts, dx_shifts, input_grad, xps, dyps, dyts, cols, grad_parts, totals, dx):
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
      C_out/g): row 0 db, row 1 + tap * C_in/g + c dW[:, c, tap], float32 sums flushed into the
      task's float64 totals[task] every _FLUSH_POSITIONS output positions (a large sample's rows in
      blocks of that many: _shared.py says why);
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
    block_rows = _block_rows(ow)
    for t in prange(threads):
        xp, dyp, dyt, col = xps[t], dyps[t], dyts[t], cols[t]
        xp[:] = 0
        col[:] = 0  # the rows past taps * C_in/g stay 0
        dyp[:] = 0  # margins and the wide grid's extra columns stay 0: they add nothing
        dyw = dyp[:, margin:margin + length]
        dyp_flat, dyt_flat = dyp.reshape(-1), dyt.reshape(-1)
        ld = dyp.shape[1]
        grad_parts[t] = 0
        totals[t] = 0
        since = 0  # output positions in grad_parts[t]'s sums since they were last flushed into totals[t]
        wide = _wide_positions(oh * ow if from_pool else 0, ow, wp)
        for n in range(t * n_img // threads, (t + 1) * n_img // threads):
            since = _flush_before_sample(grad_parts[t], totals[t], since, oh * ow, block_rows < oh)
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
                _pad_avx512(x, n, g * cg, cg, pt, pl, wp, xp)
                if copied:  # the tap rows' output positions copied, one product over whole 8-row tiles
                    for tap in range(taps):
                        s = shifts[tap]
                        for cc in range(cg):
                            copy_rows16(xp[cc], s, wp, col[tap * cg + cc], 0, ow, oh, ow)
                for a0 in range(0, oh, block_rows):  # the output's rows in blocks of <= _FLUSH_POSITIONS
                    a1 = min(oh, a0 + block_rows)
                    q0, q1 = a0 * ow, a1 * ow
                    for q in range(q0, q1):  # db in position order, vectorized over the channels
                        row = dyt[q]
                        for o in range(cog):
                            db[o] += row[o]
                    if copied:
                        gemm32(col[:, q0:q1], dyt[q0:q1], grad_parts[t, g, 1:1 + col.shape[0]], 1.0, False, False)
                    else:  # the tap's rows read in place, the output's runs of ow every wp columns
                        for tap in range(taps):
                            s = shifts[tap] + a0 * wp
                            gemm32_runs(xp[:, s:s + (a1 - a0) * wp], dyt[q0:q1],
                                        grad_parts[t, g, 1 + tap * cg:1 + (tap + 1) * cg], 1.0, ow, wp)
                    if block_rows < oh:  # (this group's rows: the others' are flushed after their own blocks)
                        _flush_into(grad_parts[t, g:g + 1], totals[t, g:g + 1])
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
        _flush_into(grad_parts[t], totals[t])


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


def _forward_by_taps(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices, stride=(1, 1)):
    """y, or pooled and indices (stride 1 only), by _forward_taps_avx512 (float32, AVX-512)."""
    c_out, cg, kh, kw = w.shape
    threads = _threads(x.shape[0])
    if stride == (1, 1):
        s = _Wide(x, w, padding, dilation, groups, oh, ow, threads, backward=False)
        wp, slots, xps, shifts, yws = s.wp, np.zeros(1, np.int64), s.xps, _tap_shifts(kh, kw, dilation, s.wp), s.outs
        wt = s.wt
    else:  # the same sums over the input's phases (_phases.py): the wide grid is theirs, each tap at its shift
        s = _Phases(x, w, stride, padding, dilation, threads, pad=NR)  # the tiles read up to NR - 1 past a row
        wp, slots, xps, shifts = s.wq, s.slots, s.xps.reshape(threads, -1, s.xps.shape[3]), s.shifts
        yws = np.empty((threads, 0), x.dtype)  # (no pooling)
        wt = _taps_first(w)
    b_flat = np.ascontiguousarray(b) if b is not None else np.zeros(c_out, x.dtype)
    cog = c_out // groups
    wc, bc = np.empty((0, 0, 0, 0), x.dtype), np.empty((0, 0), x.dtype)
    tile = _forward_tile(cg, cog, oh, ow, wp)
    if tile != _TAPS_TILE:
        blocks = -(-cog // CW)
        padded = np.zeros((groups, blocks * CW, cg, kh * kw), x.dtype)
        padded[:, :cog] = w.reshape(groups, cog, cg, kh * kw)
        wc = np.ascontiguousarray(padded.reshape(groups, blocks, CW, cg, kh * kw).transpose(0, 1, 4, 3, 2))
        bc = np.zeros((groups, blocks * CW), x.dtype)
        bc[:, :cog] = b_flat.reshape(groups, cog)
    _forward_taps_avx512(x, wt, b_flat, wc, bc, tile, act, groups, padding[0], padding[2], wp, stride[0], stride[1],
                         slots, oh, ow, window, xps, shifts, yws, y, pooled, indices)


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
    totals = empty(grad_parts.shape, np.float64)
    blocks = -(-cg // CW)
    padded = np.zeros((groups, cog, blocks * CW, taps), x.dtype)
    padded[:, :, :cg] = w.reshape(groups, cog, cg, taps)
    wd = np.ascontiguousarray(padded.reshape(groups, cog, blocks, CW, taps).transpose(0, 2, 4, 1, 3))
    _backward_taps_avx512(dy3, from_pool, pooled_w, y3, ACTIVATIONS[activation], indices3, x, wd, np.zeros(CW, x.dtype),
                          groups, padding[0], padding[2], wp, oh, ow, margin, shifts, margin - shifts, input_grad, xps,
                          dyps, dyts, cols, grad_parts, totals, dx.reshape(dx.shape[0], int(np.prod(dx.shape[1:]))))
    db_parts = totals[:, :, 0].reshape(parts, c_out)
    dw_parts = totals[:, :, 1:1 + rows].reshape(parts, groups, taps, cg, cog).transpose(0, 1, 4, 3, 2)
    return db_parts, dw_parts.reshape(parts, groups, cog, cg * taps)
