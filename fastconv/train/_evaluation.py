"""evaluate: a model's loss and metric on a data set; the metrics fit monitors."""
import math

import numpy as np

from .. import backend as _backend
from .. import losses as _losses
from .. import metrics as _metrics
from .._host import to_numpy
from ..evaluate import sigmoid as _sigmoid
from ..evaluate import softmax as _softmax
from ._data import _check_loss, _check_model, _positive_int, _xy_pair
from ._predict import _in_eval_mode


def _probabilities(outputs, loss_fn):
    """The scores metrics see: probabilities from raw outputs where the loss says how (float64, host)."""
    if isinstance(loss_fn, _losses.CrossEntropyLoss):
        return _softmax(outputs)
    if isinstance(loss_fn, _losses.BCEWithLogitsLoss):
        return _sigmoid(outputs)
    return np.asarray(outputs, dtype=np.float64)


def _zero_one(y, metric):
    """y as int64 labels of 0 and 1, for the binary (and multi-label) accuracy and AUC; a ValueError for
    other values. Soft targets (0.9, say: BCEWithLogitsLoss takes probabilities) had been cut to 0 by
    astype: an AUC of 0.5 where the model ranked well, and the best checkpoint chosen on it."""
    y = np.asarray(y)
    values = np.unique(y)
    other = values[~np.isin(values, (0, 1))]
    if other.size:
        raise ValueError(f"metric={metric!r} counts or ranks labels of 0 and 1, but the labels hold "
                         f"{', '.join(f'{v:g}' for v in other[:3])}{', ...' if other.size > 3 else ''}: soft targets "
                         "have no class; monitor 'loss', or give a metric callable(y_true, scores) that says what "
                         "they mean")
    return y.astype(np.int64)


def _accuracy(y, scores):
    if scores.ndim == 2 and scores.shape[1] > 1:
        return _metrics.accuracy(y, scores)
    _metrics._finite(scores, "scores")  # NaN >= 0.5 is False: NaN scores would count as class 0
    return _metrics.accuracy(_zero_one(y, "accuracy").reshape(-1), (scores.reshape(-1) >= 0.5).astype(np.int64))


def _auc(y, scores):
    """Binary AUC; with several classes the macro one-vs-rest AUC over the classes present in y."""
    y = np.asarray(y)
    if scores.ndim == 1 or scores.shape[1] == 1:
        return _metrics.auc(_zero_one(y, "auc").reshape(-1), scores.reshape(-1))
    if scores.shape[1] == 2 and y.ndim == 1:
        return _metrics.auc(_zero_one(y, "auc"), scores[:, 1])
    onehot = _one_hot(y, scores.shape[1]) if y.ndim == 1 else _zero_one(y, "auc")
    present = _two_valued_columns(onehot)  # a class absent from y (or in every row) has no AUC
    if not present.any():
        raise ValueError(f"AUC needs labels of at least two classes, got one class in all {len(y)} rows")
    return float(np.mean(_metrics.per_class_auc(onehot[:, present], scores[:, present])))


def _one_hot(y, n_classes):
    """(N, C) bool of class labels 0 .. C-1; astype alone had made 1.5 class 1 and -1 the last class."""
    y = _metrics._class_labels(y, "y")
    if y.size and y.max() >= n_classes:
        raise ValueError(f"AUC: the labels go up to class {int(y.max())}, but the scores have {n_classes} columns "
                         f"(classes 0 to {n_classes - 1})")
    return np.eye(n_classes, dtype=bool)[y]


def _two_valued_columns(labels):
    """Which columns of (N, C) 0/1 labels hold both values."""
    return labels.min(axis=0) != labels.max(axis=0)


def _check_metric_labels(name, loss_fn, y):
    """The validation labels fit's metric will score, checked before training (else an error after the
    first epoch): several outputs' labels for the accuracy, soft targets for the binary accuracy or AUC
    (_zero_one), labels of one class for the AUC (undefined at every evaluation)."""
    labels = to_numpy(y)
    if name == "accuracy" and labels.ndim == 2 and labels.shape[1] > 1:
        raise ValueError(f"metric='accuracy' scores one label per row (a class index, or 0/1 for one output), but "
                         f"the validation labels have shape {labels.shape} (several binary outputs): monitor 'auc' "
                         "(their mean AUC), 'loss', or give a metric callable(y_true, scores)")
    if name in ("accuracy", "auc") and not isinstance(loss_fn, _losses.CrossEntropyLoss):  # (CE's: class indices)
        _zero_one(labels, name)
    if name == "auc":
        _check_auc_labels(y)


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


