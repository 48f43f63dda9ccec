"""Winograd's minimal filtering F(2x2, 3x3) and F(4x4, 3x3) for the stride-1 3x3 convolution in float32
(AVX-512 or AVX2): the transforms of one tile, 16 channels at a time (channels in the lanes), and of
the weights, for the forward and, F(2x2) only, for the weight gradient (below; dx is the forward of
the output gradient).

Each 2x2 block of outputs Y (at output row 2ty, column 2tx) needs the 4x4 patch d_c of the padded
input starting there, in every input channel c. With

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

the correlation of d_c with the 3x3 kernel g_kc of output channel k is A^T [(G g_kc G^T) . (B^T d_c B)] A
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2015; '.' elementwise).
Summed over c, for each of the 16 positions xi of the 4x4 transformed tile:

    V[xi][p, c] = (B^T d_{p,c} B)[xi]                    input_tile16, per tile p
    U[xi][c, k] = (G g_kc G^T)[xi]                       weights_transformed, once per call
    M[xi]       = V[xi] @ U[xi]                          16 GEMMs, (tiles x C) @ (C x K)
    Y_{p,k}     = A^T M_{p,k} A  (+ bias, activation)    output_tile16, per tile p

4 outputs cost 16 multiply-adds per (c, k) instead of the direct 36: 2.25x fewer, for additions
in the transforms that are linear in C + K rather than in C * K.

F(4x4, 3x3) is the same with 4x4 output blocks from 6x6 patches: 36 positions xi (input_tile36,
36 GEMMs, output_tile36), 16 outputs for 36 multiply-adds per (c, k), 4x fewer than direct. Its
matrices come from the interpolation points 0, 1, -1, 1/2, -2 and infinity (Toom-Cook):

    B^T = [[1, -3/2, -2, 3/2, 1, 0], [0, -1, 1/2, 5/2, 1, 0], [0, 1, -5/2, 1/2, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 1/2, -1, -1/2, 1, 0], [0, 1, -3/2, -2, 3/2, 1]]
    G   = [[1, 0, 0], [1/3, 1/3, 1/3], [-1/3, 1/3, -1/3], [-16/15, -8/15, -4/15], [1/15, -2/15, 4/15],
           [0, 0, 1]]
    A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 1/2, -2, 0], [0, 1, 1, 1/4, 4, 0], [0, 1, -1, 1/8, -8, 1]]

Lavin's points 0, +-1, +-2 put 4 and 5 in B^T; mixing 2 with 1/2 keeps B^T's entries at 5/2 and
below, and halved the float32 error (below): 512 channels on 7x7, max error against float64 9.6e-6
-> 4.6e-6 of the output scale (a NumPy model of the layer: 1.3e-5 -> 4.6e-6; 0, +-1, +-1/2 was no
better than Lavin's there). conv/_winograd.py's _winograd_side says where the forward takes F(4x4).

Accuracy. An output still depends only on its own 3x3 window: a patch's first column enters only
the left outputs (B^T's and A^T's zeros), its last only the right ones. But the weights reach it
through their transforms (sums like (g0 + g1 + g2) / 2, each rounded once from float64), and the
16 products are added with signs that cancel. So its rounding error is bounded by about
eps * max |x| over its window * the sum of its kernel's |weights| (times small constants), where a
direct sum's is eps * sum |x_i w_i| over the products it adds. The two agree when inputs and
weights are of even size: conv2's layer on normal data, max error against float64 1.2e-6, below
the direct kernel's 2.6e-6 (sums of 32 products per xi against 288). F(4x4)'s larger transform
entries cost more: on normal data 2-4x the direct kernel's error with one sum over the channels
(512 channels on 7x7: 4.6e-6 of the output scale, direct 2.1e-6, F(2x2) 0.7e-6; conv2's layer
2.5x), past the tests' tolerance on some layers; so its products sum in blocks of 16 channels
(products' `block`), which brings it back within (conv/_winograd.py, F4_CHANNEL_BLOCK). They part
where a large input meets a small weight, and then an output's relative error
has no useful bound: inputs of 1 with one of 1e6, weights of 1 with a centre of 1e-6, gave an
output of 136 for 144 (5.6%), the direct kernel's 144 (3.3e-7 at worst); with 16 channels on 8x8
and the 1e6 moved over every position, F(4x4) was up to 2.1% off; an input of 3e38 among values of
1 gave 1.2e-5 against 5e-8. A layer with data like that wants algorithm="direct" (nn.Conv2d, the
conv ops), or a whole process FASTCONV_WINOGRAD=0 (conv/__init__.py): either keeps the direct kernel.

Non-finite values do not survive the transforms as they would a direct sum (an inf input gives
inf - inf = NaN in outputs that the direct sum does not even reach), so output_tile16 reports
whether any output it computed, before the activation, is not finite; the caller recomputes those
samples by the direct kernel. This runs one way only: finite inputs near the float32 limit whose
direct sum overflows (2e38 + 2e38 - 2e38 in that order) can come out finite here.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ._gemm32 import _tile_intrinsic
from ._memory import empty
from ._stream import _stream_line, align_skip, should_stream, store_fence
from ._vecmath import TARGET_AVX512, as_i64, broadcast, vector_at

__all__ = ["input_tile16", "output_tile16", "input_tile36", "output_tile36", "grad_tile16", "products", "tile_rows",
           "weights_transformed", "weight_grad_transformed", "unpacked", "LANES", "TILE_ROWS"]

LANES = 16  # channels per vector: both transforms run on 16 channels at once
_F32 = ir.FloatType()
_V16 = ir.VectorType(_F32, LANES)
_I64 = ir.IntType(64)


@njit(inline="always")
def _g_applied(a0, a1, a2):
    """G applied to a triple (float64): (a0, (a0 + a1 + a2) / 2, (a0 - a1 + a2) / 2, a2)."""
    return a0, 0.5 * (a0 + a1 + a2), 0.5 * (a0 - a1 + a2), a2


@njit(inline="always")
def _gt_applied(d0, d1, d2, d3):
    """G^T applied to a quadruple (float64): (d0 + (d1 + d2) / 2, (d1 - d2) / 2, (d1 + d2) / 2 + d3)."""
    half_sum, half_difference = 0.5 * (d1 + d2), 0.5 * (d1 - d2)
    return d0 + half_sum, half_difference, half_sum + d3


# U's layout: the GEMMs M[xi] = V[xi] @ U[xi] (products, below) take U's columns in strips of
# _WIDTH (their register tile's width; the last strip 16 wide where Kp is not a multiple of it) and
# read a strip's Cp rows in turn. So each plane U[xi] stores its strips one after another, each
# strip's rows contiguous: U[xi][c, k] at j0 * Cp + c * width + (k - j0), j0 the strip's first
# column and width its width. A strip is then one stream through memory, which the hardware
# prefetches: U of 512 channels (16 or 36 MiB) comes from memory on every pass, and with rows Kp
# floats apart the GEMMs ran at half the rate on 32-tile passes (Zen 4, 2 threads, products of 36
# planes of 32 x 512 x 512: 24.5 -> 12.0 ms; 16 planes of 128 tiles 26.0 -> 20.1 ms; a busy host).
#
# Both weight transforms run once per call, on all (k, c) pairs: 262144 of them for a 512-channel
# layer, so their memory order matters. A thread takes a strip's rows for a run of _RUN_CHANNELS
# input channels c, one c after another and 16 k at a time (the weights gathered into a local
# block): each plane is then written as one stream. The gradient's float64 sums per c have rows an
# odd number of lines long. 256 channels: 0.36 ms forward (2.75 before), 0.37 ms gradient (8.86).

_WIDTH = 32 if TARGET_AVX512 else 16
_RUN_CHANNELS = 64


@njit(inline="always")
def _packed_at(c, k, cp, kp):
    """Where U[xi][c, k] lies in its plane (see above)."""
    j0 = k - k % _WIDTH
    return j0 * cp + c * min(_WIDTH, kp - j0) + (k - j0)


def unpacked(u, cp, kp):
    """U as (planes, Cp, Kp) from its packed planes (for tests and inspection)."""
    out = np.empty((u.shape[0], cp, kp), u.dtype)
    for j0 in range(0, kp, _WIDTH):
        width = min(_WIDTH, kp - j0)
        out[:, :, j0:j0 + width] = u[:, j0 * cp:(j0 + width) * cp].reshape(-1, cp, width)
    return out


@njit(inline="always")
def _run(i, cp):
    """Work item i of a weight transform: (first k, first c, last c) of its run of a strip's rows."""
    runs = -(-cp // _RUN_CHANNELS)
    c0 = (i % runs) * _RUN_CHANNELS
    return (i // runs) * _WIDTH, c0, min(cp, c0 + _RUN_CHANNELS)


@njit(inline="always")
def _gathered(w_rows, c, k0, g):
    """g[3i + j, lane] = w[k0 + lane, c, i, j] in float64, 0 past w's C or K."""
    kb = min(max(w_rows.shape[0] - k0, 0), LANES) if c * 9 < w_rows.shape[1] else 0
    for lane in range(kb):
        for tap in range(9):
            g[tap, lane] = w_rows[k0 + lane, c * 9 + tap]
    g[:, kb:] = 0.0


@njit(inline="always")
def _store_block(block, u, c, k0, cp, kp, stream):
    """u[xi][c, k0 : k0 + LANES] = block[xi] for each plane xi; with `stream` by one non-temporal
    store a plane (u's planes must then start 64-byte lines: each block is one whole line)."""
    at = _packed_at(c, k0, cp, kp)
    if stream:
        for xi in range(block.shape[0]):
            _stream_line(u[xi], at, block[xi], 0)
    else:
        for xi in range(block.shape[0]):
            u[xi, at:at + LANES] = block[xi]


@njit(inline="always")
def _g_block(g, block):
    """block[4a + b, lane] = (G g_lane G^T)[a, b] of F(2x2, 3x3), g_lane the 3x3 kernel g[:, lane]
    (float64, a row per tap), rounded once to float32. One straight-line body over the 16 lanes,
    which LLVM vectorizes; each value takes the same operations in the same order as one k at a
    time did, so the same bits."""
    for lane in range(LANES):
        # G g: down each of the kernel's 3 columns; then (G g) G^T along each of its 4 rows
        col0 = _g_applied(g[0, lane], g[3, lane], g[6, lane])
        col1 = _g_applied(g[1, lane], g[4, lane], g[7, lane])
        col2 = _g_applied(g[2, lane], g[5, lane], g[8, lane])
        block[0, lane], block[1, lane], block[2, lane], block[3, lane] = _g_applied(col0[0], col1[0], col2[0])
        block[4, lane], block[5, lane], block[6, lane], block[7, lane] = _g_applied(col0[1], col1[1], col2[1])
        block[8, lane], block[9, lane], block[10, lane], block[11, lane] = _g_applied(col0[2], col1[2], col2[2])
        block[12, lane], block[13, lane], block[14, lane], block[15, lane] = _g_applied(col0[3], col1[3], col2[3])


@njit(inline="always")
def _g4_applied(a0, a1, a2):
    """F(4x4, 3x3)'s G applied to a triple (float64): (a0, (a0 + a1 + a2) / 3, -(a0 - a1 + a2) / 3,
    -(16 a0 + 8 a1 + 4 a2) / 15, (a0 - 2 a1 + 4 a2) / 15, a2), by multiplications."""
    outer = a0 + a2
    return (a0, (outer + a1) * (1.0 / 3.0), (outer - a1) * (-1.0 / 3.0),
            (16.0 * a0 + 8.0 * a1 + 4.0 * a2) * (-1.0 / 15.0), (a0 - 2.0 * a1 + 4.0 * a2) * (1.0 / 15.0), a2)


@njit(inline="always")
def _g4_row(block, at, lane, a0, a1, a2):
    """block[at .. at + 5, lane] = G (a0, a1, a2), rounded to float32."""
    r = _g4_applied(a0, a1, a2)
    block[at, lane], block[at + 1, lane], block[at + 2, lane] = r[0], r[1], r[2]
    block[at + 3, lane], block[at + 4, lane], block[at + 5, lane] = r[3], r[4], r[5]


@njit(inline="always")
def _g4_block(g, block):
    """block[6a + b, lane] = (G g_lane G^T)[a, b] of F(4x4, 3x3), as _g_block."""
    for lane in range(LANES):
        col0 = _g4_applied(g[0, lane], g[3, lane], g[6, lane])
        col1 = _g4_applied(g[1, lane], g[4, lane], g[7, lane])
        col2 = _g4_applied(g[2, lane], g[5, lane], g[8, lane])
        _g4_row(block, 0, lane, col0[0], col1[0], col2[0])  # written out: a loop over the tuples
        _g4_row(block, 6, lane, col0[1], col1[1], col2[1])  # would index them at run time
        _g4_row(block, 12, lane, col0[2], col1[2], col2[2])
        _g4_row(block, 18, lane, col0[3], col1[3], col2[3])
        _g4_row(block, 24, lane, col0[4], col1[4], col2[4])
        _g4_row(block, 30, lane, col0[5], col1[5], col2[5])


@njit(parallel=True, nogil=True, cache=True)
def _transform_weights(w, u, cp, kp, stream):
    """u[P a + b][c, k] = (G w[k, c] G^T)[a, b] in float64, rounded once (u zero past w's C and K), u's
    planes packed (see above); P = 4 (u of 16 planes: F(2x2, 3x3)) or 6 (36: F(4x4, 3x3)). 16 k at a
    time: their 9 weights gathered into g (float64, a row per tap), then transformed by _g_block or
    _g4_block."""
    w_rows = w.reshape(w.shape[0], -1)
    for i in prange(-(-kp // _WIDTH) * -(-cp // _RUN_CHANNELS)):
        j0, c0, c1 = _run(i, cp)
        g = np.empty((9, LANES))                            # g[3i + j, k - k0] = w[k, c, i, j]
        block = np.empty((u.shape[0], LANES), np.float32)  # block[xi, k - k0]
        for c in range(c0, c1):
            for k0 in range(j0, min(kp, j0 + _WIDTH), LANES):
                _gathered(w_rows, c, k0, g)
                if u.shape[0] == 16:
                    _g_block(g, block)
                else:
                    _g4_block(g, block)
                _store_block(block, u, c, k0, cp, kp, stream)
        if stream:
            store_fence()


def weights_transformed(w, channels, outputs, side=2, stream=None):
    """U for w (K, C, 3, 3) as (planes, channels * outputs) float32, its planes packed (see above):
    U[4a + b][c, k] = (G w[k, c] G^T)[a, b], zero past C and K (channels, outputs: C and K rounded up
    to LANES). side=4: F(4x4, 3x3)'s U, 36 planes U[6a + b].

    U larger than the last-level cache (stream=None; True or False to choose) is written by
    streaming stores. Its 36 (or 16) planes are each written as a stream of their own, 64 bytes at a
    time, too many streams for the prefetchers: with ordinary stores each line was first read from
    memory (read for ownership), and the transform, not its arithmetic, took 30% of the 512-channel
    7x7 layer's forward (Zen 4, 2 threads: 4.4-5.0 ms of 15; streamed 2.3-3.2 ms; its arithmetic
    alone 0.6). A U that fits the cache stays there for the products that read it next."""
    planes, size = (side + 2) ** 2, channels * outputs
    # 16-36 MiB at 512 channels: reused memory; each plane starts a line (size: a multiple of LANES^2)
    flat = empty(planes * size + LANES, np.float32)
    skip = align_skip(flat)
    u = flat[skip:skip + planes * size].reshape(planes, size)
    if stream is None:
        stream = should_stream(u)
    _transform_weights(np.ascontiguousarray(w), u, channels, outputs, stream)
    return u


# The 16 GEMMs M[xi] = V[xi] @ U[xi] by gemm32's register tiles with `rows` rows of V each, rows
# chosen per layer so that they divide the tile count (which V and M are padded to, the extra rows
# zero): conv2's 49 tiles took 32.9 us a sample in 8-row tiles (56 rows), 28.5 us in 7-row ones,
# one Zen 4 core. With AVX-512 the tiles are 32 columns wide, a last strip of 16 columns (Kp = 16
# mod 32) going to 16-wide tiles; with AVX2 they are 16 wide and at most 6 rows (12 of its 16 ymm
# registers accumulate, as gemm32's 6 x 16 tile).
TILE_ROWS = (8, 7, 6) if TARGET_AVX512 else (6, 5, 4)
# (made with add_at_store: their `accumulate` adds a block's sums to M's values as they store them,
# for the later channel blocks of F(4x4)'s products; a separate pass adding each block's sums from a
# scratch tile, as Numba loops, cost F(4x4) most of its gain on the 512-channel 7x7 layer)
_tile_a, _tile_a16 = (_tile_intrinsic(False, h, TILE_ROWS[0], add_at_store=True) for h in (2, 1))
_tile_b, _tile_b16 = (_tile_intrinsic(False, h, TILE_ROWS[1], add_at_store=True) for h in (2, 1))
_tile_c, _tile_c16 = (_tile_intrinsic(False, h, TILE_ROWS[2], add_at_store=True) for h in (2, 1))
_ROWS_A, _ROWS_B = TILE_ROWS[0], TILE_ROWS[1]


# What a tile costs per row beyond its multiply-adds, in rows: each k step loads B's vectors once
# and broadcasts one value per row, so with AVX2's 4-6 rows the loads weigh on a small tile
# (tile_rows counts (rows + 1) per tile); AVX-512's 6-8 rows hide them, and padding alone counts.
# Interleaved A/B on a Zen 4 host, forward, least padding against (rows + 1): AVX-512 6/7 -> 8
# rows was 1.4-14.5% slower on 7 layers (50-169 tiles a pass); AVX2 4/5 -> 5/6 rows 0.90-1.02x.
_ROW_OVERHEAD = 0 if TARGET_AVX512 else 1


def tile_rows(tiles):
    """The rows per GEMM tile (one of TILE_ROWS) for `tiles` rows of V: the least (tiles needed) *
    (rows + _ROW_OVERHEAD), the larger on a tie. AVX-512: 49 tiles (conv2's) 7 rows, 196 7, 64 8,
    52 6; AVX2: 49 5, 196 6, 52 6."""
    return min(TILE_ROWS, key=lambda rows: (-(-tiles // rows) * (rows + _ROW_OVERHEAD), -rows))


@njit(inline="always")
def _tile(rows, wide, add, a, a_at, cp, b, b_at, ldb, c, c_at, ldc, k):
    """c[c_at + r*ldc + j] = sum over k of a[a_at + r*cp + k] * b[b_at + k*ldb + j], r < rows, j < 32 (wide)
    or 16, by the register tile of that height; with `add`, c's values plus that sum (rounded once)."""
    if rows == _ROWS_A:
        if wide:
            _tile_a(a, a_at, cp, 1, b, b_at, ldb, c, c_at, ldc, k, add, 32, k, 0)
        else:
            _tile_a16(a, a_at, cp, 1, b, b_at, ldb, c, c_at, ldc, k, add, 16, k, 0)
    elif rows == _ROWS_B:
        if wide:
            _tile_b(a, a_at, cp, 1, b, b_at, ldb, c, c_at, ldc, k, add, 32, k, 0)
        else:
            _tile_b16(a, a_at, cp, 1, b, b_at, ldb, c, c_at, ldc, k, add, 16, k, 0)
    elif wide:
        _tile_c(a, a_at, cp, 1, b, b_at, ldb, c, c_at, ldc, k, add, 32, k, 0)
    else:
        _tile_c16(a, a_at, cp, 1, b, b_at, ldb, c, c_at, ldc, k, add, 16, k, 0)


@njit(inline="always")
def products(v, u, m, t, rows, block):
    """m[xi][:t] = v[xi][:t] @ u[xi] for the 16 (or 36) xi: v (16, T, Cp), u (16, Cp * Kp) packed (see
    above), m (16, T, Kp), t <= T a multiple of rows (one of TILE_ROWS: any other is taken as the
    last), Kp of 16. Each sum over c runs in order, in blocks of `block` channels (a multiple of 16),
    each block's sum added to the earlier blocks' total in order (block >= Cp: one sum). (No check
    that raises here: a raise in the callers' prange loops would make Numba run them serially.)"""
    cp, kp = v.shape[2], m.shape[2]
    for xi in range(v.shape[0]):
        a, b, c = v[xi], u[xi], m[xi]
        for j0 in range(0, kp, _WIDTH):
            width = min(_WIDTH, kp - j0)
            wide = width == 32
            b_at = j0 * cp  # the strip, its rows `width` floats apart
            for i0 in range(0, t, rows):
                a_at, c_at = i0 * cp, i0 * kp + j0
                _tile(rows, wide, False, a, a_at, cp, b, b_at, width, c, c_at, kp, min(block, cp))
                for c0 in range(block, cp, block):
                    _tile(rows, wide, True, a, a_at + c0, cp, b, b_at + c0 * width, width, c, c_at, kp,
                          min(block, cp - c0))


def _rows_transformed(builder, rows):
    """B^T applied along a list of four vectors (d0, d1, d2, d3)."""
    d0, d1, d2, d3 = rows
    return [builder.fsub(d0, d2), builder.fadd(d1, d2), builder.fsub(d2, d1), builder.fsub(d1, d3)]


def _outputs_transformed(builder, rows):
    """A^T applied along a list of four vectors (m0, m1, m2, m3)."""
    m0, m1, m2, m3 = rows
    return [builder.fadd(builder.fadd(m0, m1), m2), builder.fsub(builder.fsub(m1, m2), m3)]


def _splat(value):
    return ir.Constant(_V16, [ir.Constant(_F32, value)] * LANES)


def _rows_transformed4(builder, rows):
    """F(4x4, 3x3)'s B^T applied along a list of six vectors (d0 .. d5):
    (d0 - 2d2 + d4 + 3/2 (d3 - d1), -d1 + d2/2 + 5/2 d3 + d4, d1 - 5/2 d2 + d3/2 + d4, d4 - d2 + 2 (d3 - d1),
    d4 - d2 - (d3 - d1)/2, d1 - 2d3 + d5 + 3/2 (d4 - d2))."""
    d0, d1, d2, d3, d4, d5 = rows
    add, sub, mul = builder.fadd, builder.fsub, builder.fmul
    half, two, three_halves, five_halves = _splat(0.5), _splat(2.0), _splat(1.5), _splat(2.5)
    t31, t42 = sub(d3, d1), sub(d4, d2)
    return [add(add(sub(d0, d2), t42), mul(three_halves, t31)),
            add(add(sub(d4, d1), mul(half, d2)), mul(five_halves, d3)),
            add(sub(add(d4, d1), mul(five_halves, d2)), mul(half, d3)),
            add(t42, mul(two, t31)), sub(t42, mul(half, t31)),
            add(add(sub(d1, d3), sub(d5, d3)), mul(three_halves, t42))]


def _outputs_transformed4(builder, rows):
    """F(4x4, 3x3)'s A^T applied along a list of six vectors (m0 .. m5):
    (m0 + m1 + m2 + m3 + m4, m1 - m2 + m3/2 - 2m4, m1 + m2 + m3/4 + 4m4, m1 - m2 + m3/8 - 8m4 + m5)."""
    m0, m1, m2, m3, m4, m5 = rows
    add, sub, mul = builder.fadd, builder.fsub, builder.fmul
    s12, d12 = add(m1, m2), sub(m1, m2)
    return [add(add(m0, s12), add(m3, m4)), add(d12, sub(mul(_splat(0.5), m3), mul(_splat(2.0), m4))),
            add(s12, add(mul(_splat(0.25), m3), mul(_splat(4.0), m4))),
            add(add(d12, sub(mul(_splat(0.125), m3), mul(_splat(8.0), m4))), m5)]


def _tile_transform_intrinsic(size, transform, doc):
    """An intrinsic f(src, at, row_ld, col_ld, dst, d_at, xi_ld): the size x size grid of 16-lane
    vectors src[at + i*row_ld + j*col_ld + l] (l < 16), `transform` (a list of `size` vectors -> r)
    applied down its columns and then along its rows, the r x r results stored at
    dst[d_at + (r*i + j)*xi_ld + l]. float32 arrays addressed from their first element."""
    def typer(typingctx, src, at, row_ld, col_ld, dst, d_at, xi_ld):
        if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (src, dst)):
            return None

        def codegen(context, builder, signature, args):
            source, target = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 4))
            at, row_ld, col_ld, d_at, xi_ld = (as_i64(builder, args[i]) for i in (1, 2, 3, 5, 6))
            const = lambda value: ir.Constant(_I64, value)  # noqa: E731
            grid = [[builder.load(vector_at(builder, source.data,
                                            builder.add(at, builder.add(builder.mul(const(i), row_ld),
                                                                        builder.mul(const(j), col_ld)))), align=4)
                     for j in range(size)] for i in range(size)]
            columns = [transform(builder, [grid[i][j] for i in range(size)]) for j in range(size)]  # [j][i]
            r = len(columns[0])
            for i in range(r):
                for j, value in enumerate(transform(builder, [columns[jj][i] for jj in range(size)])):
                    where = builder.add(d_at, builder.mul(const(r * i + j), xi_ld))
                    builder.store(value, vector_at(builder, target.data, where), align=4)
            return context.get_dummy_value()

        return types.void(src, at, row_ld, col_ld, dst, d_at, xi_ld), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


input_tile16 = _tile_transform_intrinsic(4, _rows_transformed, """input_tile16(xh, at, row_ld, col_ld, v, v_at, xi_ld):
    v[v_at + xi*xi_ld + l] = (B^T d B)[xi] in lane l < 16, d[i][j] = xh[at + i*row_ld + j*col_ld + l]:
    one tile's 16 transformed values for 16 channels (xh channels-last, so l is the channel).""")


def _output_tile_intrinsic(alpha, transform, doc):
    """An intrinsic f(m, at, xi_ld, bias, b_at, relu, y, y_at, row_ld, col_ld): one tile's r x r outputs
    for 16 output channels (lanes l), `transform` (a list of `alpha` vectors -> r) applied down the
    columns and then along the rows of the alpha x alpha grid M[xi] = m[at + xi*xi_ld + l]:
        o[a][b] = (A^T M A)[a, b] + bias[b_at + l]
        o = max(o, 0) if relu (NaN kept)
    stored at y[y_at + a*row_ld + b*col_ld + l]. Returns 1 if any o (before relu) is inf or NaN, else 0."""
    def typer(typingctx, m, at, xi_ld, bias, b_at, relu, y, y_at, row_ld, col_ld):
        if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (m, bias, y)):
            return None
        if not isinstance(relu, types.Boolean):
            return None

        def codegen(context, builder, signature, args):
            m_arr, b_arr, y_arr = (context.make_array(signature.args[i])(context, builder, args[i])
                                   for i in (0, 3, 6))
            at, xi_ld, b_at, y_at, row_ld, col_ld = (as_i64(builder, args[i]) for i in (1, 2, 4, 7, 8, 9))
            relu_lanes = broadcast(builder, args[5])
            const = lambda value: ir.Constant(_I64, value)  # noqa: E731
            zero = ir.Constant(_V16, [ir.Constant(_F32, 0.0)] * LANES)
            mv = [[builder.load(vector_at(builder, m_arr.data,
                                          builder.add(at, builder.mul(const(alpha * i + j), xi_ld))), align=4)
                   for j in range(alpha)] for i in range(alpha)]
            columns = [transform(builder, [mv[i][j] for i in range(alpha)]) for j in range(alpha)]  # [j][a]
            bias_lanes = builder.load(vector_at(builder, b_arr.data, b_at), align=4)
            poisoned = zero  # 0 * o is 0 for every finite o, NaN for inf and NaN
            for a in range(len(columns[0])):
                for b, value in enumerate(transform(builder, [columns[j][a] for j in range(alpha)])):
                    value = builder.fadd(value, bias_lanes)
                    poisoned = builder.fadd(poisoned, builder.fmul(value, zero))
                    negative = builder.fcmp_ordered("<", value, zero)
                    value = builder.select(builder.and_(negative, relu_lanes), zero, value)
                    where = builder.add(y_at, builder.add(builder.mul(const(a), row_ld), builder.mul(const(b), col_ld)))
                    builder.store(value, vector_at(builder, y_arr.data, where), align=4)
            nan_lanes = builder.bitcast(builder.fcmp_unordered("uno", poisoned, poisoned), ir.IntType(LANES))
            return builder.zext(builder.icmp_unsigned("!=", nan_lanes, ir.Constant(ir.IntType(LANES), 0)), _I64)

        return types.int64(m, at, xi_ld, bias, b_at, relu, y, y_at, row_ld, col_ld), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


output_tile16 = _output_tile_intrinsic(4, _outputs_transformed, """output_tile16(m, at, xi_ld, bias, b_at, relu, y,
    y_at, row_ld, col_ld): one tile's 2x2 outputs for 16 output channels from its 16 products M[xi]
    (_output_tile_intrinsic has the layout).""")


input_tile36 = _tile_transform_intrinsic(6, _rows_transformed4, """input_tile36(xh, at, row_ld, col_ld, v, v_at, xi_ld):
    input_tile16 for F(4x4, 3x3): a 6x6 patch's 36 transformed values, v[v_at + xi*xi_ld + l].""")
output_tile36 = _output_tile_intrinsic(6, _outputs_transformed4, """output_tile36(m, at, xi_ld, bias, b_at, relu, y,
    y_at, row_ld, col_ld): output_tile16 for F(4x4, 3x3): a tile's 4x4 outputs from its 36 products.""")


# The weight gradient by the same transforms. Y = A^T (U . V) A per tile, U = G g G^T, so for a
# loss L: dL/dU = (A dY A^T) . V, summed over tiles and samples, and dL/dg = G^T (dL/dU) G:
#
#    Z[xi][p, k]   = (A dY_{p,k} A^T)[xi]                 grad_tile16: dY the tile's 2x2 output gradient
#    dU[xi]       += V[xi]^T @ Z[xi]                       (C x tiles) @ (tiles x K), accumulated
#    dW[k, c]      = G^T dU[:, c, k] G                     weight_grad_transformed, once per call
#
# with A = [[1, 0], [1, 1], [1, -1], [0, -1]]: 16 multiply-adds per (c, k) and tile against the
# direct 36, the same count as the forward's.

def _grads_transformed(builder, pair):
    """A applied along a pair of vectors (y0, y1): (y0, y0 + y1, y0 - y1, -y1)."""
    y0, y1 = pair
    return [y0, builder.fadd(y0, y1), builder.fsub(y0, y1), builder.fneg(y1)]


grad_tile16 = _tile_transform_intrinsic(2, _grads_transformed, """grad_tile16(dyh, at, row_ld, col_ld, z, z_at, xi_ld):
    z[z_at + xi*xi_ld + l] = (A dY A^T)[xi] in lane l < 16, dY[a][b] = dyh[at + a*row_ld + b*col_ld + l]
    (a, b < 2): one tile's output gradient transformed, 16 channels at a time.""")


@njit(parallel=True, nogil=True, cache=True)
def _transform_weight_grad(du_parts, dw):
    """dw[k, c] = G^T dU[:, c, k] G in float64 (dU the parts' sum, in part order), then float32."""
    k_n, c_n = dw.shape[0], dw.shape[1]
    parts = du_parts.shape[0]
    lines = -(-k_n // 8)  # 64-byte lines in a row of k_n float64, made odd (see above)
    row = 8 * (lines + 1 - lines % 2)
    for c in prange(c_n):
        du = np.empty((16, row))  # the parts' sum for this c: du[xi, k]
        for xi in range(16):
            for k in range(k_n):
                du[xi, k] = du_parts[0, xi, c, k]
        for part in range(1, parts):
            for xi in range(16):
                for k in range(k_n):
                    du[xi, k] += du_parts[part, xi, c, k]
        for k in range(k_n):
            # G^T dU: down each of dU's 4 columns (dU[a, b] = du[4a + b])
            col0 = _gt_applied(du[0, k], du[4, k], du[8, k], du[12, k])
            col1 = _gt_applied(du[1, k], du[5, k], du[9, k], du[13, k])
            col2 = _gt_applied(du[2, k], du[6, k], du[10, k], du[14, k])
            col3 = _gt_applied(du[3, k], du[7, k], du[11, k], du[15, k])
            for i in range(3):  # (G^T dU) G: along each of its 3 rows
                dw[k, c, i, 0], dw[k, c, i, 1], dw[k, c, i, 2] = _gt_applied(col0[i], col1[i], col2[i], col3[i])


def weight_grad_transformed(du_parts, c, k):
    """dW (k, c, 3, 3) float32 from the parts' dU (parts, 16, Cp, Kp), added in float64 in part
    order: dW[k, c] = G^T dU[:, c, k] G in float64, then float32 (an overflow gives inf, as a cast
    would). inf or NaN in dU gives a dW with some inf or NaN (each dU value reaches some dW value)."""
    dw = np.empty((k, c, 3, 3), np.float32)
    _transform_weight_grad(du_parts, dw)
    return dw
