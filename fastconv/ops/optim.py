"""Optimizer steps, in place: torch.optim.SGD (dampening 0) and torch.optim.Adam / AdamW, one fused
pass per parameter tensor (the foreach forms: one for many tensors).

In-place contract: param and the state buffers (velocity, m, v) must be arrays of the current
backend (NumPy on "cpu"/"emu", CuPy on "cuda"), float32/float64, C-contiguous and writeable, and must
not share memory with each other or with grad; anything else is refused (TypeError/ValueError),
never silently copied, since a copy would not be updated. grad may be any array of the same shape
and dtype. Both steps return None.

State: the caller owns the buffers and creates them as zeros. SGD's first step with a zero velocity
computes momentum * 0 + g = g, exactly the buffer torch creates on its first step; Adam's m and v
start at zero in torch too, and `step` is the 1-based count of steps taken, including this one.
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from .. import backend as _backend
from ._check import (FLOAT_DTYPES, address, aligned, flag, number, on_backend, refuse_byte_order, shape_str,
                     tensor)

__all__ = ["sgd_step", "sgd_step_foreach", "adam_step", "adam_step_foreach"]


def _hyper(value, name, **bounds) -> float:
    return number(value, name, finite=True, **bounds)


def _updatable(a, name: str, be, like=None):
    """An array that can be updated in place, unchanged (no conversion, no copy)."""
    if a is None:
        raise TypeError(f"{name} is required, got None")
    array = on_backend(a, name, be)  # the wrong-device errors
    if not isinstance(a, be.xp.ndarray):
        raise TypeError(f"{name} must be a {be.xp.__name__}.ndarray to be updated in place on the {be.name!r} "
                        f"backend, got {type(a).__module__}.{type(a).__name__}")
    a = array  # an ndarray subclass's plain view, updated in place all the same
    if a.dtype not in FLOAT_DTYPES:
        refuse_byte_order(a, name)
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    if like is not None:
        if a.dtype != like.dtype:
            raise TypeError(f"{name} is {a.dtype} but param is {like.dtype}: they must have the same dtype")
        if a.shape != like.shape:
            raise ValueError(f"{name} is {shape_str(a.shape)} but param is {shape_str(like.shape)}; "
                             "they must have the same shape")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} {shape_str(a.shape)} is not C-contiguous, so it cannot be updated in place: "
                         "keep parameters and optimizer state in contiguous arrays")
    if not aligned(a):
        raise ValueError(f"{name} {shape_str(a.shape)} is not aligned to its {a.itemsize}-byte elements (it starts "
                         f"{address(a) % a.itemsize} bytes past a multiple of {a.itemsize}), so it cannot be updated "
                         "in place: keep parameters and optimizer state in arrays of their own, not views of bytes "
                         "at an odd offset")
    if not getattr(a.flags, "writeable", True):
        raise ValueError(f"{name} is read-only, so it cannot be updated in place")
    return a


def _gradient(grad, be, param, name="grad", param_name="param"):
    g = tensor(grad, name, be, dtype=param.dtype)
    if g.shape != param.shape:
        raise ValueError(f"{name} is {shape_str(g.shape)} but {param_name} is {shape_str(param.shape)}; "
                         "they must have the same shape")
    return g


def _disjoint(entries):
    """entries: (name, array, written). An array that is written may not share a byte with any other
    (arrays only read may share). One sweep over the byte ranges [start, end) sorted by start,
    O(k log k): the range reaching furthest so far overlaps every later range that starts before its
    end."""
    spans = []
    for i, (_, a, written) in enumerate(entries):
        if a is not None and a.size:
            start = address(a)  # (C-contiguous: its bytes are [start, start + nbytes))
            spans.append((start, start + a.nbytes, i, written))
    spans.sort()
    reach, owner = -1, None
    for start, end, i, written in spans:
        if owner is not None and start < reach and (written or owner[1]):
            first, second = sorted((owner[0], i))  # named in the caller's order
            raise ValueError(f"{entries[first][0]} and {entries[second][0]} share memory; the in-place update needs "
                             "separate arrays")
        if end > reach:
            reach, owner = end, (i, written)


def check_step_arrays(params, grads, names):
    """Checks each (params[k], grads[k]) as sgd_step and adam_step check theirs, changing nothing:
    param an array of the backend, float32 or float64, C-contiguous and writeable; grad of its shape
    and dtype; no param sharing memory with any other array. names[k] names params[k] in the errors
    (TypeError / ValueError). An optimizer checks all its parameters so before it updates any: a bad
    one fails the step with nothing changed."""
    be = _backend.current()
    entries = []
    for param, grad, name in zip(params, grads, names):
        param = _updatable(param, name, be)
        grad = _gradient(grad, be, param, f"the grad of {name}", name)
        entries += [(name, param, True), (f"the grad of {name}", grad, False)]
    _disjoint(entries)


def _sgd_hyperparameters(lr, momentum, weight_decay, nesterov):
    lr = _hyper(lr, "lr", low=0)
    momentum = _hyper(momentum, "momentum", low=0, high=1, high_open=True)
    weight_decay = _hyper(weight_decay, "weight_decay", low=0)
    nesterov = flag(nesterov, "nesterov")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True requires momentum > 0")
    return lr, momentum, weight_decay, nesterov


def sgd_step(param, grad, velocity=None, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One torch.optim.SGD step (dampening 0), in place on param and velocity; returns None.

        g = grad + weight_decay * param
        velocity = momentum * velocity + g;  g = g + momentum * velocity if nesterov else velocity
        param -= lr * g

    velocity is required when momentum > 0: pass zeros before the first step (which then gives
    velocity = grad, as torch's new buffer). With momentum == 0 it is not used (nor updated).
    """
    be = _backend.current()
    lr, momentum, weight_decay, nesterov = _sgd_hyperparameters(lr, momentum, weight_decay, nesterov)
    if momentum > 0 and velocity is None:
        raise ValueError("momentum > 0 requires a velocity buffer: pass zeros of param's shape before the first step")
    param = _updatable(param, "param", be)
    grad = _gradient(grad, be, param)
    if velocity is not None:
        velocity = _updatable(velocity, "velocity", be, like=param)
    # (without momentum the velocity is neither read nor written: as sgd_step_foreach, no overlap check)
    arrays = [("param", param, True), ("grad", grad, False)]
    if momentum > 0:
        arrays.append(("velocity", velocity, True))
    _disjoint(arrays)
    be.sgd_step(param, grad, velocity if momentum > 0 else None, lr, momentum, weight_decay, nesterov)


