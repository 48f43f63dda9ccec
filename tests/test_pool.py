"""2-D max and average pooling on every backend, against float64 NumPy references written from the
math (torch.nn.functional semantics), with finite-difference gradients, exact indices, NaN and -inf
inputs, overlapping windows, and the bad inputs the ops must refuse before any kernel runs."""
import numpy as np
import pytest

from fastconv import ops
from helpers import DTYPES, assert_gradient, assert_matches, numerical_gradient, on, to_numpy

# (x shape, kernel_size, stride, padding): kernel 1, the whole image, stride > kernel, overlap
# (stride < kernel), padding, rectangular everything, odd sizes, batch 1, one channel.
CASES = [
    ((2, 3, 5, 5), 1, None, 0),
    ((1, 1, 4, 6), (4, 6), None, 0),
    ((1, 1, 4, 6), (4, 6), None, (2, 3)),
    ((2, 2, 7, 7), 2, 3, 0),
    ((1, 2, 6, 5), 3, 1, 1),
    ((2, 1, 5, 8), (3, 2), (2, 1), (1, 1)),
    ((1, 3, 9, 7), 3, 2, 1),
    ((3, 2, 8, 8), 2, None, 0),
    ((1, 1, 1, 1), 1, None, 0),
    ((1, 1, 3, 3), 2, 1, 1),
    ((2, 1, 2, 9), (1, 4), (1, 2), (0, 2)),
]
IDS = [f"{s}-k{k}-s{st}-p{p}" for s, k, st, p in CASES]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _windows(x_shape, kernel_size, stride, padding):
    """Yields (ho, wo, rows, cols): each output position and the in-plane slices of its window."""
    _, _, H, W = x_shape
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    sh, sw = _pair(kernel_size if stride is None else stride)
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    for ho in range(Ho):
        for wo in range(Wo):
            h0, w0 = ho * sh - ph, wo * sw - pw
            yield ho, wo, slice(max(h0, 0), min(h0 + kh, H)), slice(max(w0, 0), min(w0 + kw, W))


def _out_hw(x_shape, kernel_size, stride, padding):
    positions = list(_windows(x_shape, kernel_size, stride, padding))
    return positions[-1][0] + 1, positions[-1][1] + 1


def max_pool_reference(x, kernel_size, stride, padding):
    """(y, indices): the first maximum in row-major window order; a NaN wins (the last NaN, torch's rule)."""
    N, C, H, W = x.shape
    Ho, Wo = _out_hw(x.shape, kernel_size, stride, padding)
    y, idx = np.empty((N, C, Ho, Wo), x.dtype), np.empty((N, C, Ho, Wo), np.int64)
    flat_index = np.arange(H * W).reshape(H, W)
    for ho, wo, rows, cols in _windows(x.shape, kernel_size, stride, padding):
        values = x[:, :, rows, cols].reshape(N, C, -1)
        positions = flat_index[rows, cols].reshape(-1)
        nan = np.isnan(values)
        last_nan = values.shape[2] - 1 - np.argmax(nan[:, :, ::-1], axis=2)
        first_max = np.argmax(np.where(nan, -np.inf, values), axis=2)
        pick = np.where(nan.any(axis=2), last_nan, first_max)
        idx[:, :, ho, wo] = positions[pick]
        y[:, :, ho, wo] = np.take_along_axis(values, pick[..., None], axis=2)[..., 0]
    return y, idx


def max_unpool_reference(dy, indices, x_shape):
    """The scatter-add of dy to the indices, in output order."""
    N, C, H, W = x_shape
    dx = np.zeros((N * C, H * W), dy.dtype)
    for plane, (d, i) in enumerate(zip(dy.reshape(N * C, -1), indices.reshape(N * C, -1))):
        np.add.at(dx[plane], i, d)
    return dx.reshape(x_shape)


def avg_pool_reference(x, kernel_size, stride, padding):
    kh, kw = _pair(kernel_size)
    Ho, Wo = _out_hw(x.shape, kernel_size, stride, padding)
    y = np.empty(x.shape[:2] + (Ho, Wo), x.dtype)
    for ho, wo, rows, cols in _windows(x.shape, kernel_size, stride, padding):
        y[:, :, ho, wo] = x[:, :, rows, cols].sum(axis=(2, 3)) / (kh * kw)
    return y


