"""Losses on every backend: softmax cross-entropy (weights, label smoothing), BCE with logits
(pos_weight, probabilistic targets), MSE, and their gradients, against float64 NumPy references
written from torch's definitions, with finite-difference checks, extreme and NaN inputs, and the
bad inputs the ops must refuse."""
import numpy as np
import pytest

import fastconv
from fastconv import ops
from helpers import DTYPES, assert_gradient, assert_matches, numerical_gradient, on, to_numpy

# ---- float64 references --------------------------------------------------------------------------


def log_softmax64(z):
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy64(z, y, w, eps):
    """torch.nn.functional.cross_entropy(z, y, weight=w, label_smoothing=eps), reduction="mean"."""
    n, classes = z.shape
    logp = log_softmax64(z)
    wv = np.ones(classes, z.dtype) if w is None else w
    wy = wv[y]
    nll = -logp[np.arange(n), y]
    smooth = -(logp * wv).sum(axis=1)
    return ((1 - eps) * (wy * nll).sum() + eps / classes * smooth.sum()) / wy.sum()


def cross_entropy_grad64(p, y, w, eps):
    """d cross_entropy64 / dz written with p = softmax(z)."""
    n, classes = p.shape
    wv = np.ones(classes, p.dtype) if w is None else w
    wy = wv[y][:, None]
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1
    g = p * ((1 - eps) * wy + eps / classes * wv.sum()) - (1 - eps) * wy * onehot - eps / classes * wv
    return g / wv[y].sum()


def bce64(x, t, pw):
    """torch.nn.functional.binary_cross_entropy_with_logits(x, t, pos_weight=pw), mean."""
    pw = 1 if pw is None else pw
    softplus_neg = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)
    return ((1 - t) * x + (1 + (pw - 1) * t) * softplus_neg).mean()


def bce_grad64(x, t, pw):
    pw = 1 if pw is None else pw
    e = np.exp(-np.abs(x))  # sigmoid(x) and sigmoid(-x) without overflow, each to its last bit
    sigmoid_pos, sigmoid_neg = np.where(x >= 0, 1 / (1 + e), e / (1 + e)), np.where(x >= 0, e / (1 + e), 1 / (1 + e))
    return ((1 - t) * sigmoid_pos - pw * t * sigmoid_neg) / x.size


def mse64(p, t):
    return ((p - t) ** 2).mean()


# ---- softmax cross-entropy -----------------------------------------------------------------------

# (N, C): one class, two classes, a few shapes of each kind (ROW_PATH_SHAPES below walks the
# native row kernel's boundaries); (601, 7): three blocks of 256 one-thread rows, then the mean.
CE_SHAPES = [(1, 1), (1, 2), (6, 3), (9, 256), (2, 257), (3, 1000), (601, 7)]
CE_OPTIONS = {"plain": (False, 0.0), "weight": (True, 0.0), "smoothing": (False, 0.1), "weight+smoothing": (True, 0.25)}


def _cross_entropy_case(n, classes, with_weight, seed=0):
    rng = np.random.default_rng(seed + 31 * n + classes)
    z = rng.standard_normal((n, classes)) * 3
    y = rng.integers(0, classes, n)
    w = rng.uniform(0.2, 2.0, classes) if with_weight else None
    return z, y, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", CE_OPTIONS)
@pytest.mark.parametrize("n,classes", CE_SHAPES)
def test_cross_entropy(backend, n, classes, option, dtype):
    with_weight, eps = CE_OPTIONS[option]
    z, y, w = _cross_entropy_case(n, classes, with_weight)
    wd = None if w is None else w.astype(dtype)
    loss, probs = ops.softmax_cross_entropy_forward(*on(backend, z.astype(dtype), y, wd), label_smoothing=eps)
    assert loss.shape == () and isinstance(loss, backend.xp.ndarray)
    assert_matches(loss, lambda z, y, w: cross_entropy64(z, y, w, eps), [z, y, w], dtype, what="loss")
    assert_matches(probs, lambda z: np.exp(log_softmax64(z)), [z], dtype, what="probs")

    p = np.exp(log_softmax64(z))
    grad = ops.softmax_cross_entropy_backward(*on(backend, p.astype(dtype), y, wd), label_smoothing=eps)
    assert_matches(grad, lambda p, y, w: cross_entropy_grad64(p, y, w, eps), [p, y, w], dtype, what="dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", CE_OPTIONS)
# (one class: the gradient is exactly 0 and the reference's is rounding noise, below any tolerance)
@pytest.mark.parametrize("n,classes", [shape for shape in CE_SHAPES if shape[1] > 1])
def test_cross_entropy_with_grad_is_forward_then_backward(backend, n, classes, option, dtype):
    """The fused op against the float64 reference and against the two ops it fuses (warp-owned
    rows up to 256 classes, block-owned rows past that on the native backends)."""
    with_weight, eps = CE_OPTIONS[option]
    z, y, w = _cross_entropy_case(n, classes, with_weight, seed=n + classes)
    args = on(backend, z.astype(dtype), y, None if w is None else w.astype(dtype))
    loss, grad = ops.softmax_cross_entropy_with_grad(*args, label_smoothing=eps)
    assert loss.shape == () and grad.shape == (n, classes) and grad.dtype == dtype
    assert_matches(loss, lambda z, y, w: cross_entropy64(z, y, w, eps), [z, y, w], dtype, what="loss")
    assert_matches(grad, lambda z, y, w: cross_entropy_grad64(np.exp(log_softmax64(z)), y, w, eps), [z, y, w], dtype,
                   what="dlogits")
    loss2, probs = ops.softmax_cross_entropy_forward(*args, label_smoothing=eps)
    grad2 = ops.softmax_cross_entropy_backward(probs, *args[1:], label_smoothing=eps)
    assert to_numpy(loss) == to_numpy(loss2)
    # The same formula on the same p; a compiler may still contract the two kernels differently.
    g2 = to_numpy(grad2)
    np.testing.assert_allclose(to_numpy(grad), g2, rtol=0, atol=4 * np.finfo(dtype).eps * np.abs(g2).max())


