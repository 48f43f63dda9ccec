"""The cpu backend's Winograd F(2x2, 3x3) and F(4x4, 3x3) forward for 3x3 stride-1 float32 layers
(fastconv/_cpu/_winograd32.py, _winograd._forward_winograd): which layers take it and which tile size;
its transforms against their matrices in float64; the forward by each, alone and fused with an
activation and a max pooling, against the float64 reference on shapes around its edges (odd output
sizes, padding 0 to 2 and uneven, channel counts off the 16 lanes, each GEMM tile height); the same
bits for any thread count; and non-finite values, for which the samples concerned come from the
direct kernel.
Skipped where the host has neither AVX-512F nor AVX2."""
import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

from fastconv import ops
from fastconv._cpu import _stream, _vecmath, conv
from fastconv._cpu.conv import _winograd
from helpers import assert_matches, needs_simd
from test_conv import Geometry

pytestmark = needs_simd

if _vecmath.SIMD:
    from numba import njit

    from fastconv._cpu._winograd32 import (TILE_ROWS, grad_tile16, input_tile16, input_tile36, output_tile16,
                                           output_tile36, products, tile_rows, unpacked, weight_grad_transformed,
                                           weights_transformed)

    @njit
    def _grad_tile(*args):
        grad_tile16(*args)

    @njit
    def _input_tile(*args):
        input_tile16(*args)

    @njit
    def _output_tile(*args):
        return output_tile16(*args)

    @njit
    def _input_tile36(*args):
        input_tile36(*args)

    @njit
    def _output_tile36(*args):
        return output_tile36(*args)

    @njit
    def _products(v, u, m, rows, block):
        products(v, u, m, v.shape[1], rows, block)
else:
    TILE_ROWS = ()  # every test here is skipped (pytestmark), but a parametrize below reads it at import

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
A = AT.T
# F(4x4, 3x3) on the points 0, 1, -1, 1/2, -2 and infinity
BT4 = np.array([[1, -1.5, -2, 1.5, 1, 0], [0, -1, 0.5, 2.5, 1, 0], [0, 1, -2.5, 0.5, 1, 0], [0, -2, -1, 2, 1, 0],
                [0, 0.5, -1, -0.5, 1, 0], [0, 1, -1.5, -2, 1.5, 1]], np.float64)
G4 = np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, -1 / 3], [-16 / 15, -8 / 15, -4 / 15],
               [1 / 15, -2 / 15, 4 / 15], [0, 0, 1]])
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 0.5, -2, 0], [0, 1, 1, 0.25, 4, 0], [0, 1, -1, 0.125, -8, 1]],
               np.float64)


def test_the_f4_matrices_compute_the_correlation():
    # y = A^T [(G g) . (B^T d)] is the correlation y_i = sum_k d[i + k] g[k], in each dimension
    rng = np.random.default_rng(13)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    np.testing.assert_allclose(AT4 @ ((G4 @ g) * (BT4 @ d)), [d[i:i + 3] @ g for i in range(4)], rtol=1e-12)


@pytest.fixture(params=[2, 4], ids=["F2x2", "F4x4"])
def side(request, monkeypatch):
    """The tile side the forward takes, forced: F(2x2, 3x3) or F(4x4, 3x3) whatever the output size."""
    monkeypatch.setattr(_winograd, "_winograd_side", lambda n, oh, ow: request.param)
    return request.param


def _packed(u):
    """U (planes, Cp, Kp) packed as weights_transformed gives it (unpacked's inverse)."""
    cp, kp = u.shape[1:]
    packed = np.empty((u.shape[0], cp * kp), u.dtype)
    strip = 32 if _vecmath.TARGET_AVX512 else 16  # the GEMM tile's width
    for j0 in range(0, kp, strip):
        width = min(strip, kp - j0)
        packed[:, j0 * cp:(j0 + width) * cp] = u[:, :, j0:j0 + width].reshape(u.shape[0], -1)
    return packed

# x shape, C_out, padding (an int, a pair or "valid"/"same")
SHAPES = [
    ((3, 32, 14, 14), 64, 1),      # conv2: 7 x 7 tiles, 7-row GEMM tiles
    ((2, 17, 9, 7), 20, 1),        # odd output (9 x 7): half-empty edge tiles; C, K off the lanes
    ((2, 16, 6, 6), 16, "valid"),  # 4 x 4 outputs: 4 tiles, 6-row GEMM tiles (2 rows of padding)
    ((1, 40, 8, 11), 33, (2, 0)),  # uneven padding, 10 x 9 outputs; K = 33: a last 16-wide strip
    ((2, 16, 16, 16), 48, 1),      # 64 tiles: 8-row GEMM tiles; K = 48: a 32 and a 16 strip
    ((1, 16, 3, 3), 16, 2),        # more padding than image
    ((2, 16, 1, 1), 16, 1),        # one output, one tile
    ((5, 24, 5, 5), 16, "same"),   # batch past the threads; odd tiles
]