def sgd_step_foreach(params, grads, velocities=None, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """sgd_step on every (params[k], grads[k], velocities[k]) at once: the same result, bit for bit,
    in one kernel launch per 32 tensors on the native backends (torch's foreach path). A training
    step of a small model is bound by the host's per-call cost on a GPU; an optimizer calls this.

    params, grads (and velocities, required when momentum > 0) are sequences of equal length; every
    param has the same dtype. No array that is written (a param or a velocity) may share memory with
    any other array of the call; grads may share. Returns None.
    """
    prepare_sgd_step_foreach(params, grads, velocities, lr=lr, momentum=momentum, weight_decay=weight_decay,
                             nesterov=nesterov)()


def prepare_sgd_step_foreach(params, grads, velocities=None, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """sgd_step_foreach's checks, changing nothing: returns the call (no arguments) that takes the
    step. An optimizer whose step is several calls (several dtypes) prepares them all before it runs
    any, so that a bad array in a later call fails the step with nothing changed."""
    be = _backend.current()
    lr, momentum, weight_decay, nesterov = _sgd_hyperparameters(lr, momentum, weight_decay, nesterov)
    params, grads = _sequence(params, "params"), _sequence(grads, "grads")
    velocities = [None] * len(params) if velocities is None else _sequence(velocities, "velocities")
    if not len(params) == len(grads) == len(velocities):
        raise ValueError(f"params, grads and velocities must have the same length, got {len(params)}, {len(grads)} "
                         f"and {len(velocities)}")
    entries = []
    for k, (p, g, v) in enumerate(zip(params, grads, velocities)):
        p = params[k] = _updatable(p, f"params[{k}]", be)
        if p.dtype != params[0].dtype:
            raise TypeError(f"params[{k}] is {p.dtype} but params[0] is {params[0].dtype}: one foreach step takes "
                            "one dtype (group the parameters by dtype)")
        g = grads[k] = _gradient(g, be, p, f"grads[{k}]", f"params[{k}]")
        if v is None and momentum > 0:
            raise ValueError(f"momentum > 0 requires a velocity buffer for every param: velocities[{k}] is None "
                             "(pass zeros of the param's shape before the first step)")
        if v is not None:
            v = velocities[k] = _updatable(v, f"velocities[{k}]", be, like=p)
        entries += [(f"params[{k}]", p, True), (f"grads[{k}]", g, False)]
        if momentum > 0:  # (without momentum the velocities are neither read nor written)
            entries.append((f"velocities[{k}]", v, True))
    _disjoint(entries)
    if not params:
        return lambda: None
    return functools.partial(be.sgd_step_foreach, params, grads,
                             velocities if momentum > 0 else [None] * len(params), lr, momentum, weight_decay, nesterov)


def _sequence(value, name):
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of arrays, got {type(value).__name__}")
    return list(value)


def adam_step(param, grad, m, v, step, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """One torch.optim.Adam step (AdamW when decoupled=True), in place on param, m and v; returns None.

        AdamW: param *= 1 - lr * weight_decay;  Adam: g = grad + weight_decay * param
        m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
        param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)

    m and v start as zeros; step is the 1-based number of this step.
    """
    be = _backend.current()
    step = _step_count(step, "step")
    lr, beta1, beta2, eps, weight_decay, decoupled = _adam_hyperparameters(lr, beta1, beta2, eps, weight_decay,
                                                                           decoupled)
    param = _updatable(param, "param", be)
    _eps_representable(eps, param.dtype, "param")
    grad = _gradient(grad, be, param)
    m = _updatable(m, "m", be, like=param)
    v = _updatable(v, "v", be, like=param)
    _disjoint([("param", param, True), ("grad", grad, False), ("m", m, True), ("v", v, True)])
    step_size, bias_correction2_sqrt = _bias_corrections(lr, beta1, beta2, step)
    be.adam_step(param, grad, m, v, beta1, beta2, eps, weight_decay, decoupled, 1 - lr * weight_decay, step_size,
                 bias_correction2_sqrt)


def adam_step_foreach(params, grads, ms, vs, steps, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                      decoupled=False):
    """adam_step on every (params[k], grads[k], ms[k], vs[k]) at once, each with its own 1-based step
    count steps[k] (parameters may have taken different numbers of steps): the same result, bit for
    bit, in one kernel launch per 32 tensors on the native backends, as sgd_step_foreach.

    The sequences have equal lengths; every param has the same dtype. No array that is written (a
    param, an m or a v) may share memory with any other array of the call; grads may share. Every
    array is checked before any is updated. Returns None.
    """
    prepare_adam_step_foreach(params, grads, ms, vs, steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                              weight_decay=weight_decay, decoupled=decoupled)()


def prepare_adam_step_foreach(params, grads, ms, vs, steps, *, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                              weight_decay=0.0, decoupled=False):
    """adam_step_foreach's checks, changing nothing: returns the call (no arguments) that takes the
    step (see prepare_sgd_step_foreach)."""
    be = _backend.current()
    lr, beta1, beta2, eps, weight_decay, decoupled = _adam_hyperparameters(lr, beta1, beta2, eps, weight_decay,
                                                                           decoupled)
    lists = {name: _sequence(value, name) for name, value in
             (("params", params), ("grads", grads), ("ms", ms), ("vs", vs), ("steps", steps))}
    if len({len(value) for value in lists.values()}) > 1:
        *first, last = (str(len(value)) for value in lists.values())
        raise ValueError(f"params, grads, ms, vs and steps must have the same length, got {', '.join(first)} "
                         f"and {last}")
    params, grads, ms, vs, steps = lists.values()
    entries = []
    for k, p in enumerate(params):
        p = params[k] = _updatable(p, f"params[{k}]", be)
        if p.dtype != params[0].dtype:
            raise TypeError(f"params[{k}] is {p.dtype} but params[0] is {params[0].dtype}: one foreach step takes "
                            "one dtype (group the parameters by dtype)")
        grads[k] = _gradient(grads[k], be, p, f"grads[{k}]", f"params[{k}]")
        ms[k] = _updatable(ms[k], f"ms[{k}]", be, like=p)
        vs[k] = _updatable(vs[k], f"vs[{k}]", be, like=p)
        steps[k] = _step_count(steps[k], f"steps[{k}]")
        entries += [(f"params[{k}]", p, True), (f"grads[{k}]", grads[k], False), (f"ms[{k}]", ms[k], True),
                    (f"vs[{k}]", vs[k], True)]
    _disjoint(entries)
    if not params:
        return lambda: None
    _eps_representable(eps, params[0].dtype, "params")
    step_sizes, bias_corrections2_sqrt = zip(*(_bias_corrections(lr, beta1, beta2, t) for t in steps))
    return functools.partial(be.adam_step_foreach, params, grads, ms, vs, beta1, beta2, eps, weight_decay, decoupled,
                             1 - lr * weight_decay, list(step_sizes), list(bias_corrections2_sqrt))


def _step_count(step, name):
    if type(step) is int and step >= 1:  # the common case, without the ABC check below (0.4 us)
        return step
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"{name} must be an int (the 1-based step count), got {step!r}")
    if step < 1:
        raise ValueError(f"{name} must be >= 1 (the 1-based step count), got {step}")
    return int(step)


def _adam_hyperparameters(lr, beta1, beta2, eps, weight_decay, decoupled):
    return (_hyper(lr, "lr", low=0), _hyper(beta1, "beta1", low=0, high=1, high_open=True),
            _hyper(beta2, "beta2", low=0, high=1, high_open=True), _hyper(eps, "eps", low=0, low_open=True),
            _hyper(weight_decay, "weight_decay", low=0), flag(decoupled, "decoupled"))


def _eps_representable(eps, dtype, name):
    """The kernels add eps in the parameters' dtype: one that rounds to 0 there (1e-300 in float32)
    makes a zero gradient's update 0 / 0, the parameter NaN."""
    if np.dtype(dtype).type(eps) == 0:
        raise ValueError(f"eps={eps!r} is 0 in {np.dtype(dtype)} (the dtype of {name}), where a zero gradient's update "
                         f"would be 0 / 0: give a normal eps (the default 1e-8; below about half of "
                         f"{np.finfo(dtype).smallest_subnormal} it rounds to 0 there, and one near that lets a tiny "
                         "gradient's update blow up)")


def _bias_corrections(lr, beta1, beta2, step):
    """(step_size, bias_correction2_sqrt): the scalar part of torch's update, in double as torch
    computes it in Python floats."""
    return lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step)
