"""Optimizer steps, in place: torch.optim.SGD (dampening 0) and torch.optim.Adam / AdamW, one fused
pass per parameter tensor.

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

import math
import numbers

import numpy as np

from .. import backend as _backend
from ._check import FLOAT_DTYPES, flag, number, on_backend, shape_str, tensor

__all__ = ["sgd_step", "adam_step"]


def _hyper(value, name, **bounds) -> float:
    v = number(value, name, **bounds)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _updatable(a, name: str, be, like=None):
    """An array that can be updated in place, unchanged (no conversion, no copy)."""
    if a is None:
        raise TypeError(f"{name} is required, got None")
    on_backend(a, name, be)  # the wrong-device errors
    if not isinstance(a, be.xp.ndarray):
        raise TypeError(f"{name} must be a {be.xp.__name__}.ndarray to be updated in place on the {be.name!r} "
                        f"backend, got {type(a).__module__}.{type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
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
    if not getattr(a.flags, "writeable", True):
        raise ValueError(f"{name} is read-only, so it cannot be updated in place")
    return a


def _gradient(grad, be, param):
    g = tensor(grad, "grad", be, dtype=param.dtype)
    if g.shape != param.shape:
        raise ValueError(f"grad is {shape_str(g.shape)} but param is {shape_str(param.shape)}; "
                         "they must have the same shape")
    return g


def _no_overlap(named, xp):
    """The in-place update reads and writes each element in one pass: no two arrays may share memory
    (their byte ranges may not overlap: xp.may_share_memory, a bounds check)."""
    named = [(name, a) for name, a in named if a is not None and a.size]
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1:]:
            if xp.may_share_memory(a, b):
                raise ValueError(f"{name_a} and {name_b} share memory; the in-place update needs separate arrays")


def sgd_step(param, grad, velocity=None, *, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One torch.optim.SGD step (dampening 0), in place on param and velocity; returns None.

        g = grad + weight_decay * param
        velocity = momentum * velocity + g;  g = g + momentum * velocity if nesterov else velocity
        param -= lr * g

    velocity is required when momentum > 0: pass zeros before the first step (which then gives
    velocity = grad, as torch's new buffer). With momentum == 0 it is not used (nor updated).
    """
    be = _backend.current()
    lr = _hyper(lr, "lr", low=0)
    momentum = _hyper(momentum, "momentum", low=0, high=1, high_open=True)
    weight_decay = _hyper(weight_decay, "weight_decay", low=0)
    nesterov = flag(nesterov, "nesterov")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True requires momentum > 0")
    if momentum > 0 and velocity is None:
        raise ValueError("momentum > 0 requires a velocity buffer: pass zeros of param's shape before the first step")
    param = _updatable(param, "param", be)
    grad = _gradient(grad, be, param)
    if velocity is not None:
        velocity = _updatable(velocity, "velocity", be, like=param)
    _no_overlap([("param", param), ("grad", grad), ("velocity", velocity)], be.xp)
    be.sgd_step(param, grad, velocity if momentum > 0 else None, lr, momentum, weight_decay, nesterov)


def adam_step(param, grad, m, v, step, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    """One torch.optim.Adam step (AdamW when decoupled=True), in place on param, m and v; returns None.

        AdamW: param *= 1 - lr * weight_decay;  Adam: g = grad + weight_decay * param
        m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
        param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)

    m and v start as zeros; step is the 1-based number of this step.
    """
    be = _backend.current()
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int (the 1-based step count), got {step!r}")
    step = int(step)
    if step < 1:
        raise ValueError(f"step must be >= 1 (the 1-based step count), got {step}")
    lr = _hyper(lr, "lr", low=0)
    beta1 = _hyper(beta1, "beta1", low=0, high=1, high_open=True)
    beta2 = _hyper(beta2, "beta2", low=0, high=1, high_open=True)
    eps = _hyper(eps, "eps", low=0, low_open=True)
    weight_decay = _hyper(weight_decay, "weight_decay", low=0)
    decoupled = flag(decoupled, "decoupled")
    param = _updatable(param, "param", be)
    grad = _gradient(grad, be, param)
    m = _updatable(m, "m", be, like=param)
    v = _updatable(v, "v", be, like=param)
    _no_overlap([("param", param), ("grad", grad), ("m", m), ("v", v)], be.xp)
    # The scalar part of torch's update, in double as torch computes it in Python floats.
    step_size = lr / (1 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    decay = 1 - lr * weight_decay
    be.adam_step(param, grad, m, v, beta1, beta2, eps, weight_decay, decoupled, decay, step_size,
                 bias_correction2_sqrt)
