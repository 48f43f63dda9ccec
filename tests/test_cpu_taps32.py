"""The cpu backend's stride-1 float32 convolution tiles in AVX-512 (fastconv/_cpu/_taps32.py), each
forced in turn: bit for bit the per-tap products they replaced (gemm32 per tap, accumulating, then
+ b and the activation) on shapes around the tiles' edges (8 x 32 positions, 32 channels x 14, 16
channels x 16 positions of a row), with
few and many channels, groups, dilation, padding and every activation, alone and fused with a max
pooling; within float32 rounding of float64 NumPy; and the stores confined to the outputs. Skipped
where the host has no AVX-512F."""
import numpy as np
import pytest

from fastconv import ops
from fastconv._cpu import _vecmath, conv, dense
from fastconv._cpu.conv import _taps
from helpers import needs_avx512

pytestmark = needs_avx512

if _vecmath.AVX512:
    from numba import njit

    from fastconv._cpu._gemm32 import gemm32
    from fastconv._cpu._taps32 import RR, channels_tile, row_tile, taps_tile

    @njit
    def _tile(*args):
        taps_tile(*args)

    @njit
    def _row_tile(*args):
        row_tile(*args)

    @njit
    def _channels_tile(*args):
        channels_tile(*args)


def _per_tap_reference(x, w, b, padding, dilation, groups, act):
    """The convolution as the wide kernel computed it: per sample and group, one gemm32 product per
    tap accumulated over the zero-padded sample's shifted rows, then y = act(sum + b) in float32."""
    n, c, h, wd = x.shape
    c_out, cg, kh, kw = w.shape
    pt, pl = padding
    pb, pr = padding
    dh, dw = dilation
    hp, wp = h + pt + pb, wd + pl + pr
    oh, ow = hp - dh * (kh - 1), wp - dw * (kw - 1)
    length, cog = oh * wp, c_out // groups
    y = np.empty((n, c_out, oh, ow), np.float32)
    for s in range(n):
        for g in range(groups):
            xp = np.zeros((cg, hp * wp + (kw - 1) * dw), np.float32)
            xp[:, :hp * wp].reshape(cg, hp, wp)[:, pt:pt + h, pl:pl + wd] = x[s, g * cg:(g + 1) * cg]
            acc = np.empty((cog, length), np.float32)
            for i in range(kh):
                for j in range(kw):
                    shift = i * dh * wp + j * dw
                    tap = np.ascontiguousarray(w[g * cog:(g + 1) * cog, :, i, j])
                    gemm32(tap, xp[:, shift:shift + length], acc, 1.0 if i or j else 0.0, False, False)
            z = acc.reshape(cog, oh, wp)[:, :, :ow] + (b[g * cog:(g + 1) * cog, None, None] if b is not None
                                                        else np.float32(0))
            if act == "relu":
                z = np.where(z < 0, np.float32(0), z)
            elif act == "sigmoid":  # the standalone op: the epilogue gives its bits
                z = dense.sigmoid_forward(np.ascontiguousarray(z))
            y[s, g * cog:(g + 1) * cog] = z
    return y


# x shape, w shape, padding (rows, columns), dilation, groups
SHAPES = [
    ((2, 1, 28, 28), (32, 1, 3, 3), (1, 1), (1, 1), 1),    # conv1: few channels, an 840-wide grid
    ((3, 32, 14, 14), (64, 32, 3, 3), (1, 1), (1, 1), 1),  # conv2: whole 8 x 32 tiles only
    ((2, 3, 5, 9), (7, 3, 3, 3), (2, 0), (1, 1), 1),       # rows 7 < 8, a tiny grid
    ((2, 9, 7, 6), (17, 9, 2, 3), (0, 2), (1, 1), 1),      # 17 rows: 8 + 8 + 1; even kernel height
    ((1, 16, 9, 11), (10, 8, 3, 3), (2, 2), (2, 2), 2),    # dilation, groups of 8 channels
    ((2, 6, 1, 40), (9, 2, 1, 5), (0, 2), (1, 3), 3),      # one row, 44 wide; 3 groups of 3 rows
    ((1, 5, 33, 3), (8, 5, 3, 1), (1, 0), (1, 1), 1),      # 3 wide: several rows in one 16-lane half
    ((1, 4, 5, 17), (40, 2, 3, 3), (1, 1), (1, 1), 2),     # 2 groups of 20: a second 16 in group 1; 17 wide
]


TILES = {"channels": _taps._CHANNELS_TILE, "positions": _taps._TAPS_TILE, "rows": _taps._ROW_TILE}


@pytest.fixture(params=sorted(TILES))
def lanes(request, monkeypatch):
    """Each test below runs with each tile forced (the kernel picks by input channels and estimated
    work), and with Winograd's F(2x2, 3x3) (test_cpu_winograd32.py) off, so conv2's shape reaches
    the tiles."""
    monkeypatch.setattr(_taps, "_forward_tile", lambda *args: TILES[request.param])
    monkeypatch.setattr(conv, "WINOGRAD", False)
    return request.param


