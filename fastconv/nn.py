"""Layers: modules with a forward pass, a backward pass and parameters, running on fastconv.ops.

    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1))
    out = model(x)                 # x on the backend's device, (N, 30)
    dx = model.backward(dout)      # gradients ACCUMULATE into each parameter's .grad

Each layer caches what its backward needs during forward (the input, the output, pooling indices);
backward() uses the cache of the most recent forward. It keeps references, not copies: change a
layer's input, or the output it returned, in place before backward() (`out -= 0.5`) and the
gradients are computed from the changed values, silently (torch raises: its tensors count their
versions; NumPy arrays do not). Change a copy instead (`out = out - 0.5`).

Parameters live on the current backend's device (fastconv.backend.current().xp: NumPy or CuPy).
Initialization is PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases,
drawn from a NumPy Generator on the host: `seed=` on a layer, or the module-level generator set by
`manual_seed(s)` (seed 0 at import), so the same seed gives the same weights on every backend.

`model.config()` is a JSON-able description of the architecture; `from_config(cfg)` rebuilds it.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import numbers
import weakref
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from . import backend as _backend
from . import ops
from ._host import refuse_masked
from ._kernel_abi import conv_output_size
from .ops import _check

__all__ = ["Parameter", "Module", "Linear", "Conv2d", "ReLU", "Sigmoid", "MaxPool2d", "AvgPool2d", "Flatten",
           "Dropout", "Sequential", "manual_seed", "from_config", "register"]

_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseeds the generator that initializes layers (and seeds Dropout) when no `seed=` is given.
    It is one generator for the process: layers built in several threads at once draw from it in
    whatever order the threads run; pass `seed=` to each layer for weights that do not depend on that."""
    global _rng
    _rng = _check.generator(seed)


def _xp():
    return _backend.current().xp


# Set (to a generator of its own) while checkpoint.load rebuilds a model whose parameters it then
# reads from the file: layers allocate their parameters as zeros instead of drawing values that would
# be overwritten (the float64 draws were most of a large model's load time, and 3x its size), and draw
# Dropout seeds from that generator, so the module one is left where it was. A context variable, not a
# global: a model another thread builds meanwhile is initialized as usual.
_loading = contextvars.ContextVar("fastconv.nn._loading", default=None)


@contextlib.contextmanager
def _no_init():
    """Layers built inside it are not initialized (see _loading); for checkpoint.load only."""
    token = _loading.set(np.random.default_rng(0))
    try:
        yield
    finally:
        _loading.reset(token)


def _generator(seed):
    if seed is not None:
        return _check.generator(seed)
    loading = _loading.get()
    return _rng if loading is None else loading


def _float_dtype(dtype, layer) -> np.dtype:
    if dtype is None:  # (np.dtype(None) is float64: a layer of the other dtype, unasked)
        raise TypeError(f"{layer}: dtype must be float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:  # (NumPy's "Cannot interpret 'torch.float32' as a data type")
        raise TypeError(f"{layer}: dtype must be float32 or float64 (np.float32, np.float64 or their names), got "
                        f"{dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{layer}: dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(value, name, layer, low=1):
    return _check.integer(value, f"{layer}: {name}", low=low)


def _pair(value, name, layer, low=1):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer}: {name} must be an int or a pair, got {value!r}")
        return tuple(_positive_int(v, name, layer, low) for v in value)
    v = _positive_int(value, name, layer, low)
    return (v, v)


class Parameter:
    """A trainable array: .data (on the backend's device), .grad (None until a backward pass),
    .requires_grad (False when frozen: no gradient is accumulated and optimizers skip it), .name."""

    def __init__(self, data, name=None, requires_grad=True):
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.name = name

    @property
    def frozen(self) -> bool:
        return not self.requires_grad

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    def accumulate(self, grad) -> None:
        """Adds grad to .grad (sets it when None); does nothing when frozen."""
        if not self.requires_grad or grad is None:
            return
        if self.grad is None:
            self.grad = grad
        else:
            self.grad += grad

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.shape}, dtype={self.dtype}{', frozen' if self.frozen else ''})"


