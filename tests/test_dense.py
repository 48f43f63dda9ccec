"""Dense path on every backend: matmul, linear forward/backward, ReLU, sigmoid, against float64
NumPy, with finite-difference gradients and the bad inputs the ops must refuse."""
import numpy as np
import pytest

from fastconv import ops
from helpers import DTYPES, assert_gradient, assert_matches, numerical_gradient, on, to_numpy

# (M, N, K): 1x1, primes, non-multiples of the tiles (64x64x16, 128x128x8), past one block in every dimension.
GEMM_SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 13), (13, 17, 19), (129, 131, 9), (130, 257, 33), (64, 128, 8),
               (3, 2, 0), (0, 4, 5)]


def _sigmoid64(z):
    return 1 / (1 + np.exp(-z))


ACT = {None: lambda z: z, "relu": lambda z: np.maximum(z, 0), "sigmoid": _sigmoid64}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_matmul(backend, m, n, k, trans_a, trans_b, dtype):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    out = ops.matmul(*on(backend, a.astype(dtype), b.astype(dtype)), trans_a=trans_a, trans_b=trans_b)
    ref = lambda a, b: (a.T if trans_a else a) @ (b.T if trans_b else b)
    assert_matches(out, ref, [a, b], dtype)


# The kernel's tile configs and their edges: 64 x 64 tiles below 96 tiles of 128 x 128, 128 x 128
# tiles from there (1290 x 1030 and 1536 x 1024); k-steps of 16 (8 for double) with and without a
# partial last step; sizes that are multiples of 4 (16-byte loads and stores) and that are not.
TILE_SHAPES = [(64, 64, 16), (128, 192, 40), (68, 132, 36), (65, 63, 17), (1290, 1030, 21), (1536, 1024, 36)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", TILE_SHAPES)
def test_matmul_tile_configs(native_backend, m, n, k, dtype):
    rng = np.random.default_rng(m + n + k)
    for trans_a, trans_b in [(False, False), (True, True), (False, True), (True, False)]:
        a = rng.standard_normal((k, m) if trans_a else (m, k))
        b = rng.standard_normal((n, k) if trans_b else (k, n))
        out = ops.matmul(*on(native_backend, a.astype(dtype), b.astype(dtype)), trans_a=trans_a, trans_b=trans_b)
        ref = lambda a, b: (a.T if trans_a else a) @ (b.T if trans_b else b)
        assert_matches(out, ref, [a, b], dtype)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True), (False, True), (True, False)])
def test_matmul_unaligned_base_pointers(native_backend, trans_a, trans_b):
    # sizes that allow 16-byte loads, but operands that start 4 bytes past a 16-byte boundary
    m, n, k = 68, 72, 40
    rng = np.random.default_rng(7)

    def unaligned(shape):
        flat = native_backend.xp.asarray(rng.standard_normal(1 + shape[0] * shape[1]).astype(np.float32))
        return flat[1:].reshape(shape)

    a, b = unaligned((k, m) if trans_a else (m, k)), unaligned((n, k) if trans_b else (k, n))
    out = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    ref = lambda a, b: (a.T if trans_a else a) @ (b.T if trans_b else b)
    assert_matches(out, ref, [to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)], np.float32)


# Few tiles and a long K: the native GEMM splits K into slices (a last partial k-step; the
# reference layer's one-tile 128x3136->128; 64 slices of which the last ones are empty).
SPLIT_K_SHAPES = [(5, 7, 1000), (1, 1, 260), (129, 3, 517), (128, 128, 3136), (3, 5, 8200), (64, 64, 1000),
                  (512, 512, 512)]


