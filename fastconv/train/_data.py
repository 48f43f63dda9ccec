"""The (x, y) data fit, evaluate, predict and search take: checked, as arrays of rows; its digest."""
import hashlib

import numpy as np

from .._host import to_numpy
from ..ops import _check


def _xy_pair(data, name, model=None):
    """(x, y) as arrays of rows. x given as a list (no dtype of its own) takes the model's parameters'
    dtype (np.asarray's float64 would be refused by a float32 model), y NumPy's."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{name} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = _rows(data[0], f"{name}: x", _model_dtype(model)), _rows(data[1], f"{name}: y")
    if len(x) != len(y):
        raise ValueError(f"{name}: x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    return x, y


def _check_model(model, who):
    """TypeError unless model can be called and has parameters(), train() and eval(), as a fastconv.nn.Module
    (or a wrapper of one) has: fit, evaluate and predict use them, and anything else failed inside them
    with an AttributeError."""
    if isinstance(model, type):  # (its methods are callable too, and then failed for want of self)
        raise TypeError(f"{who}: model must be a model, got the class {model.__name__}: pass an instance, "
                        f"{model.__name__}(...)")
    lacks = [name for name in ("parameters", "train", "eval") if not callable(getattr(model, name, None))]
    if not callable(model) or lacks:
        raise TypeError(f"{who}: model must be a fastconv.nn.Module (or a model with parameters(), train() and "
                        f"eval()), got {type(model).__name__}" + (f" (it has no {', '.join(lacks)})" if lacks else ""))


def _check_loss(loss_fn, who, backward=True):
    """TypeError unless loss_fn is a loss object: called as loss_fn(output, target), and with backward()
    where it trains (a class given for its object said "MSELoss() takes no arguments")."""
    if isinstance(loss_fn, type):
        raise TypeError(f"{who}: loss_fn must be a loss object, got the class {loss_fn.__name__}: pass "
                        f"{loss_fn.__name__}()")
    if not callable(loss_fn) or (backward and not callable(getattr(loss_fn, "backward", None))):
        raise TypeError(f"{who}: loss_fn must be a loss object (fastconv.losses: loss_fn(output, target)"
                        + (", loss_fn.backward()" if backward else "") + f"), got {type(loss_fn).__name__}")


def _rows(a, name, dtype=None):
    """a as an array of rows: itself when it has a shape, else np.asarray of it (in dtype, if given)."""
    if hasattr(a, "shape") and len(a.shape):
        return a
    if a is None or isinstance(a, (dict, str, bytes)) or not hasattr(a, "__len__"):
        raise TypeError(f"{name} must be an array (or a list) with a row per example, got {type(a).__name__}")
    try:
        array = np.asarray(a, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array (or a list) with a row per example: {exc}") from None
    if array.ndim == 0:
        raise TypeError(f"{name} must be an array (or a list) with a row per example, got {type(a).__name__}")
    return array


def _model_dtype(model):
    """The dtype of the model's parameters (None for a model without any)."""
    params = model.parameters() if model is not None else []
    return params[0].dtype if params else None


def _positive_int(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    return _check.integer(value, name, low=1)


def _digest(x, y) -> str:
    """A fingerprint of (x, y), the training or the validation data (shapes, dtypes, values, order):
    128-bit BLAKE2b, ~1 GB/s."""
    h = hashlib.blake2b(digest_size=16)
    for a in (to_numpy(x), to_numpy(y)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()
