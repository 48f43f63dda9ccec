"""The fused convolution + activation + max pooling (ops.conv2d_max_pool2d_*) on every backend: bit for
bit the unfused ops (conv2d, max_pool2d, relu) on the shapes that stress the fused cpu kernel, finite
differences in float64, unchecked indices and NaN. (The bad inputs it must refuse: tests/test_bad_inputs.py.)"""
import numpy as np
import pytest

from fastconv import ops
from helpers import assert_gradient, numerical_gradient, on, to_numpy

# x shape, w shape, conv stride / padding / dilation / groups, pool kernel / stride / padding, activation
CASES = {
    "lenet_conv1": ((3, 1, 12, 12), (4, 1, 3, 3), 1, 1, 1, 1, 2, None, 0, "relu"),
    "lenet_conv2_many_channels": ((2, 9, 8, 8), (5, 9, 3, 3), 1, 1, 1, 1, 2, None, 0, "relu"),
    "no_activation_odd_size": ((2, 3, 9, 7), (4, 3, 3, 3), 1, 1, 1, 1, 2, None, 0, None),
    "overlapping_padded_pool": ((2, 8, 7, 6), (3, 8, 2, 3), 1, (1, 0), 1, 1, 3, 1, 1, "relu"),
    "pool_stride_larger_than_kernel": ((1, 2, 11, 10), (3, 2, 3, 3), 1, 0, 1, 1, 2, 3, 0, "relu"),
    "rectangular_pool": ((2, 4, 9, 9), (2, 4, 3, 3), 1, 1, 1, 1, (3, 2), (2, 1), (1, 0), None),
    "dilated_grouped": ((2, 16, 9, 9), (6, 8, 3, 3), 1, 2, 2, 2, 2, None, 0, "relu"),
    "strided_conv_unfused_path": ((2, 3, 10, 9), (4, 3, 3, 3), 2, 1, 1, 1, 2, None, 0, "relu"),
    "sigmoid": ((2, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, 1, 2, None, 0, "sigmoid"),
    "empty_batch": ((0, 3, 8, 8), (4, 3, 3, 3), 1, 1, 1, 1, 2, None, 0, "relu"),
    # 1x1 on 64 positions: the cpu backward by the linear layer (the fused one must take it too)
    "pointwise_small_map": ((4, 32, 8, 8), (48, 32, 1, 1), 1, 0, 1, 1, 2, None, 0, "relu"),
    "pointwise_no_activation": ((3, 17, 6, 7), (20, 17, 1, 1), 1, 0, 1, 1, 2, None, 0, None),
}


def _case(name, dtype=np.float32, seed=0):
    xs, ws, stride, padding, dilation, groups, pk, ps, pp, act = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    if x.size:
        x.flat[::7] = 0.0  # ties: equal maxima in a window (zero after ReLU, and zero inputs)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    pool = dict(kernel_size=pk, stride=ps, padding=pp)
    return x, w, b, conv, pool, act


def _unfused(be, x, w, b, conv, pool, act, dy):
    z = ops.conv2d_forward(x, w, b, activation=act, **conv)
    y, idx = ops.max_pool2d_forward(z, **pool)
    d = dy if act is None else (ops.relu_backward(dy, y) if act == "relu" else ops.sigmoid_backward(dy, y))
    grads = ops.conv2d_backward(ops.max_pool2d_backward(d, idx, tuple(z.shape)), x, w, **conv)
    return y, idx, grads


def _fused_forward(x, w, b, conv, pool, act):
    return ops.conv2d_max_pool2d_forward(x, w, b, activation=act, pool_kernel=pool["kernel_size"],
                                         pool_stride=pool["stride"], pool_padding=pool["padding"], **conv)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_is_the_unfused_ops_bit_for_bit(backend, name, dtype):
    x, w, b, conv, pool, act = _case(name, dtype)
    x, w, b = on(backend, x, w, b)
    y, idx = _fused_forward(x, w, b, conv, pool, act)
    dy = on(backend, np.random.default_rng(1).standard_normal(tuple(y.shape)).astype(dtype))
    y_ref, idx_ref, grads_ref = _unfused(backend, x, w, b, conv, pool, act, dy)
    assert to_numpy(y).tobytes() == to_numpy(y_ref).tobytes()
    assert to_numpy(idx).tobytes() == to_numpy(idx_ref).tobytes()
    for input_grad in (True, False):
        grads = ops.conv2d_max_pool2d_backward(dy, y, idx, x, w, activation=act, input_grad=input_grad, **conv)
        for what, got, ref in zip(("dx", "dw", "db"), grads, grads_ref):
            if what == "dx" and not input_grad:
                assert got is None
                continue
            if act == "sigmoid":  # the derivative is applied per window: equal up to rounding
                np.testing.assert_allclose(to_numpy(got), to_numpy(ref), rtol=1e-5, atol=1e-6, err_msg=what)
            else:
                assert to_numpy(got).tobytes() == to_numpy(ref).tobytes(), what


def test_unchecked_indices_give_the_same_bits_and_never_write_out_of_bounds(backend):
    # check_indices=False is what Conv2d.backward_max_pool passes for its own forward's indices.
    x, w, b, conv, pool, act = _case("lenet_conv2_many_channels")
    x, w, b = on(backend, x, w, b)
    y, idx = _fused_forward(x, w, b, conv, pool, act)
    dy = on(backend, np.random.default_rng(2).standard_normal(tuple(y.shape)).astype(np.float32))
    checked = ops.conv2d_max_pool2d_backward(dy, y, idx, x, w, activation=act, **conv)
    unchecked = ops.conv2d_max_pool2d_backward(dy, y, idx, x, w, activation=act, check_indices=False, **conv)
    for what, got, ref in zip(("dx", "dw", "db"), unchecked, checked):
        assert to_numpy(got).tobytes() == to_numpy(ref).tobytes(), what
    # Out of range and unchecked: those gradients are lost, nothing else is touched or crashes.
    bad = to_numpy(idx).copy()
    bad[0, 0, 0, 0], bad[-1, -1, -1, -1] = -1, 2**40
    dropped = to_numpy(dy).copy()
    dropped[0, 0, 0, 0] = dropped[-1, -1, -1, -1] = 0
    got = ops.conv2d_max_pool2d_backward(dy, y, on(backend, bad), x, w, activation=act, check_indices=False, **conv)
    ref = ops.conv2d_max_pool2d_backward(on(backend, dropped), y, idx, x, w, activation=act, **conv)
    for what, g, r in zip(("dx", "dw", "db"), got, ref):
        np.testing.assert_allclose(to_numpy(g), to_numpy(r), rtol=1e-5, atol=1e-5, err_msg=what)


def test_nan_wins_the_pool_and_relu_keeps_it(backend):
    x, w, b, conv, pool, act = _case("lenet_conv2_many_channels")
    x[0, :, 2, 2] = np.nan  # every output near (2, 2) is NaN, so are the pooled values there
    xb, wb, bb = on(backend, x, w, b)
    y, idx = _fused_forward(xb, wb, bb, conv, pool, act)
    y_ref, idx_ref, _ = _unfused(backend, xb, wb, bb, conv, pool, act, on(backend, np.ones(tuple(y.shape), np.float32)))
    assert np.isnan(to_numpy(y)).any()
    assert to_numpy(y).tobytes() == to_numpy(y_ref).tobytes()
    assert to_numpy(idx).tobytes() == to_numpy(idx_ref).tobytes()


@pytest.mark.parametrize("name", ["lenet_conv2_many_channels", "overlapping_padded_pool"])
def test_relu_passes_the_gradient_of_a_nan_output_as_torch(backend, name):
    # A NaN bias makes channel 0's outputs all NaN. torch's ReLU backward (where(y <= 0, 0, dy))
    # passes dy through a NaN output, so that channel's bias gradient is the sum of its dy, as
    # the unfused ops give; the fused backward gave 0 (its pooled relu' was [y > 0]).
    x, w, b, conv, pool, act = _case(name)
    b[0] = np.nan
    xb, wb, bb = on(backend, x, w, b)
    y, idx = _fused_forward(xb, wb, bb, conv, pool, act)
    dy = np.random.default_rng(1).standard_normal(tuple(y.shape)).astype(np.float32)
    assert np.isnan(to_numpy(y)[:, 0]).all()
    grads = ops.conv2d_max_pool2d_backward(on(backend, dy), y, idx, xb, wb, activation=act, **conv)
    _, _, ref = _unfused(backend, xb, wb, bb, conv, pool, act, on(backend, dy))
    for what, g, r in zip(("dx", "dw", "db"), grads, ref):
        np.testing.assert_allclose(to_numpy(g), to_numpy(r), rtol=1e-5, atol=1e-5, err_msg=what)
    np.testing.assert_allclose(to_numpy(grads[2])[0], dy[:, 0].sum(dtype=np.float64), rtol=1e-5)


@pytest.mark.parametrize("name", ["lenet_conv2_many_channels", "overlapping_padded_pool", "strided_conv_unfused_path"])
def test_gradients_by_finite_differences(backend, name):
    x, w, b, conv, pool, act = _case(name, np.float64, seed=3)
    x = x[:1]
    y, idx = _fused_forward(*on(backend, x, w, b), conv, pool, act)
    dy = np.random.default_rng(4).standard_normal(tuple(y.shape))

    def forward(x, w, b):
        return to_numpy(_fused_forward(*on(backend, x, w, b), conv, pool, act)[0])

    grads = ops.conv2d_max_pool2d_backward(*on(backend, dy, y, idx, x, w), activation=act, **conv)
    for i, what in enumerate(["dx", "dw", "db"]):
        assert_gradient(grads[i], numerical_gradient(forward, [x, w, b], i, dy), what)
