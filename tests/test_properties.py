"""Property-based tests: every op, forward and backward, on random shapes and hyperparameters drawn by
hypothesis, on every backend present, against the float64 NumPy references of the per-family test
files (tolerances from tests/helpers.py).

The profile is fixed and small enough for CI (25 examples per test and backend, derandomized, so a
run is reproducible and the same examples are tried everywhere); FASTCONV_HYPOTHESIS_EXAMPLES
raises it for a longer local run. Shapes stay small: the emu backend runs each GPU thread as a fiber.
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastconv import ops
from helpers import assert_matches, on, to_numpy
from test_conv import ACT, Geometry
from test_loss import bce64, bce_grad64, cross_entropy64, cross_entropy_grad64, mse64
from test_optim import torch_adam, torch_sgd
from test_pool import avg_pool_backward_reference, avg_pool_reference, max_pool_reference, max_unpool_reference

settings.register_profile(
    "fastconv-ci", max_examples=int(os.environ.get("FASTCONV_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
    derandomize=True, database=None, print_blob=True,
    # the backend fixture is entered once per test; every example runs inside it, which is what we want
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("fastconv-ci")

dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)
activations = st.sampled_from([None, "relu", "sigmoid"])


def normal(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def cast_on(be, dtype, *arrays):
    return on(be, *(None if a is None else a.astype(dtype) for a in arrays))


# ---- dense ----------------------------------------------------------------------------------------

@given(m=st.integers(0, 9), n=st.integers(0, 9), k=st.integers(0, 9), trans_a=st.booleans(),
       trans_b=st.booleans(), dtype=dtypes, seed=seeds)
def test_matmul(backend, m, n, k, trans_a, trans_b, dtype, seed):
    a, b = normal(seed, (k, m) if trans_a else (m, k), (n, k) if trans_b else (k, n))
    out = ops.matmul(*cast_on(backend, dtype, a, b), trans_a=trans_a, trans_b=trans_b)
    assert_matches(out, lambda a, b: (a.T if trans_a else a) @ (b.T if trans_b else b), [a, b], dtype)


@given(n=st.integers(1, 7), fin=st.integers(1, 9), fout=st.integers(1, 7), bias=st.booleans(),
       activation=activations, dtype=dtypes, seed=seeds)
def test_linear_forward_backward(backend, n, fin, fout, bias, activation, dtype, seed):
    x, w, b, dy = normal(seed, (n, fin), (fout, fin), fout, (n, fout))
    b = b if bias else None
    y = ops.linear_forward(*cast_on(backend, dtype, x, w, b), activation=activation)
    assert_matches(y, lambda x, w, b: ACT[activation](x @ w.T + (0 if b is None else b)), [x, w, b], dtype, what="y")
    dx, dw, db = ops.linear_backward(*cast_on(backend, dtype, dy, x, w), bias=bias)
    assert_matches(dx, lambda dy, x, w: dy @ w, [dy, x, w], dtype, what="dx")
    assert_matches(dw, lambda dy, x, w: dy.T @ x, [dy, x, w], dtype, what="dw")
    if bias:
        assert_matches(db, lambda dy: dy.sum(axis=0), [dy], dtype, what="db")
    else:
        assert db is None


@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple), dtype=dtypes, seed=seeds)
def test_relu_sigmoid_forward_backward(backend, shape, dtype, seed):
    x, dy = normal(seed, shape, shape)
    x = np.asarray(x * 4)  # reach sigmoid's flat tails (asarray: 0-d arithmetic gives a NumPy scalar)
    assert_matches(ops.relu_forward(cast_on(backend, dtype, x)), lambda x: np.maximum(x, 0), [x], dtype, what="relu")
    assert_matches(ops.relu_backward(*cast_on(backend, dtype, dy, x)), lambda dy, x: dy * (x > 0), [dy, x], dtype,
                   what="relu_backward")
    assert_matches(ops.sigmoid_forward(cast_on(backend, dtype, x)), ACT["sigmoid"], [x], dtype, what="sigmoid")
    y = np.asarray(ACT["sigmoid"](x))
    assert_matches(ops.sigmoid_backward(*cast_on(backend, dtype, dy, y)), lambda dy, y: dy * y * (1 - y), [dy, y],
                   dtype, what="sigmoid_backward")


# ---- convolution ----------------------------------------------------------------------------------

@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    if draw(st.booleans()):
        padding = draw(st.sampled_from(["valid", "same"]))
        if padding == "same":
            stride = (1, 1)
        pads = (0, 0) if padding == "valid" else (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
    else:
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        pads = (2 * padding[0], 2 * padding[1])
    # the smallest input with one output, plus a little
    h = max(1, dilation[0] * (kh - 1) + 1 - pads[0]) + draw(st.integers(0, 4))
    w = max(1, dilation[1] * (kw - 1) + 1 - pads[1]) + draw(st.integers(0, 4))
    n = draw(st.integers(0, 2))
    return (n, cin, h, w), (cout, cin // groups, kh, kw), dict(stride=stride, padding=padding, dilation=dilation,
                                                                groups=groups)


@given(problem=conv_problems(), bias=st.booleans(), activation=activations, dtype=dtypes, seed=seeds)
def test_conv2d_forward_backward(backend, problem, bias, activation, dtype, seed):
    x_shape, w_shape, hyper = problem
    geo = Geometry(x_shape, w_shape, **hyper)
    x, w, b, dy = normal(seed, x_shape, w_shape, w_shape[0], (geo.n, geo.c_out, geo.oh, geo.ow))
    b = b if bias else None
    y = ops.conv2d_forward(*cast_on(backend, dtype, x, w, b), activation=activation, **hyper)
    assert_matches(y, lambda x, w, b: ACT[activation](geo.forward(x, w, b)), [x, w, b], dtype, what="y")
    dx, dw, db = ops.conv2d_backward(*cast_on(backend, dtype, dy, x, w), bias=bias, **hyper)
    args = [dy, x, w]
    assert_matches(dx, geo.dx, args, dtype, what="dx")
    assert_matches(dw, geo.dw, args, dtype, what="dw")
    if bias:
        assert_matches(db, lambda dy, x, w: dy.sum(axis=(0, 2, 3)), args, dtype, what="db")
    else:
        assert db is None


@st.composite
def winograd_problems(draw):
    """3x3 stride-1 layers with 16-40 channels in and out: on AVX-512 hosts the cpu backend's
    Winograd forward and backward (fastconv/_cpu/_winograd32.py) unless algorithm="direct"; every
    padding up to 2 on each side."""
    cin, cout = draw(st.integers(16, 40)), draw(st.integers(16, 40))
    pads = [draw(st.integers(0, 2)) for _ in range(2)]
    padding = draw(st.sampled_from([tuple(pads), "same", "valid"]))
    total = (2 * pads[0], 2 * pads[1]) if isinstance(padding, tuple) else (2, 2) if padding == "same" else (0, 0)
    h = max(1, 3 - total[0]) + draw(st.integers(0, 7))
    w = max(1, 3 - total[1]) + draw(st.integers(0, 7))
    return (draw(st.integers(0, 3)), cin, h, w), (cout, cin, 3, 3), dict(padding=padding)


@given(problem=winograd_problems(), bias=st.booleans(), activation=activations,
       algorithm=st.sampled_from(["auto", "direct"]), seed=seeds)
def test_conv2d_3x3_many_channels(backend, problem, bias, activation, algorithm, seed):
    x_shape, w_shape, hyper = problem
    hyper = dict(hyper, algorithm=algorithm)
    geo = Geometry(x_shape, w_shape, stride=1, dilation=1, groups=1, padding=hyper["padding"])
    x, w, b, dy = normal(seed, x_shape, w_shape, w_shape[0], (geo.n, geo.c_out, geo.oh, geo.ow))
    b = b if bias else None
    y = ops.conv2d_forward(*cast_on(backend, np.float32, x, w, b), activation=activation, **hyper)
    assert_matches(y, lambda x, w, b: ACT[activation](geo.forward(x, w, b)), [x, w, b], np.float32, what="y")
    dx, dw, db = ops.conv2d_backward(*cast_on(backend, np.float32, dy, x, w), **hyper)
    args = [dy, x, w]
    assert_matches(dx, geo.dx, args, np.float32, what="dx")
    assert_matches(dw, geo.dw, args, np.float32, what="dw")
    assert_matches(db, lambda dy, x, w: dy.sum(axis=(0, 2, 3)), args, np.float32, what="db")


# ---- pooling --------------------------------------------------------------------------------------

@st.composite
def pool_problems(draw, min_n=0):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    h = max(1, kernel[0] - 2 * padding[0]) + draw(st.integers(0, 4))
    w = max(1, kernel[1] - 2 * padding[1]) + draw(st.integers(0, 4))
    shape = (draw(st.integers(min_n, 2)), draw(st.integers(1, 3)), h, w)
    return shape, kernel, stride, padding


# N >= 1: test_pool's reference cannot take an empty batch (tests/test_bad_inputs.py covers N = 0)
@given(problem=pool_problems(min_n=1), dtype=dtypes, seed=seeds)
def test_max_pool_forward_backward(backend, problem, dtype, seed):
    shape, kernel, stride, padding = problem
    x = normal(seed, shape)[0].astype(dtype).astype(np.float64)  # exactly representable: the same argmax
    y, idx = ops.max_pool2d_forward(cast_on(backend, dtype, x), kernel, stride, padding)
    ref_y, ref_idx = max_pool_reference(x, kernel, stride, padding)
    assert_matches(y, lambda x: max_pool_reference(x, kernel, stride, padding)[0], [x], dtype, what="y")
    np.testing.assert_array_equal(to_numpy(idx), ref_idx)
    dy = normal(seed + 1, ref_y.shape)[0]
    dx = ops.max_pool2d_backward(cast_on(backend, dtype, dy), idx, shape)
    assert_matches(dx, lambda dy: max_unpool_reference(dy, ref_idx, shape), [dy], dtype, what="dx")


@given(problem=pool_problems(), dtype=dtypes, seed=seeds)
def test_avg_pool_forward_backward(backend, problem, dtype, seed):
    shape, kernel, stride, padding = problem
    x = normal(seed, shape)[0]
    y = ops.avg_pool2d_forward(cast_on(backend, dtype, x), kernel, stride, padding)
    assert_matches(y, lambda x: avg_pool_reference(x, kernel, stride, padding), [x], dtype, what="y")
    dy = normal(seed + 1, to_numpy(y).shape)[0]
    dx = ops.avg_pool2d_backward(cast_on(backend, dtype, dy), shape, kernel, stride, padding)
    assert_matches(dx, lambda dy: avg_pool_backward_reference(dy, shape, kernel, stride, padding), [dy], dtype,
                   what="dx")


# ---- losses ---------------------------------------------------------------------------------------

def softmax64(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@given(n=st.integers(1, 8), classes=st.integers(1, 12), with_weight=st.booleans(),
       smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.0]), scale=st.sampled_from([1.0, 10.0]), dtype=dtypes, seed=seeds)
def test_cross_entropy_forward_backward(backend, n, classes, with_weight, smoothing, scale, dtype, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, classes)) * scale
    y = rng.integers(0, classes, n)
    w = rng.uniform(0.1, 2.0, classes) if with_weight else None
    loss, probs = ops.softmax_cross_entropy_forward(cast_on(backend, dtype, z), on(backend, y),
                                                    None if w is None else cast_on(backend, dtype, w),
                                                    label_smoothing=smoothing)
    assert_matches(loss, lambda z, w: cross_entropy64(z, y, w, smoothing), [z, w], dtype, what="loss")
    assert_matches(probs, softmax64, [z], dtype, what="probs")
    p = to_numpy(probs).astype(np.float64)
    grad = ops.softmax_cross_entropy_backward(cast_on(backend, dtype, p), on(backend, y),
                                              None if w is None else cast_on(backend, dtype, w),
                                              label_smoothing=smoothing)
    if classes == 1:
        # The gradient is exactly 0 (p = 1); both sides are rounding noise of terms of size w[y] / sum w[y],
        # which a tolerance relative to the (zero) result cannot express.
        terms = 1.0 if w is None else w.max() / w[y].sum()
        assert np.abs(to_numpy(grad)).max() <= 16 * np.finfo(dtype).eps * terms
    else:
        assert_matches(grad, lambda p, w: cross_entropy_grad64(p, y, w, smoothing), [p, w], dtype, what="dlogits")


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), with_pos_weight=st.booleans(),
       probabilistic=st.booleans(), dtype=dtypes, seed=seeds)
def test_bce_forward_backward(backend, shape, with_pos_weight, probabilistic, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    t = rng.uniform(0, 1, shape) if probabilistic else rng.integers(0, 2, shape).astype(np.float64)
    pw = rng.uniform(0.2, 3.0, shape[-1]) if with_pos_weight else None
    args = [x, t, pw]
    assert_matches(ops.bce_with_logits_forward(*cast_on(backend, dtype, *args)), bce64, args, dtype, what="loss")
    assert_matches(ops.bce_with_logits_backward(*cast_on(backend, dtype, *args)), bce_grad64, args, dtype,
                   what="dlogits")


@given(shape=st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple), dtype=dtypes, seed=seeds)
def test_mse_forward_backward(backend, shape, dtype, seed):
    p, t = normal(seed, shape, shape)
    assert_matches(ops.mse_forward(*cast_on(backend, dtype, p, t)), mse64, [p, t], dtype, what="loss")
    assert_matches(ops.mse_backward(*cast_on(backend, dtype, p, t)), lambda p, t: 2 * (p - t) / p.size, [p, t], dtype,
                   what="dpred")


# ---- optimizer steps ------------------------------------------------------------------------------

shapes_1_3 = st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple)


@given(shape=shapes_1_3, steps=st.integers(1, 3), lr=st.sampled_from([0.0, 1e-3, 0.1, 1.0]),
       momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]), weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
       nesterov=st.booleans(), dtype=dtypes, seed=seeds)
def test_sgd_steps(backend, shape, steps, lr, momentum, weight_decay, nesterov, dtype, seed):
    nesterov = nesterov and momentum > 0
    rng = np.random.default_rng(seed)
    p0, grads = rng.standard_normal(shape), rng.standard_normal((steps,) + shape)
    param = cast_on(backend, dtype, p0)
    velocity = on(backend, np.zeros(shape, dtype)) if momentum else None
    for k in range(1, steps + 1):
        ops.sgd_step(param, cast_on(backend, dtype, grads[k - 1]), velocity, lr=lr, momentum=momentum,
                     weight_decay=weight_decay, nesterov=nesterov)
    ref = lambda p0, grads: torch_sgd(p0, grads, lr, momentum, weight_decay, nesterov)[0]
    assert_matches(param, ref, [p0, grads], dtype, what=f"param after {steps} steps")


@given(shape=shapes_1_3, steps=st.integers(1, 3), lr=st.sampled_from([1e-3, 0.01, 0.1]),
       beta1=st.sampled_from([0.0, 0.5, 0.9]), beta2=st.sampled_from([0.9, 0.999]),
       eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 0.01]), decoupled=st.booleans(),
       dtype=dtypes, seed=seeds)
def test_adam_steps(backend, shape, steps, lr, beta1, beta2, eps, weight_decay, decoupled, dtype, seed):
    rng = np.random.default_rng(seed)
    p0, grads = rng.standard_normal(shape), rng.standard_normal((steps,) + shape)
    param, m, v = cast_on(backend, dtype, p0, np.zeros(shape), np.zeros(shape))
    for k in range(1, steps + 1):
        ops.adam_step(param, cast_on(backend, dtype, grads[k - 1]), m, v, k, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                      weight_decay=weight_decay, decoupled=decoupled)
    for i, (name, state) in enumerate([("param", param), ("m", m), ("v", v)]):
        ref = lambda p0, grads: torch_adam(p0, grads, lr, beta1, beta2, eps, weight_decay, decoupled)[i]
        assert_matches(state, ref, [p0, grads], dtype, what=f"{name} after {steps} steps")
