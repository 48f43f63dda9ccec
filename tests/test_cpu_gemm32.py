"""The cpu backend's float32 GEMM (fastconv/_cpu/_gemm32.py), against float64 NumPy: every
transpose, beta 0 / 1 / other, sizes around the tile's edges (8 x 32 with AVX-512, 6 x 16 with
AVX2), strided rows, C's neighbours untouched; the same bits for a row wherever it sits; and the
convolutions' choice of it. Skipped where the host has neither (the convolutions then use
OpenBLAS: tests/test_conv*.py)."""
import numpy as np
import pytest

from fastconv import ops
from fastconv._kernel_abi import ACTIVATIONS
from fastconv._cpu import _vecmath
from fastconv._cpu.conv import _taps, _wide
from helpers import needs_simd

pytestmark = needs_simd

if _vecmath.SIMD:
    from fastconv._cpu._gemm32 import KC, MC, MR, gemm32, gemm32_blocked, gemm32_narrow, gemm32_runs

EDGES = [1, 5, 6, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33, 48, 65]


def _strided(a, extra, fill):
    """a's values in a wider array: rows at a stride larger than the row."""
    wide = np.full((a.shape[0], a.shape[1] + extra), fill, a.dtype)
    wide[:, :a.shape[1]] = a
    return wide, wide[:, :a.shape[1]]


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_gemm32_matches_float64_around_the_tile_edges(trans_a, trans_b, beta):
    rng = np.random.default_rng(int(trans_a) * 4 + int(trans_b) * 2 + int(beta * 2))
    for m in EDGES:
        for n in EDGES:
            k = int(rng.choice([1, 5, 32, 70]))
            a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
            c0 = rng.standard_normal((m, n)).astype(np.float32)
            _, a_view = _strided(a, 3, 0)
            c_wide, c = _strided(c0, 5, 7.0)
            gemm32(a_view, b, c, beta, trans_a, trans_b)
            ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b) + beta * c0
            np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k))
            assert (c_wide[:, n:] == 7).all(), "a value beside C was written"


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_gemm32_runs_reads_only_the_runs_of_a(beta):
    """A's columns in runs (a convolution's output positions on its wide grid): against the product
    of the gathered columns in float64, with NaN in the columns between the runs (never read), at
    the tile edges; and the same bits as gemm32 over the gathered columns."""
    rng = np.random.default_rng(int(beta * 2))
    for m in EDGES:
        for n in (1, 31, 32, 33, 64):
            run, a_run, runs = [(14, 16, 14), (1, 3, 5), (7, 7, 3), (28, 30, 2)][(m + n) % 4]
            a = np.full((m, runs * a_run + 3), np.nan, np.float32)
            columns = (np.arange(runs)[:, None] * a_run + np.arange(run)).reshape(-1)
            a[:, columns] = rng.standard_normal((m, columns.size)).astype(np.float32)
            b = rng.standard_normal((columns.size, n)).astype(np.float32)
            c0 = rng.standard_normal((m, n)).astype(np.float32)
            c_wide, c = _strided(c0, 5, 7.0)
            gemm32_runs(a, b, c, beta, run, a_run)
            ref = a[:, columns].astype(np.float64) @ b + beta * c0
            np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-5 * np.sqrt(columns.size))
            assert (c_wide[:, n:] == 7).all(), "a value beside C was written"
            gathered = c0.copy()
            gemm32(np.ascontiguousarray(a[:, columns]), b, gathered, beta, False, False)
            np.testing.assert_array_equal(c, gathered)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm32_narrow_gives_gemm32s_bits(trans_a, trans_b):
    """gemm32_narrow runs one tile shape, gemm32 several, each value the same chain over K: equal
    bits for every size around both's tile edges (and past the narrow layers it is chosen for),
    strided rows, with C's neighbours untouched; zeros for K = 0, nothing for an empty C."""
    rng = np.random.default_rng(10 + 2 * trans_a + trans_b)
    for m in EDGES:
        for n in EDGES:
            k = int(rng.choice([0, 1, 5, 32, 70]))
            a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
            _, a_view = _strided(a, 3, 0)
            _, b_view = _strided(b, 2, 0)
            c_wide, c = _strided(np.full((m, n), np.nan, np.float32), 5, 7.0)
            gemm32_narrow(a_view, b_view, c, 0.0, trans_a, trans_b)
            ref = np.full((m, n), np.nan, np.float32)
            gemm32(a, b, ref, 0.0, trans_a, trans_b)
            np.testing.assert_array_equal(c, ref, err_msg=f"{m} x {n} x {k}")
            assert (c_wide[:, n:] == 7).all(), "a value beside C was written"
    gemm32_narrow(np.zeros((0, 3), np.float32), np.zeros((3, 4), np.float32), np.zeros((0, 4), np.float32), 0.0,
                  False, False)
    with pytest.raises(ValueError, match="beta 0 only"):
        gemm32_narrow(a, b, ref, 1.0, trans_a, trans_b)


