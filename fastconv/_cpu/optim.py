"""Optimizer steps on the CPU: one Numba pass per parameter tensor (parallel for large ones, see
_parallel.py), in place, in the parameter's precision (the scalars are rounded to its dtype first,
as the CUDA kernels do). Arguments were validated (and the bias corrections computed) by
fastconv.ops.optim. Math: csrc/kernels/optim.cuh."""
import numpy as np
from numba import njit, prange

from ._parallel import run

__all__ = ["sgd_step", "sgd_step_foreach", "adam_step", "adam_step_foreach"]


@njit(parallel=True, cache=True)
def _sgd(param, grad, velocity, lr, momentum, weight_decay, use_momentum, use_decay, nesterov):
    for i in prange(param.size):
        p = param[i]
        g = grad[i]
        if use_decay:
            g = g + weight_decay * p
        if use_momentum:
            b = velocity[i] * momentum + g
            velocity[i] = b
            g = g + momentum * b if nesterov else b
        param[i] = p - lr * g


@njit(parallel=True, cache=True)
def _adam(param, grad, m, v, one_minus_beta1, beta1_complement, beta2, one_minus_beta2, eps, weight_decay,
          use_decay, decoupled, decay, step_size, bias_correction2_sqrt):
    small_weight = one_minus_beta1 < 0.5
    for i in prange(param.size):
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


def sgd_step(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    t = param.dtype.type
    flat = param.reshape(-1)  # a view: param is C-contiguous
    buf = velocity.reshape(-1) if velocity is not None else np.empty(0, param.dtype)
    run(_sgd, param.size, flat, grad.reshape(-1), buf, t(lr), t(momentum), t(weight_decay), momentum != 0, weight_decay != 0,
         nesterov)


def sgd_step_foreach(params, grads, velocities, lr, momentum, weight_decay, nesterov):
    # One Numba pass per tensor: on the CPU a call costs microseconds against the tensors' work.
    for param, grad, velocity in zip(params, grads, velocities):
        sgd_step(param, grad, velocity, lr, momentum, weight_decay, nesterov)


def adam_step(param, grad, m, v, beta1, beta2, eps, weight_decay, decoupled, decay, step_size,
              bias_correction2_sqrt):
    t = param.dtype.type
    w = t(1.0 - beta1)
    run(_adam, param.size, param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), w, t(1) - w, t(beta2), t(1.0 - beta2),
          t(eps), t(weight_decay), weight_decay != 0, decoupled, t(decay), t(step_size), t(bias_correction2_sqrt))


def adam_step_foreach(params, grads, ms, vs, beta1, beta2, eps, weight_decay, decoupled, decay, step_sizes,
                      bias_corrections2_sqrt):
    # One Numba pass per tensor, as sgd_step_foreach.
    for param, grad, m, v, step_size, bias_correction2_sqrt in zip(params, grads, ms, vs, step_sizes,
                                                                   bias_corrections2_sqrt):
        adam_step(param, grad, m, v, beta1, beta2, eps, weight_decay, decoupled, decay, step_size,
                  bias_correction2_sqrt)