@pytest.mark.parametrize("act", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0] + s[1])))
def test_the_tiles_equal_the_per_tap_products_bit_for_bit(lanes, shape, act):
    xs, ws, padding, dilation, groups = shape
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    geometry = dict(padding=padding, dilation=dilation, groups=groups, activation=act)
    for bias in (b, None):
        y = ops.conv2d_forward(x, w, bias, **geometry)
        ref = _per_tap_reference(x, w, bias, padding, dilation, groups, act)
        assert y.tobytes() == ref.tobytes()
        y64 = ops.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                                 None if bias is None else bias.astype(np.float64), **geometry)
        np.testing.assert_allclose(y, y64, rtol=1e-4, atol=1e-4 * np.sqrt(np.prod(ws[1:])))
        if min(y.shape[2:]) >= 2:  # fused with a 2x2 max pooling: the tile's planes pooled in the cache
            pooled, indices = ops.conv2d_max_pool2d_forward(x, w, bias, pool_kernel=2, **geometry)
            pooled_ref, indices_ref = ops.max_pool2d_forward(ref, kernel_size=2)
            assert pooled.tobytes() == pooled_ref.tobytes() and indices.tobytes() == indices_ref.tobytes()


def test_nan_and_inf_inputs_reach_the_outputs_they_touch(lanes):
    x = np.ones((1, 8, 6, 6), np.float32)
    x[0, 3, 2, 2], x[0, 5, 4, 1] = np.nan, np.inf
    w = np.ones((9, 8, 3, 3), np.float32)
    y = ops.conv2d_forward(x, w, padding=1, activation="relu")
    ref = _per_tap_reference(x, w, None, (1, 1), (1, 1), 1, "relu")
    assert np.array_equal(np.isnan(y), np.isnan(ref)) and np.isnan(y[:, :, 1:4, 1:4]).all()
    assert np.array_equal(y[np.isfinite(ref)], ref[np.isfinite(ref)])


def test_the_tile_writes_only_its_rows_and_kept_lanes():
    """Direct calls: 5 of 8 rows, every keep pattern's runs at their offsets; the guard values
    around and between them untouched, the 3 rows past `rows` not written."""
    rng = np.random.default_rng(7)
    cg, taps, rows = 4, 2, 5
    w = rng.standard_normal(taps * 8 * cg).astype(np.float32)
    xp = rng.standard_normal((cg, 100)).astype(np.float32)
    shifts = np.array([0, 3], np.int64)
    bias = rng.standard_normal(8).astype(np.float32)
    for keep_lo, keep_hi in [(0xFFFF, 0xFFFF), (0x3FFF, 0x0FFF), (0, 0x8001), (0x1, 0)]:
        y = np.full(8 * 64, 99.0, np.float32)
        _tile(w, 0, cg, 8 * cg, cg, xp, 100, shifts, 5, y, 0, 64, rows, bias, 0, True, keep_lo, keep_hi, 2, 30)
        expected = np.full(8 * 64, 99.0, np.float32)
        for r in range(rows):
            full = np.zeros(32)
            for t in range(taps):
                full += w[t * 8 * cg + r * cg:t * 8 * cg + (r + 1) * cg].astype(np.float64) @ \
                    xp[:, shifts[t] + 5:shifts[t] + 37].astype(np.float64)
            full = np.maximum(full + bias[r], 0)
            for half, (keep, dst) in enumerate(((keep_lo, 2), (keep_hi, 30))):
                kept = [full[16 * half + lane] for lane in range(16) if keep >> lane & 1]
                expected[r * 64 + dst:r * 64 + dst + len(kept)] = kept
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
        assert (y[rows * 64:] == 99.0).all()


