"""3x3 stride-1 float32 layers (dilation 1, groups 1) by Winograd's algorithm on AVX-512 or AVX2
hosts (_winograd32.py: the math, the tiles' transforms, the products): the forward by F(4x4, 3x3)
or F(2x2, 3x3) (_winograd_side), dW by F(2x2, 3x3) in parts of the batch or, for many channels,
over dU's planes, and dx as the forward of dy with w flipped. Samples or layers whose results are
not finite go to the direct kernels. Which layers come here: _uses_winograd in __init__.py."""
import numpy as np
from numba import njit, prange

from ..._kernel_abi import ACTIVATIONS
from .._gemm32 import gemm32
from .._memory import empty
from .._stream import prefetch_all
from .._taps32 import transpose16_block
from .._winograd32 import (LANES, grad_tile16, input_tile16, input_tile36, output_tile16, output_tile36, products,
                           tile_rows, weight_grad_transformed, weights_transformed)
from .._activation import RELU as _RELU
from ._direct import _forward_direct
from ._epilogue import _finish_planes
from ._shared import (_FLUSH_POSITIONS, _NO_POOL, _channel_sums, _flush_into, _parts, _settle, _sum, _threads,
                      _unpooled_gradient)


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


# F(4x4)'s GEMMs sum over the input channels in blocks of this many, the blocks' sums added in order.
# One float32 sum over all C, its error multiplied by A^T's entries (up to 8, so 64 in 2-D), went past
# the tests' tolerance on ordinary data: 512 -> 512 channels on 7x7 at 1.11-1.35 of it, and 116 of
# 2091 random layers of 16 to 256 channels (a helper's fuzz). In blocks of 64: 1 of 2252 at 1.01 (48
# and 64 channels); of 32: none of 1296, the worst 0.81 (32 channels, one block). A later fuzz over
# 620 layers with outputs of 3x3 to 16x16 and dx checked too found blocks of 32 at 1.02 of it (dx of
# 64 -> 32 on 4x4, its 32 channels one block), 0.98 and 0.96. In blocks of 16, on 12 draws of each of
# the five worst layers, the largest error fell from 0.44-0.86 of the tolerance to 0.39-0.82 and the
# medians by a third, and the fuzz run that had found the 1.02 (200 layers) came to 0.72 at worst
# (0.62 on another 200 with the AVX2 kernels); the products cost 2-8% more (the tiles add each
# block's sums as they store).
F4_CHANNEL_BLOCK = 16


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
                products(v, u, m, used, rows, cp if side == 2 else F4_CHANNEL_BLOCK)
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
def _weight_grad_winograd(x, dy, pt, pl, oh, ow, band, group, xhs, vs, dyhs, zs, du_parts, du_totals, db_parts):
    """dW and db of the 3x3 stride-1 float32 convolution (groups 1) by Winograd's F(2x2, 3x3) on
    AVX-512 or AVX2 hosts (_winograd32.py has the math), as per-part sums: part j takes the samples
    [j*N/parts, (j+1)*N/parts) (parts and group functions of the shapes alone: the same bits on any
    thread count), `group` at a time (more than one only when band covers a whole image).
    Per sample, in the part's own buffers: xh as _forward_winograd's; then per band of
    `band` tile rows, the group's samples one after another in v (16, T, Cp), the input tiles
    transformed (input_tile16), and z (16, T, Kp), the tiles of dyh transformed (grad_tile16):
    dyh (2*band, 2*TW, Kp) a sample's band of dy (N, C_out, OH, OW) channels-last, zero past OH, OW
    and C_out. Then du_parts[j][xi] += v[xi]^T @ z[xi] over the group's tiles (gemm32): a float32 chain
    over the part's tiles, flushed into du_totals[j] (float64, zeros) every _FLUSH_TILES tiles, and
    du_parts[j] = its total rounded once at the end where one was (_shared.py: why; up to then the bits
    of one chain). db_parts[j] (float64) += each dy plane's sum."""
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
        since, flushed = 0, False  # tiles in du's sums since the last flush; whether total holds any
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
                since += used
                if since >= _FLUSH_TILES:
                    _flush_into(du, du_totals[part])
                    since, flushed = 0, True
        if flushed:
            _settle(du, du_totals[part])


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _weight_grad_winograd_planes(x, dy, pt, pl, oh, ow, pieces, starts, tiles, xhs, dyhs, v, z, du, du_total):
    """dW as _weight_grad_winograd, for layers with many channels: one dU, the threads split
    over its 16 planes xi rather than over the samples. The work comes in passes, each a run of
    pieces (pieces[i] = (sample, first tile row, end tile row, first tile in the pass's v and z);
    pass p the pieces starts[p] .. starts[p + 1] - 1, tiles[p] tiles), in two parallel steps:
    - each piece in its own slot: xh (2*band + 2, 2*TW + 2, Cp) its rows of the zero-padded sample,
      dyh (2*band, 2*TW, Kp) its rows of dy, channels last, zero past OH, OW and C_out; their tiles
      transformed into v (16, T, Cp) and z (16, T, Kp) (input_tile16, grad_tile16);
    - each plane: du[xi] (+)= v[xi]^T @ z[xi] over the pass's tiles (gemm32, beta 0 on the first).
    gemm32 adds each tile's products into du in order, so the bits do not depend on the passes or
    the thread count; but for du_total (float64, du's shape, or empty where the caller spared its
    memory): after every _FLUSH_TILES tiles (at a pass's end) du goes into it, and du is its total
    rounded once at the end (_shared.py: why), the flushes at passes fixed by the shapes alone."""
    cp, kp = v.shape[2], z.shape[2]
    wx, wy, t_max = xhs.shape[2], dyhs.shape[2], v.shape[1]
    tw = (ow + 1) // 2
    v_flat, z_flat = v.reshape(-1), z.reshape(-1)
    if starts.size == 1:  # no samples
        du[:] = 0
    since, flushed = 0, False  # tiles in du's sums since the last flush; whether du_total holds any
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
        since += tiles[p]
        flush = du_total.size > 0 and since >= _FLUSH_TILES
        for xi in prange(16):
            gemm32(v[xi, :tiles[p]], z[xi, :tiles[p]], du[xi], 1.0 if p > 0 else 0.0, True, False)
            if flush:
                _flush_into(du[xi:xi + 1], du_total[xi:xi + 1])
        if flush:
            since, flushed = 0, True
    if flushed:
        for xi in prange(16):
            _settle(du[xi:xi + 1], du_total[xi:xi + 1])