def avg_pool_backward_reference(dy, x_shape, kernel_size, stride, padding):
    kh, kw = _pair(kernel_size)
    dx = np.zeros(x_shape, dy.dtype)
    for ho, wo, rows, cols in _windows(x_shape, kernel_size, stride, padding):
        dx[:, :, rows, cols] += dy[:, :, ho, wo][:, :, None, None] / (kh * kw)
    return dx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel_size,stride,padding", CASES, ids=IDS)
def test_max_pool(backend, shape, kernel_size, stride, padding, dtype):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype).astype(np.float64)  # exactly representable at dtype
    y, idx = ops.max_pool2d_forward(on(backend, x.astype(dtype)), kernel_size, stride, padding)
    ref_y, ref_idx = max_pool_reference(x, kernel_size, stride, padding)
    assert_matches(y, lambda x: max_pool_reference(x, kernel_size, stride, padding)[0], [x], dtype, what="y")
    idx = to_numpy(idx)
    assert idx.dtype == np.int64 and idx.shape == ref_y.shape
    np.testing.assert_array_equal(idx, ref_idx)

    dy = rng.standard_normal(ref_y.shape)
    dx = ops.max_pool2d_backward(on(backend, dy.astype(dtype)), on(backend, idx), shape)
    assert_matches(dx, lambda dy: max_unpool_reference(dy, ref_idx, shape), [dy], dtype, what="dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel_size,stride,padding", CASES, ids=IDS)
def test_avg_pool(backend, shape, kernel_size, stride, padding, dtype):
    rng = np.random.default_rng(sum(shape) + 1)
    x = rng.standard_normal(shape)
    y = ops.avg_pool2d_forward(on(backend, x.astype(dtype)), kernel_size, stride, padding)
    assert_matches(y, lambda x: avg_pool_reference(x, kernel_size, stride, padding), [x], dtype, what="y")

    dy = rng.standard_normal(to_numpy(y).shape)
    dx = ops.avg_pool2d_backward(on(backend, dy.astype(dtype)), shape, kernel_size, stride, padding)
    assert_matches(dx, lambda dy: avg_pool_backward_reference(dy, shape, kernel_size, stride, padding), [dy], dtype,
                   what="dx")


@pytest.mark.parametrize("shape,kernel_size,stride,padding", [CASES[4], CASES[5], CASES[6], CASES[9]],
                         ids=[IDS[4], IDS[5], IDS[6], IDS[9]])
