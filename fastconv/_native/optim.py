"""Optimizer steps on the native backends: one fused kernel per parameter tensor (per 32 tensors for
sgd_step_foreach and adam_step_foreach), in place.
Arguments were validated (and the bias corrections computed) by fastconv.ops.optim."""

__all__ = ["sgd_step", "sgd_step_foreach", "adam_step", "adam_step_foreach"]


def sgd_step(be, param, grad, velocity, lr, momentum, weight_decay, nesterov):
    be.kernel("sgd_step", param.dtype)(be.ptr(param), be.ptr(grad), be.ptr(velocity), param.size, lr, momentum,
                                       weight_decay, nesterov, be.stream())


def sgd_step_foreach(be, params, grads, velocities, lr, momentum, weight_decay, nesterov):
    be.kernel("sgd_step_foreach", params[0].dtype)([be.ptr(p) for p in params], [be.ptr(g) for g in grads],
                                                   [be.ptr(v) for v in velocities], [p.size for p in params], lr,
                                                   momentum, weight_decay, nesterov, be.stream())


def adam_step(be, param, grad, m, v, beta1, beta2, eps, weight_decay, decoupled, decay, step_size,
              bias_correction2_sqrt):
    be.kernel("adam_step", param.dtype)(be.ptr(param), be.ptr(grad), be.ptr(m), be.ptr(v), param.size, beta1, beta2,
                                        eps, weight_decay, decoupled, decay, step_size, bias_correction2_sqrt,
                                        be.stream())


def adam_step_foreach(be, params, grads, ms, vs, beta1, beta2, eps, weight_decay, decoupled, decay, step_sizes,
                      bias_corrections2_sqrt):
    be.kernel("adam_step_foreach", params[0].dtype)(
        [be.ptr(p) for p in params], [be.ptr(g) for g in grads], [be.ptr(m) for m in ms], [be.ptr(v) for v in vs],
        [p.size for p in params], step_sizes, bias_corrections2_sqrt, beta1, beta2, eps, weight_decay, decoupled, decay,
        be.stream())