# A part's dU sums go into float64 after this many tiles (4 output positions each: _shared._FLUSH_POSITIONS).
_FLUSH_TILES = _FLUSH_POSITIONS // 4
_PLANES_TOTAL_BYTES = 64 << 20


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
# and columns past them, and its tiles, 4x fewer, make shorter GEMMs; its 36 planes of U cost twice
# F(2x2)'s to transform, and its sums in blocks of F4_CHANNEL_BLOCK channels (for accuracy) an add per
# block (added by the GEMM tiles as they store: _winograd32.products). Zen 4, 2 threads, F(2x2)'s
# time over F(4x4)'s, forward / backward (dx by the same forward, dW by F(2x2) in both), medians of 21
# paired calls in one process (quartiles within +-0.05): 512 -> 512 channels on 7x7 1.16 / 1.07; 64 on
# 7x7 1.50 / 1.15; 256 on 8x8 1.12 / 1.06; 16 -> 32 on 8x8 (batch 32) 1.03 / 1.05; 64 on 4x4 (batch
# 128) 1.30 / 1.12; on 3x3 1.21 / 1.01; 32 on 28x28 1.38 / 1.13; 128 on 11x11 0.99 / 0.98; 256 on
# 14x14 1.03 / 1.01; conv2's 32 -> 64 on 14x14 0.87 / 0.99. So F(4x4) where its products are at most
# _WINOGRAD4_PRODUCTS of F(2x2)'s (sides that are multiples of 4 or one short of one: 0.56; 14x14:
# 0.73, 5x5 and 6x6: 1), over at least _WINOGRAD4_TILES tiles in the batch (a one-tile sample in a
# batch of 32 was 0.75 before the blocks' adds moved into the tiles). A function of the shapes alone,
# as the bits depend on it.
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
    # float64 totals where the sums run past _FLUSH_TILES tiles, unless they would take more than
    # _PLANES_TOTAL_BYTES (2048 channels: 512 MiB; those layers' images are small, their chains short)
    spared = tiles.sum() <= _FLUSH_TILES or 16 * cp * kp * 8 > _PLANES_TOTAL_BYTES
    du_total = np.zeros((0, 0, 0) if spared else (16, cp, kp))
    _weight_grad_winograd_planes(x, dy, padding[0], padding[2], oh, ow, pieces, starts, tiles,
                                 empty((slots, 2 * band + 2, 2 * tw + 2, cp), x.dtype),
                                 empty((slots, 2 * band, 2 * tw, kp), x.dtype), empty((16, t_max, cp), x.dtype),
                                 empty((16, t_max, kp), x.dtype), du[0], du_total)
    _channel_sums(dy.reshape(dy.shape[0], dy.shape[1], -1), db)
    return du, db


def _weight_grad_by_parts(x, dy, padding, oh, ow, cp, kp, th, tw, band, group):
    """(dU as (parts, 16, Cp, Kp), db (parts, C_out) float64) by _weight_grad_winograd."""
    n = x.shape[0]
    parts = _parts(n)
    group = max(1, min(group, -(-n // parts)))  # no larger than a part (the same groups)
    scratch = lambda *shape: empty((parts, *shape), x.dtype)  # noqa: E731
    du_parts, db_parts = scratch(16, cp, kp), np.empty((parts, dy.shape[1]))
    du_totals = np.zeros(du_parts.shape)  # (calloc's: pages touched only by a part that flushes)
    _weight_grad_winograd(x, dy, padding[0], padding[2], oh, ow, band, group, scratch(2 * th + 2, 2 * tw + 2, cp),
                          scratch(16, group * band * tw, cp), scratch(2 * band, 2 * tw, kp),
                          scratch(16, group * band * tw, kp), du_parts, du_totals, db_parts)
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
