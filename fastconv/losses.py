"""Loss functions, averaged over the batch (PyTorch's reduction="mean"), on fastconv.ops.

    loss_fn = CrossEntropyLoss()
    loss = loss_fn(logits, labels)     # 0-d array on the device; float(loss) works
    dlogits = loss_fn.backward()       # gradient of the loss for the output of that call

Targets may be NumPy arrays on any backend (they are moved to the device); outputs must already
be on the backend's device. Targets that do not fit the loss are a clear error.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import backend as _backend
from . import ops
from ._host import to_numpy
from .ops import _check

__all__ = ["Loss", "CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss"]


def _shape(a):
    return tuple(int(s) for s in a.shape)


def _output(name, output, ndim=None):
    shape = getattr(output, "shape", None)
    if shape is None:
        raise TypeError(f"{name}: the output must be an array on the backend's device, got {type(output).__name__}")
    try:  # (before the dtype: a torch tensor's is torch.float32, which has no .kind)
        output = _check.on_backend(output, "the output", _backend.current())
    except TypeError as exc:  # another device's array, a tensor that requires grad: the ops' reason
        raise TypeError(f"{name}: {exc}") from None
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{name}: expected the output to be {ndim}-D, got shape {tuple(shape)}")
    if output.dtype.kind != "f":
        raise TypeError(f"{name}: the output must be float32 or float64, got {output.dtype}")
    return output


def _unmasked(name, what, value):
    """value, unless a numpy.ma.MaskedArray (TypeError, as in the ops): asarray would drop its mask."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name}: {what} is a numpy.ma.MaskedArray; fastconv does not apply masks: pass "
                        f"{what}.filled(value) or {what}.compressed(), or np.asarray({what}) to use every value")
    return value


def _float_target(name, target, output, what="target"):
    xp = _backend.current().xp
    target = xp.asarray(_unmasked(name, what, target))
    if target.dtype.kind not in "fiub":
        raise TypeError(f"{name}: {what} must be numeric, got dtype {target.dtype}")
    if _shape(target) != _shape(output):
        hint = ""
        if target.size == output.size:  # (-1 first: the same call fits a whole dataset's targets, not only a batch's)
            shape = ", ".join(["-1", *map(str, _shape(output)[1:])]) if output.ndim else "()"
            hint = f"; reshape it (e.g. target.reshape({shape}))"
        raise ValueError(f"{name}: {what} has shape {_shape(target)} but the output has shape {_shape(output)}; "
                         f"they must be equal{hint}")
    target = xp.asarray(target, dtype=output.dtype)
    # (not ascontiguousarray, which makes a 0-d target 1-D)
    return target if target.flags.c_contiguous else xp.ascontiguousarray(target)


def _read_only_copy(host):
    """A copy of checked weights the caller cannot change behind the check: a view of a read-only base
    (the view cannot be made writeable again; a read-only array that owns its data can)."""
    base = np.array(host)
    base.flags.writeable = False
    return base[...]