def _case(x_shape, c_out, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((c_out, x_shape[1], 3, 3)) / np.sqrt(9 * x_shape[1])
    return x, w, rng.standard_normal(c_out)


def _direct(monkeypatch):
    """Turns the Winograd forward off: the direct kernel (_taps32's tiles, or the wide gemm32 one on
    AVX2 hosts) for every layer."""
    monkeypatch.setattr(conv, "WINOGRAD", False)


def _spy_on_redos(monkeypatch):
    """The batch sizes the direct kernel is called with from now on (the Winograd path's redos), by
    the dispatch (conv/__init__.py) or the Winograd path (conv/_winograd.py): each reads its own name."""
    redone, direct = [], conv._forward_direct

    def spy(x, *args):
        redone.append(len(x))
        return direct(x, *args)

    for module in (conv, _winograd):
        monkeypatch.setattr(module, "_forward_direct", spy)
    return redone


def test_which_layers_take_it():
    x = np.zeros((2, 32, 14, 14), np.float32)
    w = np.zeros((64, 32, 3, 3), np.float32)
    assert conv._uses_winograd(x, w, (1, 1), (1, 1), 1, "auto")
    assert not conv._uses_winograd(x, w, (2, 2), (1, 1), 1, "auto")
    assert not conv._uses_winograd(x, w, (1, 1), (2, 2), 1, "auto")
    assert not conv._uses_winograd(x, np.zeros((64, 16, 3, 3), np.float32), (1, 1), (1, 1), 2, "auto")
    assert not conv._uses_winograd(x, np.zeros((64, 32, 5, 5), np.float32), (1, 1), (1, 1), 1, "auto")
    assert not conv._uses_winograd(x, np.zeros((64, 32, 3, 1), np.float32), (1, 1), (1, 1), 1, "auto")
    assert not conv._uses_winograd(x, np.zeros((8, 32, 3, 3), np.float32), (1, 1), (1, 1), 1, "auto")  # too few outputs
    assert not conv._uses_winograd(x[:, :8], np.zeros((64, 8, 3, 3), np.float32), (1, 1), (1, 1), 1, "auto")
    assert not conv._uses_winograd(x.astype(np.float64), w.astype(np.float64), (1, 1), (1, 1), 1, "auto")
    assert not conv._uses_winograd(x, w, (1, 1), (1, 1), 1, "direct")


def test_tile_rows_pad_the_tile_count_the_least_per_cost():
    if _vecmath.TARGET_AVX512:  # padding alone
        assert tile_rows(49) == 7 and tile_rows(196) == 7 and tile_rows(64) == 8 and tile_rows(4) == 6
        assert tile_rows(52) == 6 and tile_rows(63) == 7 and tile_rows(168) == 8  # 168: a three-way tie
        overhead = 0
    else:  # padding weighted by (rows + 1)
        assert tile_rows(49) == 5 and tile_rows(196) == 6 and tile_rows(64) == 6 and tile_rows(4) == 4
        assert tile_rows(52) == 6 and tile_rows(128) == 6
        overhead = 1
    cost = lambda tiles, r: -(-tiles // r) * (r + overhead)  # noqa: E731
    for tiles in range(1, 300):
        rows = tile_rows(tiles)
        assert rows in TILE_ROWS
        assert cost(tiles, rows) == min(cost(tiles, r) for r in TILE_ROWS)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kp", [32, 48])
def test_weights_transform(kp, stream):
    # stream: U written by streaming stores, as for a U larger than the last-level cache
    w = np.random.default_rng(0).standard_normal((20, 17, 3, 3)).astype(np.float32)
    for side, g in ((2, G), (4, G4)):
        u = weights_transformed(w, 32, kp, side, stream)
        assert u.shape == ((side + 2) ** 2, 32 * kp)
        np.testing.assert_array_equal(_packed(unpacked(u, 32, kp)), u)
        u = unpacked(u, 32, kp)
        expected = np.einsum("ai,kcij,bj->abck", g, w.astype(np.float64), g).reshape(-1, 17, 20)
        if side == 2:
            np.testing.assert_array_equal(u[:, :17, :20], expected.astype(np.float32))  # one rounding from float64
        else:  # G4's sixths and 24ths are not exact in float64: within an ulp of float32
            np.testing.assert_allclose(u[:, :17, :20], expected, rtol=2 ** -23, atol=1e-30)
        assert not u[:, 17:].any() and not u[:, :, 20:].any()


@pytest.mark.parametrize("size", [4, 6])
def test_input_transform(size):
    # input_tile16 (F(2x2): a 4x4 patch) and input_tile36 (F(4x4): 6x6) against B^T d B in float64
    rng = np.random.default_rng(1)
    bt, tile, row = (BT, _input_tile, 7 * 40) if size == 4 else (BT4, _input_tile36, 9 * 40)
    xh = rng.standard_normal(size * row + 16).astype(np.float32)  # size rows of 7 or 9 positions of 40 channels
    v = np.full(size * size * 24 + 16, np.nan, np.float32)
    tile(xh, 3, row, 40, v, 5, 24)  # channels 3..18 of the patch at position 0
    d = np.array([[xh[3 + i * row + j * 40:19 + i * row + j * 40] for j in range(size)] for i in range(size)],
                 np.float64)
    expected = np.einsum("ai,ijl,bj->abl", bt, d, bt).reshape(size * size, 16)
    got = np.array([v[5 + xi * 24:21 + xi * 24] for xi in range(size * size)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 if size == 4 else 1e-4)
    written = np.zeros(v.size, bool)
    for xi in range(size * size):
        written[5 + xi * 24:21 + xi * 24] = True
    assert np.isnan(v[~written]).all()  # nothing else written


@pytest.mark.parametrize("relu", [False, True])
def test_output_transform(relu):
    rng = np.random.default_rng(2)
    m = rng.standard_normal(16 * 20 + 16).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    y = np.full(2 * 50 + 30 + 16 + 4, np.nan, np.float32)
    flag = _output_tile(m, 4, 20, bias, 16, relu, y, 4, 50, 30)
    mv = np.array([m[4 + xi * 20:20 + xi * 20] for xi in range(16)], np.float64).reshape(4, 4, 16)
    expected = np.einsum("ai,ijl,bj->abl", AT, mv, AT) + bias[16:32]
    if relu:
        expected = np.maximum(expected, 0)
    for a in range(2):
        for b in range(2):
            at = 4 + a * 50 + b * 30
            np.testing.assert_allclose(y[at:at + 16], expected[a, b], rtol=0, atol=1e-5)
    assert flag == 0
    assert np.isnan(y[:4]).all() and np.isnan(y[20:34]).all() and np.isnan(y[-4:]).all()
    m[4 + 5 * 20 + 3] = np.inf  # xi = 5, lane 3
    assert _output_tile(m, 4, 20, bias, 16, relu, y, 4, 50, 30) == 1
    m[4 + 5 * 20 + 3] = np.nan
    assert _output_tile(m, 4, 20, bias, 16, relu, y, 4, 50, 30) == 1


@pytest.mark.parametrize("relu", [False, True])
def test_output_transform36(relu):
    rng = np.random.default_rng(12)
    m = rng.standard_normal(36 * 20 + 16).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    y = np.full(4 * 70 + 4 * 17 + 16 + 4, np.nan, np.float32)
    flag = _output_tile36(m, 4, 20, bias, 16, relu, y, 4, 70, 17)
    mv = np.array([m[4 + xi * 20:20 + xi * 20] for xi in range(36)], np.float64).reshape(6, 6, 16)
    expected = np.einsum("ai,ijl,bj->abl", AT4, mv, AT4) + bias[16:32]
    if relu:
        expected = np.maximum(expected, 0)
    written = np.zeros(y.size, bool)
    for a in range(4):
        for b in range(4):
            at = 4 + a * 70 + b * 17
            np.testing.assert_allclose(y[at:at + 16], expected[a, b], rtol=0, atol=1e-4)
            written[at:at + 16] = True
    assert flag == 0 and np.isnan(y[~written]).all()
    m[4 + 35 * 20 + 3] = np.inf  # xi = 35, lane 3
    assert _output_tile36(m, 4, 20, bias, 16, relu, y, 4, 70, 17) == 1


@pytest.mark.parametrize("rows", TILE_ROWS)
@pytest.mark.parametrize("kp", [16, 32, 48])
def test_products(rows, kp):
    rng = np.random.default_rng(3)
    t = 3 * rows
    v, u = rng.standard_normal((16, t, 48)).astype(np.float32), rng.standard_normal((16, 48, kp)).astype(np.float32)
    want = np.einsum("xtc,xck->xtk", v.astype(np.float64), u.astype(np.float64))
    for block in (48, 16, 32):  # one sum; three blocks; a block of 32 and a last one of 16
        m = np.full((16, t, kp), np.nan, np.float32)
        _products(v, _packed(u), m, rows, block)
        np.testing.assert_allclose(m, want, atol=2e-5)
        # each block's float32 sum, added to the earlier blocks' in order, rounded once per block
        summed = None
        for c0 in range(0, 48, block):
            part = np.full((16, t, kp), np.nan, np.float32)
            _products(np.ascontiguousarray(v[:, :, c0:c0 + block]), _packed(u[:, c0:c0 + block]), part, rows, 48)
            summed = part if summed is None else summed + part
        np.testing.assert_array_equal(m, summed)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_forward_against_float64(monkeypatch, shape, activation, side):
    redone = _spy_on_redos(monkeypatch)
    x_shape, c_out, padding = SHAPES[shape]
    x, w, b = _case(x_shape, c_out, shape)
    geo = Geometry(x_shape, w.shape, 1, padding, 1, 1)
    assert conv._uses_winograd(x.astype(np.float32), w.astype(np.float32), (1, 1), (1, 1), 1, "auto")
    act = {None: lambda z: z, "relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z))}[activation]
    f32 = [a.astype(np.float32) for a in (x, w, b)]
    y = ops.conv2d_forward(*f32, padding=padding, activation=activation)
    assert_matches(y, lambda x, w, b: act(geo.forward(x, w, b)), [x, w, b], np.float32)
    y = ops.conv2d_forward(*f32[:2], padding=padding, activation=activation)
    assert_matches(y, lambda x, w: act(geo.forward(x, w)), [x, w], np.float32, what="without bias")
    assert redone == []  # finite outputs: Winograd's alone


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_fused_max_pooling(shape, activation, side):
    # the pooled values and indices are those of max_pool2d over the unfused forward, bit for bit
    x_shape, c_out, padding = SHAPES[shape]
    x, w, b = (a.astype(np.float32) for a in _case(x_shape, c_out, shape))
    y = ops.conv2d_forward(x, w, b, padding=padding, activation=activation)
    if min(y.shape[2:]) < 2:
        pytest.skip("a 1 x 1 output: no 2 x 2 window")
    for kernel, stride, pad in [(2, 2, 0), (3, 1, 0), (2, 1, 1), (3, 2, 1), ((2, 1), (1, 2), 0)]:
        pooled, indices = ops.conv2d_max_pool2d_forward(x, w, b, padding=padding, activation=activation,
                                                        pool_kernel=kernel, pool_stride=stride, pool_padding=pad)
        want, want_indices = ops.max_pool2d_forward(y, kernel, stride, pad)
        np.testing.assert_array_equal(pooled, want)
        np.testing.assert_array_equal(indices, want_indices)


def test_streamed_weights_give_the_same_bits(monkeypatch, side):
    # U larger than the last-level cache is written by streaming stores: the same layer, forward and
    # backward (dx by the forward with w flipped), with every U streamed gives the same bits
    x, w, b = (a.astype(np.float32) for a in _case((2, 17, 9, 10), 33, 13))
    dy = np.random.default_rng(14).standard_normal((2, 33, 9, 10)).astype(np.float32)
    ordinary = ops.conv2d_forward(x, w, b, padding=1, activation="relu"), ops.conv2d_backward(dy, x, w, padding=1)
    from fastconv._cpu import _winograd32
    monkeypatch.setattr(_stream, "_STREAM_FROM", 0)
    kernel, flags = _winograd32._transform_weights, []

    def spy(*args):
        flags.append(args[-1])  # stream
        return kernel(*args)

    monkeypatch.setattr(_winograd32, "_transform_weights", spy)
    streamed = ops.conv2d_forward(x, w, b, padding=1, activation="relu"), ops.conv2d_backward(dy, x, w, padding=1)
    assert flags == [True, True]  # the forward's U and dx's
    np.testing.assert_array_equal(streamed[0], ordinary[0])
    for got, want in zip(streamed[1], ordinary[1]):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("band_rows", [1, 2])
def test_bands_of_tile_rows_give_the_same_bits(monkeypatch, band_rows, side):
    # an image too large for one band of v and m: bands of 1 or 2 of its tile rows (5 of F(2x2), 3 of
    # F(4x4); with 2, the last band short), bit for bit the one-band result (each tile's sums are its own)
    x, w, b = (a.astype(np.float32) for a in _case((2, 16, 9, 10), 33, 12))
    whole = ops.conv2d_forward(x, w, b, padding=1, activation="relu")
    pooled = ops.conv2d_max_pool2d_forward(x, w, b, padding=1, activation="relu", pool_kernel=2)
    cp, kp, tw = 16, 48, -(-10 // side)
    monkeypatch.setattr(_winograd, "_WINOGRAD_BAND_BYTES", (side + 2) ** 2 * (cp + kp) * 4 * tw * band_rows)
    kernel, bands = _winograd._forward_winograd, []

    def spy(*args):
        bands.append(args[10])  # band
        return kernel(*args)

    monkeypatch.setattr(_winograd, "_forward_winograd", spy)
    np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, padding=1, activation="relu"), whole)
    for got, want in zip(ops.conv2d_max_pool2d_forward(x, w, b, padding=1, activation="relu", pool_kernel=2), pooled):
        np.testing.assert_array_equal(got, want)
    assert bands == [band_rows, band_rows]


@pytest.mark.parametrize("threads", [1, 2])
def test_passes_over_several_samples_give_the_same_bits(monkeypatch, threads):
    # small images: a pass of v and m holds the tiles of 3 samples (groups 3 + 3 + 1 on one thread,
    # 3 and 3 + 1 on two), bit for bit one sample at a time; a sample with an inf is still redone
    # alone by the direct kernel, whatever group it was in
    x, w, b = (a.astype(np.float32) for a in _case((7, 16, 6, 6), 33, 14))
    x[4, 2, 3, 3] = np.inf
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(min(threads, previous))
        monkeypatch.setattr(_winograd, "_WINOGRAD_BAND_BYTES", 16 * (16 + 48) * 4)  # one tile a pass
        single = ops.conv2d_forward(x, w, b, padding=1, activation="relu")
        single_pooled = ops.conv2d_max_pool2d_forward(x, w, b, padding=1, activation="relu", pool_kernel=2)
        monkeypatch.setattr(_winograd, "_WINOGRAD_BAND_BYTES", 16 * (16 + 48) * 4 * 9 * 3)  # 3 samples of 9 tiles
        kernel, groups = _winograd._forward_winograd, []

        def spy(*args):
            groups.append((args[10], args[11]))  # band, group
            return kernel(*args)

        monkeypatch.setattr(_winograd, "_forward_winograd", spy)
        redone = _spy_on_redos(monkeypatch)
        np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, padding=1, activation="relu"), single)
        for got, want in zip(ops.conv2d_max_pool2d_forward(x, w, b, padding=1, activation="relu", pool_kernel=2),
                             single_pooled):
            np.testing.assert_array_equal(got, want)
    finally:
        numba.set_num_threads(previous)
    assert groups == [(3, 3), (3, 3)] and redone == [1, 1]


def test_large_transformed_weights_take_passes_of_many_tiles():
    # U past _WINOGRAD_CACHED_U_BYTES: at least _WINOGRAD_PASS_TILES tiles a pass, of several samples
    # when one band is a whole image; below it, the band budget alone
    cp, kp, th, tw, band, group = _winograd._winograd_blocking(512, 512, 7, 7, 4)
    assert (cp, kp, th, tw, band) == (512, 512, 4, 4, 4) and group * th * tw == _winograd._WINOGRAD_PASS_TILES
    assert _winograd._winograd_blocking(512, 512, 56, 56, 4)[4:] == (_winograd._WINOGRAD_PASS_TILES // 28, 1)
    tiles = _winograd._WINOGRAD_BAND_BYTES // (16 * 512 * 4)
    assert _winograd._winograd_blocking(256, 256, 14, 14, 4)[4:] == (tiles // 7, 1)
    assert _winograd._winograd_blocking(32, 64, 14, 14, 4)[4:] == (7, 1)  # conv2: one sample, one band


def test_same_bits_on_any_thread_count(side):
    x, w, b = (a.astype(np.float32) for a in _case((7, 32, 14, 14), 64, 9))
    pool_args = dict(padding=1, activation="relu", pool_kernel=2)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one, pooled_one = ops.conv2d_forward(x, w, b, padding=1), ops.conv2d_max_pool2d_forward(x, w, b, **pool_args)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, padding=1), one)
    for got, want in zip(ops.conv2d_max_pool2d_forward(x, w, b, **pool_args), pooled_one):
        np.testing.assert_array_equal(got, want)


def test_layers_in_two_python_threads_at_once_give_the_serial_bits():
    # U and the scratch come from the caching allocator (1 MiB and up): two threads running the
    # forward and backward of the same layers with different weights at once (F(4x4) and F(2x2), the
    # GIL released) must neither share a buffer in use nor change a bit
    layers = [(4, 96, 16, 16), (4, 128, 14, 14), (2, 48, 28, 28)]
    assert [conv._winograd._winograd_side(n, h, w) for n, _, h, w in layers] == [4, 2, 4]
    problems = []  # [thread][layer]
    for k in range(2):
        problems.append([])
        for i, x_shape in enumerate(layers):
            x, w, b = (a.astype(np.float32) for a in _case(x_shape, x_shape[1], 30 + 3 * k + i))
            dy = np.random.default_rng(k + 3 * i).standard_normal(x.shape).astype(np.float32)
            problems[k].append((x, w, b, dy))

    def run(x, w, b, dy):
        return [ops.conv2d_forward(x, w, b, padding=1, activation="relu"),
                *ops.conv2d_max_pool2d_forward(x, w, b, padding=1, pool_kernel=2),
                *ops.conv2d_backward(dy, x, w, padding=1)]

    serial = [[run(*p) for p in mine] for mine in problems]
    differ, barrier = [], threading.Barrier(2)

    def worker(k):
        barrier.wait()
        for i in range(12):
            try:
                got = run(*problems[k][i % len(layers)])
                if not all(np.array_equal(g, e) for g, e in zip(got, serial[k][i % len(layers)])):
                    differ.append((k, i))
            except Exception as e:  # noqa: BLE001 (a thread's exception would be lost)
                differ.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert differ == []


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 3e38])
def test_non_finite_samples_come_from_the_direct_kernel(monkeypatch, value, side):
    # an inf in a tile makes inf - inf = NaN of outputs the direct sum gives as inf or finite; two
    # huge finite inputs in one column of a tile overflow the input transform (d1 + d2), though the
    # direct sum (small weights) does not
    x, w, b = (a.astype(np.float32) for a in _case((4, 16, 6, 6), 16, 10))
    w *= np.float32(1e-3)
    x[1, 3, 2:4, 4] = value  # padded rows 3, 4: the second and third of tile row 1's patch
    x[3, 0, 0:2, 0] = value  # padded rows 1, 2 of column 1: tile row 0, the left tile
    y = ops.conv2d_forward(x, w, b, padding=1)
    pooled, indices = ops.conv2d_max_pool2d_forward(x, w, b, padding=1, pool_kernel=2)
    clean = ops.conv2d_forward(x[[0, 2]], w, b, padding=1)
    _direct(monkeypatch)
    direct = ops.conv2d_forward(x, w, b, padding=1)
    np.testing.assert_array_equal(y[[1, 3]], direct[[1, 3]])  # the direct kernel's bits, inf and NaN where it has them
    np.testing.assert_array_equal(y[[0, 2]], clean)  # the other samples untouched (Winograd's)
    redone = _spy_on_redos(monkeypatch)
    monkeypatch.setattr(conv, "WINOGRAD", True)
    ops.conv2d_forward(x, w, b, padding=1)
    ops.conv2d_max_pool2d_forward(x, w, b, padding=1, pool_kernel=2)
    assert redone == [2, 2]  # only the two samples with the value, pooled or not
    want, want_indices = ops.max_pool2d_forward(direct, 2, 2)
    np.testing.assert_array_equal(pooled[[1, 3]], want[[1, 3]])
    np.testing.assert_array_equal(indices[[1, 3]], want_indices[[1, 3]])
    if value == 3e38:
        assert np.isfinite(y).all()