def test_gradients_by_finite_differences(backend, shape, kernel_size, stride, padding):
    rng = np.random.default_rng(7)
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.01 + rng.uniform(0, 1e-3, shape)  # no near-ties
    dy = rng.standard_normal(shape[:2] + _out_hw(shape, kernel_size, stride, padding))

    def max_forward(x):
        return to_numpy(ops.max_pool2d_forward(on(backend, x), kernel_size, stride, padding)[0])

    def avg_forward(x):
        return to_numpy(ops.avg_pool2d_forward(on(backend, x), kernel_size, stride, padding))

    _, idx = ops.max_pool2d_forward(on(backend, x), kernel_size, stride, padding)
    assert_gradient(ops.max_pool2d_backward(on(backend, dy), idx, shape), numerical_gradient(max_forward, [x], 0, dy),
                    "max_pool2d dx")
    assert_gradient(ops.avg_pool2d_backward(on(backend, dy), shape, kernel_size, stride, padding),
                    numerical_gradient(avg_forward, [x], 0, dy), "avg_pool2d dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_ties_pick_the_first_maximum(backend, dtype):
    rng = np.random.default_rng(11)
    x = rng.integers(0, 3, (2, 2, 7, 6)).astype(np.float64)  # many ties, overlapping windows
    y, idx = ops.max_pool2d_forward(on(backend, x.astype(dtype)), 3, 1, 1)
    ref_y, ref_idx = max_pool_reference(x, 3, 1, 1)
    np.testing.assert_array_equal(to_numpy(y), ref_y.astype(dtype))
    np.testing.assert_array_equal(to_numpy(idx), ref_idx)
    # Several outputs picked the same inputs: their gradients add up, identically on every call.
    dy = rng.standard_normal(ref_y.shape).astype(dtype)
    dx1 = to_numpy(ops.max_pool2d_backward(on(backend, dy), idx, x.shape))
    dx2 = to_numpy(ops.max_pool2d_backward(on(backend, dy), idx, x.shape))
    np.testing.assert_array_equal(dx1, dx2)
    assert_matches(dx1, lambda dy: max_unpool_reference(dy, ref_idx, x.shape), [dy.astype(np.float64)], dtype)


def test_max_pool_nan_and_infinity(backend):
    x = np.zeros((1, 2, 4, 4))
    x[0, 0, 0, 1] = np.nan          # window (0, 0) of a 2x2/2 pooling: NaN beats the larger 5
    x[0, 0, 1, 0] = 5.0
    x[0, 0, 2, 2] = x[0, 0, 3, 3] = np.nan  # window (1, 1): two NaNs, the last one is recorded
    x[0, 1] = -np.inf               # a plane of -inf: -inf, at the window's first in-plane position
    y, idx = ops.max_pool2d_forward(on(backend, x), 2, 2, 1)
    ref_y, ref_idx = max_pool_reference(x, 2, 2, 1)
    np.testing.assert_array_equal(to_numpy(idx), ref_idx)
    np.testing.assert_array_equal(to_numpy(y), ref_y)  # NaN == NaN for assert_array_equal
    y0, idx0 = ops.max_pool2d_forward(on(backend, x), 2, 2, 0)
    y0, idx0 = to_numpy(y0), to_numpy(idx0)
    assert np.isnan(y0[0, 0, 0, 0]) and idx0[0, 0, 0, 0] == 1
    assert np.isnan(y0[0, 0, 1, 1]) and idx0[0, 0, 1, 1] == 3 * 4 + 3
    assert np.all(y0[0, 1] == -np.inf) and list(idx0[0, 1].ravel()) == [0, 2, 8, 10]
    avg = to_numpy(ops.avg_pool2d_forward(on(backend, x[:, :1]), 2, 2, 0))
    assert np.isnan(avg[0, 0, 0, 0]) and np.isnan(avg[0, 0, 1, 1]) and avg[0, 0, 0, 1] == 0


@pytest.mark.parametrize("kernel_size, stride, padding", [(2, 2, 0), (3, 1, 1), ((4, 6), None, (2, 3))])
def test_avg_pool_of_float32_values_near_the_maximum_is_finite(backend, kernel_size, stride, padding):
    """Windows of values near FLT_MAX: their average is finite, and so must the result be (a float32
    window sum overflowed to inf on emu and cuda, where cpu summed in float64)."""
    rng = np.random.default_rng(5)
    x = rng.choice([3.0e38, 3.2e38, -1.0e38], size=(2, 2, 4, 6)).astype(np.float32)
    y = to_numpy(ops.avg_pool2d_forward(on(backend, x), kernel_size, stride, padding))
    reference = avg_pool_reference(x.astype(np.float64), kernel_size, stride, padding)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, reference, rtol=1e-6)

    dy = np.full(y.shape, 3.3e38, np.float32)
    dx = to_numpy(ops.avg_pool2d_backward(on(backend, dy), x.shape, kernel_size, stride, padding))
    assert np.isfinite(dx).all()
    np.testing.assert_allclose(dx, avg_pool_backward_reference(dy.astype(np.float64), x.shape, kernel_size, stride,
                                                               padding), rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel_size,stride,padding", CASES, ids=IDS)
def test_avg_pool_forward_gives_the_cpu_backends_bits(native_backend, shape, kernel_size, stride, padding, dtype):
    """The CUDA kernel sums each window in double in the cpu loops' order and rounds once, as they do."""
    import fastconv
    rng = np.random.default_rng(sum(shape) + 2)
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(dtype)
    ours = to_numpy(ops.avg_pool2d_forward(on(native_backend, x), kernel_size, stride, padding))
    with fastconv.use_backend("cpu"):
        cpus = to_numpy(ops.avg_pool2d_forward(x, kernel_size, stride, padding))
    assert ours.dtype == cpus.dtype == dtype and ours.tobytes() == cpus.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_backward_takes_any_valid_indices(backend, dtype):
    # Indices need not come from a pooling with a known window: every in-range index is honoured.
    rng = np.random.default_rng(13)
    x_shape = (2, 3, 5, 7)
    idx = rng.integers(0, 5 * 7, (2, 3, 4, 6))
    idx[0, 0] = 34     # all outputs of a plane on the last input
    idx[1, 2, 0] = 0   # a row of outputs on the first input
    dy = rng.standard_normal(idx.shape)
    dx = ops.max_pool2d_backward(on(backend, dy.astype(dtype)), on(backend, idx), x_shape)
    assert_matches(dx, lambda dy: max_unpool_reference(dy, idx, x_shape), [dy], dtype)


@pytest.mark.parametrize("x_shape", [(2, 3, 5, 7), (1, 2, 130, 130)], ids=["shared-plane", "global-path"])
def test_unchecked_indices_out_of_range_add_nowhere(backend, x_shape):
    # check_indices=False (what the layers pass for their own forward's indices) skips the host
    # check; the kernels still never write out of bounds: an out-of-range index adds its dy nowhere,
    # every valid one is honoured, and for valid indices the bits are those of the checked call.
    rng = np.random.default_rng(15)
    n, c, h, w = x_shape
    idx = rng.integers(0, h * w, (n, c, h // 2, w // 2))
    dy = rng.standard_normal(idx.shape).astype(np.float32)
    checked = to_numpy(ops.max_pool2d_backward(on(backend, dy), on(backend, idx), x_shape))
    unchecked = ops.max_pool2d_backward(on(backend, dy), on(backend, idx), x_shape, check_indices=False)
    assert to_numpy(unchecked).tobytes() == checked.tobytes()
    bad = idx.copy()
    bad.reshape(-1)[::3] = [-1, h * w, 2**40, -(2**40)] * (bad.size // 12) + [h * w + 7] * (len(bad.reshape(-1)[::3]) % 4)
    dropped = dy.copy()
    dropped.reshape(-1)[::3] = 0
    got = ops.max_pool2d_backward(on(backend, dy), on(backend, bad), x_shape, check_indices=False)
    assert_matches(got, lambda d: max_unpool_reference(d, np.where(bad < 0, 0, np.minimum(bad, h * w - 1)), x_shape),
                   [dropped.astype(np.float64)], np.float32)
    with pytest.raises(TypeError, match="check_indices must be True or False"):
        ops.max_pool2d_backward(on(backend, dy), on(backend, idx), x_shape, check_indices=None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_backward_of_planes_past_shared_memory(backend, dtype):
    # The native backends gather one plane per block from shared memory when Ho*Wo*(8 + itemsize)
    # plus the bounds fit in 48 KiB; a 65x65 output plane does not, so this takes the global path
    # (bounds over all planes), with pooling indices and with arbitrary ones.
    rng = np.random.default_rng(14)
    x_shape = (1, 2, 130, 130)
    x = rng.standard_normal(x_shape)
    _, idx = ops.max_pool2d_forward(on(backend, x.astype(dtype)), 2)
    random_idx = rng.integers(0, 130 * 130, (1, 2, 65, 65))
    for indices in (to_numpy(idx), random_idx):
        dy = rng.standard_normal(indices.shape)
        dx = ops.max_pool2d_backward(on(backend, dy.astype(dtype)), on(backend, indices), x_shape)
        assert_matches(dx, lambda dy: max_unpool_reference(dy, indices, x_shape), [dy], dtype)


def test_empty_batch(backend):
    y, idx = ops.max_pool2d_forward(on(backend, np.zeros((0, 2, 4, 4), np.float32)), 2)
    assert to_numpy(y).shape == (0, 2, 2, 2) and to_numpy(idx).shape == (0, 2, 2, 2)
    dx = ops.max_pool2d_backward(y, idx, (0, 2, 4, 4))
    assert to_numpy(dx).shape == (0, 2, 4, 4)
    assert to_numpy(ops.avg_pool2d_backward(y, (0, 2, 4, 4), 2)).shape == (0, 2, 4, 4)


def test_non_contiguous_input(backend):
    rng = np.random.default_rng(17)
    big = rng.standard_normal((2, 3, 10, 12))
    x = big[:, ::2, ::2, 1::2]
    y, idx = ops.max_pool2d_forward(on(backend, x), 2)
    np.testing.assert_array_equal(to_numpy(idx), max_pool_reference(x, 2, None, 0)[1])
    assert_matches(ops.avg_pool2d_forward(on(backend, x), 2), lambda x: avg_pool_reference(x, 2, None, 0), [x],
                   np.float64)


class TestBadInput:
    x = np.zeros((1, 2, 4, 4), np.float32)

    def test_not_4d(self, backend):
        with pytest.raises(ValueError, match=r"x must be 4-D, got shape \(2, 4, 4\)"):
            ops.max_pool2d_forward(on(backend, np.zeros((2, 4, 4), np.float32)), 2)
        with pytest.raises(ValueError, match=r"x must be 4-D"):
            ops.avg_pool2d_forward(on(backend, np.zeros((1, 1, 2, 4, 4), np.float32)), 2)

    def test_empty_plane(self, backend):
        with pytest.raises(ValueError, match=r"C, H, W >= 1"):
            ops.max_pool2d_forward(on(backend, np.zeros((1, 2, 0, 4), np.float32)), 1)

    def test_kernel_larger_than_padded_input(self, backend):
        with pytest.raises(ValueError, match=r"kernel_size \(5, 5\) is larger than the padded input \(4, 4\)"):
            ops.max_pool2d_forward(on(backend, self.x), 5)
        with pytest.raises(ValueError, match=r"larger than the padded input \(6, 4\)"):
            ops.avg_pool2d_forward(on(backend, self.x), (2, 5), padding=(1, 0))
        with pytest.raises(ValueError, match=r"larger than the padded input"):
            ops.avg_pool2d_backward(on(backend, np.zeros((1, 2, 1, 1), np.float32)), (1, 2, 4, 4), 5)

    def test_padding_more_than_half_the_kernel(self, backend):
        with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half the kernel size \(3, 3\)"):
            ops.max_pool2d_forward(on(backend, self.x), 3, padding=2)
        with pytest.raises(ValueError, match=r"at most half"):
            ops.avg_pool2d_forward(on(backend, self.x), (2, 4), padding=(0, 3))
        with pytest.raises(ValueError, match=r"padding must be >= 0"):
            ops.max_pool2d_forward(on(backend, self.x), 3, padding=-1)

    @pytest.mark.parametrize("stride", [0, -1, (1, 0)])
    def test_bad_stride(self, backend, stride):
        with pytest.raises(ValueError, match=r"stride must be >= 1"):
            ops.max_pool2d_forward(on(backend, self.x), 2, stride)
        with pytest.raises(ValueError, match=r"stride must be >= 1"):
            ops.avg_pool2d_backward(on(backend, np.zeros((1, 2, 2, 2), np.float32)), (1, 2, 4, 4), 2, stride)

    @pytest.mark.parametrize("kernel_size", [0, (2, 0), -3])
    def test_bad_kernel_size(self, backend, kernel_size):
        with pytest.raises(ValueError, match=r"kernel_size must be >= 1"):
            ops.avg_pool2d_forward(on(backend, self.x), kernel_size)

    @pytest.mark.parametrize("kernel_size", [2.0, "2", (2, 2, 2), True, (2, None)])
    def test_kernel_size_type(self, backend, kernel_size):
        with pytest.raises(TypeError, match=r"kernel_size must be an int or a pair of ints"):
            ops.max_pool2d_forward(on(backend, self.x), kernel_size)

    def test_wrong_x_shape(self, backend):
        y, idx = ops.max_pool2d_forward(on(backend, self.x), 2)
        with pytest.raises(ValueError, match=r"x_shape must be 4-D"):
            ops.max_pool2d_backward(y, idx, (2, 4, 4))
        with pytest.raises(ValueError, match=r"dy is \(1, 2, 2, 2\) but x_shape is \(1, 3, 4, 4\)"):
            ops.max_pool2d_backward(y, idx, (1, 3, 4, 4))
        with pytest.raises(TypeError, match=r"x_shape must be a tuple of 4 ints"):
            ops.max_pool2d_backward(y, idx, (1, 2, 4.0, 4))
        with pytest.raises(ValueError, match=r"dy is \(1, 2, 2, 2\) but pooling x_shape \(1, 2, 6, 4\) .* gives "
                                             r"\(1, 2, 3, 2\)"):
            ops.avg_pool2d_backward(y, (1, 2, 6, 4), 2)

    def test_indices_dtype_and_shape(self, backend):
        y, idx = ops.max_pool2d_forward(on(backend, self.x), 2)
        with pytest.raises(TypeError, match=r"indices must be int64"):
            ops.max_pool2d_backward(y, idx.astype(np.int32), self.x.shape)
        with pytest.raises(TypeError, match=r"indices must be int64"):
            ops.max_pool2d_backward(y, idx.astype(np.float32), self.x.shape)
        with pytest.raises(ValueError, match=r"indices is \(1, 2, 2, 1\) but dy is \(1, 2, 2, 2\)"):
            ops.max_pool2d_backward(y, idx[..., :1], self.x.shape)
        with pytest.raises(TypeError, match=r"indices is required"):
            ops.max_pool2d_backward(y, None, self.x.shape)

    @pytest.mark.parametrize("bad", [-1, 16, 2**40])
    def test_indices_out_of_range_never_reach_a_kernel(self, backend, monkeypatch, bad):
        y, idx = ops.max_pool2d_forward(on(backend, self.x), 2)
        idx = to_numpy(idx).copy()
        idx[0, 1, 1, 0] = bad

        def must_not_run(*args):
            raise AssertionError("an out-of-range index reached the backend")

        monkeypatch.setattr(backend, "max_pool2d_backward", must_not_run)
        with pytest.raises(ValueError, match=r"indices must lie in \[0, H \* W\) = \[0, 16\)"):
            ops.max_pool2d_backward(y, on(backend, idx), self.x.shape)

    def test_integer_input(self, backend):
        with pytest.raises(TypeError, match=r"x must be float32 or float64"):
            ops.max_pool2d_forward(on(backend, np.zeros((1, 1, 2, 2), np.int32)), 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(2, 2), (7, 9), (14, 14), (1, 5), (28, 3)])
def test_cpu_avg_pool_2x2_takes_the_general_kernels_bits(hw, dtype):
    """The cpu backend's 2x2 / stride-2 average pooling (its own loops) against its general loops:
    the same bits, with -0.0, NaN, inf and odd sizes (a last row or column in no window)."""
    from fastconv._cpu import pool
    rng = np.random.default_rng(hw[0] * 31 + hw[1])
    x = rng.standard_normal((6, *hw)).astype(dtype)
    x.reshape(-1)[::5], x.reshape(-1)[1::11], x.reshape(-1)[2::13] = -0.0, np.nan, np.inf
    y2, y = (np.empty((6, hw[0] // 2, hw[1] // 2), dtype) for _ in range(2))
    pool._avg_forward_2x2(x, y2)
    pool._avg_forward(x, y, 2, 2, 2, 2, 0, 0)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy.reshape(-1)[::3] = -0.0
    dx2, dx = np.full_like(x, 7), np.full_like(x, 7)
    pool._avg_backward_2x2(dy, dx2)
    pool._avg_backward(dy, dx, 2, 2, 2, 2, 0, 0)
    for ours, general in ((y2, y), (dx2, dx)):
        assert ours.tobytes() == general.tobytes()



@pytest.mark.parametrize("stride, least", [((2 ** 40, 3), (4, 3)), ((2 ** 63, 2 ** 70), (4, 6))],
                         ids=["2^40", "2^63-2^70"])
def test_a_stride_past_the_last_window_gives_the_least_such_strides_result(backend, stride, least):
    # Past 2**63 the kernels' int64 refused it (emu: pybind's "incompatible function arguments"; cpu: a
    # Numba TypingError or OverflowError). Any stride past the last window gives one output along its
    # axis, as the least such stride does (here 4 down a 5-row image, 6 across 7 columns, kernel 2).
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    results = []
    for s in (stride, least):
        y, idx = ops.max_pool2d_forward(on(backend, x), 2, s)
        avg = ops.avg_pool2d_forward(on(backend, x), 2, s)
        dy = on(backend, rng.standard_normal(to_numpy(y).shape).astype(np.float32))
        results.append([to_numpy(a) for a in (y, idx, avg, ops.max_pool2d_backward(dy, idx, x.shape),
                                              ops.avg_pool2d_backward(dy, x.shape, 2, s))])
        rng = np.random.default_rng(5)
        rng.standard_normal(x.shape)  # (the same dy for both)
    assert results[0][0].shape[2] == 1
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kernel, padding", [(2 ** 32, 2 ** 31), (2 ** 63, 2 ** 62)])
def test_a_window_or_padded_input_past_what_the_kernels_index_is_refused(backend, kernel, padding):
    # A 2**32 x 2**32 average window's int64 divisor overflowed (inf for 2**-64); past 2**63 emu refused the
    # arguments without naming one.
    x = on(backend, np.ones((1, 1, 1, 1), np.float32))
    for call in (lambda: ops.avg_pool2d_forward(x, kernel, None, padding),
                 lambda: ops.max_pool2d_forward(x, kernel, None, padding),
                 lambda: ops.avg_pool2d_backward(x, (1, 1, 1, 1), kernel, None, padding)):
        with pytest.raises(ValueError, match=r"must be at most 2\*\*40 along each axis and the window"):
            call()
    y = ops.avg_pool2d_forward(x, 2 ** 20, None, 2 ** 19)  # (a window of 2**40 elements: 2**-40 each)
    assert to_numpy(y).ravel().tolist() == [2.0 ** -40]
