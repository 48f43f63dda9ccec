"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules (StepLR, CosineAnnealingLR), with
PyTorch's update rules. The updates run as fastconv.ops kernels, in place, on the backend's device;
so do the state buffers (momentum, Adam's moments).

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn(model(x), y); opt.zero_grad(); model.backward(loss_fn.backward()); opt.step()

`step()` skips frozen parameters and parameters without a gradient. `state_dict()` holds the
hyperparameters, copies of the per-parameter buffers (device arrays) and step counts: a snapshot;
`load_state_dict()` restores them for resuming a run.
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np

from . import backend as _backend
from . import ops
from .ops import _check

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "LRScheduler", "StepLR", "CosineAnnealingLR"]


def _number(value, name, owner, **bounds):
    # finite: NaN or inf would only fail later, inside the first step()
    return _check.number(value, f"{owner}: {name}", finite=True, **bounds)


def _params(params, owner):
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    if hasattr(params, "data") and hasattr(params, "grad"):  # one Parameter ('Parameter' object is not iterable)
        raise TypeError(f"{owner}: params must be an iterable of Parameters (model.parameters(), or [p] for one), "
                        f"got one {type(params).__name__}")
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{owner}: params must be an iterable of Parameters (model.parameters()), got "
                        f"{type(params).__name__}") from None
    if not params:
        raise ValueError(f"{owner}: got an empty parameter list")
    for i, p in enumerate(params):
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(f"{owner}: parameter {i} is a {type(p).__name__}, not a fastconv.nn.Parameter "
                            "(pass model.parameters())")
    first = {}
    for i, p in enumerate(params):
        if id(p) in first:
            warnings.warn(f"{owner}: parameter {i} is parameter {first[id(p)]} again; it is updated once per step",
                          stacklevel=3)
        first.setdefault(id(p), i)
    return [p for i, p in enumerate(params) if first[id(p)] == i]


