"""The cpu backend's 2x2 / stride 2 max pooling of float32 planes in AVX-512 / AVX2 (fastconv/_cpu/_pool32.py):
the same values and indices, bit for bit, as the portable loop (pool.max_pool_plane) on widths
around its 8-window runs, strided rows, ties, NaN and infinities; and max_pool2d_forward's choice of
it. Skipped where the host has neither AVX-512F nor AVX2."""
import numpy as np
import pytest

from fastconv import ops
from fastconv._cpu import _vecmath, pool
from helpers import needs_simd

pytestmark = needs_simd

if _vecmath.SIMD:
    from numba import njit

    from fastconv._cpu._pool32 import max_pool_2x2_plane
    from fastconv._cpu.pool import max_pool_plane

    @njit
    def _vector(x, ld, width, y, indices):
        max_pool_2x2_plane(x, ld, width, y, indices)

    @njit
    def _portable(x2, height, width, y, indices):
        max_pool_plane(x2, height, width, y, indices, 2, 2, 2, 2, 0, 0)


@pytest.mark.parametrize("height, width, ld", [(14, 14, 16), (28, 28, 28), (7, 9, 9), (2, 2, 2), (3, 35, 40),
                                                (17, 33, 35), (4, 16, 16), (2, 18, 18)])
def test_the_vector_pooling_is_the_portable_loop_bit_for_bit(height, width, ld):
    rng = np.random.default_rng(height * 100 + width)
    x = rng.standard_normal(height * ld).astype(np.float32)
    x[::7] = 0.0  # ties
    x[::11] = -0.0
    x[rng.integers(0, x.size, 4)] = np.nan
    x[rng.integers(0, x.size, 2)] = np.inf
    x[rng.integers(0, x.size, 2)] = -np.inf
    out = (height // 2, width // 2)
    y = np.full(out, 7.0, np.float32)
    indices = np.full(out, -1, np.int64)
    y_ref, indices_ref = np.empty(out, np.float32), np.empty(out, np.int64)
    guarded = np.concatenate([x, np.full(16, np.nan, np.float32)])  # past the plane: never read
    _vector(guarded, ld, width, y, indices)
    _portable(x.reshape(height, ld), height, width, y_ref, indices_ref)
    assert y.tobytes() == y_ref.tobytes() and np.array_equal(indices, indices_ref)


def test_max_pool2d_forward_takes_it_for_float32_2x2_only(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 10, 13)).astype(np.float32)[:, :, :, :12]  # not contiguous
    x[0, 0, 0, :4] = np.nan
    taken, kernel = [], pool._max_forward_2x2_simd
    monkeypatch.setattr(pool, "_max_forward_2x2_simd", lambda *a: taken.append(a[0].dtype) or kernel(*a))
    y, indices = ops.max_pool2d_forward(x, kernel_size=2)
    ops.max_pool2d_forward(x.astype(np.float64), kernel_size=2)
    ops.max_pool2d_forward(x, kernel_size=3, stride=2)
    assert taken == [np.float32]  # (the comparison below proves nothing unless the first call took it)
    monkeypatch.setattr(_vecmath, "SIMD", False)
    y_ref, indices_ref = ops.max_pool2d_forward(x, kernel_size=2)
    assert y.tobytes() == y_ref.tobytes() and np.array_equal(indices, indices_ref)
    assert taken == [np.float32]


@pytest.mark.skipif(not _vecmath.AVX512, reason="AVX-512 only: on AVX2 hosts the fused backward scatters by the "
                    "portable loop")
@pytest.mark.parametrize("act", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("channels", [1, 12])
def test_the_vector_gradient_scatter_is_the_portable_one(act, channels):
    """conv2d_max_pool2d_backward scatters the pooled gradient 8 windows at a time when every index
    names a position of its own 2x2 window, else the portable way, plane by plane: here with the
    pooling's own indices, an index moved into the next window, and -0 gradients; always the
    unfused ops (max_pool2d_backward, then conv2d_backward of the full gradient) bit for bit."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((3, channels, 12, 14)).astype(np.float32)
    w = rng.standard_normal((5, channels, 3, 3)).astype(np.float32)
    y, idx = ops.conv2d_max_pool2d_forward(x, w, None, padding=1, activation=act, pool_kernel=2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy[0, 0, 0, :3] = -0.0
    moved = np.array(idx)
    moved[1, 2, 3, 4] = moved[1, 2, 3, 5]  # another window's position: a collision on one plane
    for indices in (idx, moved):
        fused = ops.conv2d_max_pool2d_backward(dy, y, indices, x, w, padding=1, activation=act,
                                               input_grad=channels >= 8)
        d = dy if act is None else (ops.relu_backward(dy, y) if act == "relu" else ops.sigmoid_backward(dy, y))
        full = ops.max_pool2d_backward(d, indices, (3, 5, 12, 14))
        unfused = ops.conv2d_backward(full, x, w, padding=1, input_grad=channels >= 8)
        for got, want in zip(fused, unfused):
            if want is not None:
                assert got.tobytes() == want.tobytes()


@pytest.mark.skipif(not _vecmath.AVX512, reason="AVX-512 only: AVX2 hosts scatter by the portable loop")
@pytest.mark.parametrize("x_shape", [(3, 5, 12, 14), (2, 3, 15, 13), (1, 2, 2, 2), (2, 4, 28, 28), (1, 1, 3, 50)])
def test_max_pool2d_backward_scatters_8_windows_at_a_time_bit_for_bit(x_shape, monkeypatch):
    """max_pool2d_backward with dy of a 2x2 / stride 2 pooling's shape scatters by
    _pool32.unpool_2x2_plane, redoing a plane the portable way where an index leaves its own 2x2
    block: the portable kernel's bits with the pooling's indices, an index moved into the next
    window, a 3x3 / stride 2 pooling's indices, random ones, and -0 / NaN gradients."""
    rng = np.random.default_rng(sum(x_shape))
    n, c, h, w = x_shape
    x = rng.standard_normal(x_shape).astype(np.float32)
    _, own = ops.max_pool2d_forward(x, kernel_size=2)
    dy = rng.standard_normal(own.shape).astype(np.float32)
    dy.reshape(-1)[::5] = -0.0
    dy.reshape(-1)[3::17] = np.nan
    moved = np.array(own)
    moved[0, 0, 0, 0] = moved[0, 0, 0, -1] if own.shape[3] > 1 else 2 * w - 1
    cases = {"own": own, "moved": moved, "random": rng.integers(0, h * w, own.shape)}
    if min(h, w) >= 3:
        _, overlapping = ops.max_pool2d_forward(x, kernel_size=3, stride=2, padding=1)  # ceil(h / 2) rows
        cases["3x3"] = np.ascontiguousarray(overlapping[:, :, :h // 2, :w // 2])
    taken, kernel = [], pool._max_backward_2x2_avx512
    monkeypatch.setattr(pool, "_max_backward_2x2_avx512", lambda *a: taken.append(1) or kernel(*a))
    for name, indices in cases.items():
        got = ops.max_pool2d_backward(dy, indices, x_shape)
        with monkeypatch.context() as m:
            m.setattr(_vecmath, "AVX512", False)
            want = ops.max_pool2d_backward(dy, indices, x_shape)
        assert got.tobytes() == want.tobytes(), name
    assert len(taken) == len(cases)  # each `got` by the 8-window scatter, each `want` not