def test_gemm32_runs_refuses_a_partial_run():
    a, c = np.zeros((9, 40), np.float32), np.zeros((9, 32), np.float32)
    for k, run, a_run in [(10, 4, 5), (8, 0, 5), (8, 4, 3)]:
        with pytest.raises(ValueError, match="whole number of runs"):
            gemm32_runs(a, np.zeros((k, 32), np.float32), c, 0.0, run, a_run)


def test_gemm32_empty_and_zero_k():
    c = np.ones((3, 4), np.float32)
    gemm32(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), c, 1.0, False, False)
    assert (c == 1).all()
    gemm32(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), c, 0.0, False, False)
    assert (c == 0).all()
    gemm32(np.zeros((0, 5), np.float32), np.zeros((5, 4), np.float32), np.zeros((0, 4), np.float32), 0.0, False, False)


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
def test_gemm32_blocked_matches_float64_across_its_blocks_and_panels(trans_a, trans_b):
    """K around multiples of KC (B's packed blocks), rows around multiples of MC (A's panels) and of
    the tile, columns around the strips; strided rows everywhere; C's neighbours untouched. Each
    block's sums are added to C in order: the bits of gemm32 with beta 1 block after block. A
    transposed B (a layer's weight) is packed by transposes, block by block."""
    rng = np.random.default_rng(11 + trans_a + 2 * trans_b)
    for m, n, k in [(1, 1, 1), (MR + 1, 33, KC), (MC + 3, 17, KC + 1), (MC, 32, 2 * KC - 1), (2 * MC + MR - 1, 65, 3),
                    (5, 48, 3 * KC + 7), (MC - 1, 16, 2 * KC)]:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        _, a_view = _strided(a, 3, np.nan)
        _, b_view = _strided(b, 5, np.nan)
        c_wide, c = _strided(np.full((m, n), np.nan, np.float32), 5, 7.0)
        gemm32_blocked(a_view, b_view, c, trans_a, trans_b)
        op_b = b.T if trans_b else b
        ref = (a.T if trans_a else a).astype(np.float64) @ op_b
        np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k))
        assert (c_wide[:, n:] == 7).all(), "a value beside C was written"
        by_blocks = np.zeros((m, n), np.float32)
        for k0 in range(0, k, KC):
            gemm32(a[k0:k0 + KC] if trans_a else a[:, k0:k0 + KC], np.ascontiguousarray(op_b[k0:k0 + KC]), by_blocks,
                   1.0, trans_a, False)
        np.testing.assert_array_equal(c, by_blocks)
        one = np.empty((m, n), np.float32)  # (C carries the chain from block to block: gemm32's own bits)
        gemm32(a, b, one, 0.0, trans_a, trans_b)
        np.testing.assert_array_equal(c, one)


def test_gemm32_blocked_empty_and_zero_k():
    for trans_b in (False, True):
        c = np.ones((3, 4), np.float32)
        gemm32_blocked(np.zeros((3, 0), np.float32), np.zeros((4, 0) if trans_b else (0, 4), np.float32), c, False,
                       trans_b)
        assert (c == 0).all()
        gemm32_blocked(np.zeros((5, 0), np.float32), np.zeros((4, 5) if trans_b else (5, 4), np.float32),
                       np.zeros((0, 4), np.float32), True, trans_b)
        gemm32_blocked(np.zeros((3, 5), np.float32), np.zeros((0, 5) if trans_b else (5, 0), np.float32),
                       np.zeros((3, 0), np.float32), False, trans_b)