@pytest.mark.parametrize("m,n,k", SPLIT_K_SHAPES)
def test_matmul_split_k(native_backend, m, n, k):
    splits = _splits(native_backend.ext, m, n, k)
    assert splits > 1, "the shape no longer exercises split-K; pick another"
    rng = np.random.default_rng(k)
    for trans_a, trans_b in [(False, False), (True, True), (False, True), (True, False)]:
        a = rng.standard_normal((k, m) if trans_a else (m, k))
        b = rng.standard_normal((n, k) if trans_b else (k, n))
        args = on(native_backend, a.astype(np.float32), b.astype(np.float32))
        out = ops.matmul(*args, trans_a=trans_a, trans_b=trans_b)
        ref = lambda a, b: (a.T if trans_a else a) @ (b.T if trans_b else b)
        assert_matches(out, ref, [a, b], np.float32)
        again = ops.matmul(*args, trans_a=trans_a, trans_b=trans_b)  # the slices are summed in a fixed order
        assert np.array_equal(to_numpy(out), to_numpy(again))


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_forward_split_k_applies_bias_and_activation_after_the_sum(native_backend, activation, dtype):
    n, fin, fout = 6, 1100, 9
    assert _splits(native_backend.ext, n, fout, fin) > 1
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin)) / np.sqrt(fin), rng.standard_normal(fout)
    out = ops.linear_forward(*on(native_backend, x.astype(dtype), w.astype(dtype), b.astype(dtype)),
                             activation=activation)
    assert_matches(out, lambda x, w, b: ACT[activation](x @ w.T + b), [x, w, b], dtype)


def _splits(ext, m, n, k):
    return ext.gemm_splits(m, n, k, ext.gemm_tile(m, n, k))


def test_gemm_plan_is_chosen_by_shape_only(native_backend):
    ext = native_backend.ext
    SMALL, LARGE, WIDE = 0, 1, 2
    assert ext.gemm_tile(4096, 4096, 4096) == LARGE and ext.gemm_tile(4096, 1024, 1024) == LARGE  # >= 96 tiles
    assert ext.gemm_tile(1024, 1024, 1024) == WIDE and ext.gemm_tile(1024, 1024, 4096) == WIDE  # 4 slices of >= 256
    assert ext.gemm_tile(768, 768, 768) == SMALL  # 18 wide tiles would need 7 slices of 109 k
    assert ext.gemm_tile(512, 512, 512) == SMALL and ext.gemm_tile(128, 128, 3136) == SMALL
    assert ext.gemm_tile(0, 5, 100) == SMALL
    assert _splits(ext, 4096, 4096, 4096) == 1  # 1024 large tiles fill 97% of their waves
    assert _splits(ext, 1536, 1536, 1536) == 3  # 144 large tiles fill 55% of a wave; 432 blocks 82%
    assert _splits(ext, 768, 768, 768) == 3     # 144 small tiles: 27% -> 82%
    assert _splits(ext, 128, 128, 100) == 1      # too short a K to split
    assert _splits(ext, 128, 128, 3136) == 24    # 3136 / 128 slices of at least 128 k
    assert _splits(ext, 1, 1, 10**6) == 64       # at most 64 slices
    assert _splits(ext, 0, 5, 10**6) == 1 and _splits(ext, 5, 0, 10**6) == 1  # empty C
    assert ext.gemm_splits(1024, 1024, 1024, WIDE) == 4  # 32 wide tiles, one per SM: 4 slices fill 97%
    with pytest.raises(Exception, match="tile must be"):
        ext.gemm_splits(8, 8, 8, 3)


class _Planned:
    """A backend's extension with the GEMM plan forced to (tile, splits)."""

    def __init__(self, ext, tile, splits):
        self._ext, self._tile, self._splits = ext, tile, splits

    def gemm_tile(self, m, n, k):
        return self._tile

    def gemm_splits(self, m, n, k, tile):
        return self._splits

    def __getattr__(self, name):
        return getattr(self._ext, name)


# Every tile config on shapes around its edges (wide: 128 x 256, B's loads in twice A's groups), with
# and without split-K, any layout (264 x 520 x 64: interior blocks, on the unconditional-load path,
# beside edge blocks); each config must be exact on any shape, not only on those the plan gives it.
@pytest.mark.parametrize("tile", [0, 1, 2])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("m,n,k", [(128, 256, 8), (129, 257, 17), (127, 255, 9), (260, 130, 44), (3, 5, 2),
                                   (264, 520, 64)])
