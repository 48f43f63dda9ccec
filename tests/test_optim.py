"""Optimizer steps (SGD, Adam, AdamW) on every backend: several consecutive in-place steps against a
NumPy re-implementation of torch.optim's single-tensor algorithm (its order of operations, its
lazily created momentum buffer), in float32 and float64, and the inputs the steps must refuse."""
import math

import numpy as np
import pytest

from fastconv import ops
from helpers import DTYPES, assert_matches, on, to_numpy

STEPS = 5
SHAPES = [(1,), (7,), (3, 5), (2, 3, 4, 5), (1100,)]


def torch_sgd(p, grads, lr, momentum, weight_decay, nesterov):
    """torch.optim.SGD (dampening 0): (param, momentum buffer) after len(grads) steps."""
    buf = None
    for g in grads:
        if weight_decay != 0:
            g = g + weight_decay * p
        if momentum != 0:
            buf = g.copy() if buf is None else buf * momentum + g  # torch clones g into a new buffer
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p, buf


def torch_adam(p, grads, lr, beta1, beta2, eps, weight_decay, decoupled):
    """torch.optim.Adam / AdamW: (param, exp_avg, exp_avg_sq) after len(grads) steps."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for step, g in enumerate(grads, start=1):
        if weight_decay != 0:
            if decoupled:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m = m + (1 - beta1) * (g - m)  # exp_avg.lerp_(g, 1 - beta1)
        v = v * beta2 + (1 - beta2) * g * g
        step_size = lr / (1 - beta1 ** step)
        denom = np.sqrt(v) / math.sqrt(1 - beta2 ** step) + eps
        p = p - step_size * m / denom
    return p, m, v


def _problem(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal((STEPS,) + shape)


SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.02, momentum=0.5, weight_decay=0.01, nesterov=True),
    dict(lr=0.0, momentum=0.3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("shape", SHAPES)
def test_sgd_steps_match_torch(backend, shape, settings, dtype):
    p0, grads = _problem(shape, len(shape) + 1)
    full = {"momentum": 0.0, "weight_decay": 0.0, "nesterov": False, **settings}
    param = on(backend, p0.astype(dtype))
    velocity = on(backend, np.zeros(shape, dtype)) if full["momentum"] else None
    for k in range(1, STEPS + 1):
        assert ops.sgd_step(param, on(backend, grads[k - 1].astype(dtype)), velocity, **settings) is None
        ref = lambda p0, grads: torch_sgd(p0, grads[:k], **full)[0]
        assert_matches(param, ref, [p0, grads], dtype, what=f"param after step {k}")
        if velocity is not None:
            ref = lambda p0, grads: torch_sgd(p0, grads[:k], **full)[1]
            assert_matches(velocity, ref, [p0, grads], dtype, what=f"velocity after step {k}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_zero_velocity_is_torchs_new_buffer(backend, dtype):
    # torch's first momentum step clones g into the buffer; momentum * 0 + g is the same value, exactly.
    p0, grads = _problem((4, 6), 3)
    p0, g = p0.astype(dtype), grads[0].astype(dtype)
    param, velocity = on(backend, p0.copy(), np.zeros_like(p0))
    ops.sgd_step(param, on(backend, g), velocity, lr=0.5, momentum=0.9)
    np.testing.assert_array_equal(to_numpy(velocity), g)
    plain = on(backend, p0.copy())
    ops.sgd_step(plain, on(backend, g), lr=0.5)  # the first momentum step is a plain step
    np.testing.assert_array_equal(to_numpy(param), to_numpy(plain))


# Sizes around the kernels' blocks, an empty tensor, and 40 tensors: two launches of <= 32.
FOREACH_SIZES = [[5], [1, 0, 257, 6, 1100], [3] * 7 + [2049] + [1] * 32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("sizes", FOREACH_SIZES, ids=lambda s: f"{len(s)}-tensors")
def test_sgd_foreach_is_sgd_step_on_each_tensor_bit_for_bit(backend, sizes, settings, dtype):
    rng = np.random.default_rng(len(sizes))
    momentum = settings.get("momentum", 0.0)
    starts = [rng.standard_normal(n).astype(dtype) for n in sizes]
    params = [on(backend, p.copy()) for p in starts]
    singles = [on(backend, p.copy()) for p in starts]
    velocities = [on(backend, np.zeros(n, dtype)) for n in sizes] if momentum else None
    single_velocities = [on(backend, np.zeros(n, dtype)) for n in sizes] if momentum else [None] * len(sizes)
    for _ in range(3):
        grads = [on(backend, rng.standard_normal(n).astype(dtype)) for n in sizes]
        assert ops.sgd_step_foreach(params, grads, velocities, **settings) is None
        for p, g, v in zip(singles, grads, single_velocities):
            ops.sgd_step(p, g, v, **settings)
    for k, (got, want) in enumerate(zip(params, singles)):
        assert to_numpy(got).tobytes() == to_numpy(want).tobytes(), f"params[{k}]"
    for k, (got, want) in enumerate(zip(velocities or [], single_velocities)):
        assert to_numpy(got).tobytes() == to_numpy(want).tobytes(), f"velocities[{k}]"


def test_sgd_foreach_of_nothing_and_grads_that_share(backend):
    ops.sgd_step_foreach([], [], lr=0.1)  # nothing to do
    # grads are only read: two params may take the same gradient array
    g = on(backend, np.ones(4, np.float32))
    a, b = on(backend, np.zeros(4, np.float32), np.zeros(4, np.float32))
    ops.sgd_step_foreach([a, b], [g, g], lr=0.5)
    assert to_numpy(a).tolist() == to_numpy(b).tolist() == [-0.5] * 4
    # without momentum the velocities are not used: one shared dummy buffer is fine
    v = on(backend, np.zeros(4, np.float32))
    ops.sgd_step_foreach([a, b], [g, g], [v, v], lr=0.5)
    assert to_numpy(a).tolist() == [-1.0] * 4


class TestForeachBadInput:
    def _arrays(self, backend, count=3, dtype=np.float32):
        return ([on(backend, np.zeros(4, dtype)) for _ in range(count)],
                [on(backend, np.ones(4, dtype)) for _ in range(count)])

    def test_lengths_differ(self, backend):
        params, grads = self._arrays(backend)
        with pytest.raises(ValueError, match=r"same length, got 3, 2 and 3"):
            ops.sgd_step_foreach(params, grads[:2], lr=0.1)

    def test_not_a_sequence(self, backend):
        params, grads = self._arrays(backend)
        with pytest.raises(TypeError, match=r"params must be a list or tuple of arrays"):
            ops.sgd_step_foreach(params[0], grads, lr=0.1)

    def test_mixed_dtypes(self, backend):
        params, grads = self._arrays(backend)
        params[2], grads[2] = on(backend, np.zeros(4), np.ones(4))
        with pytest.raises(TypeError, match=r"params\[2\] is float64 but params\[0\] is float32"):
            ops.sgd_step_foreach(params, grads, lr=0.1)

    def test_shape_mismatch_names_the_tensor(self, backend):
        params, grads = self._arrays(backend)
        grads[1] = on(backend, np.ones(5, np.float32))
        with pytest.raises(ValueError, match=r"grads\[1\] is \(5,\) but params\[1\] is \(4,\)"):
            ops.sgd_step_foreach(params, grads, lr=0.1)

    def test_momentum_needs_every_velocity(self, backend):
        params, grads = self._arrays(backend)
        velocities = [on(backend, np.zeros(4, np.float32)), None, on(backend, np.zeros(4, np.float32))]
        with pytest.raises(ValueError, match=r"velocities\[1\] is None"):
            ops.sgd_step_foreach(params, grads, velocities, lr=0.1, momentum=0.9)

    def test_written_arrays_must_not_share_memory_across_tensors(self, backend):
        flat = on(backend, np.zeros(12, np.float32))
        params, grads = [flat[:6], flat[4:10]], [on(backend, np.ones(6, np.float32)) for _ in range(2)]
        with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
            ops.sgd_step_foreach(params, grads, lr=0.1)
        params = [on(backend, np.zeros(6, np.float32)) for _ in range(2)]
        with pytest.raises(ValueError, match=r"params\[1\] and grads\[1\] share memory"):
            ops.sgd_step_foreach(params, [grads[0], params[1]], lr=0.1)
        velocities = [on(backend, np.zeros(6, np.float32)), params[0]]
        with pytest.raises(ValueError, match=r"params\[0\] and velocities\[1\] share memory"):
            ops.sgd_step_foreach(params, grads, velocities, lr=0.1, momentum=0.9)


ADAM_SETTINGS = [
    dict(lr=1e-3),
    dict(lr=0.01, beta1=0.5, beta2=0.9, eps=1e-6),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.1, decoupled=True),
    dict(lr=0.05, beta1=0.0, beta2=0.0),
    dict(lr=0.02, beta1=0.3, weight_decay=0.05, decoupled=True),  # 1 - beta1 >= 0.5: lerp's other branch
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", ADAM_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("shape", SHAPES)
def test_adam_steps_match_torch(backend, shape, settings, dtype):
    p0, grads = _problem(shape, len(shape) + 2)
    full = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "decoupled": False, **settings}
    param, m, v = on(backend, p0.astype(dtype), np.zeros(shape, dtype), np.zeros(shape, dtype))
    for k in range(1, STEPS + 1):
        assert ops.adam_step(param, on(backend, grads[k - 1].astype(dtype)), m, v, k, **settings) is None
        for i, (name, state) in enumerate([("param", param), ("m", m), ("v", v)]):
            ref = lambda p0, grads: torch_adam(p0, grads[:k], **full)[i]
            assert_matches(state, ref, [p0, grads], dtype, what=f"{name} after step {k}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", ADAM_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("sizes", FOREACH_SIZES, ids=lambda s: f"{len(s)}-tensors")
def test_adam_foreach_is_adam_step_on_each_tensor_bit_for_bit(backend, sizes, settings, dtype):
    # each tensor with its own step count (here k + 1, k + 2, ...: every tensor's bias corrections differ)
    rng = np.random.default_rng(len(sizes))
    starts = [rng.standard_normal(n).astype(dtype) for n in sizes]
    states = [[on(backend, a.copy()) for a in (p, np.zeros_like(p), np.zeros_like(p))] for p in starts]
    singles = [[on(backend, a.copy()) for a in (p, np.zeros_like(p), np.zeros_like(p))] for p in starts]
    for step in range(1, 4):
        grads = [on(backend, rng.standard_normal(n).astype(dtype)) for n in sizes]
        steps = [step + k for k in range(len(sizes))]
        params, ms, vs = (list(a) for a in zip(*states))
        assert ops.adam_step_foreach(params, grads, ms, vs, steps, **settings) is None
        for (p, m, v), g, t in zip(singles, grads, steps):
            ops.adam_step(p, g, m, v, t, **settings)
    for k, (got, want) in enumerate(zip(states, singles)):
        for name, a, b in zip(("params", "ms", "vs"), got, want):
            assert to_numpy(a).tobytes() == to_numpy(b).tobytes(), f"{name}[{k}]"


# Sizes the cpu backend runs in calls of their own (from 2^16 values: 65536, 70000) among small ones it
# groups 8 to a call (16 of them: two groups and a part), some of several of its tasks of 2^14 values.
MIXED_SIZES = [70000, 3, 16385, 0, 65535, 65536, 1] + [2] * 9


@pytest.mark.parametrize("dtype", DTYPES)
def test_foreach_of_large_and_small_tensors_against_the_reference(backend, dtype):
    # every value updated by its own tensor's step, wherever the backend runs it
    rng = np.random.default_rng(11)
    starts = [rng.standard_normal(n) for n in MIXED_SIZES]
    grads = [rng.standard_normal((2, n)) for n in MIXED_SIZES]
    adam = dict(lr=0.02, beta1=0.3, weight_decay=0.05, decoupled=True)
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    params, ms, vs, sgd_params, velocities = ([on(backend, a.astype(dtype)) for a in arrays] for arrays in (
        starts, [np.zeros(n) for n in MIXED_SIZES], [np.zeros(n) for n in MIXED_SIZES], starts,
        [np.zeros(n) for n in MIXED_SIZES]))
    for step in (1, 2):
        g = [on(backend, a[step - 1].astype(dtype)) for a in grads]
        ops.adam_step_foreach(params, g, ms, vs, [step] * len(g), **adam)
        ops.sgd_step_foreach(sgd_params, g, velocities, **sgd)
    full_adam = {"beta2": 0.999, "eps": 1e-8, **adam}
    full_sgd = {**sgd}
    for k, n in enumerate(MIXED_SIZES):
        for i, (name, state) in enumerate([("param", params[k]), ("m", ms[k]), ("v", vs[k])]):
            assert_matches(state, lambda p0, gs: torch_adam(p0, gs, **full_adam)[i], [starts[k], grads[k]], dtype,
                           what=f"Adam's {name} of tensor {k} ({n} values)")
        for i, (name, state) in enumerate([("param", sgd_params[k]), ("velocity", velocities[k])]):
            assert_matches(state, lambda p0, gs: torch_sgd(p0, gs, **full_sgd)[i], [starts[k], grads[k]], dtype,
                           what=f"SGD's {name} of tensor {k} ({n} values)")


def test_adam_foreach_checks_every_tensor_before_it_updates_any(backend):
    ops.adam_step_foreach([], [], [], [], [], lr=0.1)  # nothing to do
    params = [on(backend, np.zeros(4, np.float32)) for _ in range(3)]
    grads, ms, vs = ([on(backend, np.ones(4, np.float32)) for _ in range(3)] for _ in range(3))
    cases = [
        (dict(steps=[1, 1]), ValueError, r"params, grads, ms, vs and steps must have the same length, got 3, 3, 3, 3 "
                                         r"and 2"),
        (dict(steps=[1, 0, 1]), ValueError, r"steps\[1\] must be >= 1"),
        (dict(steps=[1, 1, 1.0]), TypeError, r"steps\[2\] must be an int"),
        (dict(vs=vs[:2] + [on(backend, np.ones(5, np.float32))]), ValueError, r"vs\[2\]"),
        (dict(ms=[ms[0], ms[0], ms[2]]), ValueError, r"ms\[0\] and ms\[1\] share memory"),
        (dict(ms=[ms[0], vs[1], ms[2]]), ValueError, r"ms\[1\] and vs\[1\] share memory"),
        (dict(params=params[:2] + [on(backend, np.zeros(4))]), TypeError, r"params\[2\] is float64 but params\[0\]"),
    ]
    for change, error, message in cases:
        call = {**dict(params=params, grads=grads, ms=ms, vs=vs, steps=[1, 1, 1]), **change}
        with pytest.raises(error, match=message):
            ops.adam_step_foreach(call["params"], call["grads"], call["ms"], call["vs"], call["steps"], lr=0.1)
        for a in params + ms + vs:  # nothing was updated
            assert to_numpy(a).tolist() in ([0.0] * 4, [1.0] * 4)
    assert all(to_numpy(p).tolist() == [0.0] * 4 for p in params)


def test_adam_bias_correction_uses_step(backend):
    # With m, v from a previous step, the update depends on `step` exactly as torch's bias corrections say.
    p0, grads = _problem((5,), 9)
    for step in (1, 2, 10, 10_000):
        param, m, v = on(backend, p0.copy(), 0.1 * grads[1], 0.01 * grads[2] ** 2)
        ops.adam_step(param, on(backend, grads[0]), m, v, step, lr=0.01)
        m1 = 0.9 * (0.1 * grads[1]) + 0.1 * grads[0]
        v1 = 0.999 * (0.01 * grads[2] ** 2) + 0.001 * grads[0] ** 2
        expected = p0 - 0.01 / (1 - 0.9 ** step) * m1 / (np.sqrt(v1) / math.sqrt(1 - 0.999 ** step) + 1e-8)
        np.testing.assert_allclose(to_numpy(param), expected, rtol=1e-12, atol=1e-12)


def test_non_contiguous_grad_is_read_correctly(backend):
    rng = np.random.default_rng(5)
    big = rng.standard_normal((6, 10))
    grad = big[::2, 1::3]  # (3, 3) view with steps
    param, velocity = on(backend, np.ones((3, 3)), np.zeros((3, 3)))
    ops.sgd_step(param, on(backend, big)[::2, 1::3], velocity, lr=0.1, momentum=0.9)
    np.testing.assert_allclose(to_numpy(param), 1 - 0.1 * grad, rtol=1e-15)


def test_empty_and_scalar_params(backend):
    empty = on(backend, np.zeros((0, 3)))
    ops.adam_step(empty, empty.copy(), empty.copy(), empty.copy(), 1, lr=0.1)
    scalar, m, v = on(backend, np.array(2.0), np.array(0.0), np.array(0.0))
    ops.adam_step(scalar, on(backend, np.array(4.0)), m, v, 1, lr=0.1)
    assert float(to_numpy(scalar)) == pytest.approx(2.0 - 0.1, rel=1e-9)


class TestBadInput:
    def _sgd_args(self, be, dtype=np.float32):
        return on(be, np.ones((2, 3), dtype), np.ones((2, 3), dtype), np.zeros((2, 3), dtype))

    def _adam_args(self, be, dtype=np.float32):
        return on(be, np.ones((2, 3), dtype), np.ones((2, 3), dtype), np.zeros((2, 3), dtype), np.zeros((2, 3), dtype))

    @pytest.mark.parametrize("settings,error,message", [
        (dict(lr=-0.1), ValueError, r"lr must be >= 0"),
        (dict(lr=float("nan")), ValueError, r"lr must not be NaN"),
        (dict(lr=float("inf")), ValueError, r"lr must be finite"),
        (dict(lr="0.1"), TypeError, r"lr must be a real number"),
        (dict(lr=0.1, momentum=1.0), ValueError, r"momentum must be < 1"),
        (dict(lr=0.1, momentum=-0.5), ValueError, r"momentum must be >= 0"),
        (dict(lr=0.1, weight_decay=-1e-4), ValueError, r"weight_decay must be >= 0"),
        (dict(lr=0.1, nesterov=True), ValueError, r"nesterov=True requires momentum > 0"),
        (dict(lr=0.1, momentum=0.9, nesterov=1), TypeError, r"nesterov must be True or False"),
    ])
    def test_sgd_hyperparameters(self, backend, settings, error, message):
        param, grad, velocity = self._sgd_args(backend)
        with pytest.raises(error, match=message):
            ops.sgd_step(param, grad, velocity, **settings)
        np.testing.assert_array_equal(to_numpy(param), 1)  # refused before anything ran

    def test_lr_is_required(self, backend):
        param, grad, velocity = self._sgd_args(backend)
        with pytest.raises(TypeError, match=r"lr"):
            ops.sgd_step(param, grad, velocity)
        with pytest.raises(TypeError, match=r"lr"):
            ops.adam_step(param, grad, velocity, velocity.copy(), 1)

    def test_momentum_needs_velocity(self, backend):
        param, grad, _ = self._sgd_args(backend)
        with pytest.raises(ValueError, match=r"momentum > 0 requires a velocity buffer"):
            ops.sgd_step(param, grad, lr=0.1, momentum=0.9)

    @pytest.mark.parametrize("settings,error,message", [
        (dict(lr=-1.0), ValueError, r"lr must be >= 0"),
        (dict(lr=0.1, beta1=1.0), ValueError, r"beta1 must be < 1"),
        (dict(lr=0.1, beta2=-0.1), ValueError, r"beta2 must be >= 0"),
        (dict(lr=0.1, eps=0.0), ValueError, r"eps must be > 0"),
        (dict(lr=0.1, weight_decay=-0.01), ValueError, r"weight_decay must be >= 0"),
        (dict(lr=0.1, decoupled="yes"), TypeError, r"decoupled must be True or False"),
    ])
    def test_adam_hyperparameters(self, backend, settings, error, message):
        param, grad, m, v = self._adam_args(backend)
        with pytest.raises(error, match=message):
            ops.adam_step(param, grad, m, v, 1, **settings)
        np.testing.assert_array_equal(to_numpy(param), 1)

    @pytest.mark.parametrize("step,error", [(0, ValueError), (-3, ValueError), (1.0, TypeError), (True, TypeError),
                                            (None, TypeError)])
    def test_adam_step_count(self, backend, step, error):
        param, grad, m, v = self._adam_args(backend)
        with pytest.raises(error, match=r"step must be"):
            ops.adam_step(param, grad, m, v, step, lr=0.1)

    def test_shapes_must_agree(self, backend):
        param, grad, velocity = self._sgd_args(backend)
        with pytest.raises(ValueError, match=r"grad is \(3, 2\) but param is \(2, 3\)"):
            ops.sgd_step(param, grad.reshape(3, 2), lr=0.1)
        with pytest.raises(ValueError, match=r"velocity is \(6,\) but param is \(2, 3\)"):
            ops.sgd_step(param, grad, velocity.reshape(6), lr=0.1, momentum=0.9)
        param, grad, m, v = self._adam_args(backend)
        with pytest.raises(ValueError, match=r"v is \(3, 2\) but param is \(2, 3\)"):
            ops.adam_step(param, grad, m, v.reshape(3, 2), 1, lr=0.1)

    def test_dtypes_must_agree(self, backend):
        param, grad, velocity = self._sgd_args(backend)
        with pytest.raises(TypeError, match=r"grad is float64 but the other inputs are float32"):
            ops.sgd_step(param, grad.astype(np.float64), lr=0.1)
        with pytest.raises(TypeError, match=r"velocity is float64 but param is float32"):
            ops.sgd_step(param, grad, velocity.astype(np.float64), lr=0.1, momentum=0.5)
        with pytest.raises(TypeError, match=r"param must be float32 or float64"):
            ops.sgd_step(param.astype(np.int32), grad, lr=0.1)

    def test_in_place_needs_a_contiguous_backend_array(self, backend):
        big = on(backend, np.ones((4, 6), np.float32))
        grad = on(backend, np.ones((2, 3), np.float32))
        with pytest.raises(ValueError, match=r"param \(2, 3\) is not C-contiguous, so it cannot be updated in place"):
            ops.sgd_step(big[::2, ::2], grad, lr=0.1)
        with pytest.raises(ValueError, match=r"m \(2, 3\) is not C-contiguous"):
            ops.adam_step(big[:2, :3].copy(), grad, big[::2, ::2], big[:2, :3].copy(), 1, lr=0.1)
        expected = (r"param is a builtins.list in host memory, but the backend is 'cuda'" if backend.name == "cuda"
                    else r"param must be a numpy.ndarray to be updated in place")
        with pytest.raises(TypeError, match=expected):
            ops.sgd_step([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], grad, lr=0.1)

    def test_read_only_param(self, backend):
        if backend.name == "cuda":
            pytest.skip("CuPy arrays have no read-only flag")
        param = np.ones((2, 3), np.float32)
        param.flags.writeable = False
        with pytest.raises(ValueError, match=r"param is read-only"):
            ops.sgd_step(param, np.ones((2, 3), np.float32), lr=0.1)

    def test_buffers_must_not_share_memory(self, backend):
        param, grad, m, v = self._adam_args(backend)
        with pytest.raises(ValueError, match=r"m and v share memory"):
            ops.adam_step(param, grad, m, m, 1, lr=0.1)
        with pytest.raises(ValueError, match=r"param and velocity share memory"):
            ops.sgd_step(param, grad, param, lr=0.1, momentum=0.9)
        # without momentum the velocity is neither read nor written (as sgd_step_foreach): no overlap
        expected = to_numpy(param) - 0.1 * to_numpy(grad)
        ops.sgd_step(param, grad, param, lr=0.1)
        np.testing.assert_allclose(to_numpy(param), expected, rtol=1e-6)
        flat = on(backend, np.zeros(12, np.float32))
        with pytest.raises(ValueError, match=r"param and grad share memory"):
            ops.sgd_step(flat[:6].reshape(2, 3), flat[3:9].reshape(2, 3), lr=0.1)