class Optimizer:
    """Base: .params, .lr (schedules change it), .state (per parameter index: buffers and step)."""

    _buffers: tuple = ()
    _counts_steps = False  # whether each parameter's state holds its "step" count

    def _buffers_for(self, hyperparameters) -> tuple:
        """Names of the per-parameter buffers a state with these hyperparameters needs."""
        return self._buffers

    def _buffers_kept(self) -> tuple:
        """Names of every buffer a state may hold, needed or not (SGD keeps its momentum buffers when its
        momentum is set to 0, as torch's does, and they are used again if momentum is raised again)."""
        return self._buffers

    def __init__(self, params, lr):
        name = type(self).__name__
        self.params = _params(params, name)
        self.lr = _number(lr, "lr", name, low=0.0)
        self.state = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _trainable(self):
        """(index, parameter) for each parameter step() updates now."""
        for i, p in enumerate(self.params):
            if getattr(p, "requires_grad", True) and p.grad is not None:
                if not hasattr(p.grad, "shape"):
                    raise TypeError(f"{type(self).__name__}: parameter {i} ({getattr(p, 'name', '')}) has a grad of "
                                    f"type {type(p.grad).__name__}, not an array")
                if tuple(p.grad.shape) != tuple(p.data.shape):
                    raise ValueError(f"{type(self).__name__}: parameter {i} ({getattr(p, 'name', '')}) has shape "
                                     f"{tuple(p.data.shape)} but its grad is {tuple(p.grad.shape)}")
                yield i, p

    def _checked_trainable(self):
        """[(index, parameter)] of _trainable, each parameter and grad first checked as the step ops
        check them (ops.optim.check_step_arrays), so that a bad one fails step() before anything
        changes: no parameter updated, no state created or advanced. For steps of more than one op
        call (the ops check only their own arrays); it costs ~45 us a step for a 10-tensor model."""
        trainable = list(self._trainable())
        names = [f"parameter {i}" + (f" ({p.name!r})" if getattr(p, "name", None) else "") for i, p in trainable]
        try:
            ops.optim.check_step_arrays([p.data for _, p in trainable], [p.grad for _, p in trainable], names)
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):
                raise
            raise type(exc)(f"{type(self).__name__}.step: {exc}") from exc
        return trainable

    def _trainable_in_one_step(self):
        """_trainable for a step of one foreach call a dtype: a call checks all its arrays before it
        updates any, so only a step of several calls (several dtypes) checks them all first."""
        trainable = list(self._trainable())
        if len({p.data.dtype for _, p in trainable}) > 1:
            trainable = self._checked_trainable()
        return trainable

    def _prepared(self, prepare, indices, arrays, *args, **kwargs):
        """prepare(*args, **kwargs): a foreach step's call, checked; its errors name the optimizer's
        parameters (`arrays` of the call, k-th of `indices`), not only the call's arguments."""
        try:
            return prepare(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):
                raise
            raise type(exc)(f"{type(self).__name__}.step: {exc} ({arrays} of this call belong to the optimizer's "
                            f"parameter {indices}[k])") from exc

    def _zeros_like(self, p):
        return _backend.current().xp.zeros(p.data.shape, dtype=p.data.dtype)

    def hyperparameters(self) -> dict:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{"type", "hyperparameters", "state": {index: {buffer name: device array, "step": int}}}: a
        snapshot, the buffers copied (later steps change the optimizer's own in place; with them and
        the step counts as of now, a state dict kept to roll back to would mix two points of training)."""
        return {"type": type(self).__name__, "hyperparameters": self.hyperparameters(),
                "state": {i: {k: v.copy() if hasattr(v, "shape") else v for k, v in s.items()}  # (where each is)
                          for i, s in self.state.items()}}

    def check_state_dict(self, state_dict) -> dict:
        """Validates without changing anything; returns the state converted to device arrays."""
        return self._checked(state_dict)[1]

    def _checked(self, state_dict):
        """(hyperparameters, state) of a state dict, checked: the hyperparameters by the
        constructor's own checks, each parameter's state for its keys (the buffers the
        hyperparameters need, and "step" where counted) and its buffers' shapes and dtypes against
        the parameter's. The state comes as copies on the device."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: not an optimizer state dict")
        if state_dict.get("type", name) != name:
            raise ValueError(f"{name}.load_state_dict: the state is from an optimizer {state_dict['type']}")
        hyper = self._checked_hyperparameters(state_dict.get("hyperparameters", {}))
        if not isinstance(state_dict["state"], dict):
            raise TypeError(f"{name}.load_state_dict: the state must be a dict {{parameter index: entry}}, got "
                            f"{type(state_dict['state']).__name__}")
        xp = _backend.current().xp
        buffers, kept = self._buffers_for(hyper), self._buffers_kept()
        keys = set(kept) | ({"step"} if self._counts_steps else set())
        state = {}
        for key, entry in state_dict["state"].items():
            if isinstance(key, (bool, np.bool_)) or not (str(key).isascii() and str(key).isdigit()):  # ("²": a digit)
                raise ValueError(f"{name}.load_state_dict: the state's keys must be parameter indices, got {key!r}")
            i = int(key)
            if not 0 <= i < len(self.params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {i}, but the optimizer has "
                                 f"{len(self.params)} parameters")
            if not isinstance(entry, dict):
                raise TypeError(f"{name}.load_state_dict: parameter {i}'s state must be a dict, got "
                                f"{type(entry).__name__}")
            unknown = sorted(map(str, set(entry) - keys))
            if unknown:
                raise ValueError(f"{name}.load_state_dict: parameter {i}'s state has {unknown}, which this "
                                 f"{name} does not keep (it keeps {sorted(keys)})")
            p = self.params[i]
            new = {}
            for buf in kept:
                if buf not in entry:
                    if buf not in buffers:
                        continue
                    raise KeyError(f"{name}.load_state_dict: parameter {i} lacks its {buf!r} buffer")
                value = entry[buf]
                if not (hasattr(value, "shape") and hasattr(value, "dtype")):
                    raise TypeError(f"{name}.load_state_dict: parameter {i}'s {buf!r} must be an array, got "
                                    f"{type(value).__name__}")
                if tuple(value.shape) != tuple(p.data.shape) or np.dtype(value.dtype) != np.dtype(p.data.dtype):
                    raise ValueError(f"{name}.load_state_dict: parameter {i}'s {buf!r} is {tuple(value.shape)} "
                                     f"{value.dtype}, but the parameter is {tuple(p.data.shape)} {p.data.dtype}")
                new[buf] = xp.array(value, dtype=p.data.dtype, copy=True)
                # The next step would make the parameter NaN or infinite: a NaN anywhere, an infinity in a
                # momentum or first moment (the second's square root divides: an infinity there stops a step).
                if bool(xp.isnan(new[buf]).any()) or (buf != "exp_avg_sq" and not bool(xp.isfinite(new[buf]).all())):
                    raise ValueError(f"{name}.load_state_dict: parameter {i}'s {buf!r} has "
                                     f"{'NaN' if bool(xp.isnan(new[buf]).any()) else 'infinite'} values: a step "
                                     "would make the parameter non-finite (the state of a run that diverged, or "
                                     "corrupt)")
                if buf == "exp_avg_sq" and bool((new[buf] < 0).any()):  # (its square root: NaN at the next step)
                    raise ValueError(f"{name}.load_state_dict: parameter {i}'s 'exp_avg_sq' has negative values; a "
                                     "mean of squares cannot: the state is corrupt")
            if self._counts_steps:
                if "step" not in entry:
                    raise KeyError(f"{name}.load_state_dict: parameter {i} lacks its 'step' count")
                step = entry["step"]
                new["step"] = _check.integer(step, f"{name}.load_state_dict: parameter {i}'s 'step' (the steps "
                                                   "taken)", low=1)
            state[i] = new
        return hyper, state

    def _checked_hyperparameters(self, hyper) -> dict:
        """A state dict's hyperparameters over the current ones, checked by the constructor's own
        checks (an optimizer of this type made from them): the values to set."""
        name = type(self).__name__
        current = self.hyperparameters()
        if not isinstance(hyper, dict):
            raise TypeError(f"{name}.load_state_dict: the hyperparameters must be a dict, got {type(hyper).__name__}")
        unknown = sorted(map(str, set(hyper) - set(current)))
        if unknown:
            raise ValueError(f"{name}.load_state_dict: unknown hyperparameters {unknown} (a {name} has "
                             f"{sorted(current)})")
        try:
            return type(self)(self.params, **{**current, **hyper}).hyperparameters()
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}.load_state_dict: {str(exc).removeprefix(name + ': ')}") from exc

    def load_state_dict(self, state_dict) -> None:
        """Restores a state_dict(); checked first (see _checked): on an error nothing changes."""
        hyper, state = self._checked(state_dict)
        self.state = state
        for key, value in hyper.items():
            setattr(self, key, tuple(value) if isinstance(value, list) else value)

    def __repr__(self):
        # hyperparameters() holds pairs as JSON's lists: shown as the tuples the optimizer holds (betas).
        args = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """PyTorch's SGD: g = grad + weight_decay * p; with momentum, v = momentum * v + g and the step
    uses v (or g + momentum * v with nesterov); p -= lr * step."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        self.momentum = _number(momentum, "momentum", "SGD", low=0.0, high=1.0, high_open=True)
        self.weight_decay = _number(weight_decay, "weight_decay", "SGD", low=0.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"SGD: nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.nesterov = nesterov

    def _buffers_for(self, hyperparameters):
        return ("momentum_buffer",) if hyperparameters.get("momentum", self.momentum) > 0 else ()

    def _buffers_kept(self):
        return ("momentum_buffer",)

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def step(self):
        # Every trainable tensor of one dtype in one call (one launch on a GPU, where a small
        # model's step is bound by the host's per-call cost); the same bits as one call each.
        groups, indices = {}, {}  # dtype -> (params, grads, velocities), the optimizer's indices
        trainable = self._trainable_in_one_step()
        created = {}  # new momentum buffers, kept once the step has been taken
        for i, p in trainable:
            velocity = None
            if self.momentum > 0:
                velocity = self.state.get(i, {}).get("momentum_buffer")
                if velocity is None:
                    velocity = created[i] = self._zeros_like(p)
            group = groups.setdefault(p.data.dtype, ([], [], []))
            for part, array in zip(group, (p.data, p.grad, velocity)):
                part.append(array)
            indices.setdefault(p.data.dtype, []).append(i)
        calls = []  # every dtype's call checked before any runs: a bad array fails the step with nothing changed
        for dtype, (params, grads, velocities) in groups.items():
            calls.append(self._prepared(
                ops.optim.prepare_sgd_step_foreach, indices[dtype], "params[k], grads[k] and velocities[k]", params,
                grads, velocities if self.momentum > 0 else None, lr=self.lr, momentum=self.momentum,
                weight_decay=self.weight_decay, nesterov=self.nesterov))
        for call in calls:
            call()
        for i, velocity in created.items():
            self.state.setdefault(i, {})["momentum_buffer"] = velocity


class Adam(Optimizer):
    """PyTorch's Adam (weight decay added to the gradient) and, with decoupled=True (AdamW), decay
    applied to the parameter: p -= lr * wd * p. Bias-corrected moments, step counts per parameter."""

    _buffers = ("exp_avg", "exp_avg_sq")
    _counts_steps = True
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        name = type(self).__name__
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_number(b, f"betas[{k}]", name, low=0.0, high=1.0, high_open=True) for k, b in enumerate(betas))
        # eps > 0: with 0 a zero gradient's update is 0 / 0 (torch takes eps=0 and gives NaN there)
        self.eps = _number(eps, "eps", name, low=0.0, low_open=True)
        self.weight_decay = _number(weight_decay, "weight_decay", name, low=0.0)

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def step(self):
        # As SGD.step: one ops.adam_step_foreach call a dtype, each parameter with its own step count.
        beta1, beta2 = self.betas
        states = {}  # index -> its state after this step, kept once the whole step has been taken
        groups = {}  # dtype -> the optimizer's indices
        for i, p in self._trainable_in_one_step():
            s = self.state.get(i) or dict(exp_avg=self._zeros_like(p), exp_avg_sq=self._zeros_like(p), step=0)
            states[i] = dict(s, step=s["step"] + 1)
            groups.setdefault(p.data.dtype, []).append(i)
        calls = []  # every dtype's call checked before any runs: a bad array fails the step with nothing changed
        for indices in groups.values():
            params = [self.params[i] for i in indices]
            calls.append(self._prepared(
                ops.optim.prepare_adam_step_foreach, indices, "params[k], grads[k], ms[k] and vs[k]",
                [p.data for p in params], [p.grad for p in params], [states[i]["exp_avg"] for i in indices],
                [states[i]["exp_avg_sq"] for i in indices], [states[i]["step"] for i in indices], lr=self.lr,
                beta1=beta1, beta2=beta2, eps=self.eps, weight_decay=self.weight_decay, decoupled=self._decoupled))
        for call in calls:
            call()
        self.state.update(states)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's default weight_decay 1e-2."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


class LRScheduler:
    """Base: sets optimizer.lr from the number of step() calls (usually one per epoch)."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a fastconv.optim optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        lr = self.lr_at(self.last_epoch + 1)  # (first: a refusal leaves the schedule where it was)
        self.last_epoch += 1
        self.optimizer.lr = lr

    def get_last_lr(self) -> list:
        """[the learning rate the last step() set]: a list, as torch's (one entry per parameter
        group; a fastconv optimizer has one), so that `scheduler.get_last_lr()[0]` ports as is."""
        return [self.optimizer.lr]

    def hyperparameters(self) -> dict:
        """The schedule's constructor arguments (step_size and gamma, T_max and eta_min)."""
        return {k: getattr(self, k) for k in self._hyperparameters}

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "base_lr": self.base_lr, "last_epoch": self.last_epoch,
                "hyperparameters": self.hyperparameters()}

    def check_state_dict(self, state: dict) -> tuple:
        """Validates a state_dict() without changing anything: (base_lr, last_epoch, hyperparameters, the
        lr it sets). A state saved before the schedule's hyperparameters were keeps this scheduler's."""
        name = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"{name}.load_state_dict: the state must be a dict, as state_dict() returns, got "
                            f"{type(state).__name__}")
        missing = [k for k in ("base_lr", "last_epoch") if k not in state]
        if missing:
            raise ValueError(f"{name}.load_state_dict: the state lacks {', '.join(missing)} (it has "
                             f"{', '.join(map(str, state)) or 'nothing'})")
        if state.get("type", name) != name:
            raise ValueError(f"{name}.load_state_dict: the state is from a {state['type']}")
        last_epoch = _check.integer(state["last_epoch"], f"{name}.load_state_dict: last_epoch", low=0)
        base_lr = _number(state["base_lr"], "base_lr", f"{name}.load_state_dict", low=0.0)  # (NaN: every lr NaN)
        hyper = state.get("hyperparameters", self.hyperparameters())
        if not isinstance(hyper, dict) or set(hyper) != set(self._hyperparameters):
            raise ValueError(f"{name}.load_state_dict: hyperparameters must be a dict of "
                             f"{', '.join(self._hyperparameters)}, got {hyper!r}")
        if hyper:  # (the constructor's checks, on a copy: a user's schedule may set the optimizer's lr)
            hyper = type(self)(copy.copy(self.optimizer), **hyper).hyperparameters()
        # The lr the state sets, on a copy (no constructor runs): load_state_dict then cannot fail
        # half-way, nor load_into after the weights.
        probe = copy.copy(self)
        probe.base_lr = base_lr
        for k, v in hyper.items():
            setattr(probe, k, v)
        try:
            lr = probe.lr_at(last_epoch)
        except OverflowError:  # (CosineAnnealingLR's epoch / T_max of a huge int)
            lr = math.inf
        if not math.isfinite(lr):
            raise ValueError(f"{name}.load_state_dict: the lr at epoch {last_epoch} of this state is not finite")
        return base_lr, last_epoch, hyper, lr

    def load_state_dict(self, state: dict) -> None:
        """Takes the saved schedule: base_lr, the step count and its hyperparameters (as torch's
        load_state_dict, which loads the scheduler's whole state), and sets the optimizer's lr."""
        self.base_lr, self.last_epoch, hyper, lr = self.check_state_dict(state)
        for k, v in hyper.items():
            setattr(self, k, v)
        self.optimizer.lr = lr

    _hyperparameters: tuple = ()  # the subclass's constructor arguments, for repr

    def __repr__(self):
        args = [f"{k}={getattr(self, k)!r}" for k in self._hyperparameters]
        state = f"base_lr={self.base_lr!r}, last_epoch={self.last_epoch}, lr={self.optimizer.lr!r}"
        return f"{type(self).__name__}({', '.join(args + [state])})"


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    _hyperparameters = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size = _check.integer(step_size, "StepLR: step_size", low=1)
        self.gamma = _number(gamma, "gamma", "StepLR", low=0.0)

    def lr_at(self, epoch):
        try:
            return self.base_lr * self.gamma ** (epoch // self.step_size)
        except OverflowError:  # (a bare "Numerical result out of range" from float's **)
            raise ValueError(f"StepLR: the lr at epoch {epoch}, base_lr * gamma ** {epoch // self.step_size} with "
                             f"gamma {self.gamma!r}, is past the largest float") from None


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (PyTorch's closed form)."""

    _hyperparameters = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer)
        self.T_max = _check.integer(T_max, "CosineAnnealingLR: T_max", low=1)
        self.eta_min = _number(eta_min, "eta_min", "CosineAnnealingLR", low=0.0)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2