class Module:
    """Base class. Subclasses set Parameter and Module attributes (registered in assignment order),
    implement forward(x) and backward(dy) -> dx, and `_args()` (constructor arguments, for config())."""

    training = True

    def __setattr__(self, name, value):
        if name[:1] == "_" and not isinstance(value, (Parameter, Module)):
            # A layer's cached arrays (self._x, ...), set on every forward: nothing to register,
            # unless the name held a parameter or module before.
            d = self.__dict__
            if name not in d.get("_parameters", ()) and name not in d.get("_modules", ()):
                object.__setattr__(self, name, value)
                return
        params = self.__dict__.setdefault("_parameters", OrderedDict())
        modules = self.__dict__.setdefault("_modules", OrderedDict())
        if not isinstance(value, (Parameter, Module)) and value is not None:
            # As PyTorch: an array (or anything else) in a parameter's place would silently drop the
            # parameter from parameters(), state_dict() and checkpoints (untrained, unsaved).
            if name in params:
                raise TypeError(f"cannot assign a {type(value).__name__} as parameter {name!r} of "
                                f"{type(self).__name__} (a fastconv.nn.Parameter or None expected; to change "
                                f"its values, write into .{name}.data)")
            if name in modules:
                raise TypeError(f"cannot assign a {type(value).__name__} as submodule {name!r} of "
                                f"{type(self).__name__} (a fastconv.nn.Module or None expected)")
        # A Parameter (Module) replacing one keeps its place, as in torch: named_parameters(),
        # state_dict() and an optimizer's parameter indices keep their order.
        if isinstance(value, Parameter):
            modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            modules[name] = value
        else:
            params.pop(name, None)
            modules.pop(name, None)
        object.__setattr__(self, name, value)

    # --- computation -------------------------------------------------------------------------
    def forward(self, x):
        """The layer's output for x (on the backend's device); caches what backward() needs. A subclass
        implements it; calling the module (module(x)) calls it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, dy):
        """dL/dx given dy = dL/d(output) of the most recent forward(); accumulates the parameters'
        gradients into their .grad. A subclass implements it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def __call__(self, x):
        return self.forward(x)

    def _cached(self, name):
        value = self.__dict__.get(name)
        if value is None:
            raise RuntimeError(f"{self!r}: backward() called before forward()")
        return value

    # --- parameters --------------------------------------------------------------------------
    def named_parameters(self, prefix=""):
        """(name, Parameter) pairs, recursively, in a stable order ("0.weight", "0.bias", ...).
        Frozen parameters are included (their .frozen is True)."""
        for name, p in self.__dict__.get("_parameters", {}).items():
            yield prefix + name, p
        for name, m in self.__dict__.get("_modules", {}).items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        """Each Parameter once, in named_parameters' order (a layer used twice, or tied weights,
        would otherwise be updated twice per step)."""
        seen, out = set(), []
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def modules(self):
        """This module and every submodule, depth first."""
        yield self
        for m in self.__dict__.get("_modules", {}).values():
            yield from m.modules()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def freeze(self):
        """No gradients for this module's parameters; optimizers leave them unchanged."""
        for p in self.parameters():
            p.requires_grad = False
        return self

    def unfreeze(self):
        for p in self.parameters():
            p.requires_grad = True
        return self

    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, object]":
        """name -> parameter array (the arrays themselves, on the device; not copies)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def check_state_dict(self, state_dict, strict=True):
        """Validates a state dict against this model without changing it; returns
        (pairs to copy, missing keys, unexpected keys). Raises KeyError/ValueError/TypeError."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: state_dict must be a mapping of parameter names to arrays (as "
                            f"state_dict() returns), got {type(state_dict).__name__}")
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError(f"load_state_dict: {'; '.join(parts)} (the model has {list(own)})")
        pairs = []
        for name, p in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            refuse_masked(value, f"state_dict[{name!r}]")
            if not hasattr(value, "shape"):
                raise TypeError(f"load_state_dict: {name} is a {type(value).__name__} in the state dict, not an "
                                f"array (the model's parameter is an array of shape {p.shape})")
            shape = tuple(value.shape)
            if shape != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {shape} in the state dict, "
                                 f"but the model's parameter is {p.shape}")
            dtype = getattr(value, "dtype", None)
            try:
                dtype = np.dtype(dtype) if dtype is not None else None
            except TypeError:  # (a torch tensor's torch.float32)
                raise TypeError(f"load_state_dict: {name} has dtype {dtype}, not a NumPy dtype: pass arrays (a torch "
                                "state dict sd as {k: v.detach().cpu().numpy() for k, v in sd.items()})") from None
            if dtype is None or dtype != np.dtype(p.dtype):
                raise TypeError(f"load_state_dict: {name} is {dtype} in the state dict, but the model's "
                                f"parameter is {p.dtype}")
            # (it failed half-way through the copies; CuPy's flags have no writeable: its arrays always are)
            if not getattr(getattr(p.data, "flags", None), "writeable", True):
                raise ValueError(f"load_state_dict: the model's parameter {name} is read-only (its .data does not "
                                 "own writable memory): nothing was loaded")
            pairs.append((p, value))
        return pairs, missing, unexpected

    def load_state_dict(self, state_dict, strict=True):
        """Copies arrays into the parameters (in place). Everything is checked first: on any error
        the model is unchanged. Returns (missing keys, unexpected keys) (both empty when strict)."""
        pairs, missing, unexpected = self.check_state_dict(state_dict, strict)
        xp = _xp()
        for p, value in pairs:
            p.data[...] = xp.asarray(value)
        return missing, unexpected

    def extra_state(self) -> dict:
        """JSON-able state besides parameters (e.g. Dropout's generator), by module path."""
        out = {}
        for name, m in self._named_modules():
            s = m._extra_state()
            if s is not None:
                out[name] = s
        return out

    def check_extra_state(self, state: dict) -> list:
        """Validates an extra_state() dict without changing anything: the loads that apply it
        (ValueError/TypeError for a state that does not fit)."""
        if not isinstance(state, dict):
            raise TypeError(f"the module state must be a dict by module path, as extra_state() returns, got "
                            f"{type(state).__name__}")
        return [m._extra_state_loader(name, state[name]) for name, m in self._named_modules() if name in state]

    def load_extra_state(self, state: dict) -> None:
        for load in self.check_extra_state(state):  # (all checked first: none half-loaded)
            load()

    def _named_modules(self, prefix=""):
        yield prefix.rstrip("."), self
        for name, m in self.__dict__.get("_modules", {}).items():
            yield from m._named_modules(prefix + name + ".")

    def _extra_state(self):
        return None

    def _extra_state_loader(self, name, state):
        """A check of this module's part of extra_state(), then the function that loads it (by default
        _load_extra_state, unchecked: the hook of before, which a subclass may override)."""
        return lambda: self._load_extra_state(state)

    def _load_extra_state(self, state):
        pass

    # --- architecture ------------------------------------------------------------------------
    def _args(self) -> dict:
        """The constructor's arguments, JSON-able (config() and repr show them); a subclass implements it."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its architecture: implement _args() "
                                  "and decorate the class with @fastconv.nn.register")

    def config(self) -> dict:
        """A JSON-able description of the architecture: {"type": class name, constructor args...}."""
        return {"type": type(self).__name__, **self._args()}

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self._args().items() if k != "dtype")
        except NotImplementedError:
            args = ""
        return f"{type(self).__name__}({args})"


def _conv_padding(padding, kernel, stride, dilation, layer):
    """A Conv2d's padding as ops.conv2d_forward takes it: "same" (stride 1 only, as torch) or "valid" kept
    as given (so config() and repr show it), checked by the op's own rule; else a pair of ints >= 0."""
    if isinstance(padding, str):
        try:
            ops.conv._padding(padding, kernel, stride, dilation)
        except ValueError as exc:
            raise ValueError(f"{layer}: {exc}") from None
        return padding
    return _pair(padding, "padding", layer, low=0)