def test_matmul_every_tile_config(native_backend, monkeypatch, tile, splits, m, n, k):
    monkeypatch.setattr(native_backend, "ext", _Planned(native_backend.ext, tile, splits))
    rng = np.random.default_rng(m * n + k + tile)
    for trans_a, trans_b in [(False, False), (True, True), (False, True), (True, False)]:
        for dtype in DTYPES:
            a = rng.standard_normal((k, m) if trans_a else (m, k))
            b = rng.standard_normal((n, k) if trans_b else (k, n))
            out = ops.matmul(*on(native_backend, a.astype(dtype), b.astype(dtype)), trans_a=trans_a, trans_b=trans_b)
            ref = lambda a, b: (a.T if trans_a else a) @ (b.T if trans_b else b)
            assert_matches(out, ref, [a, b], dtype)
    # bias and activation in the epilogue (or after the split-K sum)
    x, w, bias = rng.standard_normal((m, k)), rng.standard_normal((n, k)), rng.standard_normal(n)
    out = ops.linear_forward(*on(native_backend, *(t.astype(np.float32) for t in (x, w, bias))), activation="relu")
    assert_matches(out, lambda x, w, b: np.maximum(x @ w.T + b, 0), [x, w, bias], np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (7, 30, 1), (130, 33, 131), (3, 257, 10)])
def test_linear_forward(backend, n, fin, fout, bias, activation, dtype):
    rng = np.random.default_rng(n + fin + fout)
    x, w, b = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin)) / np.sqrt(fin), rng.standard_normal(fout)
    args = [x, w, b if bias else None]
    out = ops.linear_forward(*on(backend, *[a if a is None else a.astype(dtype) for a in args]), activation=activation)
    ref = lambda x, w, b: ACT[activation](x @ w.T + (0 if b is None else b))
    assert_matches(out, ref, args, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (7, 30, 1), (130, 33, 131), (3, 257, 10)])
def test_linear_backward(backend, n, fin, fout, bias, dtype):
    rng = np.random.default_rng(n * fin + fout)
    dy, x, w = rng.standard_normal((n, fout)), rng.standard_normal((n, fin)), rng.standard_normal((fout, fin))
    dx, dw, db = ops.linear_backward(*on(backend, dy.astype(dtype), x.astype(dtype), w.astype(dtype)), bias=bias)
    assert_matches(dx, lambda dy, x, w: dy @ w, [dy, x, w], dtype, what="dx")
    assert_matches(dw, lambda dy, x, w: dy.T @ x, [dy, x, w], dtype, what="dw")
    if bias:
        assert_matches(db, lambda dy, x, w: dy.sum(axis=0), [dy, x, w], dtype, what="db")
    else:
        assert db is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,fin,fout", [(70, 33, 131), (130, 257, 9), (9, 3, 600), (0, 5, 7), (6, 0, 4)])
def test_cpu_linear_backward_matches_float64_for_every_split(n, fin, fout, dtype):
    """The cpu backend's parallel linear backward with OpenBLAS splits dx and dw into blocks of
    rows or of columns (dense._backward_split picks by shape); every block count and direction
    gives dx = dy w, dw = dy^T x and db = the column sums, with or without dx, empty blocks
    included."""
    from fastconv._cpu import dense

    rng = np.random.default_rng(n + fin + fout)
    dy, x, w = (rng.standard_normal(s) for s in [(n, fout), (n, fin), (fout, fin)])
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for blocks in (1, 2, 3, 8):
        for dx_by_rows in (False, True):
            for dw_by_rows in (False, True):
                for input_grad in (True, False):
                    dx = np.full(x.shape if input_grad else (0, 0), np.nan, dtype)
                    dw, db = np.full(w.shape, np.nan, dtype), np.full(fout, np.nan, dtype)
                    dense._linear_backward(dy.astype(dtype), x.astype(dtype), w.astype(dtype), True, input_grad,
                                           (blocks, dx_by_rows, dw_by_rows), dx, dw, db)
                    case = f"{blocks} blocks, dx by rows {dx_by_rows}, dw by rows {dw_by_rows}, dx {input_grad}"
                    if input_grad:
                        np.testing.assert_allclose(dx, dy @ w, **tol, err_msg=case)
                    np.testing.assert_allclose(dw, dy.T @ x, **tol, err_msg=case)
                    np.testing.assert_allclose(db, dy.sum(axis=0), **tol, err_msg=case)