def test_a_row_gets_the_same_bits_in_a_whole_tile_and_at_the_edge():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((13, 50)).astype(np.float32)
    b = rng.standard_normal((50, 45)).astype(np.float32)
    c = np.empty((13, 45), np.float32)
    gemm32(a, b, c, 0.0, False, False)
    for r in (0, 8, 12):  # row 0 in a whole tile, 12 through the padded edge (8: either, by the tile)
        one = np.empty((1, 45), np.float32)
        gemm32(a[r:r + 1], b, one, 0.0, False, False)
        np.testing.assert_array_equal(one[0], c[r])


def test_the_stride_1_convolutions_use_our_kernels_for_float32_only(monkeypatch):
    used = []
    for module, name in ((_wide, "_forward_wide"), (_wide, "_forward_wide_gemm32"), (_taps, "_forward_taps_avx512"),
                         (_wide, "_backward_wide"), (_wide, "_backward_wide_gemm32"), (_taps, "_backward_taps_avx512")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((3, 9, 7, 6)).astype(np.float32), rng.standard_normal((10, 9, 3, 3)).astype(np.float32)
    y = ops.conv2d_forward(x, w, padding=1)
    dx, dw, _ = ops.conv2d_backward(np.ones_like(y), x, w, padding=1)
    ops.conv2d_forward(x.astype(np.float64), w.astype(np.float64), padding=1)
    ops.conv2d_backward(np.ones((3, 4, 7, 6), np.float32), x[:, :3], w[:4, :3], padding=1)  # 3 input channels
    if _vecmath.AVX512:  # the register tiles over taps
        assert used == ["_forward_taps_avx512", "_backward_taps_avx512", "_forward_wide", "_backward_wide_gemm32"]
    else:  # AVX2: the wide kernels with gemm32
        assert used == ["_forward_wide_gemm32", "_backward_wide_gemm32", "_forward_wide", "_backward_wide_gemm32"]
    monkeypatch.setattr(_vecmath, "SIMD", False)  # OpenBLAS: the same values to rounding
    monkeypatch.setattr(_vecmath, "AVX512", False)
    np.testing.assert_allclose(ops.conv2d_forward(x, w, padding=1), y, rtol=1e-5, atol=1e-5)
    dx_blas, dw_blas, _ = ops.conv2d_backward(np.ones_like(y), x, w, padding=1)
    np.testing.assert_allclose(dx_blas, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw_blas, dw, rtol=1e-5, atol=1e-4)
    assert used[-2:] == ["_forward_wide", "_backward_wide"]


def test_linear_layers_use_gemm32_for_float32_up_to_its_size_limit_with_avx2(monkeypatch):
    from fastconv._cpu import dense

    used = []
    for name in ("_linear_forward", "_linear_forward_gemm32", "_linear_forward_serial",
                 "_linear_forward_serial_gemm32", "_linear_forward_narrow", "_linear_backward",
                 "_linear_backward_gemm32", "_linear_backward_serial", "_linear_backward_serial_gemm32",
                 "_linear_backward_narrow"):
        real = getattr(dense, name)
        monkeypatch.setattr(dense, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    rng = np.random.default_rng(6)
    # on the calling thread (a narrow layer's by gemm32_narrow); there for gemm32's kernels only
    # (below _parallel.SERIAL_BELOW's work); through the threads
    for m, k, n in [(7, 9, 5), (64, 512, 64), (130, 300, 100)]:
        x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
        b, dy = rng.standard_normal(n).astype(np.float32), rng.standard_normal((m, n)).astype(np.float32)
        y = ops.linear_forward(x, w, b, activation="relu")
        np.testing.assert_allclose(y, np.maximum(x.astype(np.float64) @ w.T + b, 0), rtol=1e-5, atol=1e-4)
        dx, dw, db = ops.linear_backward(dy, x, w)
        np.testing.assert_allclose(dx, dy.astype(np.float64) @ w, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(dw, dy.T.astype(np.float64) @ x, rtol=1e-5, atol=1e-4)
        ops.linear_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    # (through the threads, the backward by gemm32 with AVX-512 only; OpenBLAS's is faster on AVX2,
    # so there the middle layer's backward stays OpenBLAS's, in the threaded kernel)
    backward = "_linear_backward_gemm32" if _vecmath.AVX512 else "_linear_backward"
    middle_backward = "_linear_backward_serial_gemm32" if _vecmath.AVX512 else "_linear_backward"
    assert used == ["_linear_forward_narrow", "_linear_backward_narrow", "_linear_forward_serial",
                    "_linear_forward_serial_gemm32", middle_backward, "_linear_forward",
                    "_linear_forward_gemm32", backward, "_linear_forward"]
    used.clear()
    monkeypatch.setattr(dense, "_GEMM32_UP_TO", m * k * n - 1)  # just past the AVX2 forward's limit: OpenBLAS
    ops.linear_forward(x, w, b)
    ops.linear_backward(dy, x, w)  # (with AVX-512 both are gemm32_blocked's at any size)
    assert used == ["_linear_forward_gemm32" if _vecmath.AVX512 else "_linear_forward", backward]


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (33, 30, 16), (455, 16, 1), (9, 32, 32), (4200, 3, 2), (0, 5, 3),
                                   (6, 0, 3), (17, 32, 17)])
def test_narrow_layers_kernels_give_the_bits_of_gemm32s(m, k, n):
    """A narrow layer's kernels on the calling thread (by gemm32_narrow) give what gemm32's serial
    kernels give, bit for bit: every epilogue, with and without the bias and dx; dW over a batch past
    dense._K_BLOCK (its blocks' sums added in float64). And a row of a narrow layer's output has the
    same bits whether its batch runs on the calling thread or through the threads (gemm32_blocked)."""
    from fastconv._cpu import dense

    assert dense._narrow(n, k)
    rng = np.random.default_rng(m + 3 * k + 7 * n)
    x, w, dy = (rng.standard_normal(s).astype(np.float32) for s in [(m, k), (n, k), (m, n)])
    b = rng.standard_normal(n).astype(np.float32)
    for act in (None, "relu", "sigmoid"):
        code = dense.epilogue_activation(act, np.float32)
        for bias in (b, dense._NO_BIAS):
            args = (x, w, bias, bias.size > 0, code)
            np.testing.assert_array_equal(dense._linear_forward_narrow(*args), dense._linear_forward_serial_gemm32(*args))
    for has_bias in (True, False):
        for input_grad in (True, False):
            narrow = dense._linear_backward_narrow(dy, x, w, has_bias, input_grad)
            for ours, theirs in zip(narrow, dense._linear_backward_serial_gemm32(dy, x, w, has_bias, input_grad)):
                np.testing.assert_array_equal(ours, theirs)
    dx, dw, db = dense._linear_backward_narrow(dy, x, w, True, True)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ w, rtol=1e-5, atol=1e-5 * np.sqrt(max(n, 1)))
    np.testing.assert_allclose(dw, dy.T.astype(np.float64) @ x, rtol=1e-5, atol=1e-5 * np.sqrt(max(m, 1)))
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5 * np.sqrt(max(m, 1)))
    if n * k == 0:
        return
    many = np.concatenate([x, rng.standard_normal((100 * dense.SERIAL_BELOW // (n * k) + 1, k)).astype(np.float32)])
    assert not dense._on_calling_thread(len(many), n, k, True)
    np.testing.assert_array_equal(ops.linear_forward(many, w, b, activation="relu")[:m],
                                  ops.linear_forward(x, w, b, activation="relu"))


@pytest.mark.parametrize("m,k,n", [(130, 300, 70), (600, 40, 20), (70, 50, 530), (520, 64, 100), (9, 3136, 10),
                                   (5, 70, 48), (410, 600, 70), (1100, 4200, 40)])
def test_linear_forward_by_gemm32_blocked_gives_the_bits_of_one_gemm32_call_for_any_split(m, k, n):
    """_linear_forward_gemm32 splits y in blocks of whole strips of 32 columns where there are enough
    strips, else in blocks of rows, each one gemm32_blocked product per block of dense._K_BLOCK of K
    (w^T packed block by block of KC, x in panels of MC rows). Every split gives the bits of one
    gemm32 call per block of dense._K_BLOCK of K (one call for K up to that; the calls' products
    added in float64, for dense._PART_ROWS rows at a time), plus the bias and ReLU in float32, which
    match float64."""
    from fastconv._cpu import dense

    rng = np.random.default_rng(m + n)
    x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    total = np.zeros((m, n))
    for k0 in range(0, k, dense._K_BLOCK):
        one = np.full((m, n), np.nan, np.float32)
        gemm32(np.ascontiguousarray(x[:, k0:k0 + dense._K_BLOCK]), np.ascontiguousarray(w[:, k0:k0 + dense._K_BLOCK]),
               one, 0.0, False, True)
        total += one
    ref = np.maximum(total.astype(np.float32) + b, np.float32(0))
    np.testing.assert_allclose(ref, np.maximum(x.astype(np.float64) @ w.T + b, 0), rtol=1e-5,
                               atol=max(1e-4, 2e-7 * k))  # (a float32 chain over K terms ~1: ~eps K)
    for blocks in (1, 2, 3, 8):
        y = np.full((m, n), np.nan, np.float32)
        dense._linear_forward_gemm32(x, False, w, True, b, True, ACTIVATIONS["relu"], blocks, y)
        np.testing.assert_array_equal(y, ref, err_msg=f"{blocks} blocks")


def _one_gemm32_per_k_block(a, b, trans_a, trans_b, k_block):
    """op(a) @ op(b) as gemm32 calls over blocks of k_block of K, their products added in float64:
    the bits dense._blocked_product promises."""
    opa, opb = (a.T if trans_a else a), (b.T if trans_b else b)
    total = np.zeros((opa.shape[0], opb.shape[1]))
    for k0 in range(0, max(1, opa.shape[1]), k_block):
        one = np.full(total.shape, np.nan, np.float32)
        gemm32(np.ascontiguousarray(opa[:, k0:k0 + k_block]), np.ascontiguousarray(opb[k0:k0 + k_block]), one, 0.0,
               False, False)
        total += one
    return total.astype(np.float32)


@pytest.mark.skipif(not _vecmath.AVX512, reason="the backward goes by gemm32 through the threads with AVX-512 only")
@pytest.mark.parametrize("m,k,n", [(600, 300, 270), (1100, 40, 20), (9000, 8, 33), (40, 700, 300), (300, 1, 1),
                                   (4500, 16, 600)])
def test_linear_backward_by_gemm32_blocked_matches_float64_and_one_call_per_k_block(m, k, n):
    """dx = dy @ w and dw = dy^T x by gemm32_blocked (K in blocks of KC, C accumulating them), dw's
    K, the batch, in blocks of dense._K_BLOCK added in float64: against float64, and the bits of one
    gemm32_blocked call per such block whatever the split over the threads. Shapes: K of dx and of dW
    past KC, a dW of fewer rows than the packed path takes (B in place), a batch past _K_BLOCK (with
    dW's rows past dense._PART_ROWS: its float64 sums a part of the rows at a time)."""
    from fastconv._cpu import dense

    rng = np.random.default_rng(m + k + n)
    dy, x, w = (rng.standard_normal(s).astype(np.float32) for s in [(m, n), (m, k), (n, k)])
    dx, dw, db = ops.linear_backward(dy, x, w)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ w, rtol=1e-5, atol=2e-6 * np.sqrt(n) * 4)
    np.testing.assert_allclose(dw, dy.T.astype(np.float64) @ x, rtol=1e-5, atol=2e-6 * np.sqrt(m) * 4)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5 * np.sqrt(m))
    one = np.empty(dx.shape, np.float32)
    gemm32_blocked(dy, w, one, False, False)
    np.testing.assert_array_equal(dx, one)
    total = np.zeros(dw.shape)
    for k0 in range(0, m, dense._K_BLOCK):
        part = np.empty(dw.shape, np.float32)
        gemm32_blocked(dy[k0:k0 + dense._K_BLOCK], x[k0:k0 + dense._K_BLOCK], part, True, False)
        total += part
    np.testing.assert_array_equal(dw, total.astype(np.float32))


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k", [(130, 300, 70), (600, 40, 20), (70, 50, 530), (9, 33, 4100), (1, 65, 3),
                                   (17, 1, 9), (64, 96, 8), (0, 5, 7), (6, 0, 7), (6, 5, 0), (410, 70, 600)])
