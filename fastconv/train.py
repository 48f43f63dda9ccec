"""The training loop the course teaches, and hyperparameter search.

    history = fit(model, CrossEntropyLoss(), Adam(model.parameters()), (x_tr, y_tr), (x_va, y_va),
                  epochs=20, batch_size=64, metric="accuracy", checkpoint_dir="runs/cnn", patience=5)

fit(): shuffled mini-batches (a seeded NumPy Generator), forward, loss, backward, optimizer step;
an evaluation on the validation set every epoch (or every `eval_every` steps): validation loss and
the chosen metric; the checkpoint `<checkpoint_dir>/best` rewritten whenever the metric is the best
so far, `<checkpoint_dir>/last` after every evaluation and epoch (for resume=True); early stopping
after `patience` evaluations without improvement.

Resume is exact: "last" holds the weights, the optimizer and scheduler state, Dropout generators,
the data generator's state at the start of the current epoch and the position in it, the loss sum
since the last evaluation and the history; a resumed run repeats the uninterrupted one bit for bit
on the cpu backend. One exception: a run that trained to its end between eval_every's evaluations
was evaluated at its last step; resumed for more epochs it keeps that evaluation (record, best
checkpoint, patience count), which the longer run from the start would not have made (a
RuntimeWarning says so).

Metrics: "loss" (minimized), "accuracy", "auc" (maximized), or a callable(y_true, scores) -> float
(maximized unless mode="min"). Scores are the model's outputs turned into probabilities where the
loss says how: softmax for CrossEntropyLoss, sigmoid for BCEWithLogitsLoss, raw otherwise. "auc" with
several classes is the macro average of the one-vs-rest AUCs over the classes present in the
validation labels (an absent class has no AUC); it needs at least two classes there.
An evaluation whose outputs are not all finite (a diverged model) or whose loss is NaN scores NaN
under every metric: it is recorded, never counts as an improvement, and no best is saved from it; the
first one in a fit() warns (RuntimeWarning: training diverged), since without patience the run goes on.

epoch, in History records and in the checkpoints' JSON: the 1-based epoch an evaluation or save
happened in. At the end of epoch k it is k (k epochs completed); an evaluation partway through epoch
k (eval_every) says k as well.
"""
from __future__ import annotations

import contextlib
import contextvars
import csv
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings

import numpy as np

from . import backend as _backend
from . import checkpoint as _checkpoint
from . import losses as _losses
from . import metrics as _metrics
from . import nn as _nn
from ._host import to_numpy
from .evaluate import sigmoid as _sigmoid
from .evaluate import softmax as _softmax
from .ops import _check

__all__ = ["History", "fit", "predict", "evaluate", "search", "SearchResult", "ResumeError"]


class ResumeError(ValueError):
    """fit(..., resume=True) refused: <checkpoint_dir>/last holds a run this call cannot continue (another
    metric, batch size, number of training rows, or training data). (A `last` that fit did not write is
    a checkpoint.CheckpointError.)"""


# ----------------------------------------------------------------------------------------------
# the words of the messages

# fit's and search's messages name what gets a user past them: their keywords, or, while the `fastconv`
# command runs an example, the command's flags (its user has no resume=True to pass).
_KEYWORDS = {"resume": "resume=True", "overwrite": "overwrite=True", "checkpoint_dir": "checkpoint_dir",
             "out_dir": "out_dir", "this call": "this call", "resume it": "fit(..., resume=True)",
             "train on": "to train on, load its weights (checkpoint.load_into) and fit afresh in another "
                         "checkpoint_dir"}
_FLAGS = {"resume": "--resume", "overwrite": "--overwrite", "checkpoint_dir": "--out", "out_dir": "--out",
          "this call": "this command", "resume it": "the same command with --resume",
          "train on": "--overwrite (or another --out) trains a new run instead"}
_words = contextvars.ContextVar("fastconv.train._words", default=_KEYWORDS)


def _say(key):
    """How this run's messages name `key` (one of _KEYWORDS): the keyword, or the command line's flag."""
    return _words.get()[key]


@contextlib.contextmanager
def _command_line_words():
    """Inside, fit's and search's errors, warnings and interrupt notes name the `fastconv` command's flags
    (--resume, --overwrite, --out) where they would name keywords: cli runs the examples in it."""
    token = _words.set(_FLAGS)
    try:
        yield
    finally:
        _words.reset(token)


# ----------------------------------------------------------------------------------------------
# helpers


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