@pytest.mark.parametrize("n", [2**17 - 3, 10**6])
def test_linear_bias_gradient_of_a_long_batch_loses_no_digits(backend, n):
    """db = the column sums of dy over a long batch, as a mean loss's gradient makes them (every row
    ~1/N). A float32 running sum rounds every add at its total's ulp: 10^6 rows of 1/N came out
    0.9% off (torch: 2e-7). The bound is a pairwise float32 sum's (what torch's cascade sum
    achieves): log2(N) roundings of eps32 relative to sum |dy|, where N = 10^6 rows' running sum
    is off by ~N eps32 / 2 of it in the worst case."""
    if backend.name == "emu" and n > 2**17:
        pytest.skip("the emulator's GEMM of K = 10^6 takes too long; 2^17 rows show the same")
    rng = np.random.default_rng(n)
    f32 = np.float32
    dy = np.full((n, 3), 1 / n, f32)
    dy[:, 1] = 0.1
    dy[:, 2] = (1000 + rng.standard_normal(n)).astype(f32)
    x, w = np.ones((n, 1), f32), np.ones((3, 1), f32)
    _, _, db = ops.linear_backward(*on(backend, dy, x, w), input_grad=False)
    exact = dy.sum(axis=0, dtype=np.float64)
    tol = np.ceil(np.log2(n)) * np.finfo(f32).eps * np.abs(dy).sum(axis=0, dtype=np.float64)
    np.testing.assert_array_less(np.abs(to_numpy(db) - exact), tol)


@pytest.mark.parametrize("n", [2**17, 2**20])
def test_linear_weight_gradient_of_a_long_batch_loses_no_digits(backend, n):
    """dw = dy^T x sums over the batch. With inputs ~1 and a mean loss's gradient (every dy 1/N) a
    float32 running sum over the rows drifts by up to N u of the sum (u = eps32 / 2): 2^20 rows came
    out 4e-3 off (torch: 2e-6). Rounding errors that do not drift add up like sqrt(N) u, so the bound
    is a few ulp times sqrt(N) of sum |dy x|: 4 eps32 sqrt(N), 5e-4 at 2^20."""
    if backend.name == "emu" and n > 2**17:
        pytest.skip("the emulator's GEMM of K = 2^20 takes too long")
    rng = np.random.default_rng(n)
    f32 = np.float32
    x = (1 + 0.01 * rng.random((n, 8))).astype(f32)
    dy, w = np.full((n, 8), 1 / n, f32), np.ones((8, 8), f32)
    _, dw, _ = ops.linear_backward(*on(backend, dy, x, w), input_grad=False)
    exact = dy.T.astype(np.float64) @ x
    tol = 4 * np.finfo(f32).eps * np.sqrt(n) * (np.abs(dy).T.astype(np.float64) @ np.abs(x))
    np.testing.assert_array_less(np.abs(to_numpy(dw) - exact), tol)


@pytest.mark.parametrize("n,fin,fout", [(16, 2**20, 16), (1, 2**18, 1), (3, 5000, 40)])
def test_linear_forward_of_many_inputs_loses_no_digits(backend, n, fin, fout):
    """y = x @ w.T sums over in_features. With inputs ~1 and weights 1/K (an average) a float32
    running sum over 2^20 inputs drifted to 5.5e-3 off (torch: 2e-6); the bound, as for the weight
    gradient above: 4 eps32 sqrt(K) of sum |x w|. The shapes take the cpu backend's parallel and
    serial GEMMs, and a K of several blocks with a partial last one."""
    if backend.name == "emu" and n * fin * fout > 2**24:
        pytest.skip("the emulator's GEMM of 2^28 multiply-adds takes too long")
    rng = np.random.default_rng(fin)
    f32 = np.float32
    x, w = (1 + 0.01 * rng.random((n, fin))).astype(f32), np.full((fout, fin), 1 / fin, f32)
    w[-1] = rng.random(fin) / fin  # one output of uneven weights
    y = to_numpy(ops.linear_forward(*on(backend, x, w)))
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    tol = 4 * np.finfo(f32).eps * np.sqrt(fin) * (np.abs(x).astype(np.float64) @ np.abs(w).T)
    np.testing.assert_array_less(np.abs(y - exact), tol)


