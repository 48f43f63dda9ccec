"""Optimizer steps on the CPU, in place, in the parameter's precision (the scalars are rounded to its
dtype first, as the CUDA kernels do). Arguments were validated (and the bias corrections computed)
by fastconv.ops.optim. Math: csrc/kernels/optim.cuh.

A foreach step takes the small tensors FOREACH at a time, in one Numba call each, not one call per
tensor: a call costs ~12 us (dispatch, and the threads' count set and restored around small work,
_parallel.py), more than a small tensor's update (the digits CNN's Adam step, 8 tensors of 38k
values in all: 88-98 us in calls of one tensor, 32-33 now; Optimizer.step 213-231 -> 175-178 us).
Such a call takes a tuple of FOREACH arrays (padded with empty ones: one compiled signature for
every group), its tensors cut into tasks of _TASK values that the threads share. Building those
tuples costs more than a call of one tensor, so fewer than GROUP_FROM small tensors, and every
tensor of OWN_CALL_FROM values or more, take calls of their own: near-equal blocks of the tensor,
one a thread (its loop also runs ~8% faster than over an array picked from a tuple by a variable:
1M values, 410 against 445 us). Each value's update is the same arithmetic wherever it runs, so the
bits do not depend on the grouping or the thread count.
"""
import numpy as np
import numba
from numba import njit, prange

from ._parallel import block, run

__all__ = ["sgd_step", "sgd_step_foreach", "adam_step", "adam_step_foreach"]

FOREACH = 8
GROUP_FROM = 3
OWN_CALL_FROM = 1 << 16
_TASK = 1 << 12


@njit(inline="always")
def _task_starts(arrays):
    """starts[k]: the first task of arrays[k] (tasks of _TASK values); starts[-1]: the count."""
    starts = np.empty(len(arrays) + 1, np.int64)
    starts[0] = 0
    for k in range(len(arrays)):
        starts[k + 1] = starts[k] + (arrays[k].size + _TASK - 1) // _TASK
    return starts


# Two things keep the value loops vectorized (each alone made Adam's ~8x slower than the per-tensor
# prange loop these replace): they index slices from 0 (from a variable start, Numba checked each
# index for wraparound), and the kernels take error_model="numpy" (IEEE division, as a prange loop
# has; the default model tests every divisor for zero first).
@njit(inline="always")
def _task(starts, t):
    """(k, lo, hi): task t is values lo .. hi - 1 of tensor k (hi may pass its end)."""
    k = 0
    while starts[k + 1] <= t:
        k += 1
    lo = (t - starts[k]) * _TASK
    return k, lo, lo + _TASK


@njit(inline="always")
def _sgd_values(param, grad, velocity, lr, momentum, weight_decay, use_momentum, use_decay, nesterov):
    for i in range(param.size):
        p = param[i]
        g = grad[i]
        if use_decay:
            g = g + weight_decay * p
        if use_momentum:
            b = velocity[i] * momentum + g
            velocity[i] = b
            g = g + momentum * b if nesterov else b
        param[i] = p - lr * g


@njit(parallel=True, error_model="numpy", cache=True)
def _sgd_foreach(params, grads, velocities, lr, momentum, weight_decay, use_momentum, use_decay, nesterov):
    starts = _task_starts(params)
    for t in prange(starts[-1]):
        k, lo, hi = _task(starts, t)
        _sgd_values(params[k][lo:hi], grads[k][lo:hi], velocities[k][lo:hi], lr, momentum,
                    weight_decay, use_momentum, use_decay, nesterov)


@njit(parallel=True, error_model="numpy", cache=True)
def _sgd(param, grad, velocity, lr, momentum, weight_decay, use_momentum, use_decay, nesterov, blocks):
    for t in prange(blocks):
        lo, hi = block(t, blocks, param.size)
        _sgd_values(param[lo:hi], grad[lo:hi], velocity[lo:hi], lr, momentum, weight_decay, use_momentum, use_decay,
                    nesterov)


@njit(inline="always")
def _adam_values(param, grad, m, v, one_minus_beta1, beta1_complement, beta2, one_minus_beta2, eps, weight_decay,
                 use_decay, decoupled, decay, step_size, bias_correction2_sqrt):
    small_weight = one_minus_beta1 < 0.5
    for i in range(param.size):
        p = param[i]
        g = grad[i]
        if use_decay:
            if decoupled:
                p = p * decay
            else:
                g = g + weight_decay * p
        mi = m[i]
        # torch's lerp(m, g, w); beta1_complement = 1 - w rounded in the parameter's dtype
        mi = mi + one_minus_beta1 * (g - mi) if small_weight else g - (g - mi) * beta1_complement
        vi = v[i] * beta2 + one_minus_beta2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] = p - step_size * mi / (np.sqrt(vi) / bias_correction2_sqrt + eps)


@njit(parallel=True, error_model="numpy", cache=True)
def _adam(param, grad, m, v, one_minus_beta1, beta1_complement, beta2, one_minus_beta2, eps, weight_decay, use_decay,
          decoupled, decay, step_size, bias_correction2_sqrt, blocks):
    for t in prange(blocks):
        lo, hi = block(t, blocks, param.size)
        _adam_values(param[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi], one_minus_beta1, beta1_complement, beta2,
                     one_minus_beta2, eps, weight_decay, use_decay, decoupled, decay, step_size, bias_correction2_sqrt)