def predict(model, x, batch_size=256):
    """The model's outputs for x (host NumPy array in, host NumPy array out), in eval mode, by batches.
    The model's train/eval mode is restored afterwards. x with no rows gives no rows: the model runs
    once on the empty batch, which gives the output's other dimensions and dtype. Several threads may
    predict with one model at once; not while another trains it (it is in eval mode meanwhile)."""
    batch_size = _positive_int(batch_size, "batch_size")
    x = _rows(x, "predict: x", _model_dtype(model))
    xp = _backend.current().xp
    with _in_eval_mode(model):
        if len(x) == 0:
            return _predict_empty(model, xp.asarray(x))
        outs = [to_numpy(model(xp.asarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)


# Models in _in_eval_mode now: id -> [{thread ident: times inside}, the modes to restore].
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
                    _restore_modes(entry[1])


def _restore_modes(saved):
    model, was_training, each = saved
    model.train(was_training)  # (the model's own train(), where a subclass does more there)
    for m, training in each:
        if m.training != training:
            m.training = training


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
            _restore_modes(entry[1])


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


def _probabilities(outputs, loss_fn):
    """The scores metrics see: probabilities from raw outputs where the loss says how (float64, host)."""
    if isinstance(loss_fn, _losses.CrossEntropyLoss):
        return _softmax(outputs)
    if isinstance(loss_fn, _losses.BCEWithLogitsLoss):
        return _sigmoid(outputs)
    return np.asarray(outputs, dtype=np.float64)


def _accuracy(y, scores):
    if scores.ndim == 2 and scores.shape[1] > 1:
        return _metrics.accuracy(y, scores)
    _metrics._finite(scores, "scores")  # NaN >= 0.5 is False: NaN scores would count as class 0
    return _metrics.accuracy(np.asarray(y).reshape(-1).astype(np.int64), (scores.reshape(-1) >= 0.5).astype(np.int64))


def _auc(y, scores):
    """Binary AUC; with several classes the macro one-vs-rest AUC over the classes present in y."""
    y = np.asarray(y)
    if scores.ndim == 1 or scores.shape[1] == 1:
        return _metrics.auc(y.reshape(-1).astype(np.int64), scores.reshape(-1))
    if scores.shape[1] == 2 and y.ndim == 1:
        return _metrics.auc(y.astype(np.int64), scores[:, 1])
    onehot = np.eye(scores.shape[1], dtype=bool)[y.astype(np.int64)] if y.ndim == 1 else y
    present = _two_valued_columns(onehot)  # a class absent from y (or in every row) has no AUC
    if not present.any():
        raise ValueError(f"AUC needs labels of at least two classes, got one class in all {len(y)} rows")
    return float(np.mean(_metrics.per_class_auc(onehot[:, present], scores[:, present])))


def _two_valued_columns(labels):
    """Which columns of (N, C) 0/1 labels hold both values."""
    return labels.min(axis=0) != labels.max(axis=0)


def _check_auc_labels(y):
    """metric="auc" on validation labels of one class would be undefined at every evaluation."""
    y = to_numpy(y)
    if y.ndim == 2 and y.shape[1] > 1:
        ok = bool(_two_valued_columns(y).any())
    else:
        ok = np.unique(y).size >= 2
    if not ok:
        raise ValueError(f"metric='auc' needs validation labels of at least two classes (AUC ranks positives "
                         f"against negatives), but val's {len(y)} labels hold one class only")


_METRICS = {"accuracy": _accuracy, "auc": _auc}


def _metric(metric, mode, argument="metric"):
    """(name, function or None for loss, mode); argument: the caller's name for metric, for its error."""
    if callable(metric):
        name, fn = getattr(metric, "__name__", "metric"), metric
    elif metric == "loss":
        name, fn = "loss", None
    elif metric in _METRICS:
        name, fn = metric, _METRICS[metric]
    else:
        raise ValueError(f"{argument} must be 'loss', 'accuracy', 'auc' or a callable(y_true, scores), got {metric!r}")
    if mode is None:
        mode = "min" if name == "loss" else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or None, got {mode!r}")
    return name, fn, mode


def _improved(value, best, mode):
    if value is None or not math.isfinite(value):  # NaN (a diverged model) or inf never is the best
        return False
    return best is None or (value < best if mode == "min" else value > best)


def evaluate(model, loss_fn, data, batch_size=256, metric_fn=None):
    """(mean loss, metric or None) of the model on data = (x, y), in eval mode, by batches (as predict).
    The loss is the whole set's, whatever the batch size (with class weights, their weighted mean).

    metric_fn: None (no metric), one of the names fit's metric takes ("loss": the mean loss again,
    "accuracy", "auc"), or a callable(y_true, scores) -> float. It receives y as a host NumPy array and
    the model's outputs as float64 probabilities where the loss says how (softmax for CrossEntropyLoss,
    sigmoid for BCEWithLogitsLoss), the raw outputs otherwise (e.g. MSELoss), as fit's metric does.
    The metric is NaN when the outputs are not all finite or the loss is NaN (a diverged model): no
    metric can score those."""
    data = _xy_pair(data, "data", model)
    batch_size = _positive_int(batch_size, "batch_size")
    fn = None if metric_fn is None else _metric(metric_fn, None, "metric_fn")[1]
    loss, value, finite = _evaluate(model, loss_fn, data, batch_size, fn)
    if metric_fn is not None and fn is None:  # "loss", as fit monitors it
        value = loss if finite else math.nan
    return loss, value


def _evaluate(model, loss_fn, data, batch_size, metric_fn=None):
    """evaluate()'s (loss, metric) and whether the outputs were all finite and the loss not NaN."""
    x, y = data
    xp = _backend.current().xp
    # A class-weighted mean is sum w[y_i] l_i / sum w[y_i] over the set: batch means weighted by their
    # rows would be another number, and NaN (0/0) for a batch whose labels all weigh 0. Its loss is
    # taken once, over the outputs of every batch.
    weighted = isinstance(loss_fn, _losses.CrossEntropyLoss) and loss_fn.weight is not None
    total, outs, finite = 0.0, [], True
    with _in_eval_mode(model):
        for i in range(0, len(x), batch_size):
            out = model(xp.asarray(x[i:i + batch_size]))
            if not weighted:
                total += float(loss_fn(out, y[i:i + batch_size])) * len(out)
            finite = finite and bool(xp.isfinite(out).all())
            if metric_fn is not None or weighted:
                outs.append(to_numpy(out))
    loss = float(loss_fn(xp.asarray(np.concatenate(outs)), y)) if weighted else total / len(x)
    finite = finite and not math.isnan(loss)
    value = None
    if metric_fn is not None:
        value = float(metric_fn(to_numpy(y), _probabilities(np.concatenate(outs), loss_fn))) if finite else math.nan
    return loss, value, finite


class History:
    """One record per evaluation: epoch, step, train_loss, val_loss, val_metric (the monitored
    metric; also under "val_<name>"), lr, time (seconds since fit started). best_* name the best
    evaluation; stopped_early says whether patience ran out."""

    def __init__(self, metric="loss", mode="min", records=None, best_index=None, stopped_early=False):
        self.metric, self.mode = metric, mode
        self.records = list(records or [])
        self.best_index = best_index
        self.stopped_early = stopped_early

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __iter__(self):
        return iter(self.records)

    def column(self, key):
        return [r.get(key) for r in self.records]

    @property
    def best(self):
        return None if self.best_index is None else self.records[self.best_index]

    @property
    def best_metric(self):
        return None if self.best is None else self.best["val_metric"]

    @property
    def best_epoch(self):
        return None if self.best is None else self.best["epoch"]

    @property
    def best_step(self):
        return None if self.best is None else self.best["step"]

    def to_dict(self):
        return {"metric": self.metric, "mode": self.mode, "best_index": self.best_index,
                "best_epoch": self.best_epoch, "best_metric": self.best_metric,
                "stopped_early": self.stopped_early, "records": self.records}

    @classmethod
    def from_dict(cls, d):
        return cls(d["metric"], d["mode"], d["records"], d["best_index"], d.get("stopped_early", False))

    def to_json(self, path):
        """Writes to_dict() to path, whole or not at all (a temp file, then a rename: _write_atomically).
        json.dump straight into the file wrote it as it went, so a value JSON cannot hold (or an
        interrupt) left an earlier run's history.json half overwritten."""
        directory, name = os.path.split(os.path.abspath(os.fspath(path)))
        _checkpoint._write_atomically(directory, name, json.dumps(self.to_dict(), indent=1).encode())

    def __repr__(self):
        return (f"History({len(self)} evaluations, best {self.metric}={self.best_metric} at epoch "
                f"{self.best_epoch})")


# ----------------------------------------------------------------------------------------------
# fit

def _progress_bar(total, enabled, initial):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, leave=True)


def fit(model, loss_fn, optimizer, train, val=None, *, epochs, batch_size, metric="loss", mode=None,
        eval_every=None, checkpoint_dir=None, patience=None, scheduler=None, seed=0, resume=False,
        overwrite=False, progress=True, predict_batch_size=None, restore_best=False, _train_digest=None):
    """Trains `model` and returns its History (see the module docstring).

    train, val: (x, y) NumPy arrays (moved to the device one batch at a time); without val the
    monitored value is the training loss (metric must then be "loss"). A model whose parameters are
    all frozen gets a RuntimeWarning (the optimizer skips frozen parameters: nothing would train).
    eval_every: evaluate every that many optimizer steps (default: at the end of each epoch), and at
        the end of training when the last step was not evaluated (so the final weights are too).
    scheduler: stepped at the end of every epoch.
    resume: continue from <checkpoint_dir>/last when it exists (start fresh otherwise); a run that had
        stopped early stays stopped (warned where this call's patience would have gone on). A `last`
        this call cannot continue is refused: ResumeError (CheckpointError for one fit did not write).
    overwrite: start afresh in a checkpoint_dir that holds an earlier run's best/ or last/, replacing each
        when this run first writes it. Without it (or resume) such a checkpoint_dir is refused (ValueError),
        so that a run never replaces another's saved model unasked (`fastconv train` refuses the same --out
        unless --resume or --overwrite).
    restore_best: at the end, load the best evaluation's weights back into the model.
    Before the first step, every training and validation target passes the loss's checks (labels in
    range, shapes), and the checkpoint_dir's directories are written to once. fit puts the whole model
    in training mode (model.train(): every layer, as torch's loops do) and leaves it so; evaluations
    run in eval mode and restore the layers' modes.
    (_train_digest: search's, train's _digest computed once for all its trials.)
    """
    x_train, y_train = _xy_pair(train, "train", model)
    if val is not None:
        val = _xy_pair(val, "val", model)
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    eval_every = _positive_int(eval_every, "eval_every", allow_none=True)
    patience = _positive_int(patience, "patience", allow_none=True)
    predict_batch_size = _positive_int(predict_batch_size, "predict_batch_size", allow_none=True) or max(batch_size, 256)
    name, metric_fn, mode = _metric(metric, mode)
    if val is None and name != "loss":
        raise ValueError(f"metric={name!r} needs validation data (val=(x, y)); without it only 'loss' (the "
                         "training loss) can be monitored")
    if scheduler is not None and getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("fit: the scheduler was made for another optimizer than the one fit steps: it would "
                         "set that one's lr, and this one's would never change (make it with "
                         "StepLR(optimizer, ...) / CosineAnnealingLR(optimizer, ...) of this optimizer)")
    for data, which in (((x_train, y_train), "training"), (val, "validation")):
        if data is not None:
            _check_targets(model, loss_fn, data, which)
    if metric_fn is _auc:
        _check_auc_labels(val[1])
    _warn_frozen(model)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if resume and overwrite:
        raise ValueError("resume=True continues the run in checkpoint_dir, overwrite=True replaces it: give one")
    last_dir = best_dir = None
    if checkpoint_dir is not None:  # fail now, not when the first checkpoint is written
        _check_describable(model)
        last_dir, best_dir = os.path.join(checkpoint_dir, "last"), os.path.join(checkpoint_dir, "best")
        for path in (checkpoint_dir, last_dir, best_dir):
            if os.path.exists(path) and not os.path.isdir(path):
                raise ValueError(f"{_say('checkpoint_dir')}: {os.fspath(path)!r} is a file, but fit writes the "
                                 f"checkpoint directories best/ and last/ in {_say('checkpoint_dir')}")
            if os.path.islink(path) and not os.path.exists(path):  # (os.makedirs: a bare FileExistsError)
                raise ValueError(f"{_say('checkpoint_dir')}: {os.fspath(path)!r} is a symbolic link to "
                                 f"{os.readlink(path)!r}, which does not exist: create it, or give another "
                                 f"{_say('checkpoint_dir')}")
        if not (resume or overwrite):
            _keep_earlier_run(checkpoint_dir, last_dir, best_dir)
        os.makedirs(checkpoint_dir, exist_ok=True)
        for path in (checkpoint_dir, last_dir, best_dir):
            if os.path.isdir(path):
                _check_writable(path)
    xp = _backend.current().xp

    n = len(x_train)
    batches_per_epoch = -(-n // batch_size)
    batches = {"batch_size": batch_size, "train_rows": n}  # what the saved batch position counts in
    if checkpoint_dir is not None:  # and the rows it counts (a resume checks them: _check_resumable)
        batches["train_data"] = _train_digest or _digest(x_train, y_train)
    # Loop state: everything a resumed run needs to continue exactly.
    rng = np.random.default_rng(seed)
    s = {"epoch": 0, "batch": 0, "step": 0, "epoch_rng": None, "loss_sum": 0.0, "loss_count": 0,
         "evals_since_best": 0, "best": None, "elapsed": 0.0}
    history = History(name, mode)
    on_disk = {"step": None, "best": None}  # the step last/ holds, the evaluation best/ holds (an interrupt says)
    if resume and os.path.exists(os.path.join(last_dir, _checkpoint.INDEX)):
        _check_resumable(last_dir, name, mode, batches, model)  # before load_into changes model and optimizer
        given = optimizer.hyperparameters()
        given_schedule = scheduler.hyperparameters() if scheduler is not None else None
        info = _checkpoint.load_into(last_dir, model, optimizer, scheduler)
        _warn_replaced_hyperparameters(last_dir, given, optimizer.hyperparameters(), scheduler is not None)
        if scheduler is not None:
            _warn_replaced_hyperparameters(last_dir, given_schedule, scheduler.hyperparameters(), False, "scheduler")
        saved = info["extra"]["fit"]
        s.update(saved["state"])
        rng.bit_generator.state = saved["rng"]
        history = History.from_dict(saved["history"])
        on_disk = {"step": s["step"], "best": history.best}
        _warn_final_evaluation_kept(last_dir, history, s, epochs, eval_every)
        if history.stopped_early and s["epoch"] < epochs and (patience is None or s["evals_since_best"] < patience):
            # This call's patience and epochs would have gone on; the run resumed had stopped, and stays stopped.
            warnings.warn(f"fit: the run in {last_dir} stopped early at epoch {history.records[-1]['epoch']} "
                          f"({s['evals_since_best']} evaluation(s) without improvement), so {_say('resume')} trains it "
                          f"no further, whatever patience ({patience}) {_say('this call')} gives; {_say('train on')}",
                          RuntimeWarning, stacklevel=2)
    best_state = None
    if restore_best and s["best"] is not None and os.path.exists(os.path.join(best_dir or "", _checkpoint.INDEX)):
        best_state = {k: xp.array(v, copy=True) for k, v in _checkpoint.load(best_dir)[0].state_dict().items()}

    def save(directory, metric_value):
        fit_state = {"state": dict(s), "rng": rng.bit_generator.state, "history": history.to_dict(),
                     "batches": batches}
        epoch = s["epoch"] + (1 if s["batch"] else 0)  # partway through an epoch: that epoch (docstring)
        _checkpoint.save(directory, model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                         metric=metric_value, extra={"fit": fit_state})

    started = time.perf_counter() - s["elapsed"]
    loss_sum = xp.zeros((), dtype=np.float64) + s["loss_sum"]  # summed on the device, read at evaluations

    warned_diverged = False

    def run_evaluation():
        nonlocal loss_sum, warned_diverged
        train_loss = float(loss_sum) / max(s["loss_count"], 1) if s["loss_count"] else None
        val_loss = value = None
        if val is not None:
            val_loss, value, finite = _evaluate(model, loss_fn, val, predict_batch_size, metric_fn)
            if metric_fn is None:
                value = val_loss if finite else math.nan
        else:
            value = train_loss
        record = {"epoch": s["epoch"] + 1, "step": s["step"], "train_loss": train_loss,
                  "val_loss": val_loss, "val_metric": value, "lr": optimizer.lr,
                  "time": time.perf_counter() - started}
        if name != "loss":
            record[f"val_{name}"] = value
        history.records.append(record)
        loss_sum = xp.zeros((), dtype=np.float64)
        s["loss_sum"], s["loss_count"] = 0.0, 0
        improved = _improved(value, s["best"], mode)
        if improved:
            s["best"], s["evals_since_best"] = value, 0
            history.best_index = len(history.records) - 1
        else:
            s["evals_since_best"] += 1
        if patience is not None and s["evals_since_best"] >= patience:
            history.stopped_early = True
        if value is not None and not math.isfinite(value) and not warned_diverged:
            warned_diverged = True
            _warn_diverged(record, name, history.best)
        return improved, value

    def checkpoint(improved, value):
        nonlocal best_state
        s["elapsed"] = time.perf_counter() - started
        s["loss_sum"] = float(loss_sum)
        if improved and restore_best:
            best_state = {k: xp.array(v, copy=True) for k, v in model.state_dict().items()}
        if checkpoint_dir is None:
            return
        if improved:
            save(best_dir, value)
            on_disk["best"] = history.best
        save(last_dir, value)
        on_disk["step"] = s["step"]

    total_steps = epochs * batches_per_epoch
    bar = _progress_bar(total_steps, progress, min(s["step"], total_steps))
    shown_every = max(1, batches_per_epoch // 20)
    model.train()
    try:
        # (An early stop at an evaluation on an epoch's last batch still ends that epoch: scheduler step,
        # epoch count, last/. A resume from that evaluation's checkpoint, s["batch"] at the end, does too.)
        while s["epoch"] < epochs and (not history.stopped_early or s["batch"] == batches_per_epoch):
            if s["epoch_rng"] is None:
                s["epoch_rng"] = rng.bit_generator.state
            rng.bit_generator.state = s["epoch_rng"]
            order = rng.permutation(n)  # leaves rng where the next epoch starts
            window_start, window_examples = time.perf_counter(), 0  # examples/s over this epoch so far
            while s["batch"] < batches_per_epoch and not history.stopped_early:
                rows = order[s["batch"] * batch_size:(s["batch"] + 1) * batch_size]
                xb, yb = xp.asarray(x_train[rows]), y_train[rows]
                out = model(xb)
                loss = loss_fn(out, yb)
                optimizer.zero_grad()
                _nn.backward_without_input_grad(model, loss_fn.backward())
                optimizer.step()
                loss_sum += loss.astype(np.float64) * len(rows)
                s["loss_count"] += len(rows)
                s["batch"] += 1
                s["step"] += 1
                window_examples += len(rows)
                if bar is not None:
                    bar.update(1)
                    if s["step"] % shown_every == 0:
                        now = time.perf_counter()
                        bar.set_postfix(epoch=s["epoch"] + 1, loss=f"{float(loss):.4f}",
                                        ex_per_s=f"{window_examples / max(now - window_start, 1e-9):.0f}")
                if eval_every is not None and s["step"] % eval_every == 0:
                    checkpoint(*run_evaluation())
            if history.stopped_early and s["batch"] < batches_per_epoch:
                break
            s["epoch_rng"], s["batch"] = None, 0
            # With eval_every, the steps after its last multiple are evaluated at the end of training.
            at_eval = eval_every is None or (s["epoch"] + 1 == epochs and s["step"] % eval_every != 0)
            improved_value = run_evaluation() if at_eval else None
            if scheduler is not None:
                scheduler.step()
            s["epoch"] += 1
            if improved_value is not None:
                checkpoint(*improved_value)
            elif checkpoint_dir is not None:
                checkpoint(False, None)
    except KeyboardInterrupt as exc:
        if hasattr(exc, "add_note"):  # (Python 3.11+) shown under the traceback
            exc.add_note(_interrupted(s, total_steps, checkpoint_dir, on_disk, history.metric))
        raise
    finally:
        if bar is not None:
            bar.close()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return history


def _check_describable(model):
    """A checkpoint holds the model's architecture (model.config(), JSON): a model that cannot give it
    (a custom layer without _args()) is refused before training, not at the first save, an epoch in."""
    try:
        _checkpoint._json_normal(model.config(), "model config")
    except (NotImplementedError, TypeError) as exc:
        raise type(exc)(f"fit: {_say('checkpoint_dir')} needs the model's architecture for its checkpoints "
                        f"(model.config()), which this model cannot give: {exc}") from None


def _check_rebuildable(model):
    """search keeps each setting's best model by rebuilding it (checkpoint.load: nn.from_config), which
    needs every layer type in the model's config registered (nn.register): refused before a trial
    trains, not after it."""
    unknown = _nn._unregistered_types(model.config())
    if unknown:
        raise ValueError(f"search: keeps each setting's best model by rebuilding it from its config "
                         f"(checkpoint.load), which needs every layer type registered: {', '.join(unknown)} "
                         "is not (decorate its class with fastconv.nn.register)")


def _warn_frozen(model):
    """A RuntimeWarning when every parameter of the model is frozen: the optimizer skips frozen
    parameters, so fit would run every epoch and change nothing, silently."""
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params):
        warnings.warn(f"fit: every parameter of the model ({type(model).__name__}, {len(params)} parameters) is "
                      "frozen (requires_grad=False), so training changes nothing: call model.unfreeze(), or "
                      "unfreeze() the layers to train, before fit (freeze() froze them)", RuntimeWarning, stacklevel=3)


def _warn_replaced_hyperparameters(last_dir, given, saved, scheduled, owner="optimizer"):
    """Resume takes the optimizer's (and scheduler's) hyperparameters from the checkpoint (as torch's
    load_state_dict does): a warning where this call's had others, which it would otherwise drop
    unsaid. (Not the optimizer's lr under a scheduler: the saved one is the schedule's by then.)"""
    changed = {k: (given[k], saved[k]) for k in given
               if k in saved and given[k] != saved[k] and not (k == "lr" and scheduled)}
    if changed:
        replaced = ", ".join(f"{k} {old!r} (not {new!r})" for k, (new, old) in changed.items())
        warnings.warn(f"fit: resume continues with the {owner}'s hyperparameters saved in {os.fspath(last_dir)}, "
                      f"not {_say('this call')}'s: {replaced}", RuntimeWarning, stacklevel=3)


def _warn_final_evaluation_kept(last_dir, history, s, epochs, eval_every):
    """A run that trained to its last epoch between eval_every's evaluations was evaluated at its end
    (so that its final weights were too). Resumed for more epochs, it keeps that evaluation: its
    record, a best checkpoint saved from it, its count towards patience, the training loss averaged
    up to it. A run of those epochs from the start makes no evaluation there: the histories differ
    from then on, and so may the best checkpoint and an early stop (the weights trained do not)."""
    last = history.records[-1] if history.records else None
    if (eval_every is None or last is None or s["epoch"] >= epochs or s["batch"] != 0 or last.get("step") != s["step"]
            or s["step"] % eval_every == 0):
        return
    warnings.warn(f"fit: the run in {os.fspath(last_dir)} ended at step {s['step']}, between evaluations every "
                  f"{eval_every} steps, and was evaluated there, at the end of its training; resumed for more "
                  "epochs it keeps that evaluation (its history record, a best checkpoint saved from it, its count "
                  f"towards patience), which a run of {epochs} epochs from the start would not have made",
                  RuntimeWarning, stacklevel=3)


def _warn_diverged(record, name, best):
    """Once per fit: a non-finite evaluation (training diverged) is recorded and never the best, but a
    run without patience trains on to its last epoch with it."""
    kept = "no evaluation was the best yet" if best is None else f"the best so far (epoch {best['epoch']}) is kept"
    warnings.warn(f"fit: training diverged: the evaluation at epoch {record['epoch']}, step {record['step']} has "
                  f"{name} {record['val_metric']} (outputs or loss not finite); such evaluations never count as the "
                  f"best, and {kept}. A lower learning rate may help.", RuntimeWarning, stacklevel=4)


def _search_interrupted(finished, settings, out_dir):
    """What an interrupted search says: which setting it stopped in and what out_dir keeps (finished:
    the settings whose training had returned; the last of them may have been saving)."""
    where = (f"in setting {finished + 1} of {len(settings)} ({settings[finished]})" if finished < len(settings)
             else f"after its last setting's training ({finished} of {finished})")
    kept = (f"{os.fspath(out_dir)}/search.csv and search.json rank the settings that finished" if finished
            else "no setting had finished")
    return (f"search was interrupted {where}; {kept}; the interrupted setting's run is not kept "
            f"({os.fspath(out_dir)}/trial is removed), and a search does not resume: run the settings that are "
            "left as a search of their own")


def _interrupted(s, total_steps, checkpoint_dir, on_disk, metric):
    """What an interrupted fit says: where it stopped and what its checkpoints hold."""
    note = f"fit was interrupted in epoch {s['epoch'] + 1}, at step {s['step']} of {total_steps}; "
    if checkpoint_dir is None:
        return note + "nothing was saved (no checkpoint_dir)"
    if on_disk["step"] is None:
        return note + f"nothing was saved in {checkpoint_dir} yet (the first evaluation or epoch end saves)"
    note += (f"{os.path.join(checkpoint_dir, 'last')} holds the run after step {on_disk['step']} "
             f"({_say('resume it')} continues from there)")
    best = on_disk["best"]
    if best is not None:
        note += f", {os.path.join(checkpoint_dir, 'best')} its best evaluation ({metric} {best['val_metric']:.4g}, " \
                f"epoch {best['epoch']}, step {best['step']})"
    return note


def _keep_earlier_run(checkpoint_dir, last_dir, best_dir):
    """ValueError when checkpoint_dir holds checkpoints (another run's, or this one's before a restart): a
    fresh run would replace its best at the first evaluation, and nothing a user saved may be lost unasked."""
    held = [os.path.basename(d) for d in (best_dir, last_dir) if os.path.exists(os.path.join(d, _checkpoint.INDEX))]
    if held:
        raise ValueError(f"fit: {_say('checkpoint_dir')} {os.fspath(checkpoint_dir)!r} holds an earlier run's "
                         f"checkpoints ({', '.join(held)}): {_say('resume')} continues it, {_say('overwrite')} "
                         f"replaces it, or give another {_say('checkpoint_dir')}")


_TARGET_CHUNK = 8192  # rows a call of the loss takes in _check_targets


def _check_targets(model, loss_fn, data, name):
    """The loss's own checks of every target (a label's range, a target's shape against the output's),
    before training: on zero outputs of the model's output shape (one row through the model, in eval
    mode, which draws nothing from a Dropout's generator). A bad label in the validation set failed only
    at the first evaluation, an epoch of training later, and one in the training set at its batch;
    neither said which set."""
    x, y = data
    xp = _backend.current().xp
    with _in_eval_mode(model):
        out = model(xp.asarray(x[:1]))
    for start in range(0, len(y), _TARGET_CHUNK):
        part = y[start:start + _TARGET_CHUNK]
        try:
            loss_fn(xp.zeros((len(part), *out.shape[1:]), out.dtype), part)
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):
                raise
            raise type(exc)(f"fit: the {name} targets (rows {start} to {start + len(part) - 1}): {exc}") from None


def _check_writable(directory):
    """An OSError (PermissionError for a read-only directory) now, not at the first checkpoint an epoch
    later: a file created in `directory` and removed."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-writable-", dir=directory)
    except OSError as exc:
        raise type(exc)(f"fit: cannot write in {os.fspath(directory)!r} ({exc.strerror or exc}), where fit saves its "
                        f"checkpoints: give a {_say('checkpoint_dir')} it can write") from None
    os.close(fd)
    os.unlink(probe)


def _check_resumable(last_dir, name, mode, batches, model):
    """CheckpointError for a `last` that train.fit did not write; ResumeError for another metric, or
    for another batch size or number of training rows (the saved position in the epoch's shuffled
    order would point elsewhere: rows skipped or repeated), other training data (by its digest), or
    other parameters frozen (other parameters would train)."""
    info = _checkpoint.read_info(last_dir)
    extra = info.get("extra")
    saved = extra.get("fit") if isinstance(extra, dict) else None
    if not (isinstance(saved, dict) and {"state", "rng", "history"} <= set(saved)):
        raise _checkpoint.CheckpointError(
            f"resume: {last_dir} was not written by train.fit (its JSON has no training-loop state in "
            f"extra['fit']); use another {_say('checkpoint_dir')}, or {_say('overwrite')} to replace it")
    metric, saved_mode = saved["history"].get("metric"), saved["history"].get("mode")
    if metric != name or saved_mode != mode:
        raise ResumeError(f"resume: the checkpoint in {last_dir} monitored {metric} ({saved_mode}), "
                          f"{_say('this call')} {name} ({mode})")
    saved_batches = saved.get("batches", batches)  # (checkpoints from before this check: not known)
    if any(saved_batches.get(k) != batches[k] for k in ("batch_size", "train_rows")):
        raise ResumeError(f"resume: the checkpoint in {last_dir} was trained with batch_size "
                          f"{saved_batches.get('batch_size')} on {saved_batches.get('train_rows')} training rows, "
                          f"{_say('this call')} has batch_size {batches['batch_size']} on {batches['train_rows']}; "
                          f"resume with the same ones (or start afresh with {_say('overwrite')})")
    if saved_batches.get("train_data", batches["train_data"]) != batches["train_data"]:  # (older: not recorded)
        raise ResumeError(f"resume: the checkpoint in {last_dir} was trained on other training data (as many rows, "
                          "other values or order: another split or seed?); resume with the same (x, y), or start "
                          f"afresh with {_say('overwrite')}")
    frozen = _checkpoint.frozen_names(model)
    if "frozen" in info and info["frozen"] != frozen:  # (checkpoints from before it was saved: not known)
        raise ResumeError(f"resume: the run in {last_dir} trained with {info['frozen'] or 'no'} parameters frozen, "
                          f"{_say('this call')}'s model has {frozen or 'none'} frozen: freeze() the same layers "
                          f"to continue it (or start afresh with {_say('overwrite')})")


def _digest(x, y) -> str:
    """A fingerprint of the training data (shapes, dtypes, values, order): 128-bit BLAKE2b, ~1 GB/s."""
    h = hashlib.blake2b(digest_size=16)
    for a in (to_numpy(x), to_numpy(y)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# search

class SearchResult:
    """table: one row per trial, best first (settings, best_metric, best_epoch, epochs_run, time_s);
    best: the best row; best_checkpoint: the directory of its saved model."""

    def __init__(self, table, metric, mode, best_checkpoint):
        self.table, self.metric, self.mode, self.best_checkpoint = table, metric, mode, best_checkpoint

    @property
    def best(self):
        return self.table[0] if self.table else None

    @property
    def best_settings(self):
        return None if self.best is None else self.best["settings"]

    def __repr__(self):
        return f"SearchResult({len(self.table)} trials, best {self.metric}={self.best and self.best['best_metric']})"


def _settings(space, method, n_trials, seed):
    if not isinstance(space, dict) or not space:
        raise ValueError("space must be a non-empty dict: setting name -> list of values (or, for random "
                         "search, a callable(rng) -> value)")
    keys = list(space)
    space = {k: _values(v) for k, v in space.items()}
    if method == "grid":
        for k in keys:
            if callable(space[k]) or not isinstance(space[k], (list, tuple)) or not space[k]:
                raise ValueError(f"grid search: space[{k!r}] must be a non-empty list of values (or tuple, or 1-D "
                                 f"NumPy array), got {_described(space[k])}")
        grid = [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
        return [_plain(one) for one in (grid if n_trials is None else grid[:n_trials])]
    if method == "random":
        if n_trials is None:
            raise ValueError("random search needs n_trials")
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n_trials):
            one = {}
            for k in keys:
                choice = space[k]
                if callable(choice):
                    one[k] = choice(rng)
                else:
                    if not isinstance(choice, (list, tuple)) or not choice:
                        raise ValueError(f"random search: space[{k!r}] must be a non-empty list (or tuple, or 1-D "
                                         f"NumPy array) or a callable(rng), got {_described(choice)}")
                    one[k] = choice[int(rng.integers(len(choice)))]
            out.append(_plain(one))
        return out
    raise ValueError(f"method must be 'grid' or 'random', got {method!r}")


def _values(choices):
    """A 1-D NumPy array of choices (np.logspace(-4, -1, 4), say) as a list; anything else as it is."""
    return list(choices) if isinstance(choices, np.ndarray) and choices.ndim == 1 and choices.size else choices


def _described(choices):
    if isinstance(choices, np.ndarray):
        return f"a {choices.ndim}-D array of shape {choices.shape}"
    if isinstance(choices, (list, tuple)) and not choices:
        return f"an empty {type(choices).__name__}"
    return f"{type(choices).__name__} {choices!r}"[:120]


def _plain(setting):
    """NumPy scalars (from np.arange, say) as Python numbers, and a clear error for values that cannot
    be saved: settings go into search.json and the best checkpoint's JSON."""
    setting = {k: v.item() if isinstance(v, np.generic) else v for k, v in setting.items()}
    for k, v in setting.items():
        try:
            json.dumps(v, allow_nan=True)
        except (TypeError, ValueError):
            raise ValueError(f"search: setting {k!r} = {v!r} ({type(v).__name__}) is not a JSON value (number, "
                             "string, bool, None or a list/dict of them); settings are saved as JSON") from None
    return setting


def _ranked(rows, mode):
    """The rows best first, each given its rank; a trial that never improved (best_metric None) ranks
    last; ties keep the trial order."""
    worst = math.inf if mode == "min" else -math.inf
    sign = 1 if mode == "min" else -1
    ranked = sorted(rows, key=lambda r: sign * (worst if r["best_metric"] is None or math.isnan(r["best_metric"])
                                                else r["best_metric"]))
    for rank, r in enumerate(ranked, 1):
        r["rank"] = rank
    return ranked


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C (SIGINT) inside the block is raised when the block is done, on the main thread (where
    Python handles signals; elsewhere nothing changes). For a search's bookkeeping after a trial: an
    interrupt between copying the trial's model to best/ and rewriting the table left best/ holding
    a trial the table did not list."""
    previous = signal.getsignal(signal.SIGINT)  # (None: a handler not set from Python, which cannot be restored)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, received[0])
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def _write_table(out_dir, rows, keys):
    """search.json and search.csv, each through a temp file and a rename: an interrupt leaves the
    previous table whole."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["rank", "trial", *keys, "best_metric", "best_epoch", "epochs_run", "time_s"])
    for r in rows:
        writer.writerow([r["rank"], r["trial"], *(r["settings"][k] for k in keys), r["best_metric"],
                         r["best_epoch"], r["epochs_run"], round(r["time_s"], 3)])
    _checkpoint._write_atomically(out_dir, "search.json", json.dumps(rows, indent=1).encode())
    _checkpoint._write_atomically(out_dir, "search.csv", text.getvalue().encode())


# What search writes in out_dir: the best model, the table, and trial/, where each setting trains (deleted
# as search goes).
_SEARCH_FILES = ("best", "search.csv", "search.json", "trial")


def _keep_earlier_search(out_dir):
    """ValueError when out_dir holds any of _SEARCH_FILES (an earlier search's, or the user's): search would
    replace them, and delete a trial/ it did not create, and nothing a user saved may be lost unasked."""
    held = [name for name in _SEARCH_FILES if os.path.exists(os.path.join(out_dir, name))]
    if held:
        raise ValueError(f"search: {_say('out_dir')} {os.fspath(out_dir)!r} holds an earlier search "
                         f"({', '.join(held)}; search writes best/, search.csv and search.json there and trains each "
                         f"setting in trial/, which it deletes): {_say('overwrite')} replaces it, or give another "
                         f"{_say('out_dir')}")


def _remove(path):
    """Deletes the file or directory tree at path, if any."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def search(build, space, train, val, *, method="grid", n_trials=None, seed=0, out_dir, metric="loss", mode=None,
           overwrite=False, progress=False, verbose=True, **fit_kwargs):
    """Hyperparameter search: runs fit() once per setting and ranks the settings on the best validation
    metric each reached.

    build(settings) -> (model, loss_fn, optimizer) or (model, loss_fn, optimizer, fit_overrides):
        makes a fresh model and optimizer for one setting (a dict: name -> value).
    space: name -> list of values (a tuple or 1-D NumPy array too: np.logspace(-4, -1, 4)); for
        method="random" a value may also be a callable(rng) -> value
        (e.g. lambda rng: 10 ** rng.uniform(-4, -1)). Grid search tries every combination (the first
        n_trials of them when given); random search draws n_trials settings with `seed`.
    Settings named "epochs" or "batch_size" are passed to fit(); so are fit_kwargs (epochs,
    batch_size, patience, ...) and the overrides build returns.

    Writes out_dir/search.csv and out_dir/search.json (best first; rewritten after every trial, so an
    interrupted search leaves the trials it finished) and out_dir/best, the checkpoint of the best model
    (each trial's best evaluation). Each trial trains in out_dir/trial, removed on the way out (an
    interrupt included). Returns a SearchResult.
    overwrite: an out_dir that holds any of best, search.csv, search.json or trial (an earlier search) is
        refused (ValueError) unless overwrite=True: then trial is deleted before the first trial, and the
        others are replaced when this search first writes them (as fit's overwrite; `fastconv search`
        refuses the same --out unless --overwrite); an earlier best goes with the first table written
        while no setting has reached a best of its own.
    Each setting's best model is kept by rebuilding it from its config (checkpoint.load), so a model
    with a custom layer needs that layer registered (nn.register): refused before its trial trains.
    """
    name, _, mode = _metric(metric, mode)
    n_trials = _positive_int(n_trials, "n_trials", allow_none=True)
    for own in ("checkpoint_dir", "resume"):  # (search's own: a TypeError from fit's call would not say why)
        if own in fit_kwargs:
            raise ValueError(f"search: {own} is not an option here: each trial trains in out_dir/trial, afresh, "
                             "and the best model is kept in out_dir/best")
    settings = _settings(space, method, n_trials, seed)
    train = _xy_pair(train, "train")
    work = os.path.join(out_dir, "trial")
    best_dir = os.path.join(out_dir, "best")
    if not overwrite:
        _keep_earlier_search(out_dir)
    if os.path.exists(best_dir) and not os.path.isdir(best_dir):  # fail now, not after the first trial
        raise ValueError(f"search: {os.fspath(best_dir)!r} is a file, but search saves the best model there "
                         "as a checkpoint directory")
    _remove(work)  # (overwrite=True: from here on, trial/ is this call's own)
    digest = _digest(*train)  # what each trial's fit would hash again, with its checkpoint_dir
    os.makedirs(out_dir, exist_ok=True)
    rows, best_value = [], None
    try:  # out_dir/trial goes on the way out, an interrupt (Ctrl-C) included; best/ and the table stay
        for trial, setting in enumerate(settings):
            built = build(dict(setting))
            if not isinstance(built, tuple) or len(built) not in (3, 4):
                raise TypeError("build(settings) must return (model, loss_fn, optimizer) or "
                                "(model, loss_fn, optimizer, fit_overrides)")
            model, loss_fn, optimizer = built[:3]
            _check_rebuildable(model)
            kwargs = {"seed": seed, "progress": progress, **fit_kwargs,
                      **{k: setting[k] for k in ("epochs", "batch_size") if k in setting},
                      **(built[3] if len(built) == 4 else {})}
            shutil.rmtree(work, ignore_errors=True)  # the previous trial's
            t0 = time.perf_counter()
            history = fit(model, loss_fn, optimizer, train, val, metric=metric, mode=mode, checkpoint_dir=work,
                          _train_digest=digest, **kwargs)
            row = {"trial": trial, "settings": setting, "best_metric": history.best_metric,
                   "best_epoch": history.best_epoch,
                   "epochs_run": history.records[-1]["epoch"] if history.records else 0,
                   "time_s": time.perf_counter() - t0}
            with _interrupts_deferred():  # best/ and the table agree on which trials finished
                rows.append(row)
                if _improved(history.best_metric, best_value, mode):
                    best_value = history.best_metric
                    # Copy the trial's best checkpoint (atomically, through save) to out_dir/best.
                    trial_model, info = _checkpoint.load(os.path.join(work, "best"))
                    _checkpoint.save(best_dir, trial_model, epoch=info["epoch"], metric=info["metric"],
                                     extra={"settings": setting, "trial": trial})
                if best_value is None:  # (overwrite=True: an earlier search's best/ does not go with this table)
                    _remove(best_dir)
                _write_table(out_dir, _ranked(rows, mode), list(space))  # after every trial: an interrupt keeps them
            if verbose:
                print(f"trial {trial + 1}/{len(settings)} {setting}: best {name} {history.best_metric} "
                      f"at epoch {history.best_epoch} ({row['time_s']:.1f} s)")
            del model, optimizer, built
            _backend.empty_cache()  # the next setting's shapes differ: the buffers kept for these would idle
    except KeyboardInterrupt as exc:
        if hasattr(exc, "add_note"):  # fit's note would point at trial/'s checkpoints, which go below
            exc.__notes__ = [_search_interrupted(len(rows), settings, out_dir)]
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = _ranked(rows, mode)
    return SearchResult(rows, name, mode, best_dir if best_value is not None else None)
