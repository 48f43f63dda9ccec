"""predict: a model's outputs by batches, in eval mode (shared by threads predicting with one model)."""
import contextlib
import os
import threading

import numpy as np

from .. import backend as _backend
from .. import nn as _nn
from .._host import to_numpy
from ._data import _check_model, _model_dtype, _positive_int, _rows


def predict(model, x, batch_size=256):
    """The model's outputs for x (host NumPy array in, host NumPy array out), in eval mode, by batches.
    The model's train/eval mode is restored afterwards. x with no rows gives no rows: the model runs
    once on the empty batch, which gives the output's other dimensions and dtype. Several threads may
    predict with one model at once; not while another trains it (it is in eval mode meanwhile).
    The outputs are the model's own (logits, for a model trained with CrossEntropyLoss or
    BCEWithLogitsLoss); probabilities: fastconv.evaluate.softmax(out) or fastconv.evaluate.sigmoid(out)
    (float64, stable for any logit)."""
    _check_model(model, "predict")
    batch_size = _positive_int(batch_size, "batch_size")
    x = _rows(x, "predict: x", _model_dtype(model))
    xp = _backend.current().xp
    with _in_eval_mode(model):
        if len(x) == 0:
            return _predict_empty(model, xp.asarray(x))
        outs = [to_numpy(model(xp.asarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)


# Models in _in_eval_mode now: id -> [{thread ident: times inside}, the modes to restore (nn._set_modes' arguments)].
_evaluating: dict = {}
_evaluating_lock = threading.RLock()  # (re-entrant: a model whose eval() or train() predicts does not deadlock)


@contextlib.contextmanager
def _in_eval_mode(model):
    """The model in eval mode inside, each submodule's own mode back afterwards (a model in training
    with one layer set to eval, or the reverse, keeps that layer's). Threads predicting with one model
    at once share the switch: the first in saves the modes, the last out restores them. (Each on its
    own, a thread that left first set a model in training back to training under the others' forwards,
    which then applied Dropout; the last one out, having saved eval, left the model in eval mode.)"""
    me = threading.get_ident()
    with _evaluating_lock:
        entry = _evaluating.get(id(model))
        if entry is None:
            modules = list(model.modules()) if callable(getattr(model, "modules", None)) else [model]
            saved = (model, model.training, [(m, m.training) for m in modules])
            model.eval()
            entry = _evaluating[id(model)] = [{}, saved]
        entry[0][me] = entry[0].get(me, 0) + 1
    try:
        yield
    finally:
        with _evaluating_lock:
            entry[0][me] -= 1
            if entry[0][me] == 0:
                del entry[0][me]
                if not entry[0]:
                    del _evaluating[id(model)]
                    _nn._set_modes(*entry[1])


def _before_fork():
    # A fork waits for a switch in progress (under the lock), so that a child never gets a model half
    # switched to eval mode with no entry to switch it back.
    _evaluating_lock.acquire()


def _after_fork_in_parent():
    _evaluating_lock.release()


def _after_fork_in_child():
    # Only the forking thread exists in the child: the others that were predicting will never leave,
    # so their models go back to their modes now (else they stay in eval mode), and the lock, held by
    # the fork itself, is a new one.
    global _evaluating_lock
    _evaluating_lock = threading.RLock()
    me = threading.get_ident()
    for key, entry in list(_evaluating.items()):
        entry[0] = {t: k for t, k in entry[0].items() if t == me}
        if not entry[0]:
            del _evaluating[key]
            _nn._set_modes(*entry[1])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def _predict_empty(model, x):
    """The model's output for a batch of zero rows; ValueError when the model cannot run on one (the
    built-in layers can), since then the shape of its output is unknown."""
    try:
        return to_numpy(model(x))
    except Exception as exc:
        raise ValueError(f"predict: x has no rows (shape {tuple(x.shape)}) and the model did not run on it, so the "
                         f"shape of its output is unknown: {type(exc).__name__}: {exc}") from exc