class Loss:
    """Base: __call__(output, target) -> loss and stores what backward() needs."""

    def __call__(self, output, target):
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError

    # What a pickle or deep copy leaves out: the last call's arrays (and a subclass's device caches).
    _TRANSIENT = ("_ctx",)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._ctx = None

    def _saved(self):
        saved = getattr(self, "_ctx", None)
        if saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before computing the loss")
        return saved

    def config(self) -> dict:
        return {"type": type(self).__name__}

    def __repr__(self):
        return f"{type(self).__name__}()"


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy of logits (N, C) against integer class labels (N,) in [0, C).

    weight: per-class weights (C,) (the mean is then weighted, as in PyTorch);
    label_smoothing: in [0, 1], mixes the one-hot target with the uniform distribution.
    A batch whose labels all have class weight 0 divides by 0: a NaN loss and gradient, as in
    PyTorch; with label smoothing the loss is +inf and the gradient +-inf (PyTorch: NaN).
    No reduction or ignore_index: the mean over the batch, every label a class in [0, C).
    """

    def __init__(self, weight=None, label_smoothing=0.0):
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
                or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.weight = weight

    @property
    def weight(self):
        """The class weights (a read-only host copy), or None."""
        return self._weight

    @weight.setter
    def weight(self, weight):
        # Checked here, once: each call then passes check_weight=False (no device-to-host read).
        if weight is not None:
            host = to_numpy(weight)
            if host.ndim != 1 or host.dtype.kind not in "fiu":
                raise ValueError(f"CrossEntropyLoss: weight must be a 1-D array of class weights, got shape "
                                 f"{host.shape} dtype {host.dtype}")
            if not (host >= 0).all():
                raise ValueError("CrossEntropyLoss: class weights must be >= 0 (and not NaN)")
            weight = _read_only_copy(host)
        self._weight = weight
        self._weight_on_device = {}  # (array library, device, dtype) -> the weights there, copied once

    _TRANSIENT = ("_ctx", "_handed_out", "_weight_on_device")

    def __setstate__(self, state):
        state = dict(state)
        weight = state.pop("weight", state.get("_weight"))  # ("weight": a pickle of before 01c9c87)
        super().__setstate__(state)
        self._handed_out = False
        self.weight = weight  # checked again, read-only again; the device copies made again

    def __call__(self, logits, labels):
        name = "CrossEntropyLoss"
        logits = _output(name, logits, ndim=2)
        n, c = _shape(logits)
        xp = _backend.current().xp
        labels = xp.asarray(_unmasked(name, "labels", labels))
        if labels.dtype.kind not in "iu":
            hint = ""
            if labels.dtype.kind == "f":
                hint = (" (class indices held as floats: pass labels.astype(np.int64)" if labels.ndim == 1 else
                        " (one-hot targets: pass labels.argmax(axis=1); probability (soft) targets are not supported")
                hint += "; binary targets with one output: use BCEWithLogitsLoss)"
            raise TypeError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}{hint}")
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"{name}: labels must have shape ({n},) for logits of shape {(n, c)}, "
                             f"got {_shape(labels)}")
        weight = None
        if self.weight is not None:
            if self.weight.shape[0] != c:
                raise ValueError(f"{name}: weight has {self.weight.shape[0]} entries but the logits have {c} classes")
            key = (xp.__name__, str(getattr(logits, "device", "")), logits.dtype.str)
            weight = self._weight_on_device.get(key)
            if weight is None:
                weight = self._weight_on_device[key] = xp.asarray(self.weight, dtype=logits.dtype)
        # The fused op: the gradient comes out of the same pass over the logits (a training step
        # always asks for it; computing it costs no more memory traffic than storing the probs).
        # It checks the labels (uint64 past int64 too) and their range (one device-to-host read:
        # the step's one sync on a GPU), and makes them contiguous int64. The weights were checked
        # at construction: check_weight=False spares a second read.
        loss, dlogits = ops.softmax_cross_entropy_with_grad(logits, labels, weight, self.label_smoothing,
                                                            check_weight=False)
        self._ctx = (dlogits, logits, labels, weight)
        self._handed_out = False
        return loss

    def backward(self):
        dlogits, logits, labels, weight = self._saved()
        if self._handed_out:  # the caller may have changed the first one in place: computed again
            return ops.softmax_cross_entropy_with_grad(logits, labels, weight, self.label_smoothing,
                                                       check_weight=False)[1]
        self._handed_out = True  # the first call gets the fused op's array itself (no copy in a training step)
        return dlogits

    def config(self):
        return {"type": "CrossEntropyLoss", "label_smoothing": self.label_smoothing,
                "weight": None if self.weight is None else self.weight.tolist()}


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy of sigmoid(logits) against targets in [0, 1] of the output's shape.

    pos_weight: weight of the positive term, a scalar or one value per output column. A keyword
    only: torch's first positional argument is `weight` (each element's loss scaled), which this
    loss does not have, nor `reduction` (the mean over every element).
    """

    def __init__(self, *, pos_weight=None):
        self.pos_weight = pos_weight

    @property
    def pos_weight(self):
        """The positive term's weights (a read-only 1-D host copy), or None."""
        return self._pos_weight

    @pos_weight.setter
    def pos_weight(self, pos_weight):
        # Checked when set, as CrossEntropyLoss's weight (a plain attribute took -3.0, and a loss below 0)
        if pos_weight is not None:
            host = np.atleast_1d(to_numpy(pos_weight))
            # not (>= 0): NaN is refused too (a NaN weight makes every loss NaN), as CrossEntropyLoss's weights
            if host.ndim != 1 or host.dtype.kind not in "fiu" or not (host >= 0).all():
                raise ValueError(f"BCEWithLogitsLoss: pos_weight must be a non-negative scalar or 1-D array (not NaN), "
                                 f"got {pos_weight!r}")
            pos_weight = _read_only_copy(host)
        self._pos_weight = pos_weight

    def __setstate__(self, state):
        state = dict(state)
        pos_weight = state.pop("pos_weight", state.get("_pos_weight"))  # ("pos_weight": a pickle of before f417898)
        super().__setstate__(state)
        self.pos_weight = pos_weight  # checked again, read-only again

    def __call__(self, logits, targets):
        name = "BCEWithLogitsLoss"
        logits = _output(name, logits)
        targets = _float_target(name, targets, logits, "targets")
        if targets.size and (float(targets.min()) < 0.0 or float(targets.max()) > 1.0):
            raise ValueError(f"{name}: targets must be probabilities in [0, 1], got values in "
                             f"[{float(targets.min())}, {float(targets.max())}] (class indices? use CrossEntropyLoss)")
        pos_weight = None
        if self.pos_weight is not None:
            cols = logits.shape[-1] if logits.ndim else 1
            pw = self.pos_weight
            if pw.shape[0] not in (1, cols):
                raise ValueError(f"{name}: pos_weight has {pw.shape[0]} entries but the output has {cols} columns")
            pw = np.broadcast_to(pw, (cols,))
            pos_weight = _backend.current().xp.asarray(np.ascontiguousarray(pw), dtype=logits.dtype)
        loss = ops.bce_with_logits_forward(logits, targets, pos_weight)
        self._ctx = (logits, targets, pos_weight)
        return loss

    def backward(self):
        logits, targets, pos_weight = self._saved()
        return ops.bce_with_logits_backward(logits, targets, pos_weight)

    def config(self):
        return {"type": "BCEWithLogitsLoss", "pos_weight": None if self.pos_weight is None else self.pos_weight.tolist()}


class MSELoss(Loss):
    """Mean of (pred - target)^2 over all elements; target of the prediction's shape."""

    def __call__(self, pred, target):
        name = "MSELoss"
        pred = _output(name, pred)
        target = _float_target(name, target, pred)
        loss = ops.mse_forward(pred, target)
        self._ctx = (pred, target)
        return loss

    def backward(self):
        pred, target = self._saved()
        return ops.mse_backward(pred, target)