def test_cpu_linear_backward_split_keeps_blocks_of_512_and_equal_tasks():
    from fastconv._cpu import dense

    assert dense._backward_split(8192, 256, 512, own=False) == (2, True, False)     # dw: 512 columns of x
    assert dense._backward_split(8192, 256, 2048, own=False) == (4, True, False)
    assert dense._backward_split(4096, 1024, 1024, own=False) == (2, True, False)
    assert dense._backward_split(2048, 4096, 1024, own=False) == (4, True, True)
    assert dense._backward_split(1024, 1024, 4096, own=False) == (8, False, False)
    assert dense._backward_split(100, 10, 20, own=False) == (1, True, False)
    assert dense._backward_split(128, 128, 3136, own=True) == (8, False, False)     # gemm32: as before
    # blocks of >= 512 past two: 128-1023 still split in two (one block would be one core's task)
    assert [dense._openblas_blocks(n) for n in (1, 127, 128, 511, 1000, 1023, 1024, 2048, 4096, 8192)] == \
        [1, 1, 2, 2, 2, 2, 2, 4, 8, 8]


@pytest.mark.parametrize("m,k,n,float64,rule", [(1000, 1000, 1000, False, "gemm32-avx512"),  # past the AVX2 limit
                                                (256, 1024, 512, False, "gemm32"), (256, 1024, 512, True, "openblas"),
                                                (768, 768, 768, True, "openblas"),
                                                (1024, 2048, 256, False, "gemm32-avx512"),
                                                (4200, 2048, 64, False, "gemm32-avx512")])
def test_cpu_linear_forward_splits_by_the_rule_of_its_gemm(monkeypatch, m, k, n, float64, rule):
    """The forward through the threads: gemm32's products in a block a thread (_gemm32_blocks), OpenBLAS's
    in blocks of >= 512 past two (_openblas_blocks): the kernel and the block count it gets. Past
    _GEMM32_UP_TO multiply-adds gemm32's with AVX-512 only."""
    import numba

    from fastconv._cpu import _vecmath, dense

    if rule == "gemm32" and not _vecmath.SIMD:
        pytest.skip("gemm32 needs AVX-512 or AVX2")
    if rule == "gemm32-avx512":
        rule = "gemm32" if _vecmath.AVX512 else "openblas"
    calls = []
    real_run = dense.run
    def run(kernel, work, *args):  # args[-2]: the block count
        calls.append((kernel, args[-2]))
        return real_run(kernel, work, *args)

    monkeypatch.setattr(dense, "run", run)
    dtype = np.float64 if float64 else np.float32
    x, w = np.ones((m, k), dtype), np.ones((n, k), dtype)
    y = dense.linear_forward(x, w, None, None)
    assert (y == k).all()
    if rule == "gemm32":
        expected = (dense._linear_forward_gemm32, dense._gemm32_blocks(m, n, numba.get_num_threads()))
    else:
        expected = (dense._linear_forward, dense._openblas_blocks(max(m, n)))
    assert calls == [expected]


@pytest.mark.parametrize("m,k,n", [(300, 8192, 120), (2100, 2048, 70), (4200, 300, 260)])
def test_cpu_linear_forward_past_the_avx2_limit(m, k, n):
    # past 2^28 multiply-adds, gemm32_blocked's with AVX-512 (OpenBLAS's with AVX2): K in blocks of
    # 4096 added in float64 (8192: two), or one product; bias and ReLU after, against float64
    from fastconv._cpu import dense

    rng = np.random.default_rng(k)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(m, k), (n, k), (n,)])
    assert m * n * k > dense._GEMM32_UP_TO
    y = dense.linear_forward(x, w, b, "relu")
    assert_matches(y, lambda x, w, b: np.maximum(x @ w.T + b, 0), [x, w, b], np.float32)