def _metric(metric, mode, argument="metric", monitored=True):
    """(name, function or None for loss, mode); argument: the caller's name for metric, for its error;
    monitored: fit's and search's, which record and rank it by its name."""
    if callable(metric):
        name, fn = getattr(metric, "__name__", "metric"), metric
        if name == "loss" and monitored:  # (history's val_loss, the mode "min", no validation needed: the loss's)
            raise ValueError(f"{argument}: a callable named 'loss' would be taken for the loss, which is monitored by "
                             "that name (minimized; the history's val_loss): give the function another name")
    elif metric == "loss":
        name, fn = "loss", None
    elif metric in _METRICS:
        name, fn = metric, _METRICS[metric]
    else:
        raise ValueError(f"{argument} must be 'loss', 'accuracy', 'auc' or a callable(y_true, scores), got {metric!r}")
    if mode is None:
        mode = "min" if fn is None else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or None, got {mode!r}")
    return name, fn, mode


def _improved(value, best, mode):
    if value is None or not math.isfinite(value):  # NaN (a diverged model) or inf never is the best
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _number(value, metric_fn):
    """A metric's value as a float; a TypeError naming the metric for a value that is not one number (a
    string, None, an array of several) where float() said only "could not convert"."""
    try:
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        name = getattr(metric_fn, "__name__", repr(metric_fn))
        shape = getattr(value, "shape", None)
        got = f"an array of shape {tuple(shape)}" if shape is not None else repr(value)[:60]
        raise TypeError(f"the metric {name} returned {got}, not a number: a metric callable(y_true, scores) "
                        "returns one float") from None


def evaluate(model, loss_fn, data, batch_size=256, metric_fn=None):
    """(mean loss, metric or None) of the model on data = (x, y), in eval mode, by batches (as predict).
    The loss is the whole set's, whatever the batch size (with class weights, their weighted mean).

    metric_fn: None (no metric), one of the names fit's metric takes ("loss": the mean loss again,
    "accuracy", "auc"), or a callable(y_true, scores) -> float. It receives y as a host NumPy array and
    the model's outputs as float64 probabilities where the loss says how (softmax for CrossEntropyLoss,
    sigmoid for BCEWithLogitsLoss), the raw outputs otherwise (e.g. MSELoss), as fit's metric does.
    The metric is NaN when the outputs are not all finite or the loss is NaN (a diverged model): no
    metric can score those."""
    _check_model(model, "evaluate")
    _check_loss(loss_fn, "evaluate", backward=False)
    data = _xy_pair(data, "data", model)
    batch_size = _positive_int(batch_size, "batch_size")
    fn = None if metric_fn is None else _metric(metric_fn, None, "metric_fn", monitored=False)[1]
    loss, value, finite = _evaluate(model, loss_fn, data, batch_size, fn)
    if metric_fn is not None and fn is None:  # "loss", as fit monitors it
        value = loss if finite else math.nan
    return loss, value


def _class_weighted(loss_fn):
    """Whether loss_fn's mean is weighted by its labels' class weights (sum w[y_i] l_i / sum w[y_i]): a
    CrossEntropyLoss with weights. Means over several batches then add up by those weights, not rows."""
    return isinstance(loss_fn, _losses.CrossEntropyLoss) and loss_fn.weight is not None


def _evaluate(model, loss_fn, data, batch_size, metric_fn=None):
    """evaluate()'s (loss, metric) and whether the outputs were all finite and the loss not NaN."""
    x, y = data
    xp = _backend.current().xp
    # A class-weighted mean is sum w[y_i] l_i / sum w[y_i] over the set: batch means weighted by their
    # rows would be another number, and NaN (0/0) for a batch whose labels all weigh 0. Its loss is
    # taken once, over the outputs of every batch.
    weighted = _class_weighted(loss_fn)
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
        value = _number(metric_fn(to_numpy(y), _probabilities(np.concatenate(outs), loss_fn)), metric_fn) if finite \
            else math.nan
    return loss, value, finite