def test_matmul_by_packed_strips_matches_float64_and_gives_one_gemm32_calls_bits_for_any_split(
        monkeypatch, m, n, k, trans_a, trans_b):
    """matmul's float32 path is the linear forward's (gemm32_blocked in blocks of columns or of rows:
    B copied into strips, or b^T packed by transposes): every split gives the bits of gemm32 over
    each K block of dense._K_BLOCK, which match float64; through ops.matmul (its size limit lifted)
    as well."""
    from fastconv._cpu import dense

    rng = np.random.default_rng(m * 7 + n * 3 + k + 2 * trans_a + trans_b)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    ref = _one_gemm32_per_k_block(a, b, trans_a, trans_b, dense._K_BLOCK)
    exact = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    np.testing.assert_allclose(ref, exact, rtol=1e-5, atol=1e-5 * np.sqrt(max(k, 1)))
    for blocks in (1, 2, 3, 8):
        y = np.full((m, n), np.nan, np.float32)
        dense._linear_forward_gemm32(a, trans_a, b, trans_b, dense._NO_BIAS, False, dense._NO_ACTIVATION, blocks, y)
        np.testing.assert_array_equal(y, ref, err_msg=f"{blocks} blocks")
    monkeypatch.setattr(dense, "_by_gemm32", lambda m, n, k: True)
    np.testing.assert_array_equal(ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b), ref)