@pytest.mark.parametrize("where", ["weight", "bias"])
def test_non_finite_weights_go_to_the_direct_kernel(monkeypatch, where):
    # every sample would be flagged: the layer skips the Winograd kernel
    x, w, b = (a.astype(np.float32) for a in _case((3, 16, 6, 6), 16, 13))
    if where == "weight":
        w[2, 5, 1, 1] = np.inf
    else:
        b[7] = np.nan
    called = []
    kernel = _winograd._forward_winograd
    monkeypatch.setattr(_winograd, "_forward_winograd", lambda *args: (called.append(1), kernel(*args))[1])
    y = ops.conv2d_forward(x, w, b, padding=1)
    assert called == []
    _direct(monkeypatch)
    np.testing.assert_array_equal(y, ops.conv2d_forward(x, w, b, padding=1))


def test_off_by_environment():
    code = "from fastconv._cpu import conv; print(conv.WINOGRAD)"
    for value, expected in [("0", "False"), ("1", "True"), ("", "True")]:
        env = dict(os.environ, FASTCONV_WINOGRAD=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, (value, out.stdout, out.stderr)


def test_many_channels_within_the_tolerance(side):
    # 512 -> 512 channels on 7x7 (F(4x4) by default): one float32 sum over 512 channels per xi, its
    # error multiplied by A^T's entries (up to 8, so 64 in 2-D), went past the suite's tolerance
    # (1.11-1.35 of it); F(4x4)'s sums in blocks of 64 channels come to ~0.3 of it
    x, w, b = _case((16, 512, 7, 7), 512, 4)
    y = ops.conv2d_forward(x.astype(np.float32), w.astype(np.float32), padding=1)
    assert_matches(y, Geometry(x.shape, w.shape, 1, 1, 1, 1).forward, [x, w], np.float32)


def test_close_to_the_direct_kernel_on_conv2(monkeypatch, side):
    # the error against float64, on the benchmark's layer: F(2x2)'s below the direct kernel's, F(4x4)'s
    # within four times it (measured: 0.3x and 2.5x; _winograd32.py)
    x, w, b = _case((8, 32, 14, 14), 64, 11)
    ref = Geometry(x.shape, w.shape, 1, 1, 1, 1).forward(x, w, b)
    f32 = [a.astype(np.float32) for a in (x, w, b)]
    winograd = np.abs(ops.conv2d_forward(*f32, padding=1) - ref).max()
    _direct(monkeypatch)
    direct = np.abs(ops.conv2d_forward(*f32, padding=1) - ref).max()
    assert winograd <= (1 if side == 2 else 4) * direct, (winograd, direct)


# ---- the backward: dW and db by the weight-gradient transforms, dx by the forward of dy ----

def test_grad_transform():
    rng = np.random.default_rng(20)
    dyh = rng.standard_normal(2 * 50 + 30 + 32).astype(np.float32)
    z = np.full(16 * 24 + 16, np.nan, np.float32)
    _grad_tile(dyh, 3, 50, 30, z, 5, 24)
    dy = np.array([[dyh[3 + a * 50 + b * 30:19 + a * 50 + b * 30] for b in range(2)] for a in range(2)], np.float64)
    expected = np.einsum("ia,abl,jb->ijl", A, dy, A).reshape(16, 16)
    np.testing.assert_allclose(np.array([z[5 + xi * 24:21 + xi * 24] for xi in range(16)]), expected, rtol=0, atol=1e-5)
    written = np.zeros(z.size, bool)
    for xi in range(16):
        written[5 + xi * 24:21 + xi * 24] = True
    assert np.isnan(z[~written]).all()


def test_weight_grad_transform():
    rng = np.random.default_rng(21)
    du = rng.standard_normal((3, 16, 32, 48)).astype(np.float32)  # 3 parts, Cp 32, Kp 48
    dw = weight_grad_transformed(du, 17, 40)
    total = du.astype(np.float64).sum(axis=0).reshape(4, 4, 32, 48)[:, :, :17, :40]
    expected = np.einsum("ai,abck,bj->kcij", G, total, G)
    assert dw.dtype == np.float32 and dw.shape == (40, 17, 3, 3)
    np.testing.assert_array_equal(dw, expected.astype(np.float32))


def test_which_backward_layers_take_it():
    x = np.zeros((2, 32, 14, 14), np.float32)
    w = np.zeros((64, 32, 3, 3), np.float32)
    assert conv._backward_uses_winograd(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1, "auto")
    assert conv._backward_uses_winograd(x, w, (1, 1), (2, 0, 2, 1), (1, 1), 1, "auto")
    assert not conv._backward_uses_winograd(x, w, (1, 1), (3, 1, 1, 1), (1, 1), 1, "auto")  # dx's padding would be -1
    assert not conv._backward_uses_winograd(x, w, (2, 2), (1, 1, 1, 1), (1, 1), 1, "auto")
    assert not conv._backward_uses_winograd(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1, "direct")
    assert not conv._backward_uses_winograd(x, np.zeros((8, 32, 3, 3), np.float32), (1, 1), (1, 1, 1, 1), (1, 1), 1, "auto")


def _spy_on_weight_grads(monkeypatch):
    calls, kernel = [], _winograd._weight_grad_winograd

    def spy(*args):
        calls.append(args[6])  # band
        return kernel(*args)

    monkeypatch.setattr(_winograd, "_weight_grad_winograd", spy)
    return calls


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_backward_against_float64(monkeypatch, shape):
    calls = _spy_on_weight_grads(monkeypatch)
    redone = _spy_on_redos(monkeypatch)
    x_shape, c_out, padding = SHAPES[shape]
    x, w, _ = _case(x_shape, c_out, shape)
    geo = Geometry(x_shape, w.shape, 1, padding, 1, 1)
    dy = np.random.default_rng(100 + shape).standard_normal((geo.n, geo.c_out, geo.oh, geo.ow))
    args = [dy, x, w]
    dx, dw, db = ops.conv2d_backward(*(a.astype(np.float32) for a in args), padding=padding)
    assert len(calls) == 1 and redone == []
    assert_matches(dx, geo.dx, args, np.float32, what="dx")
    assert_matches(dw, geo.dw, args, np.float32, what="dw")
    assert_matches(db, lambda dy, x, w: dy.sum(axis=(0, 2, 3)), args, np.float32, what="db")
    # without dx: dw and db bit for bit
    none, dw2, db2 = ops.conv2d_backward(*(a.astype(np.float32) for a in args), padding=padding, input_grad=False)
    assert none is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("shape", [0, 1, 4])
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1)])
def test_fused_pool_backward_is_the_unfused_ops(monkeypatch, shape, activation, pool):
    # conv2d_max_pool2d_backward = the activation's backward, the unpooling, conv2d_backward (the
    # Winograd backward, once each): bit for bit
    x_shape, c_out, padding = SHAPES[shape]
    x, w, b = (a.astype(np.float32) for a in _case(x_shape, c_out, shape))
    kernel, stride, pad = pool
    pooled, indices = ops.conv2d_max_pool2d_forward(x, w, b, padding=padding, activation=activation,
                                                    pool_kernel=kernel, pool_stride=stride, pool_padding=pad)
    dyp = np.random.default_rng(7).standard_normal(pooled.shape).astype(np.float32)
    calls = _spy_on_weight_grads(monkeypatch)
    fused = ops.conv2d_max_pool2d_backward(dyp, pooled, indices, x, w, padding=padding, activation=activation)
    g = dyp if activation is None else (ops.relu_backward(dyp, pooled) if activation == "relu"
                                        else ops.sigmoid_backward(dyp, pooled))
    y_shape = ops.conv2d_forward(x, w, b, padding=padding).shape
    dy = ops.max_pool2d_backward(g, indices, y_shape)
    unfused = ops.conv2d_backward(dy, x, w, padding=padding)
    assert len(calls) == 2
    for got, want in zip(fused, unfused):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("band_rows", [1, 2])