@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (130, 33, 131), (0, 4, 3), (128, 3136, 128)])
def test_linear_backward_without_input_grad(backend, n, fin, fout):
    # input_grad=False (a first layer): no dx, and dw / db bit for bit those of the full backward
    rng = np.random.default_rng(fin)
    args = on(backend, *(rng.standard_normal(s).astype(np.float32) for s in [(n, fout), (n, fin), (fout, fin)]))
    _, dw, db = ops.linear_backward(*args)
    dx_skipped, dw_skipped, db_skipped = ops.linear_backward(*args, input_grad=False)
    assert dx_skipped is None
    np.testing.assert_array_equal(to_numpy(dw_skipped), to_numpy(dw))
    np.testing.assert_array_equal(to_numpy(db_skipped), to_numpy(db))


def test_linear_gradients_by_finite_differences(backend):
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    dy = rng.standard_normal((4, 3))

    def forward(x, w, b):
        return to_numpy(ops.linear_forward(*on(backend, x, w, b)))

    dx, dw, db = ops.linear_backward(*on(backend, dy, x, w))
    for i, (name, grad) in enumerate([("dx", dx), ("dw", dw), ("db", db)]):
        assert_gradient(grad, numerical_gradient(forward, [x, w, b], i, dy), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4, 5), (1000, 33)])
def test_relu_sigmoid(backend, shape, dtype):
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape) * 5
    dy = rng.standard_normal(shape)
    assert_matches(ops.relu_forward(on(backend, x.astype(dtype))), lambda x: np.maximum(x, 0), [x], dtype)
    assert_matches(ops.relu_backward(*on(backend, dy.astype(dtype), x.astype(dtype))),
                   lambda dy, x: dy * (x > 0), [dy, x], dtype)
    assert_matches(ops.sigmoid_forward(on(backend, x.astype(dtype))), _sigmoid64, [x], dtype)
    y = _sigmoid64(x)
    assert_matches(ops.sigmoid_backward(*on(backend, dy.astype(dtype), y.astype(dtype))),
                   lambda dy, y: dy * y * (1 - y), [dy, y], dtype)


def test_activation_gradients_by_finite_differences(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from ReLU's kink
    dy = rng.standard_normal((3, 7))
    relu = lambda x: to_numpy(ops.relu_forward(on(backend, x)))
    sigmoid = lambda x: to_numpy(ops.sigmoid_forward(on(backend, x)))
    assert_gradient(ops.relu_backward(*on(backend, dy, x)), numerical_gradient(relu, [x], 0, dy), "relu")
    y = ops.sigmoid_forward(on(backend, x))
    assert_gradient(ops.sigmoid_backward(on(backend, dy), y), numerical_gradient(sigmoid, [x], 0, dy), "sigmoid")


def test_sigmoid_extremes_and_nan(backend):
    x = np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4, np.nan], dtype=np.float32)
    y = to_numpy(ops.sigmoid_forward(on(backend, x)))
    assert np.all(np.isfinite(y[:-1])) and np.isnan(y[-1])
    assert y[0] == 0.0 and y[-2] == 1.0 and y[3] == 0.5
    r = to_numpy(ops.relu_forward(on(backend, x)))
    assert np.isnan(r[-1]) and r[0] == 0 and r[-2] == 1e4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_passes_the_gradient_at_nan_as_torch(backend, dtype):
    # torch's ReLU backward is where(x <= 0, 0, dy): 0 only where x is known to be <= 0, so a NaN
    # input (whose output is NaN too) passes dy on; it got 0 before. The 4099 values take the
    # cpu backend's parallel loop; x = NaN at both ends of it.
    x = np.tile(np.array([np.nan, -1.0, 0.0, -0.0, 2.0, np.inf, -np.inf], dtype), 586)[:4099]
    x[-1] = np.nan
    dy = np.arange(1, x.size + 1, dtype=dtype)
    dx = to_numpy(ops.relu_backward(*on(backend, dy, x)))
    np.testing.assert_array_equal(dx, np.where(x <= 0, 0, dy))
    assert dx[0] == 1 and dx[-1] == x.size