def test_the_channels_tile_writes_only_its_channels_and_positions():
    """Direct calls: count positions of `channels` channels at y_off with row stride ldy; every other
    value, the rows past `channels` included, untouched."""
    rng = np.random.default_rng(8)
    cg, taps, ldy = 3, 2, 20
    w = rng.standard_normal(taps * cg * 32).astype(np.float32)
    xp = rng.standard_normal((cg, 60)).astype(np.float32)
    shifts = np.array([0, 5], np.int64)
    bias = rng.standard_normal(32).astype(np.float32)
    for count, channels in [(14, 32), (9, 17), (1, 1), (14, 5)]:
        y = np.full(40 * ldy, 99.0, np.float32)
        _channels_tile(w, 0, cg * 32, 32, cg, xp, 60, shifts, 4, y, 3, ldy, count, channels, bias, 0, False)
        expected = np.full(40 * ldy, 99.0, np.float32)
        for lane in range(channels):
            v = np.zeros(count)
            for t in range(taps):
                v += w[t * cg * 32 + lane:(t + 1) * cg * 32:32].astype(np.float64) @ \
                    xp[:, shifts[t] + 4:shifts[t] + 4 + count].astype(np.float64)
            expected[3 + lane * ldy:3 + lane * ldy + count] = v + bias[lane]
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_the_row_tile_writes_only_its_channels_and_positions():
    """Direct calls: count positions of `rows` channels at y_off with row stride ldy, from channels
    w_off.. of a zero-padded block; every other value, the channels past `rows` included, untouched."""
    rng = np.random.default_rng(9)
    cg, taps, ldy = 2, 3, 20
    w = rng.standard_normal(taps * cg * 32).astype(np.float32)
    xp = rng.standard_normal((cg, 60)).astype(np.float32)
    shifts = np.array([0, 5, 11], np.int64)
    bias = rng.standard_normal(32).astype(np.float32)
    for count, rows, w_off, bias_off, relu in [(16, RR, 0, 16, True), (9, 7, 16, 0, False), (1, 1, 3, 5, True),
                                               (12, RR, 16, 16, False)]:
        y = np.full(40 * ldy, 99.0, np.float32)
        _row_tile(w, w_off, cg * 32, 32, cg, xp, 60, shifts, 4, y, 3, ldy, count, rows, bias, bias_off, relu)
        expected = np.full(40 * ldy, 99.0, np.float32)
        for r in range(rows):
            v = np.zeros(count)
            for t in range(taps):
                v += w[t * cg * 32 + w_off + r:(t + 1) * cg * 32:32].astype(np.float64) @ \
                    xp[:, shifts[t] + 4:shifts[t] + 4 + count].astype(np.float64)
            v = v + bias[bias_off + r]
            expected[3 + r * ldy:3 + r * ldy + count] = np.maximum(v, 0) if relu else v
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_each_layer_gets_its_tile():
    assert _taps._forward_tile(1, 32, 28, 28, 30) == _taps._ROW_TILE   # conv1
    assert _taps._forward_tile(3, 64, 32, 32, 34) == _taps._ROW_TILE   # an RGB input
    assert _taps._forward_tile(32, 64, 14, 14, 16) == _taps._CHANNELS_TILE  # conv2 (without Winograd)
    assert _taps._forward_tile(1, 1, 56, 56, 58) == _taps._ROW_TILE    # depthwise
    assert _taps._forward_tile(3, 8, 28, 28, 30) == _taps._TAPS_TILE   # 3 -> 8: taps_tile's 8 rows, not 16
    assert _taps._forward_tile(16, 8, 40, 40, 42) == _taps._TAPS_TILE  # few output channels


BACKWARD_SHAPES = SHAPES + [
    ((2, 40, 5, 31), (3, 40, 3, 3), (1, 1), (1, 1), 1),    # 40 dx channels: blocks of 32 + 8; 3 outputs
    ((3, 8, 10, 10), (24, 4, 5, 5), (1, 3), (1, 1), 2),    # 4 channels per group: 100 tap rows, 104 copied
]


@pytest.mark.parametrize("shape", BACKWARD_SHAPES, ids=lambda s: "x".join(map(str, s[0] + s[1])))
def test_the_backward_by_tiles_matches_float64(monkeypatch, shape):
    """dx by channels_tile over the padded output gradient, dW per tap by gemm32 over the sample's
    shifted rows and dy transposed once, db by column sums: within float32 rounding of float64, and
    the fused conv + pool backward the unfused ops bit for bit. (Winograd off: conv2's shape would
    take it, test_cpu_winograd32.py.)"""
    monkeypatch.setattr(conv, "WINOGRAD", False)
    xs, ws, padding, dilation, groups = shape
    rng = np.random.default_rng(sum(xs) * 3 + sum(ws))
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    geometry = dict(padding=padding, dilation=dilation, groups=groups)
    y = ops.conv2d_forward(x, w, **geometry)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = ops.conv2d_backward(dy, x, w, **geometry)
    grads64 = ops.conv2d_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), **geometry)
    for got, want in zip(grads, grads64):
        scale = np.sqrt(np.prod(ws)) * (1 + np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)
    without_dx = ops.conv2d_backward(dy, x, w, input_grad=False, **geometry)
    if ws[1] >= 8:  # the same kernel, dx skipped
        assert without_dx[1].tobytes() == grads[1].tobytes()
    for got, want in zip(without_dx[1:], grads64[1:]):  # fewer channels: the tiles' kernel only without dx
        scale = np.sqrt(np.prod(ws)) * (1 + np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)
    if min(y.shape[2:]) >= 2:
        b = rng.standard_normal(ws[0]).astype(np.float32)
        pooled, indices = ops.conv2d_max_pool2d_forward(x, w, b, activation="relu", pool_kernel=2, **geometry)
        d_pooled = rng.standard_normal(pooled.shape).astype(np.float32)
        fused = ops.conv2d_max_pool2d_backward(d_pooled, pooled, indices, x, w, activation="relu", **geometry)
        z = ops.conv2d_forward(x, w, b, activation="relu", **geometry)
        d_z = ops.max_pool2d_backward(ops.relu_backward(d_pooled, pooled), indices, tuple(z.shape))
        unfused = ops.conv2d_backward(d_z, x, w, **geometry)
        for a, b_ in zip(fused, unfused):
            assert a.tobytes() == b_.tobytes()