def test_backward_bands_and_threads_give_the_same_bits(monkeypatch, band_rows):
    x, w, _ = (a.astype(np.float32) for a in _case((9, 16, 9, 10), 33, 22))
    dy = np.random.default_rng(23).standard_normal((9, 33, 9, 10)).astype(np.float32)
    whole = ops.conv2d_backward(dy, x, w, padding=1)
    monkeypatch.setattr(_winograd, "_WINOGRAD_BAND_BYTES", 16 * (16 + 48) * 4 * 5 * band_rows)
    calls = _spy_on_weight_grads(monkeypatch)
    threads = numba.get_num_threads()
    try:
        for count in sorted({1, threads}):
            numba.set_num_threads(count)
            for got, want in zip(ops.conv2d_backward(dy, x, w, padding=1), whole):
                np.testing.assert_array_equal(got, want)
    finally:
        numba.set_num_threads(threads)
    assert calls and all(band == band_rows for band in calls)


def _backward_on_threads(args, padding):
    """conv2d_backward on one and on two threads (where there are two)."""
    previous, results = numba.get_num_threads(), []
    try:
        for count in sorted({1, min(2, previous)}):
            numba.set_num_threads(count)
            results.append(ops.conv2d_backward(*args, padding=padding))
    finally:
        numba.set_num_threads(previous)
    return results