def test_non_contiguous_views_are_read_correctly(backend):
    rng = np.random.default_rng(5)
    big = rng.standard_normal((40, 30)).astype(np.float32)
    a = big[::2, 1::3]           # stepped slice
    b = big[:7, :10].T           # transpose: (10, 7)
    c = big[::-1, ::-1][:10, :]  # negative strides
    assert_matches(ops.matmul(*on(backend, a, b)), lambda a, b: a @ b, [a, b], np.float32)
    assert_matches(ops.relu_forward(on(backend, c)), lambda c: np.maximum(c, 0), [c], np.float32)
    w = np.asfortranarray(rng.standard_normal((10, 30)).astype(np.float32))
    assert_matches(ops.linear_forward(*on(backend, c, w)), lambda c, w: c @ w.T, [c, w], np.float32)


class TestBadInput:
    def test_inner_dimensions(self, backend):
        a, b = on(backend, np.ones((3, 4), np.float32), np.ones((5, 6), np.float32))
        with pytest.raises(ValueError, match=r"inner dimensions disagree.*\(3, 4\).*\(5, 6\)"):
            ops.matmul(a, b)

    def test_wrong_ndim(self, backend):
        with pytest.raises(ValueError, match=r"a must be 2-D, got shape \(3,\)"):
            ops.matmul(*on(backend, np.ones(3, np.float32), np.ones((3, 3), np.float32)))
        with pytest.raises(ValueError, match=r"x must be 2-D"):
            ops.linear_forward(*on(backend, np.ones((2, 3, 4), np.float32), np.ones((3, 4), np.float32)))

    def test_integer_and_mixed_dtypes(self, backend):
        with pytest.raises(TypeError, match=r"a must be float32 or float64, got integer"):
            ops.matmul(*on(backend, np.ones((2, 2), np.int64), np.ones((2, 2), np.float32)))
        with pytest.raises(TypeError, match=r"b is float64 but the other inputs are float32"):
            ops.matmul(*on(backend, np.ones((2, 2), np.float32), np.ones((2, 2), np.float64)))
        with pytest.raises(TypeError, match=r"complex"):
            ops.relu_forward(on(backend, np.ones(3, np.complex64)))

    def test_linear_shapes(self, backend):
        x, w = on(backend, np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
        with pytest.raises(ValueError, match=r"in_features 3 != 5"):
            ops.linear_forward(x, w)
        x, w, b = on(backend, np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), np.ones(5, np.float32))
        with pytest.raises(ValueError, match=r"b must be \(4,\)"):
            ops.linear_forward(x, w, b)
        with pytest.raises(ValueError, match=r"dy is \(2, 5\) but x @ w.T is \(2, 4\)"):
            ops.linear_backward(on(backend, np.ones((2, 5), np.float32)), x, w)

    def test_unknown_activation(self, backend):
        x, w = on(backend, np.ones((2, 3), np.float32), np.ones((4, 3), np.float32))
        with pytest.raises(ValueError, match=r"activation must be None, 'relu' or 'sigmoid', got 'tanh'"):
            ops.linear_forward(x, w, activation="tanh")

    def test_elementwise_shape_mismatch(self, backend):
        with pytest.raises(ValueError, match=r"relu_backward: dy is \(3,\) but x is \(4,\)"):
            ops.relu_backward(*on(backend, np.ones(3, np.float32), np.ones(4, np.float32)))

    def test_flags_must_be_bool(self, backend):
        with pytest.raises(TypeError, match="trans_a must be True or False"):
            ops.matmul(*on(backend, np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)), trans_a="yes")


def test_linear_with_an_empty_sum_gives_zeros(backend):
    # out_features = 0 makes dx's sum empty, an empty batch makes dw's: both are zeros, not garbage
    f32 = np.float32
    dx, dw, db = ops.linear_backward(*on(backend, np.ones((3, 0), f32), np.ones((3, 4), f32), np.ones((0, 4), f32)))
    np.testing.assert_array_equal(to_numpy(dx), np.zeros((3, 4)))
    assert to_numpy(dw).shape == (0, 4) and to_numpy(db).shape == (0,)
    dx, dw, db = ops.linear_backward(*on(backend, np.ones((0, 2), f32), np.ones((0, 4), f32), np.ones((2, 4), f32)))
    np.testing.assert_array_equal(to_numpy(dw), np.zeros((2, 4)))
    np.testing.assert_array_equal(to_numpy(db), np.zeros(2))
    np.testing.assert_array_equal(to_numpy(ops.matmul(*on(backend, np.ones((3, 0), f32), np.ones((0, 2), f32)))),
                                  np.zeros((3, 2)))