@njit(parallel=True, error_model="numpy", cache=True)
def _adam_foreach(params, grads, ms, vs, one_minus_beta1, beta1_complement, beta2, one_minus_beta2, eps, weight_decay,
                  use_decay, decoupled, decay, step_sizes, bias_corrections2_sqrt):
    starts = _task_starts(params)
    for t in prange(starts[-1]):
        k, lo, hi = _task(starts, t)
        _adam_values(params[k][lo:hi], grads[k][lo:hi], ms[k][lo:hi], vs[k][lo:hi], one_minus_beta1, beta1_complement,
                     beta2, one_minus_beta2, eps, weight_decay, use_decay, decoupled, decay, step_sizes[k],
                     bias_corrections2_sqrt[k])


_EMPTY = {np.dtype(np.float32): np.empty(0, np.float32), np.dtype(np.float64): np.empty(0, np.float64)}


def _flat(a, dtype):
    """a as a 1-D view (None: an empty array, for a buffer the step does not use)."""
    if a is None:
        return _EMPTY[dtype]
    return a if a.ndim == 1 else a.reshape(-1)


def _by_calls(params):
    """(own, groups): the indices of the tensors that take a call of their own, and the others'
    in groups of up to FOREACH. Fewer than GROUP_FROM small tensors take calls of their own too: a
    group's call costs more than one tensor's (its tuples: ~13 us, against ~5)."""
    own = [k for k, p in enumerate(params) if p.size >= OWN_CALL_FROM]
    small = [k for k, p in enumerate(params) if p.size < OWN_CALL_FROM]
    if len(small) < GROUP_FROM:
        return own + small, []
    return own, [small[i:i + FOREACH] for i in range(0, len(small), FOREACH)]


def _tuple(arrays, group, dtype):
    """The group's arrays as a tuple of FOREACH 1-D views, padded with empty arrays. Read-only views
    all of them where one is read-only (a caller's grad): Numba types a read-only array apart, and
    cannot index a tuple that mixes both kinds by a variable."""
    views = [_flat(arrays[k], dtype) for k in group]
    views += [_EMPTY[dtype]] * (FOREACH - len(views))
    if not all(v.flags.writeable for v in views):
        views = [v.view() for v in views]
        for v in views:
            v.flags.writeable = False
    return tuple(views)


def _per_tensor(values, group, dtype):
    """The group's per-tensor scalars rounded to the dtype (as dtype(value) rounds each), padded."""
    return np.array([values[k] for k in group] + [0.0] * (FOREACH - len(group)), dtype=dtype)


def _sgd_scalars(dtype, lr, momentum, weight_decay, nesterov):
    """The scalars every tensor's SGD step shares, rounded to the dtype."""
    t = dtype.type
    return t(lr), t(momentum), t(weight_decay), momentum != 0, weight_decay != 0, nesterov


def _sgd_own_call(param, grad, velocity, shared):
    """One tensor's SGD step in a call of its own (shared: _sgd_scalars)."""
    dtype = param.dtype
    run(_sgd, param.size, _flat(param, dtype), _flat(grad, dtype), _flat(velocity, dtype), *shared,
        numba.get_num_threads())


def sgd_step_foreach(params, grads, velocities, lr, momentum, weight_decay, nesterov):
    if not params:
        return
    dtype = params[0].dtype
    shared = _sgd_scalars(dtype, lr, momentum, weight_decay, nesterov)
    own, groups = _by_calls(params)
    for k in own:
        _sgd_own_call(params[k], grads[k], velocities[k], shared)
    for group in groups:
        run(_sgd_foreach, sum(params[k].size for k in group), _tuple(params, group, dtype),
            _tuple(grads, group, dtype), _tuple(velocities, group, dtype), *shared)


def sgd_step(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    _sgd_own_call(param, grad, velocity, _sgd_scalars(param.dtype, lr, momentum, weight_decay, nesterov))


def _adam_scalars(dtype, beta1, beta2, eps, weight_decay, decoupled, decay):
    """The scalars every tensor's Adam step shares, rounded to the dtype."""
    t = dtype.type
    w = t(1.0 - beta1)
    return w, t(1) - w, t(beta2), t(1.0 - beta2), t(eps), t(weight_decay), weight_decay != 0, decoupled, t(decay)


def _adam_own_call(param, grad, m, v, shared, step_size, bias_correction2_sqrt):
    """One tensor's Adam step in a call of its own (shared: _adam_scalars)."""
    dtype = param.dtype
    t = dtype.type
    run(_adam, param.size, _flat(param, dtype), _flat(grad, dtype), _flat(m, dtype), _flat(v, dtype), *shared,
        t(step_size), t(bias_correction2_sqrt), numba.get_num_threads())


def adam_step_foreach(params, grads, ms, vs, beta1, beta2, eps, weight_decay, decoupled, decay, step_sizes,
                      bias_corrections2_sqrt):
    if not params:
        return
    dtype = params[0].dtype
    t = dtype.type
    shared = _adam_scalars(dtype, beta1, beta2, eps, weight_decay, decoupled, decay)
    own, groups = _by_calls(params)
    for k in own:
        _adam_own_call(params[k], grads[k], ms[k], vs[k], shared, step_sizes[k], bias_corrections2_sqrt[k])
    for group in groups:
        run(_adam_foreach, sum(params[k].size for k in group), _tuple(params, group, dtype),
            _tuple(grads, group, dtype), _tuple(ms, group, dtype), _tuple(vs, group, dtype), *shared,
            _per_tensor(step_sizes, group, t), _per_tensor(bias_corrections2_sqrt, group, t))


def adam_step(param, grad, m, v, beta1, beta2, eps, weight_decay, decoupled, decay, step_size,
              bias_correction2_sqrt):
    _adam_own_call(param, grad, m, v, _adam_scalars(param.dtype, beta1, beta2, eps, weight_decay, decoupled, decay),
                   step_size, bias_correction2_sqrt)