@pytest.mark.parametrize("x_shape, c_out, padding", [((7, 16, 6, 6), 33, 1), ((3, 17, 9, 7), 40, (2, 0)),
                                                     ((2, 20, 12, 5), 16, 0)])
def test_backward_by_planes(monkeypatch, x_shape, c_out, padding):
    # dU split over its planes (forced here for small layers): against float64, and the same bits
    # on one and two threads and in any passes -- the whole batch in one, a few pieces each, one
    # tile row each (gemm32 adds each tile's products into dU in order; db sums samples in order)
    x, w, _ = _case(x_shape, c_out, sum(x_shape))
    geo = Geometry(x.shape, w.shape, 1, padding, 1, 1)
    dy = np.random.default_rng(31).standard_normal((geo.n, geo.c_out, geo.oh, geo.ow))
    args32 = [a.astype(np.float32) for a in (dy, x, w)]
    monkeypatch.setattr(_winograd, "_WINOGRAD_PLANES_DU_BYTES", 1)
    kernel, calls = _winograd._weight_grad_winograd_planes, []

    def spy(*a):
        calls.append(len(a[7]) - 1)  # passes
        return kernel(*a)

    monkeypatch.setattr(_winograd, "_weight_grad_winograd_planes", spy)
    cp, kp = -(-x_shape[1] // 16) * 16, -(-c_out // 16) * 16
    results = []
    for tiles_a_pass in (1 << 20, 7, 1):
        monkeypatch.setattr(_winograd, "_WINOGRAD_PLANES_PASS_BYTES", tiles_a_pass * 16 * (cp + kp) * 4)
        results += _backward_on_threads(args32, padding)
    th = (geo.oh + 1) // 2
    assert calls[0] == calls[1] == 1 and calls[-1] == calls[-2] == geo.n * th  # one pass; a pass per tile row
    for result in results[1:]:
        for got, want in zip(result, results[0]):
            np.testing.assert_array_equal(got, want)
    dx, dw, db = results[0]
    assert_matches(dx, geo.dx, [dy, x, w], np.float32, what="dx")
    assert_matches(dw, geo.dw, [dy, x, w], np.float32, what="dw")
    assert_matches(db, lambda dy, x, w: dy.sum(axis=(0, 2, 3)), [dy, x, w], np.float32, what="db")


@pytest.mark.parametrize("n, th, tw, channels", [(16, 4, 4, 512), (8, 28, 28, 256), (3, 5, 4, 16), (0, 4, 4, 512)])
def test_plane_passes_cover_every_tile_once(n, th, tw, channels):
    pieces, starts, tiles, band = _winograd._winograd_gradient_passes(n, th, tw, channels, channels, 4)
    most = max(tw, _winograd._WINOGRAD_PLANES_PASS_BYTES // (16 * 2 * channels * 4))
    assert len(starts) == len(tiles) + 1 and starts[0] == 0 and starts[-1] == len(pieces)
    assert (tiles <= most).all() and (tiles > 0).all()
    covered = []
    for p in range(len(tiles)):
        offset = 0
        for sample, ty0, ty1, first in pieces[starts[p]:starts[p + 1]]:
            assert first == offset and 0 < ty1 - ty0 <= band  # each pass's tiles one after another
            offset += (ty1 - ty0) * tw
            covered += [(sample, ty) for ty in range(ty0, ty1)]
        assert offset == tiles[p]
    assert covered == [(s, ty) for s in range(n) for ty in range(th)]


def test_which_weight_gradients_go_by_planes(monkeypatch):
    calls = []
    for name in ("_weight_grad_winograd", "_weight_grad_winograd_planes"):
        kernel = getattr(_winograd, name)
        monkeypatch.setattr(_winograd, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    for c, c_out in ((32, 64), (256, 256)):  # conv2's dU 128 KiB by parts; 256 channels' 4 MiB by planes
        x, w, _ = _case((2, c, 4, 4), c_out, c)
        dy = np.random.default_rng(c).standard_normal((2, c_out, 4, 4))
        _, dw, _ = ops.conv2d_backward(*(a.astype(np.float32) for a in (dy, x, w)), padding=1, input_grad=False)
        assert_matches(dw, Geometry(x.shape, w.shape, 1, 1, 1, 1).dw, [dy, x, w], np.float32, what="dw")
    assert calls == ["_weight_grad_winograd", "_weight_grad_winograd_planes"]


@pytest.mark.parametrize("value", [np.inf, np.nan, 3e38])
@pytest.mark.parametrize("where", ["x", "dy"])
def test_non_finite_backward_is_the_direct_kernels(monkeypatch, value, where):
    # inf - inf in the transforms spreads NaN, and two inputs of 3e38 in one patch column overflow
    # one: a dW that is not finite sends the whole backward to the direct kernel
    x, w, _ = (a.astype(np.float32) for a in _case((3, 16, 6, 6), 16, 24))
    dy = np.random.default_rng(25).standard_normal((3, 16, 6, 6)).astype(np.float32)
    w *= np.float32(1e-3)
    (x if where == "x" else dy)[1, 3, 2:4, 3] = value
    got = ops.conv2d_backward(dy, x, w, padding=1)
    _direct(monkeypatch)
    want = ops.conv2d_backward(dy, x, w, padding=1)
    for g, e in zip(got, want):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("n", [0, 9])
def test_backward_on_empty_and_many_part_batches(monkeypatch, n):
    # 0 samples (returned before any path: zero dW and db) and 9 (8 parts, one of two samples) against float64
    x, w, _ = _case((n, 16, 5, 6), 33, 28)
    geo = Geometry(x.shape, w.shape, 1, 1, 1, 1)
    dy = np.random.default_rng(29).standard_normal((n, 33, 5, 6))
    calls = _spy_on_weight_grads(monkeypatch)
    dx, dw, db = ops.conv2d_backward(*(a.astype(np.float32) for a in (dy, x, w)), padding=1)
    assert len(calls) == (1 if n else 0)
    args = [dy, x, w]
    assert_matches(dx, geo.dx, args, np.float32, what="dx")
    assert_matches(dw, geo.dw, args, np.float32, what="dw")
    assert_matches(db, lambda dy, x, w: dy.sum(axis=(0, 2, 3)), args, np.float32, what="db")


@pytest.mark.skipif(not _vecmath.AVX512, reason="the direct kernels of AVX2 hosts (the wide ones) sum over the zero "
                    "padding, where an inf weight gives inf * 0 = NaN: their NaN are not a direct sum's")
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_weights_in_the_backward(monkeypatch, value):
    # dW does not see w (finite: no redo); dx, the forward of dy with w flipped, goes to the direct
    # kernel (non-finite weights): inf and NaN where the direct backward has them
    x, w, _ = (a.astype(np.float32) for a in _case((3, 16, 6, 6), 16, 26))
    dy = np.random.default_rng(27).standard_normal((3, 16, 6, 6)).astype(np.float32)
    w[3, 5, 0, 2] = value
    dx, dw, db = ops.conv2d_backward(dy, x, w, padding=1)
    _direct(monkeypatch)
    dx_d, dw_d, db_d = ops.conv2d_backward(dy, x, w, padding=1)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(dx_d))
    np.testing.assert_array_equal(np.isposinf(dx), np.isposinf(dx_d))
    np.testing.assert_array_equal(np.isneginf(dx), np.isneginf(dx_d))
    assert np.isfinite(dw).all() and np.isfinite(db).all()
    np.testing.assert_allclose(dw, dw_d, rtol=1e-4, atol=1e-4)


def test_the_forward_takes_f4_where_its_tiles_fit():
    # F(4x4) on outputs whose products are at most 0.6 of F(2x2)'s (sides that are multiples of 4 or
    # one short of one) over at least 64 tiles in the batch; the shapes alone decide
    sides = {size: conv._winograd._winograd_side(64, size, size) for size in range(1, 33)}
    assert [size for size, side in sides.items() if side == 4] == [3, 4, 7, 8, 11, 12, 15, 16, 19, 20, 23, 24, 27,
                                                                    28, 31, 32]
    assert conv._winograd._winograd_side(1, 28, 28) == 2 and conv._winograd._winograd_side(2, 28, 28) == 4
    assert conv._winograd._winograd_side(64, 16, 28) == 4 and conv._winograd._winograd_side(64, 14, 28) == 2
    assert conv._winograd._winograd_side(16, 8, 8) == 4 and conv._winograd._winograd_side(15, 8, 8) == 2