class _RecordedGemm:
    """A backend's extension whose GEMM launchers only record each call's M (rows of C)."""

    def __init__(self, ext):
        self._ext, self.rows = ext, []

    def _record(self, a, b, bias, c, m, *args):
        self.rows.append(m)

    gemm_f32 = gemm_f64 = _record

    def __getattr__(self, name):
        return getattr(self._ext, name)


def test_gemm_of_more_rows_than_the_grid_holds_runs_in_row_blocks(native_backend, monkeypatch):
    """C's rows are the grid's y dimension, at most 65535 blocks of BM >= 64 rows: a linear layer or
    matmul of more rows (e.g. per-pixel features, 9M x 1) raised 'gemm: M too large for the grid's y
    dimension' on emu and cuda. Such products run in row blocks of A and C, each within the grid."""
    from fastconv._native import dense as native_dense
    recorded = _RecordedGemm(native_backend.ext)
    monkeypatch.setattr(native_backend, "ext", recorded)
    rows = 2 * 65535 * 64 + 5
    x = native_backend.xp.zeros((rows, 1), np.float32)
    ops.linear_forward(x, native_backend.xp.zeros((1, 1), np.float32))
    assert max(recorded.rows) <= 65535 * 64 and sum(recorded.rows) == rows
    monkeypatch.undo()
    # the blocks' results, with a small block size: every row once, bias and activation on each block
    monkeypatch.setattr(native_dense, "GEMM_MAX_ROWS", 48)
    rng = np.random.default_rng(12)
    a, b, bias = rng.standard_normal((130, 7)), rng.standard_normal((5, 7)), rng.standard_normal(5)
    for trans_a in (False, True):
        a_in = a.T.copy() if trans_a else a
        out = ops.matmul(*on(native_backend, a_in.astype(np.float32), b.astype(np.float32)), trans_a=trans_a,
                         trans_b=True)
        assert_matches(out, lambda a, b: a @ b.T, [a, b], np.float32)
    out = ops.linear_forward(*on(native_backend, *(t.astype(np.float64) for t in (a, b, bias))), activation="sigmoid")
    assert_matches(out, lambda x, w, c: _sigmoid64(x @ w.T + c), [a, b, bias], np.float64)
    dy = rng.standard_normal((130, 5))
    dx, dw, db = ops.linear_backward(*on(native_backend, *(t.astype(np.float32) for t in (dy, a, b))))
    assert_matches(dx, lambda dy, w: dy @ w, [dy, b], np.float32)
    assert_matches(dw, lambda dy, x: dy.T @ x, [dy, a], np.float32)


def test_cpu_fused_sigmoid_epilogue_compiles_without_numba_ir_warnings(tmp_path):
    """The float64 epilogues compile the _SIGMOID16 branch too (sigmoid_in_place's scalar form):
    inlined at the IR level into _epilogue it warned NumbaIRAssumptionWarning ('... is not in
    scope', 'please report to Numba') on a fresh cache, in users' first float64 training step. A
    child process with its own empty cache compiles the linear forwards, serial and threaded,
    with that warning an error."""
    import os
    import subprocess
    import sys
    code = ("import warnings, numpy as np, fastconv; from fastconv import ops; from numba.core import errors\n"
            "warnings.simplefilter('error', errors.NumbaIRAssumptionWarning); fastconv.use_backend('cpu').__enter__()\n"
            "for dt in (np.float64, np.float32):\n"
            "    for n, k, m in ((3, 4, 5), (600, 64, 64)):\n"
            "        ops.linear_forward(np.ones((n, k), dt), np.ones((m, k), dt), np.ones(m, dt), activation='sigmoid')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONPATH=root)
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "NumbaIRAssumptionWarning" not in result.stderr, result.stderr[-2000:]