def _check_output_grad(layer, dy, shape):
    """ValueError unless dy has `shape`, the layer's last forward output's: a layer that only reshapes
    or scales dy would otherwise take another shape (broadcast, or reshaped) and pass on a wrong one."""
    got = getattr(dy, "shape", None)
    if got is None or tuple(got) != tuple(shape):
        raise ValueError(f"{layer!r}.backward: dy must have the shape of the last forward's output, {tuple(shape)}; "
                         f"got {type(dy).__name__ if got is None else tuple(got)}")


def _check_input(layer, x, ndim, what, size=None, dim=1, dtype=None):
    """The input as the backend's array, as the ops take it (a torch tensor or an ndarray subclass read as
    an ndarray); ValueError naming the layer, the expected and the received shape, TypeError naming the
    layer and the ops' reason for an array of another device or kind, or of another dtype."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{layer!r}: input must be an array on the backend's device, got {type(x).__name__}")
    given = x
    try:  # (before the dtype: a torch tensor's is torch.float32, never a NumPy dtype)
        x = _check.on_backend(x, "x", _backend.current())
    except TypeError as exc:  # e.g. a torch tensor that requires grad: pass x.detach().numpy()
        raise TypeError(f"{layer!r}: {exc}") from None
    if len(shape) != ndim or (size is not None and shape[dim] != size):
        hint = ""
        if ndim == 4 and len(shape) == 4 and dim == 1 and shape[3] == size:  # (images as NumPy and PIL hold them)
            hint = " (channels last? the layers take (N, C, H, W): x.transpose(0, 3, 1, 2))"
        raise ValueError(f"{layer!r}: expected input of shape {what}, got {tuple(shape)}{hint}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{layer!r}: input is {x.dtype} but the layer's parameters are {dtype}; "
                        f"cast the input ({_cast_advice(given, np.dtype(dtype).name)})")
    return x


class _named_errors:
    """`with _named_errors(layer):` the ops' TypeErrors and ValueErrors (which name the op's argument: "x
    must be float32 or float64") name the layer too. The exception's message is rewritten in place: its
    type, cause and traceback stay. (A class: cheaper per call than a generator's context manager.)"""

    __slots__ = ("layer",)

    def __init__(self, layer):
        self.layer = layer

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback):
        if isinstance(exc, (TypeError, ValueError)):
            _name_in(exc, self.layer)
        return False