# (N, C) at each boundary of the native row kernel (csrc/kernels/loss.cuh, row_plan): short rows
# (2 cached chunks per lane) with 1 | 2 lanes at C = 8 | 9, 2 | 4 at 16 | 17, short | long (8
# chunks per lane) at 32 | 33; long rows with 2 | 4 lanes at 64 | 65, 4 | 8 at 128 | 129, 8 | 16 at
# 256 | 257, 16 | 32 at 512 | 513; a warp's registers full at 1024 floats (512 doubles), later
# chunks read in pairs past them (float: 3 later chunks per lane at 1408, an odd count; 24 at
# 4096, even); a warp | the block at 4096 | 4097; the block's registers full at 8192 floats, pairs
# past them at 10241. C not a multiple of 4 (no 16-byte loads): 9, 17, 33, 65, 129, 257, 1001, 4097,
# 10241. N: one block (which then also writes the mean) or more (the mean kernel after) for 256 /
# 128 / 64 rows per block (short), 128 / 64 / 32 / 16 / 8 / 1 (long); (128, 10) is the reference
# training step's batch.
ROW_PATH_SHAPES = [(257, 8), (3, 9), (128, 10), (129, 10), (70, 16), (5, 17), (65, 32), (3, 33), (129, 64),
                   (17, 65), (65, 100), (16, 128), (65, 129), (9, 256), (33, 257), (9, 512), (3, 513), (17, 600),
                   (2, 1001), (3, 1024), (2, 1025), (2, 1408), (2, 4096), (2, 4097), (1, 8192), (2, 8193),
                   (2, 10241)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("option", CE_OPTIONS)
@pytest.mark.parametrize("n,classes", ROW_PATH_SHAPES)
def test_cross_entropy_row_paths(backend, n, classes, option, dtype):
    """Forward and fused op on every path of the row kernel, with weights and smoothing on each:
    against the float64 reference, and the fused op against the forward and backward it fuses."""
    with_weight, eps = CE_OPTIONS[option]
    z, y, w = _cross_entropy_case(n, classes, with_weight, seed=7)
    args = on(backend, z.astype(dtype), y, None if w is None else w.astype(dtype))
    loss, grad = ops.softmax_cross_entropy_with_grad(*args, label_smoothing=eps)
    loss2, probs = ops.softmax_cross_entropy_forward(*args, label_smoothing=eps)
    assert_matches(loss, lambda z, y, w: cross_entropy64(z, y, w, eps), [z, y, w], dtype, what="loss")
    assert_matches(probs, lambda z: np.exp(log_softmax64(z)), [z], dtype, what="probs")
    assert_matches(grad, lambda z, y, w: cross_entropy_grad64(np.exp(log_softmax64(z)), y, w, eps), [z, y, w], dtype,
                   what="dlogits")
    assert to_numpy(loss) == to_numpy(loss2)
    g2 = to_numpy(ops.softmax_cross_entropy_backward(probs, *args[1:], label_smoothing=eps))
    np.testing.assert_allclose(to_numpy(grad), g2, rtol=0, atol=4 * np.finfo(dtype).eps * np.abs(g2).max())


@pytest.mark.parametrize("classes", [1, 8, 12, 129, 1024, 4097, 8192])
def test_cross_entropy_one_class_and_unaligned_rows(backend, classes):
    """One class (loss 0, gradient 0 up to rounding), and C-contiguous logits (probs for the
    backward) that start 4 bytes past a 16-byte boundary, so that no row is 16-byte aligned even
    where C is a multiple of 4: the scalar loads and stores."""
    rng = np.random.default_rng(classes)
    n = 3
    z = rng.standard_normal((n, classes)).astype(np.float32)
    y = rng.integers(0, classes, n)
    flat = on(backend, np.zeros(n * classes + 1, np.float32))
    logits = flat[1:].reshape(n, classes)  # an offset view, still C-contiguous
    logits[...] = on(backend, z)
    loss, grad = ops.softmax_cross_entropy_with_grad(logits, on(backend, y))
    assert_matches(loss, lambda z, y: cross_entropy64(z, y, None, 0.0), [z, y], np.float32, what="loss")
    assert_matches(grad, lambda z, y: cross_entropy_grad64(np.exp(log_softmax64(z)), y, None, 0.0), [z, y],
                   np.float32, what="dlogits")
    p = np.exp(log_softmax64(z))
    logits[...] = on(backend, p.astype(np.float32))  # the backward's probs, at the same offset
    assert_matches(ops.softmax_cross_entropy_backward(logits, on(backend, y)),
                   lambda p, y: cross_entropy_grad64(p, y, None, 0.0), [p, y], np.float32, what="backward dlogits")
    if classes == 1:
        assert float(loss) == 0 and np.all(np.abs(to_numpy(grad)) <= np.finfo(np.float32).eps)


@pytest.mark.parametrize("classes", [3, 10, 129, 1025, 4097, 8193])
def test_cross_entropy_infinite_and_nan_logits_on_each_path(backend, classes):
    """-inf logits are probability 0 (finite loss when the label's logit is finite and there is no
    smoothing); a row of only -inf, a +inf or a NaN logit makes that row's values NaN, others not."""
    rng = np.random.default_rng(classes)
    z = rng.standard_normal((5, classes)).astype(np.float32)
    z[0, 1:] = -np.inf           # row 0: all but the label's logit -inf
    z[1, : classes // 2 + 1] = -np.inf  # row 1: the first half -inf, the label in the second half
    y = np.array([0, classes - 1, 0, 0, 0])
    loss, grad = ops.softmax_cross_entropy_with_grad(*on(backend, z[:2], y[:2]))
    assert np.isfinite(float(loss))
    nll = lambda z, y: -log_softmax64(z)[np.arange(len(y)), y].mean()  # (0 * -inf in the smoothing term)
    assert_matches(loss, nll, [z[:2], y[:2]], np.float32, what="loss")
    _, probs = ops.softmax_cross_entropy_forward(*on(backend, z[:2], y[:2]))
    probs = to_numpy(probs)
    assert probs[0, 0] == 1 and not np.any(probs[0, 1:]) and not np.any(probs[1, : classes // 2 + 1])
    z[2, :] = -np.inf
    z[3, classes // 2] = np.inf
    z[4, classes - 1] = np.nan
    for bad in (2, 3, 4):
        rows = [0, 1, bad]
        loss, grad = ops.softmax_cross_entropy_with_grad(*on(backend, z[rows], y[rows]))
        _, probs = ops.softmax_cross_entropy_forward(*on(backend, z[rows], y[rows]))
        assert np.isnan(float(loss))
        for out in (to_numpy(grad), to_numpy(probs)):
            assert np.all(np.isnan(out[2])) and np.all(np.isfinite(out[:2]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [5, 1000, 5000])  # (5000: past SPAN / GUESS_BLOCK, blocks of one row)
def test_cross_entropy_rows_whose_label_logit_is_far_below_their_max(backend, classes, dtype):
    """The cpu's AVX-512 rows shift each row by its label's logit when the row's exps allow it, else
    by its max (loss.GUESS_BLOCK): rows whose largest logit (two classes tie there) is 0 to 1e30 past
    the label's, across where that shift is given up (~15.2 with the tie; 41.6, the bound it first
    had; the float32 exp's overflow at 88.7; 66735172, where the table exp alone gave 0), alone and in
    runs longer than the rows shifted by their max after a miss; and a label's logit of -inf (loss
    inf, the gradient finite). Every backend, against float64; each probability above 1e-30 also to a
    relative 1e-4 (the absolute tolerance alone would pass a wrong small one), those above 0.01 to
    1.5e-6 (the bound loss.py states; with the 2^60 bound the float32 rounding of z_c - z_y put up
    to 3.7e-6 on them: rows built to show it), two of the review's worst rows among them."""
    gaps = np.array([8.0, 14.9, 15.2, 15.5, 20.0, 35.0, 41.0, 41.7, 60.0, 88.8, 89.0, 200.0, 66735172.0, 1e30])
    rng = np.random.default_rng(classes)
    n = 80
    gap = rng.uniform(0, 8, n)                  # rows 0-19, 40-79: the label's shift holds
    gap[20:40] = rng.choice(gaps, 20)           # a run of misses, longer than GUESS_BLOCK
    gap[[45, 62, 63, 79]] = gaps[[3, 12, 5, 13]]  # lone misses, one in the rows after a miss
    z = rng.standard_normal((n, classes)) * 2
    y = rng.integers(0, classes, n)
    z[np.arange(n), y] = z.max(axis=1) - gap
    if classes > 1:
        z[np.arange(n), (y + 1) % classes] = z.max(axis=1)  # the max elsewhere than the label
    if classes == 5:
        # a review's rows with the largest error on a probability above 0.01 (~1.1e-6)
        worst = [[-2.4003491, 12.6532135, 8.622743], [-3.723701, 9.840259, 5.7423544, 5.5537453]]
        for row, values in zip((2, 3), worst):
            z[row] = -300.0
            z[row, :len(values)], y[row] = values, 0
        # rows 48-51 (before block 3's misses): two top classes and the label 33-40 below, where the
        # float32 rounding of z_c - z_y alone puts > 2e-6 on a probability above 0.01 (the shift the
        # 2^60 bound let through; 2^23 sends them to the max)
        picked = 48
        while picked < 52:
            top = rng.uniform(-1, 1)
            row = np.float32([top, top - rng.uniform(0.2, 1.5), top - rng.uniform(33, 40), -300, -300])
            d = (row - row[2]).astype(np.float64)  # the float32 differences, then exact math
            p_shift, p_exact = np.exp(d) / np.exp(d).sum(), np.exp(row - row.max()) / np.exp(row - row.max()).sum()
            if np.max(np.abs(p_shift - p_exact)[:2] / p_exact[:2]) > 2e-6:
                z[picked], y[picked], picked = row, 2, picked + 1
    z = z.astype(dtype).astype(np.float64)
    args = on(backend, z.astype(dtype), y)
    loss, grad = ops.softmax_cross_entropy_with_grad(*args)
    loss2, probs = ops.softmax_cross_entropy_forward(*args)
    assert to_numpy(loss) == to_numpy(loss2)
    p64 = np.exp(log_softmax64(z))
    assert_matches(loss, lambda z, y: cross_entropy64(z, y, None, 0.0), [z, y], dtype, what="loss")
    assert_matches(probs, lambda z: np.exp(log_softmax64(z)), [z], dtype, what="probs")
    assert_matches(grad, lambda z, y: cross_entropy_grad64(np.exp(log_softmax64(z)), y, None, 0.0), [z, y], dtype,
                   what="dlogits")
    above = p64 > 1e-30
    np.testing.assert_allclose(to_numpy(probs)[above], p64[above], rtol=1e-4)
    large = p64 > 0.01
    np.testing.assert_allclose(to_numpy(probs)[large], p64[large], rtol=1.5e-6)
    n_grad = cross_entropy_grad64(p64, y, None, 0.0) * n  # the per-row gradient p - onehot
    np.testing.assert_allclose(to_numpy(grad)[above] * n, n_grad[above], rtol=1e-4, atol=1e-6)

    z[7, y[7]] = -np.inf
    loss, grad = ops.softmax_cross_entropy_with_grad(*on(backend, z.astype(dtype), y))
    assert float(loss) == np.inf
    p64 = np.exp(log_softmax64(z))
    assert_matches(grad, lambda z, y: cross_entropy_grad64(p64, y, None, 0.0), [z, y], dtype, what="dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_of_a_logit_far_past_the_labels(backend, dtype):
    """A review's case: a logit 66735172 past the label's, where the table exp (without the guessed
    rows' clamp) gave exp 0, so the label's shift held and the loss came out 0."""
    z = np.array([[0.0, 66735172.0], [1.0, 66735172.0], [0.5, 66735172.0]])
    y = np.array([0, 0, 1])
    loss, probs = ops.softmax_cross_entropy_forward(*on(backend, z.astype(dtype), y))
    assert float(loss) == pytest.approx((66735172.0 + 66735171.0) / 3, rel=1e-6)
    np.testing.assert_array_equal(to_numpy(probs), [[0, 1], [0, 1], [0, 1]])


@pytest.mark.slow
def test_cross_entropy_rows_past_the_grid(native_backend):
    """More rows than the row kernel's 2048 blocks cover at once (a thread per row: 256 per block):
    each block takes several rows in turn (grid-stride)."""
    z, y, w = _cross_entropy_case(2048 * 256 + 3, 2, True, seed=5)
    args = on(native_backend, z.astype(np.float32), y, w.astype(np.float32))
    loss, grad = ops.softmax_cross_entropy_with_grad(*args, label_smoothing=0.1)
    assert_matches(loss, lambda z, y, w: cross_entropy64(z, y, w, 0.1), [z, y, w], np.float32, what="loss")
    assert_matches(grad, lambda z, y, w: cross_entropy_grad64(np.exp(log_softmax64(z)), y, w, 0.1), [z, y, w],
                   np.float32, what="dlogits")


@pytest.mark.parametrize("option", CE_OPTIONS)
def test_cross_entropy_gradient_by_finite_differences(backend, option):
    with_weight, eps = CE_OPTIONS[option]
    z, y, w = _cross_entropy_case(4, 5, with_weight, seed=1)

    def forward(z):
        return to_numpy(ops.softmax_cross_entropy_forward(*on(backend, z, y, w), label_smoothing=eps)[0])

    _, probs = ops.softmax_cross_entropy_forward(*on(backend, z, y, w), label_smoothing=eps)
    grad = ops.softmax_cross_entropy_backward(probs, *on(backend, y, w), label_smoothing=eps)
    expected = numerical_gradient(forward, [z], 0, 1.0)
    assert_gradient(grad, expected, f"dlogits ({option})")
    _, fused = ops.softmax_cross_entropy_with_grad(*on(backend, z, y, w), label_smoothing=eps)
    assert_gradient(fused, expected, f"fused dlogits ({option})")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_worked_example(backend, dtype):
    # The course's example: predicted probabilities (0.25, 0.60, 0.15), second class true.
    probs = np.array([[0.25, 0.60, 0.15]])
    loss, p = ops.softmax_cross_entropy_forward(*on(backend, np.log(probs).astype(dtype), np.array([1])))
    assert float(loss) == pytest.approx(-np.log(0.60), rel=1e-6)
    assert round(float(loss), 2) == 0.51
    np.testing.assert_allclose(to_numpy(p), probs, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_extreme_logits(backend, dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]])
    y = np.array([1, 2, 0])
    for w, eps in [(None, 0.0), (np.array([1.0, 2.0, 0.5]), 0.3)]:
        args = on(backend, z.astype(dtype), y, None if w is None else w.astype(dtype))
        loss, probs = ops.softmax_cross_entropy_forward(*args, label_smoothing=eps)
        grad = to_numpy(ops.softmax_cross_entropy_backward(probs, *args[1:], label_smoothing=eps))
        assert np.isfinite(float(loss)) and np.all(np.isfinite(to_numpy(probs))) and np.all(np.isfinite(grad))
        assert float(loss) == pytest.approx(cross_entropy64(z, y, w, eps), rel=1e-6)


def test_cross_entropy_row_loss_past_the_dtype_is_inf_as_documented(backend):
    # Finite logits, but a row's loss (6e38) past float32's maximum: +inf, as torch gives; the
    # probs and the gradient stay finite. The docstring claimed a finite loss for any finite logits.
    z, y = np.array([[3e38, -3e38, 0.0]]), np.array([1])
    for dtype, expected in [(np.float32, np.inf), (np.float64, 6e38)]:
        loss, probs = ops.softmax_cross_entropy_forward(*on(backend, z.astype(dtype), y))
        fused, grad = ops.softmax_cross_entropy_with_grad(*on(backend, z.astype(dtype), y))
        assert float(loss) == float(fused) == pytest.approx(expected)
        assert np.all(np.isfinite(to_numpy(probs))) and np.all(np.isfinite(to_numpy(grad)))
    doc = ops.softmax_cross_entropy_forward.__doc__
    assert "any finite logits" not in doc and "overflows the dtype" in doc


@pytest.mark.parametrize("z, y, w, eps, loss32, loss64", [
    ([[2e38, 0, 0]], [1], [1, 2, 1], 0.0, np.inf, 2e38),                    # w[y] l = 4e38
    ([[2e38, 0, 0], [0, 1, 2]], [1, 0], [10, 10, 10], 0.0, np.inf, 1e38),  # 10 l = 2e39
    ([[2e38, 0, 0]], [1], None, 0.1, np.inf, 0.9 * 2e38 + 0.1 / 3 * 4e38), # sum_c -log p_c = 4e38
    ([[2e38, 0, 0]], [1], [0.5, 0.5, 0.5], 0.0, 2e38, 2e38)])              # w[y] l = 1e38: finite
def test_cross_entropy_weighted_row_loss_past_the_dtype_is_inf(backend, z, y, w, eps, loss32, loss64):
    # A row's weighted loss w[y] (-log p_y), or its smoothing sum sum_c w_c (-log p_c), past
    # float32's maximum is +inf, as torch's float32 cross_entropy gives (loss32: torch's values);
    # below it the row stays finite. The cpu backend weighed the rows in float64 and gave a
    # finite loss where the native kernels and torch give inf.
    z, y = np.array(z), np.array(y)
    for dtype, expected in [(np.float32, loss32), (np.float64, loss64)]:
        args = on(backend, z.astype(dtype), y, None if w is None else np.array(w, dtype))
        loss, probs = ops.softmax_cross_entropy_forward(*args, label_smoothing=eps)
        fused, grad = ops.softmax_cross_entropy_with_grad(*args, label_smoothing=eps)
        assert float(loss) == float(fused) == pytest.approx(expected, rel=1e-6)
        assert np.all(np.isfinite(to_numpy(probs))) and np.all(np.isfinite(to_numpy(grad)))


def test_cross_entropy_nan_logit_gives_nan_loss(backend):
    z = np.array([[0.0, 1.0, 2.0], [0.5, np.nan, 0.0]], dtype=np.float32)
    loss, probs = ops.softmax_cross_entropy_forward(*on(backend, z, np.array([0, 2])))
    assert np.isnan(float(loss))
    probs = to_numpy(probs)
    assert np.all(np.isnan(probs[1])) and np.allclose(probs[0].sum(), 1)


def _no_label_weight_case(dtype):
    """Logits, labels and class weights whose labels all have weight 0 (sum_i w[y_i] = 0)."""
    z = np.random.default_rng(5).standard_normal((4, 6)).astype(dtype)
    return z, np.array([1, 3, 3, 5]), np.array([1.0, 0.0, 2.0, 0.0, 0.5, 0.0], dtype)


def _no_label_weight_results(z, y, w, eps):
    """(forward loss, fused loss, fused gradient, backward's gradient) of the ops, as NumPy."""
    loss, probs = ops.softmax_cross_entropy_forward(z, y, w, eps)
    fused_loss, fused = ops.softmax_cross_entropy_with_grad(z, y, w, eps)
    grad = ops.softmax_cross_entropy_backward(probs, y, w, eps)
    return [to_numpy(a) for a in (loss, fused_loss, fused, grad)]


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_every_label_weight_zero_divides_by_zero(backend, dtype, eps):
    """sum_i w[y_i] = 0: the mean and the gradient divide by 0, as the native kernels do: loss
    0/0 = NaN and a NaN gradient; with smoothing, whose term is not 0, loss +inf and the gradient
    +-inf by the sign of p S - w_c (the cpu backend raised ZeroDivisionError)."""
    z, y, w = _no_label_weight_case(dtype)
    loss, fused_loss, fused, grad = _no_label_weight_results(*on(backend, z, y, w), eps)
    if eps == 0.0:
        expected_loss, expected_grad = np.nan, np.full(z.shape, np.nan)
    else:
        p = np.exp(log_softmax64(z.astype(np.float64)))
        expected_loss, expected_grad = np.inf, np.where(p * w.sum() > w, np.inf, -np.inf)
    for actual in (loss, fused_loss):
        assert actual.dtype == dtype and actual.shape == ()
        np.testing.assert_array_equal(actual, expected_loss)
    for actual in (fused, grad):
        assert actual.dtype == dtype
        np.testing.assert_array_equal(actual, expected_grad)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_every_label_weight_zero_same_bits_on_cpu_and_emu(dtype, eps):
    """The cpu backend's NaN and inf are the native kernels' bits (the NaN of 0/0 and 0 * inf)."""
    results = {}
    for name in ("cpu", "emu"):
        if not fastconv.backend.availability(name)[0]:
            pytest.skip(f"backend {name} unavailable")
        with fastconv.use_backend(name):
            results[name] = _no_label_weight_results(*_no_label_weight_case(dtype), eps)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    for cpu, emu in zip(results["cpu"], results["emu"]):
        np.testing.assert_array_equal(cpu.view(bits), emu.view(bits))


def test_cross_entropy_is_deterministic(backend):
    z, y, w = _cross_entropy_case(600, 7, True, seed=2)
    args = on(backend, z.astype(np.float32), y, w.astype(np.float32))
    first = float(ops.softmax_cross_entropy_forward(*args, label_smoothing=0.1)[0])
    assert first == float(ops.softmax_cross_entropy_forward(*args, label_smoothing=0.1)[0])


# ---- BCE with logits ----------------------------------------------------------------------------

BCE_SHAPES = [(1, 1), (7,), (4, 3), (3, 2, 5), (40, 33)]


def _bce_case(shape, with_pos_weight, probabilistic, seed=0):
    rng = np.random.default_rng(seed + sum(shape))
    x = rng.standard_normal(shape) * 4
    t = rng.uniform(0, 1, shape) if probabilistic else rng.integers(0, 2, shape).astype(np.float64)
    pw = rng.uniform(0.5, 3.0, shape[-1]) if with_pos_weight else None
    return x, t, pw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("probabilistic", [False, True])
@pytest.mark.parametrize("with_pos_weight", [False, True])
@pytest.mark.parametrize("shape", BCE_SHAPES)
def test_bce_with_logits(backend, shape, with_pos_weight, probabilistic, dtype):
    x, t, pw = _bce_case(shape, with_pos_weight, probabilistic)
    args = on(backend, x.astype(dtype), t.astype(dtype), None if pw is None else pw.astype(dtype))
    loss = ops.bce_with_logits_forward(*args)
    assert loss.shape == () and isinstance(loss, backend.xp.ndarray)
    assert_matches(loss, bce64, [x, t, pw], dtype, what="loss")
    assert_matches(ops.bce_with_logits_backward(*args), bce_grad64, [x, t, pw], dtype, what="dlogits")


def test_bce_with_logits_many_partials(backend):
    # More elements than 256 blocks x 256 threads: the mean kernel sums more partials than threads.
    x, t, pw = _bce_case((260, 257), True, True)
    args = on(backend, x.astype(np.float32), t.astype(np.float32), pw.astype(np.float32))
    assert_matches(ops.bce_with_logits_forward(*args), bce64, [x, t, pw], np.float32, what="loss")
    assert_matches(ops.bce_with_logits_backward(*args), bce_grad64, [x, t, pw], np.float32, what="dlogits")


@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_bce_float64_mean_of_a_whole_chunk(backend, with_pos_weight):
    # 4096 values, one chunk of the cpu backend's sum: one running float64 sum over it erred up to
    # ~50 ulps of the mean, here 1.4x (1.8x with pos_weight) the float64 tolerance.
    rng = np.random.default_rng(27)
    x, t = rng.standard_normal((64, 64)) * 4, rng.uniform(0, 1, (64, 64))
    pw = rng.uniform(0.5, 3.0, 64) if with_pos_weight else None
    assert_matches(ops.bce_with_logits_forward(*on(backend, x, t, pw)), bce64, [x, t, pw], np.float64, what="loss")


@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_bce_gradient_by_finite_differences(backend, with_pos_weight):
    x, t, pw = _bce_case((3, 4), with_pos_weight, True, seed=3)

    def forward(x):
        return to_numpy(ops.bce_with_logits_forward(*on(backend, x, t, pw)))

    grad = ops.bce_with_logits_backward(*on(backend, x, t, pw))
    assert_gradient(grad, numerical_gradient(forward, [x], 0, 1.0), "dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_0d_logits_take_one_pos_weight(backend, dtype):
    """0-d logits are one value: pos_weight (1,) weighs it, as torch broadcasts it."""
    x, t, pw = np.array(-1.5), np.array(0.75), np.array([2.5])
    args = on(backend, x.astype(dtype), t.astype(dtype), pw.astype(dtype))
    assert_matches(ops.bce_with_logits_forward(*args), bce64, [x, t, 2.5], dtype)
    assert_matches(ops.bce_with_logits_backward(*args), bce_grad64, [x, t, 2.5], dtype)
    with pytest.raises(ValueError, match=r"pos_weight is \(2,\) but logits is \(\): expected \(1,\) for 0-d logits"):
        ops.bce_with_logits_forward(*args[:2], on(backend, np.ones(2, dtype)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_extreme_logits(backend, dtype):
    x = np.array([[1e4, -1e4, 1e4, -1e4, 0.0, 50.0]])
    t = np.array([[1.0, 0.0, 0.0, 1.0, 0.5, 0.3]])
    pw = np.array([2.0, 1.0, 0.5, 3.0, 1.0, 1.0])
    args = on(backend, x.astype(dtype), t.astype(dtype), pw.astype(dtype))
    loss = float(ops.bce_with_logits_forward(*args))
    grad = to_numpy(ops.bce_with_logits_backward(*args))
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(bce64(x, t, pw), rel=1e-6)
    np.testing.assert_allclose(grad, bce_grad64(x, t, pw), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_gradient_of_a_hard_target_is_exact_far_from_it(backend, dtype):
    # (1 - t) - (1 + (pw - 1) t) sigmoid(-x) cancelled to 0 for t = 0 and x < ~-17 in float32 (~-37 in
    # float64), where the gradient is e^x / n; the form (1 - t) sigmoid(x) - pw t sigmoid(-x) is exact at
    # t = 0 and at t = 1 (the mirrored case, t = 1 and a large x, was exact either way).
    x = np.array([-20.0, -40.0, -80.0, 20.0, 40.0, 80.0, -30.0, 30.0]).reshape(-1, 1)
    t = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]).reshape(-1, 1)
    pw = np.array([2.0])  # (one output: its positive class weighed twice)
    for weights in (None, pw):
        args = on(backend, x.astype(dtype), t.astype(dtype), *(() if weights is None else (weights.astype(dtype),)))
        grad = to_numpy(ops.bce_with_logits_backward(*args)).astype(np.float64)
        expected = bce_grad64(x, t, np.ones(1) if weights is None else weights)
        assert np.all(expected != 0)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=0)


def test_bce_term_past_the_dtype_is_inf_as_documented(backend):
    # pos_weight 10 takes the term of x = -3e38, t = 1 to 3e39: +inf in float32 (torch too).
    x, t, pw = np.array([-3e38]), np.array([1.0]), np.array([10.0])
    for dtype, expected in [(np.float32, np.inf), (np.float64, 3e39)]:
        args = on(backend, x.astype(dtype), t.astype(dtype), pw.astype(dtype))
        assert float(ops.bce_with_logits_forward(*args)) == pytest.approx(expected)
        assert np.all(np.isfinite(to_numpy(ops.bce_with_logits_backward(*args))))
    assert "finite for any finite x" not in ops.bce_with_logits_forward.__doc__


# ---- MSE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (5, 3), (2, 3, 4, 5), (1100,)])
def test_mse(backend, shape, dtype):
    rng = np.random.default_rng(len(shape))
    p, t = rng.standard_normal(shape), rng.standard_normal(shape)
    args = on(backend, p.astype(dtype), t.astype(dtype))
    loss = ops.mse_forward(*args)
    assert loss.shape == () and isinstance(loss, backend.xp.ndarray)
    assert_matches(loss, mse64, [p, t], dtype, what="loss")
    assert_matches(ops.mse_backward(*args), lambda p, t: 2 * (p - t) / p.size, [p, t], dtype, what="dpred")


def test_mse_gradient_by_finite_differences(backend):
    rng = np.random.default_rng(4)
    p, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    forward = lambda p: to_numpy(ops.mse_forward(*on(backend, p, t)))
    assert_gradient(ops.mse_backward(*on(backend, p, t)), numerical_gradient(forward, [p], 0, 1.0), "dpred")


def test_mse_gradient_past_half_the_largest_float32(backend):
    # The kernel computed 2 (p - t) first: inf past FLT_MAX / 2 where the gradient itself is finite.
    p = np.array([2e38, -2e38, 1.0, 3e38], np.float32)
    dp = to_numpy(ops.mse_backward(*on(backend, p, np.zeros(4, np.float32))))
    np.testing.assert_array_equal(dp, (p.astype(np.float64) / 2).astype(np.float32))


# ---- bad inputs ---------------------------------------------------------------------------------


class TestBadInput:
    def _ce(self, backend, z=None, y=None, w=None, **kw):
        z = np.zeros((3, 4), np.float32) if z is None else z
        y = np.array([0, 1, 3]) if y is None else y
        return ops.softmax_cross_entropy_forward(*on(backend, z, y, w), **kw)

    def test_labels_must_be_integers(self, backend):
        with pytest.raises(TypeError, match=r"labels must hold integer class indices, got dtype float"):
            self._ce(backend, y=np.array([0.0, 1.0, 2.0]))

    def test_labels_out_of_range_name_the_value(self, backend):
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\).*got 4 at index 1"):
            self._ce(backend, y=np.array([0, 4, 1]))
        with pytest.raises(ValueError, match=r"got -1 at index 2"):
            self._ce(backend, y=np.array([0, 1, -1]))
        p = np.full((3, 4), 0.25, np.float32)
        with pytest.raises(ValueError, match=r"got 7 at index 0"):
            ops.softmax_cross_entropy_backward(*on(backend, p, np.array([7, 0, 0])))

    @pytest.mark.parametrize("op", ["forward", "with_grad", "backward"])
    def test_labels_far_out_of_range_are_refused_whenever_the_check_runs(self, backend, monkeypatch, op):
        # The native backends launch the kernel before reading the labels' range back (the kernel
        # writes NaN for such a label, never reads outside the logits: ASan watches this in CI);
        # the cpu backend checks first, since its kernels would index with the label.
        z, w = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32), np.ones(300, np.float32)
        y = np.array([0, 2**62, 3, -(2**62), 1])
        run = getattr(ops, f"softmax_cross_entropy_{op}")
        if not backend.kernels_tolerate_bad_indices:
            monkeypatch.setattr(backend, f"softmax_cross_entropy_{op}", lambda *a: pytest.fail("kernel ran"))
        for weight in (None, w):
            with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 300\).*got -4611686018427387904 at index 3"):
                run(*on(backend, z, y, weight), label_smoothing=0.1)

    def test_label_and_logit_shapes(self, backend):
        with pytest.raises(ValueError, match=r"labels must have shape \(3,\).*got \(2,\)"):
            self._ce(backend, y=np.array([0, 1]))
        with pytest.raises(ValueError, match=r"labels must have shape \(3,\).*got \(3, 1\)"):
            self._ce(backend, y=np.array([[0], [1], [2]]))
        with pytest.raises(ValueError, match=r"logits must be 2-D, got shape \(4,\)"):
            self._ce(backend, z=np.zeros(4, np.float32), y=np.array([0, 1, 2, 3]))
        with pytest.raises(ValueError, match=r"probs must be 2-D"):
            ops.softmax_cross_entropy_backward(*on(backend, np.zeros((2, 3, 4), np.float32), np.array([0, 1])))
        with pytest.raises(ValueError, match=r"labels must have shape \(2,\).*got \(3,\)"):
            ops.softmax_cross_entropy_backward(*on(backend, np.full((2, 3), 1 / 3, np.float32), np.array([0, 1, 2])))
        with pytest.raises(ValueError, match=r"at least one class"):
            self._ce(backend, z=np.zeros((3, 0), np.float32))

    def test_empty_batch_is_refused(self, backend):
        with pytest.raises(ValueError, match=r"logits is \(0, 4\): the batch is empty"):
            self._ce(backend, z=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))
        with pytest.raises(ValueError, match=r"empty"):
            ops.bce_with_logits_forward(*on(backend, np.zeros((0, 3)), np.zeros((0, 3))))
        with pytest.raises(ValueError, match=r"empty"):
            ops.mse_forward(*on(backend, np.zeros(0), np.zeros(0)))

    def test_weight(self, backend):
        with pytest.raises(ValueError, match=r"weight is \(3,\) but there are 4 classes: weight must be \(4,\)"):
            self._ce(backend, w=np.ones(3, np.float32))
        with pytest.raises(ValueError, match=r"weight must be non-negative"):
            self._ce(backend, w=np.array([1, -1, 1, 1], np.float32))
        with pytest.raises(TypeError, match=r"weight is float64 but the other inputs are float32"):
            self._ce(backend, w=np.ones(4))
        negative = np.array([1, -1, 1, 1], np.float32)
        self._ce(backend, w=negative, check_weight=False)  # the caller vouches for them: no check

    def test_bad_labels_are_reported_before_bad_weights(self, backend):
        # The same order on every backend (the native ones check values after launching the kernel).
        negative = np.array([1, -1, 1, 1], np.float32)
        for op in (ops.softmax_cross_entropy_forward, ops.softmax_cross_entropy_with_grad):
            with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\).*got 7 at index 1"):
                op(*on(backend, np.zeros((3, 4), np.float32), np.array([0, 7, 3]), negative))
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 4\).*got -2 at index 2"):
            ops.softmax_cross_entropy_backward(*on(backend, np.full((3, 4), 0.25, np.float32), np.array([0, 1, -2]),
                                                   negative))

    def test_label_smoothing(self, backend):
        with pytest.raises(ValueError, match=r"label_smoothing must be <= 1.0, got 1.5"):
            self._ce(backend, label_smoothing=1.5)
        with pytest.raises(ValueError, match=r"label_smoothing must be >= 0.0"):
            self._ce(backend, label_smoothing=-0.1)
        with pytest.raises(TypeError, match=r"label_smoothing must be a real number"):
            self._ce(backend, label_smoothing="0.1")

    def test_integer_logits(self, backend):
        with pytest.raises(TypeError, match=r"logits must be float32 or float64, got integer"):
            self._ce(backend, z=np.zeros((3, 4), np.int32))

    def test_bce_shapes(self, backend):
        x = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match=r"targets is \(3, 2\) but logits is \(2, 3\)"):
            ops.bce_with_logits_forward(*on(backend, x, np.zeros((3, 2), np.float32)))
        with pytest.raises(ValueError, match=r"pos_weight is \(2,\) but logits is \(2, 3\): expected \(3,\)"):
            ops.bce_with_logits_backward(*on(backend, x, x, np.ones(2, np.float32)))
        with pytest.raises(ValueError, match=r"pos_weight must be 1-D"):
            ops.bce_with_logits_forward(*on(backend, x, x, np.ones((1, 3), np.float32)))
        with pytest.raises(TypeError, match=r"targets is float64 but the other inputs are float32"):
            ops.bce_with_logits_forward(*on(backend, x, np.zeros((2, 3))))

    def test_mse_shapes(self, backend):
        with pytest.raises(ValueError, match=r"target is \(4,\) but pred is \(2, 2\)"):
            ops.mse_backward(*on(backend, np.zeros((2, 2)), np.zeros(4)))