def test_matmul_uses_gemm32_for_float32_from_its_size_on(monkeypatch):
    from fastconv._cpu import dense

    calls = []
    real = dense._linear_forward_gemm32
    monkeypatch.setattr(dense, "_linear_forward_gemm32", lambda *a: calls.append(a[-1].shape) or real(*a))
    rng = np.random.default_rng(8)
    small = 64  # 64^3 multiply-adds: np.dot's
    big = 128   # 128^3 = 2^21: ours
    assert not dense._by_gemm32(small, small, small) and dense._by_gemm32(big, big, big)
    assert not dense._by_gemm32(1, 4096, 4096) and not dense._by_gemm32(4096, 1, 4096)  # a vector's side
    assert dense._by_gemm32(2048, 4096, 4096)  # B: 8192 values a row of A
    assert dense._by_gemm32(1024, 4096, 4096) == _vecmath.AVX512  # past that, from 128 rows with AVX-512
    assert not dense._by_gemm32(64, 4096, 4096)
    for size in (small, big):
        a, b = rng.standard_normal((size, size)), rng.standard_normal((size, size))
        for dtype in (np.float32, np.float64):
            y = ops.matmul(a.astype(dtype), b.astype(dtype))
            np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-4)
    assert calls == [(big, big)]


def test_gemm32_is_compiled_once_whatever_the_layouts_and_constant_flags():
    # Called from jitted code with C-contiguous and sliced arrays (layouts C and A) and constant
    # flags, gemm32 was compiled for every combination (nine times, 2.4-2.6 s each, in a first run
    # of the digits example).
    from numba import njit, types

    from fastconv._cpu import _gemm32

    @njit
    def products(a, at, b, bt, wide, c):
        gemm32(a, b, c, 0.0, False, False)
        gemm32(at, b, c, 1.0, True, False)
        gemm32(a, bt, c, 1, False, True)
        gemm32(wide[:, :5], bt[:, :], c[:, :], 0.5, False, True)  # rows at a stride of 8: layout A

    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal((5, 6)).astype(np.float32)
    wide = np.zeros((4, 8), np.float32)
    wide[:, :5] = a
    c = np.zeros((4, 6), np.float32)
    products(a, np.ascontiguousarray(a.T), b, np.ascontiguousarray(b.T), wide, c)
    np.testing.assert_allclose(c, 2.5 * (a @ b), rtol=1e-5, atol=1e-5)  # ab, 2ab, 3ab, then ab + 0.5 * 3ab
    writable = [s for s in _gemm32._gemm32_any.signatures if s[0].mutable]
    assert len(writable) == 1, writable
    assert [t.layout for t in writable[0][:3]] == ["A", "A", "A"]
    assert writable[0][4] == writable[0][5] == types.boolean