def _name_in(exc, layer):
    """Prefixes an exception's one-string message with the layer."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{layer!r}: {exc.args[0]}",)


def _cast_advice(x, name):
    """How to cast x to the dtype `name`, for x's kind of array: a torch tensor has no astype."""
    if type(x).__module__.partition(".")[0] == "torch":
        return f"x.to(torch.{name})"
    if hasattr(x, "astype"):  # NumPy, CuPy
        return f"x.astype(np.{name})"
    return f"np.asarray(x, dtype=np.{name})"


def _uniform(rng, bound, shape, dtype):
    host = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return _xp().asarray(host)


def _initial(rng, bound, shape, dtype):
    """A parameter's initial values on the device: U(-bound, bound), or zeros inside _no_init."""
    if _loading.get() is not None:
        return _xp().zeros(shape, dtype)
    return _uniform(rng, bound, shape, dtype)


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features), bias (out_features,)."""

    fusable = True

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, seed=None):
        self.in_features = _positive_int(in_features, "in_features", "Linear")
        self.out_features = _positive_int(out_features, "out_features", "Linear")
        self.dtype = _float_dtype(dtype, "Linear")
        rng = _generator(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(_initial(rng, bound, (self.out_features, self.in_features), self.dtype), "weight")
        self.bias = (Parameter(_initial(rng, bound, (self.out_features,), self.dtype), "bias")
                     if _check.flag(bias, "Linear: bias") else None)  # (bias="no" was true)

    def _args(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "dtype": self.dtype.name}

    def forward(self, x, activation=None):
        """activation ("relu"/"sigmoid") is fused into the GEMM epilogue; Sequential uses it."""
        x = _check_input(self, x, 2, f"(N, {self.in_features})", self.in_features, dtype=self.dtype)
        self._x = x
        return ops.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data, activation)

    def backward(self, dy, input_grad=True):
        """input_grad=False skips dx (returns None): what a first layer needs."""
        dx, dw, db = ops.linear_backward(dy, self._cached("_x"), self.weight.data, bias=self.bias is not None,
                                         input_grad=input_grad)
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx


class Conv2d(Module):
    """2-D cross-correlation over NCHW input; weight (out_channels, in_channels // groups, kh, kw).

    padding: an int, a pair, "valid" or "same" (stride 1 only; an even kernel's odd extra row and
    column go to the bottom and right), as torch and ops.conv2d_forward take them.

    algorithm="auto" lets the backend compute it as it finds fastest; "direct" keeps every output a
    sum of its products (ops.conv.ALGORITHMS: on the cpu backend, no Winograd for this layer, whose
    error can be larger where a window mixes very large and very small inputs). It changes how, not
    what: a checkpoint loads into a model that differs from it only there."""

    fusable = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, algorithm="auto", dtype=np.float32, seed=None):
        name = "Conv2d"
        self.algorithm = algorithm
        self.in_channels = _positive_int(in_channels, "in_channels", name)
        self.out_channels = _positive_int(out_channels, "out_channels", name)
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = _pair(stride, "stride", name)
        self.dilation = _pair(dilation, "dilation", name)
        self.padding = _conv_padding(padding, self.kernel_size, self.stride, self.dilation, name)
        self.groups = _positive_int(groups, "groups", name)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d: in_channels ({self.in_channels}) and out_channels ({self.out_channels}) "
                             f"must both be divisible by groups ({self.groups})")
        self.dtype = _float_dtype(dtype, name)
        rng = _generator(seed)
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        shape = (self.out_channels, self.in_channels // self.groups, kh, kw)
        self.weight = Parameter(_initial(rng, bound, shape, self.dtype), "weight")
        self.bias = (Parameter(_initial(rng, bound, (self.out_channels,), self.dtype), "bias")
                     if _check.flag(bias, "Conv2d: bias") else None)

    def _args(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None,
                "dtype": self.dtype.name, **({} if self.algorithm == "auto" else {"algorithm": self.algorithm})}

    @property
    def algorithm(self):
        """"auto" or "direct" (see the class); settable, checked."""
        return self._algorithm

    @algorithm.setter
    def algorithm(self, value):
        self._algorithm = ops.conv.check_algorithm(value, "Conv2d")

    def _op_kwargs(self):
        """The ops' keyword arguments beside the tensors: the hyperparameters, and how to compute."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    algorithm=self.algorithm)

    def forward(self, x, activation=None):
        x = _check_input(self, x, 4, f"(N, {self.in_channels}, H, W)", self.in_channels, dtype=self.dtype)
        with _named_errors(self):  # (e.g. no output: the op's message, naming the layer)
            y = ops.conv2d_forward(x, self.weight.data, None if self.bias is None else self.bias.data,
                                   activation=activation, **self._op_kwargs())
        self._x = x
        return y

    def backward(self, dy, input_grad=True):
        """input_grad=False skips dx (returns None): what a first layer needs."""
        dx, dw, db = ops.conv2d_backward(dy, self._cached("_x"), self.weight.data, bias=self.bias is not None,
                                         input_grad=input_grad, **self._op_kwargs())
        return self._accumulate(dx, dw, db)

    def forward_max_pool(self, x, activation, pool):
        """pool(activation(self(x))) as one op (ops.conv2d_max_pool2d_forward); pool is a MaxPool2d,
        left ready for backward_max_pool. Sequential uses it."""
        x = _check_input(self, x, 4, f"(N, {self.in_channels}, H, W)", self.in_channels, dtype=self.dtype)
        try:
            y, indices = ops.conv2d_max_pool2d_forward(
                x, self.weight.data, None if self.bias is None else self.bias.data, activation=activation,
                pool_kernel=pool.kernel_size, pool_stride=pool.stride, pool_padding=pool.padding,
                **self._op_kwargs())
        except (TypeError, ValueError) as exc:
            self._blame_the_pool(x, pool)  # the pooling's refusal names the MaxPool2d and its input, as unfused
            _name_in(exc, self)
            raise
        self._x = x
        n, c_out = x.shape[0], self.out_channels
        pool._y, pool._indices = y, indices
        pool._x_shape = (n, c_out) + self._output_size(x.shape[2:])
        return y

    def _blame_the_pool(self, x, pool):
        """Raises the refusal of `pool` on this layer's output, if it has one (the fused op refused)."""
        conv_out = (x.shape[0], self.out_channels) + self._output_size(x.shape[2:])
        if min(conv_out[2:]) >= 1:
            try:
                ops.pool._geometry("max_pool2d_forward", conv_out, pool.kernel_size, pool.stride, pool.padding)
            except ValueError as exc:
                _name_in(exc, pool)
                raise exc from None

    def _output_size(self, size):
        """(OH, OW) on an input of spatial size (H, W), padding as the op applies it ("same": the odd
        extra row / column at the bottom / right)."""
        top, bottom, left, right = ops.conv._padding(self.padding, self.kernel_size, self.stride, self.dilation)
        return tuple(conv_output_size(n, k, s, lo, hi, d) for n, k, s, lo, hi, d in
                     zip(size, self.kernel_size, self.stride, (top, left), (bottom, right), self.dilation))

    def backward_max_pool(self, dy, activation, pool, input_grad=True):
        _check_output_grad(pool, dy, pool._cached("_y").shape)  # (else the fused op's words: "indices is ...")
        dx, dw, db = ops.conv2d_max_pool2d_backward(
            dy, pool._cached("_y"), pool._cached("_indices"), self._cached("_x"), self.weight.data,
            activation=activation, bias=self.bias is not None, input_grad=input_grad, check_indices=False,
            **self._op_kwargs())
        return self._accumulate(dx, dw, db)

    def _accumulate(self, dx, dw, db):
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx


class ReLU(Module):
    activation = "relu"

    def _args(self):
        return {}

    def forward(self, x):
        with _named_errors(self):
            y = ops.relu_forward(x)
        self._x = x
        self._fused_into_pool = False  # (a fused pass before this one left it True)
        return y

    def _absorb(self, y):
        # After a fused Linear/Conv2d + ReLU the cached input is the output: y > 0 exactly where the
        # pre-activation is > 0, so relu_backward gives the same mask. None: fused with a pooling
        # too (Sequential), the output was never stored.
        self._x = y
        self._fused_into_pool = y is None

    def backward(self, dy):
        if self.__dict__.get("_fused_into_pool"):
            raise RuntimeError(f"{self!r} ran fused with the Conv2d before it and the MaxPool2d after it "
                               "(its full-size output was never stored): call the Sequential's backward()")
        x = self._cached("_x")
        with _named_errors(self):
            return ops.relu_backward(dy, x)


class Sigmoid(Module):
    activation = "sigmoid"

    def _args(self):
        return {}

    def forward(self, x):
        with _named_errors(self):
            self._y = ops.sigmoid_forward(x)
        return self._y

    def _absorb(self, y):
        self._y = y

    def backward(self, dy):
        y = self._cached("_y")
        with _named_errors(self):
            return ops.sigmoid_backward(dy, y)


class _Pool2d(Module):
    """torch.nn's pooling options other than kernel_size, stride and padding are taken in their
    default form only (ops.pool: floor windows, dilation 1, padding counted in the average), so that
    torch code passing them explicitly runs; another value is a ValueError saying what holds here."""

    _FIXED = {  # option: (torch's default, what fastconv does instead of other values)
        "dilation": (1, "windows of adjacent elements"),
        "return_indices": (False, "the layer keeps its indices for backward; ops.max_pool2d_forward returns them"),
        "ceil_mode": (False, "windows that would start past the input's end are dropped (floor)"),
        "count_include_pad": (True, "padded zeros count in the average's divisor"),
        "divisor_override": (None, "the divisor is the window's size"),
    }

    def __init__(self, kernel_size, stride=None, padding=0, **torch_options):
        name = type(self).__name__
        for option, value in torch_options.items():
            default, instead = self._FIXED[option]
            if not _is_default(value, default):
                raise ValueError(f"{name}: {option}={value!r} is not supported, only {option}={default!r}: {instead}")
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", name)
        self.padding = _pair(padding, "padding", name, low=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half of kernel_size {self.kernel_size}")

    def _args(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}

    def _check(self, x):
        return _check_input(self, x, 4, "(N, C, H, W)")


def _is_default(value, default):
    if default is None:
        return value is None
    if isinstance(default, bool):  # (a bool or 0/1, as torch takes them)
        return isinstance(value, (bool, np.bool_, numbers.Integral)) and value in (0, 1) and bool(value) is default
    values = value if isinstance(value, (tuple, list)) and len(value) == 2 else (value,)
    return all(_is_int_like(v) and v == default for v in values)


def _is_int_like(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


class MaxPool2d(_Pool2d):
    """The maximum of each kernel_size window, windows stride apart (default: kernel_size), over the
    input padded with -inf by padding (at most half the window) on each side; torch.nn.MaxPool2d's
    semantics with dilation=1, ceil_mode=False (accepted in that form only: _Pool2d)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation=dilation, return_indices=return_indices,
                         ceil_mode=ceil_mode)

    def forward(self, x):
        x = self._check(x)
        with _named_errors(self):
            y, self._indices = ops.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._x_shape = tuple(x.shape)
        self._y = y  # for Sequential's ReLU + MaxPool2d backward
        return y

    def backward(self, dy):
        # The indices are this layer's own forward's: no range check (a sync per step on a GPU).
        indices, x_shape = self._cached("_indices"), self._cached("_x_shape")
        with _named_errors(self):
            return ops.max_pool2d_backward(dy, indices, x_shape, check_indices=False)


class AvgPool2d(_Pool2d):
    """The mean of each kernel_size window, windows stride apart (default: kernel_size), over the input
    zero-padded by padding (at most half the window) on each side, every window divided by its full
    size; torch.nn.AvgPool2d's semantics with ceil_mode=False, count_include_pad=True and no
    divisor_override (accepted in that form only: _Pool2d)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        super().__init__(kernel_size, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                         divisor_override=divisor_override)

    def forward(self, x):
        x = self._check(x)
        with _named_errors(self):
            y = ops.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._x_shape = tuple(x.shape)
        return y

    def backward(self, dy):
        x_shape = self._cached("_x_shape")
        with _named_errors(self):
            return ops.avg_pool2d_backward(dy, x_shape, self.kernel_size, self.stride, self.padding)


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""

    def _args(self):
        return {}

    def forward(self, x):
        if getattr(x, "shape", None) is None:  # (a list: "got ()")
            raise TypeError(f"{self!r}: expected an array of shape (N, ...), got {type(x).__name__}")
        try:  # (as every layer: a torch tensor read as the backend's array, one that requires grad refused)
            x = _check.on_backend(x, "x", _backend.current())
        except TypeError as exc:
            raise TypeError(f"{self!r}: {exc}") from None
        if x.ndim < 2:  # ((64,) came out (64, 1): one sample without its batch axis taken for 64; as torch)
            raise ValueError(f"{self!r}: expected input of shape (N, d1, ...), a row per sample, got "
                             f"{tuple(x.shape)}" + (" (one sample? give it a batch axis: x[None])" if x.ndim else ""))
        self._x_shape = tuple(x.shape)
        # The size, not -1: NumPy and CuPy cannot infer -1 for an empty batch (N = 0).
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy):
        shape = self._cached("_x_shape")
        _check_output_grad(self, dy, (shape[0], math.prod(shape[1:])))
        return dy.reshape(shape)


class _Unmasked:
    """The type of _UNMASKED. Its copies (copy, deepcopy, pickle) are _UNMASKED itself: Dropout
    tests `mask is _UNMASKED`, which a copied model's plain object() would fail (dy * object())."""

    def __reduce__(self):
        return "_UNMASKED"

    def __repr__(self):
        return "_UNMASKED"


_UNMASKED = _Unmasked()  # Dropout's forward was the identity (eval mode, or p = 0)


class Dropout(Module):
    """Inverted dropout: in training, zeroes each element with probability p and scales the rest by
    1 / (1 - p); the identity in eval mode. The mask comes from the layer's own seeded generator
    (its state is saved in checkpoints, so a resumed run draws the same masks)."""

    def __init__(self, p=0.5, *, seed=None):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._gen = _check.generator(_generator(seed).integers(2**63) if seed is None else seed)

    def _args(self):
        return {"p": self.p}

    def forward(self, x):
        if getattr(x, "shape", None) is None:  # (a list: an AttributeError inside)
            raise TypeError(f"{self!r}: expected an array, got {type(x).__name__}")
        with _named_errors(self):
            x = _check.on_backend(x, "x", _backend.current())
            _check.refuse_non_float(x, "x")  # (the mask in an integer dtype lost its scale 1 / (1 - p))
        self._x_shape = tuple(x.shape)
        if not self.training or self.p == 0.0:
            self._mask = _UNMASKED  # not None: backward then knows a forward ran
            return x
        keep = self._gen.random(tuple(x.shape)) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._mask = _xp().asarray((keep * scale).astype(x.dtype))
        return x * self._mask

    def backward(self, dy):
        mask = self._cached("_mask")  # a RuntimeError before any forward, as in every layer
        _check_output_grad(self, dy, self._x_shape)  # (dy * mask broadcast a dy of another shape)
        return dy if mask is _UNMASKED else dy * mask

    def _extra_state(self):
        return {"generator": self._gen.bit_generator.state}

    def _extra_state_loader(self, name, state):
        probe = type(self._gen.bit_generator)()
        try:
            probe.state = state["generator"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"module {name!r} ({type(self).__name__}): its saved state must hold its generator's "
                             f"state, as extra_state() gives it ({type(exc).__name__}: {exc})") from None
        return lambda: setattr(self._gen.bit_generator, "state", probe.state)


class Sequential(Module):
    """Layers applied in order; submodules are named "0", "1", ... (so parameters are "0.weight").

    A Linear or Conv2d directly followed by ReLU or Sigmoid runs as one fused op (bias and activation
    in the kernel's epilogue); the activation layer then caches the fused output for its backward.
    A Conv2d followed by MaxPool2d, or by ReLU then MaxPool2d, runs as ops.conv2d_max_pool2d_forward
    (its full-size output never exists; a ReLU in between then caches nothing). Every result is bit
    for bit that of the layers run one by one, on every backend and dtype (on cpu the fused float32
    sigmoid is the standalone op's vector code where the host has it: _cpu.dense.epilogue_activation).
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__}, not a fastconv.nn.Module")
            self.__dict__.setdefault("_modules", OrderedDict())[str(i)] = layer

    def __getitem__(self, index):
        layers = list(self)
        return Sequential(*layers[index]) if isinstance(index, slice) else layers[index]

    def __setitem__(self, index, layer):
        """model[i] = layer: a layer replaced in place (a new head for fine-tuning), as in torch."""
        n = len(self)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, numbers.Integral):
            raise TypeError(f"Sequential: an index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"Sequential: index {index} is out of range for {n} layers")
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential: layer {index} would be a {type(layer).__name__}, not a fastconv.nn.Module")
        self.__dict__["_modules"][str(index % n)] = layer

    def __len__(self):
        return len(self.__dict__.get("_modules", {}))

    def __iter__(self):
        return iter(self.__dict__.get("_modules", {}).values())

    def _args(self):
        return {"layers": [layer.config() for layer in self]}

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self))
        return f"Sequential({inner}\n)"

    def forward(self, x):
        layers = list(self)
        self._pooled_convs = {}  # MaxPool2d index -> (Conv2d index, activation), fused by this pass
        i = 0
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            relu = type(nxt) is ReLU
            pool_at = i + 2 if relu else i + 1
            if type(layer) is Conv2d and pool_at < len(layers) and type(layers[pool_at]) is MaxPool2d:
                activation = "relu" if relu else None
                x = layer.forward_max_pool(x, activation, layers[pool_at])
                if relu:
                    nxt._absorb(None)
                self._pooled_convs[pool_at] = (i, activation)
                i = pool_at + 1
            elif getattr(layer, "fusable", False) and type(nxt) in (ReLU, Sigmoid):
                x = layer.forward(x, activation=nxt.activation)
                nxt._absorb(x)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    def backward(self, dy, input_grad=True):
        """Returns dL/dx, or None with input_grad=False: then the layers in front of the first one
        with a trainable parameter are skipped, and that one computes no dx (as PyTorch does for an
        input that does not require grad: the first conv's dx is a large share of a small CNN's step)."""
        self._check_no_repeated_layer()
        layers = list(self)
        first = 0
        if not input_grad:
            first = next((k for k, layer in enumerate(layers) if _trains(layer)), len(layers))
        # Before any forward: a RuntimeError here, not only from a layer's backward (there may be none
        # to call: an empty model, or no trainable layer with input_grad=False).
        pooled_convs = self._cached("_pooled_convs")
        i = len(layers) - 1
        while i >= first:
            layer = layers[i]
            if i in pooled_convs:  # (a pooling is never `first`: it has no parameters)
                conv_at, activation = pooled_convs[i]
                last = conv_at == first and not input_grad
                dy = layers[conv_at].backward_max_pool(dy, activation, layer, input_grad=not last)
                if last:
                    return None
                i = conv_at - 1
                continue
            if i == first and not input_grad:
                backward_without_input_grad(layer, dy)
                return None
            if type(layer) is MaxPool2d and i > first and type(layers[i - 1]) is ReLU:
                # ReLU then max pooling: each pooled value is the ReLU output at the element the
                # gradient goes back to, so the ReLU's mask there is (pooled > 0). Applied to the
                # small pooled gradient before the scatter, it replaces the full-size relu_backward
                # with the same result, bit for bit (the same terms, masked alike).
                dy = layer.backward(ops.relu_backward(dy, layer._cached("_y")))
                i -= 2
            else:
                dy = layer.backward(dy)
                i -= 1
        return None if not input_grad else dy

    def _check_no_repeated_layer(self):
        """RuntimeError when one layer object sits at two places in the model: it keeps only its most
        recent forward's input (and mask, indices), so the backward of its earlier place would use the
        later one's and give wrong weight gradients, silently."""
        seen = {}
        for name, module in self._named_modules():
            if name and seen.setdefault(id(module), name) != name:
                raise RuntimeError(
                    f"Sequential.backward: layer {name!r} is layer {seen[id(module)]!r} again (one "
                    f"{type(module).__name__} object at two places); a layer keeps only its latest forward's "
                    "input, so the gradients would be wrong. Use one instance per place (to tie weights, share "
                    "the Parameters: second.weight = first.weight)")


def _trains(module):
    return any(p.requires_grad for p in module.parameters())


def _set_modes(model, training, each):
    """model.train(training), the model's own (a subclass may do more there than set flags), then
    each (module, training) pair's flag as given: how a model's saved modes are put back (train's
    predict after its eval mode, checkpoint.load after a rebuild)."""
    model.train(training)
    for m, mode in each:
        if m.training != mode:
            m.training = mode


_REGISTRY = {}


def register(cls):
    """Makes a Module subclass known to from_config() (by class name). Usable as a decorator."""
    _REGISTRY[cls.__name__] = cls
    return cls


for _cls in (Linear, Conv2d, ReLU, Sigmoid, MaxPool2d, AvgPool2d, Flatten, Dropout):
    register(_cls)


def _unregistered_types(cfg: dict) -> list:
    """The layer types of a Module.config() that from_config() cannot rebuild (not registered), found
    the way from_config walks it."""
    kind = cfg.get("type")
    if kind == "Sequential":
        return sorted({t for layer in cfg.get("layers", []) for t in _unregistered_types(layer)})
    return [] if kind in _REGISTRY else [kind]


def from_config(cfg: dict) -> Module:
    """Rebuilds a model from Module.config() (fresh weights; load a state dict for trained ones)."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"a model config must be a dict with a 'type', got {cfg!r}")
    args = {k: v for k, v in cfg.items() if k != "type"}
    kind = cfg["type"]
    if kind == "Sequential":
        return Sequential(*(from_config(c) for c in args.get("layers", [])))
    if kind not in _REGISTRY:
        raise ValueError(f"unknown layer type {kind!r} in the model config (known: {sorted(_REGISTRY)}, Sequential)")
    return _REGISTRY[kind](**args)


def backward_without_input_grad(module, dy):
    """module.backward(dy) where nobody reads the gradient for the module's input (the first layer's,
    the model's in training): with input_grad=False where its backward takes that argument, as the
    built-in layers' do, which then skip computing it; plainly otherwise (a custom layer's)."""
    if _takes_input_grad(getattr(module.backward, "__func__", module.backward)):
        module.backward(dy, input_grad=False)
    else:
        module.backward(dy)


# backward function -> whether it takes input_grad (inspect.signature: ~20 us, so once per function).
# Weak keys: a backward made per module (a closure over it) must not keep that module alive.
_TAKES_INPUT_GRAD = weakref.WeakKeyDictionary()


def _takes_input_grad(backward):
    try:
        return _TAKES_INPUT_GRAD[backward]
    except KeyError:
        takes = _TAKES_INPUT_GRAD[backward] = "input_grad" in inspect.signature(backward).parameters
        return takes
    except TypeError:  # a callable object that is not hashable or takes no weak reference: not cached
        return "input_grad" in inspect.signature(backward).parameters
