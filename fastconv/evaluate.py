"""Reports of a trained model on held-out data, the way the course (and clinical studies) report
them, as plain JSON-able dicts plus a text rendering.

* binary_report: test AUC with its confidence interval (DeLong), and operating points whose
  thresholds are chosen on VALIDATION data (screening: sensitivity >= target; high-risk:
  specificity >= target) and then reported on TEST data, with the counts behind each rate.
* multiclass_report: accuracy, confusion matrix, per-class sensitivity/precision/AUC (one vs
  rest), and coarse classes made by summing fine class probabilities.
* regression_report: mean squared error and R².

The numbers come from fastconv.metrics; this module only chooses what to report and prints it.
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import warnings

import numpy as np

from . import metrics
from ._host import to_numpy

__all__ = ["to_numpy", "sigmoid", "softmax", "binary_report", "check_binary_labels", "multiclass_report",
           "regression_report",
           "format_report", "history_dict", "jsonable"]


def sigmoid(logits):
    """1 / (1 + exp(-z)) in float64, without overflow for large |z|."""
    z = to_numpy(logits).astype(np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def softmax(logits, axis=1):
    """exp(z) / sum(exp(z)) along `axis`, in float64, shifted by the max for stability."""
    z = to_numpy(logits).astype(np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _rates(y, scores, threshold):
    """Sensitivity and specificity at a threshold, with the counts behind them."""
    y = np.asarray(y).ravel().astype(np.int64)
    # In float64, as metrics compares: float32 scores against a Python float compare in float32 (NumPy 2),
    # so a threshold just above a float32 score rounded down onto it and called that score positive.
    called = np.asarray(scores, dtype=np.float64).ravel() >= threshold
    tp, fn = int(np.sum(called & (y == 1))), int(np.sum(~called & (y == 1)))
    tn, fp = int(np.sum(~called & (y == 0))), int(np.sum(called & (y == 0)))
    return {"sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1),
            "tp": tp, "fn": fn, "tn": tn, "fp": fp}


def binary_report(y_val, val_scores, y_test, test_scores, target_sensitivity=0.95,
                  target_specificity=0.95, level=0.95):
    """Test AUC with a DeLong CI, and two operating points chosen on validation data.

    Scores are any monotone score of "positive" (probabilities, or logits); thresholds are in the
    same units. Labels are 0/1 with 1 = disease. Returns a dict (see format_report).
    """
    y_val, y_test = to_numpy(y_val).ravel(), to_numpy(y_test).ravel()
    val_scores, test_scores = to_numpy(val_scores).ravel(), to_numpy(test_scores).ravel()
    with _naming("the test AUC (y_test, test_scores)"):
        area = metrics.auc_ci(y_test, test_scores, level=level, method="delong")
    points = {}
    for name, kwargs in (("screening", {"target_sensitivity": target_sensitivity}),
                         ("high-risk", {"target_specificity": target_specificity})):
        with _naming("the operating points, chosen on validation data (y_val, val_scores)"):
            chosen = metrics.operating_point(y_val, val_scores, **kwargs)
        points[name] = {
            "target": list(chosen.target),
            "threshold": chosen.threshold,
            "val": _rates(y_val, val_scores, chosen.threshold),
            "test": _rates(y_test, test_scores, chosen.threshold),
        }
    return {
        "task": "binary",
        "n_test": int(y_test.size),
        "n_test_positive": int(np.sum(y_test == 1)),
        "auc": {"auc": area.auc, "low": area.low, "high": area.high, "method": area.method, "level": area.level},
        "val_auc": metrics.auc(y_val, val_scores),
        "operating_points": points,
    }


def check_binary_labels(y_val, y_test):
    """ValueError unless binary_report can be computed on these 0/1 labels, whatever the scores: its
    test AUC's DeLong interval needs at least 2 positives and 2 negatives in y_test, its operating
    points (and validation AUC) both classes in y_val. Labels only: checkable before training."""
    counts = {}
    for name, y in (("y_val", y_val), ("y_test", y_test)):
        y = to_numpy(y).ravel()
        counts[name] = (int(np.sum(y == 1)), int(np.sum(y == 0)))
    (val_pos, val_neg), (test_pos, test_neg) = counts["y_val"], counts["y_test"]
    if min(test_pos, test_neg) < 2 or min(val_pos, val_neg) < 1:
        raise ValueError(f"binary_report needs at least 2 positives and 2 negatives in the test labels (the AUC's "
                         f"DeLong interval) and both classes in the validation labels (the operating points), got "
                         f"{test_pos} and {test_neg} in test, {val_pos} and {val_neg} in validation")


@contextlib.contextmanager
def _naming(what):
    """metrics' errors say y_true and scores: say which of the report's arguments they are about."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"binary_report: {what}: {exc}") from exc


def operating_points_on_test(report):
    """{name: metrics.OperatingPoint} of a binary report's points as they fall on test data."""
    return {name: metrics.OperatingPoint(p["threshold"], p["test"]["sensitivity"], p["test"]["specificity"],
                                         tuple(p["target"]))
            for name, p in report["operating_points"].items()}


def multiclass_report(y_test, probs, class_names=None, coarse=None):
    """Accuracy, confusion matrix, per-class results and coarse classes of (N, C) probabilities.

    coarse: {grouping name: {coarse class name: [fine class indices]}}, e.g.
    {"parity": {"even": [0, 2, 4, 6, 8], "odd": [1, 3, 5, 7, 9]}}; the coarse decision is the
    coarse class with the largest summed probability (metrics.coarse_probabilities).
    """
    # Checked as labels: astype alone truncated 1.5 to class 1 and made NaN a negative class.
    y = metrics._class_labels(to_numpy(y_test).ravel(), "y_test")
    p = to_numpy(probs).astype(np.float64, copy=False)  # (only read: float64 probs need no copy)
    n_classes = p.shape[1]
    if y.size and y.max() >= n_classes:
        raise ValueError(f"multiclass_report: y_test has class {int(y.max())}, but probs has {n_classes} columns "
                         f"(classes 0 to {n_classes - 1})")
    names = list(class_names) if class_names else [str(c) for c in range(n_classes)]
    predicted = np.argmax(p, axis=1)
    matrix = metrics.confusion_matrix(y, predicted, num_classes=n_classes)
    one_hot = np.eye(n_classes, dtype=bool)[y]  # one byte a cell: (N, C) int64 was as large as p
    class_auc = metrics.per_class_auc(one_hot, p)
    per_class = []
    for c in range(n_classes):
        support, called = int(matrix[c].sum()), int(matrix[:, c].sum())
        per_class.append({
            "class": names[c], "n": support,
            "sensitivity": matrix[c, c] / support if support else float("nan"),
            "precision": matrix[c, c] / called if called else float("nan"),
            "auc": float(class_auc[c]),
        })
    report = {
        "task": "multiclass",
        "n_test": int(y.size),
        "accuracy": metrics.accuracy(y, p),
        "confusion_matrix": matrix.tolist(),
        "per_class": per_class,
        "coarse": {},
    }
    if coarse is not None and not isinstance(coarse, dict):
        raise TypeError(f"coarse must be a dict {{grouping name: {{coarse class name: [fine class indices]}}}}, got "
                        f"{type(coarse).__name__}")
    for grouping, groups in (coarse or {}).items():
        if not isinstance(groups, dict) or not groups:
            raise TypeError(f"coarse[{grouping!r}] must be a non-empty dict {{coarse class name: [fine class "
                            f"indices]}}, got {groups!r}"[:200])
        group_names, members = list(groups), list(groups.values())
        bare = [n for n, fine in groups.items() if metrics._is_scalar(fine)]
        if bare:  # (all ints would read as a mapping fine -> coarse: another meaning)
            raise TypeError(f"coarse[{grouping!r}][{bare[0]!r}] must be a list of fine class indices, got "
                            f"{groups[bare[0]]!r}")
        mapping = metrics._fine_to_coarse(members, n_classes)  # (validated before it indexes anything)
        coarse_p = metrics.coarse_probabilities(p, members)
        coarse_y = mapping[y]
        entry = {"classes": {n: list(map(int, m)) for n, m in zip(group_names, members)},
                 "accuracy": metrics.accuracy(coarse_y, coarse_p)}
        if len(members) == 2:  # a binary decision: its AUC, "positive" = the second group
            entry["auc"] = _auc_or_nan(coarse_y, coarse_p[:, 1], f"coarse grouping {grouping!r}")
        report["coarse"][grouping] = entry
    return report


def _auc_or_nan(y, scores, what):
    """The AUC; NaN with a warning when the labels hold one class (as per_class_auc gives a class
    absent from the test labels), so that a small test set still gets its report."""
    if 0 < np.sum(y == 1) < y.size:
        return metrics.auc(y, scores)
    warnings.warn(f"{what}: the test labels hold one of its two classes only; its AUC is NaN", RuntimeWarning,
                  stacklevel=3)
    return float("nan")


def regression_report(y_true, y_pred):
    """Mean squared error, its root, and R² = 1 - SS_res / SS_tot. Predictions that are not finite (a
    diverged model) give NaN or inf figures; targets must be finite, and there must be some."""
    y = to_numpy(y_true).astype(np.float64).ravel()
    f = to_numpy(y_pred).astype(np.float64).ravel()
    if y.shape != f.shape:
        raise ValueError(f"y_true and y_pred differ in size: {y.shape} vs {f.shape}")
    if y.size == 0:
        raise ValueError("regression_report: y_true is empty")
    if not np.isfinite(y).all():
        raise ValueError(f"regression_report: y_true holds {int(np.sum(~np.isfinite(y)))} values that are not "
                         "finite (NaN or inf); the targets must be finite")
    mse = float(np.mean((y - f) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    return {"task": "regression", "n_test": int(y.size), "mse": mse, "rmse": mse ** 0.5,
            "r2": 1.0 - float(np.sum((y - f) ** 2)) / total if total > 0 else float("nan")}


# ------------------------------------------------------------------------------------------
# text


def _point_line(name, p):
    kind, target = p["target"]
    t = p["test"]
    return (f"  {name:<10s} ({kind} >= {target:.2f} on validation): threshold {p['threshold']:.3f}\n"
            f"  {'':<10s} test sensitivity {t['sensitivity']:.3f} ({t['tp']}/{t['tp'] + t['fn']}), "
            f"specificity {t['specificity']:.3f} ({t['tn']}/{t['tn'] + t['fp']})")


def format_report(report) -> str:
    """A few lines of text for a report made by this module."""
    task = report.get("task")
    lines = []
    if task == "binary":
        a = report["auc"]
        n, pos = report["n_test"], report["n_test_positive"]
        lines.append(f"test set: {n} cases ({pos} positive, {n - pos} negative)")
        lines.append(f"test AUC {a['auc']:.4f}  ({a['level']:.0%} CI {a['low']:.4f}-{a['high']:.4f}, "
                     f"{'DeLong' if a['method'] == 'delong' else a['method']})")
        lines.append("operating points (threshold chosen on validation data, reported on test data):")
        lines += [_point_line(name, p) for name, p in report["operating_points"].items()]
    elif task == "multiclass":
        correct = round(report["accuracy"] * report["n_test"])
        lines.append(f"test accuracy {report['accuracy']:.4f}  ({correct}/{report['n_test']})")
        lines.append("per class:  " + "  ".join(f"{c['class']}:{c['sensitivity']:.2f}" for c in report["per_class"])
                     + "   (sensitivity = recall)")
        # A class absent from the test labels has no sensitivity (NaN): min() would name whichever NaN
        # came first as the weakest. The weakest is the lowest among the classes present.
        present = [c for c in report["per_class"] if c["sensitivity"] == c["sensitivity"]] or report["per_class"]
        worst = min(present, key=lambda c: c["sensitivity"])
        lines.append(f"  weakest class {worst['class']}: sensitivity {worst['sensitivity']:.3f}, "
                     f"precision {worst['precision']:.3f}, one-vs-rest AUC {worst['auc']:.4f}")
        for grouping, entry in report["coarse"].items():
            names = " / ".join(entry["classes"])
            text = f"coarse {grouping} ({names}, summed probabilities): accuracy {entry['accuracy']:.4f}"
            if "auc" in entry:
                text += f", AUC {entry['auc']:.4f}"
            lines.append(text)
    elif task == "regression":
        lines.append(f"test MSE {report['mse']:.4g}  (RMSE {report['rmse']:.4g}), R² {report['r2']:.4f}"
                     f"  on {report['n_test']} cases")
    else:
        raise ValueError(f"not a report made by fastconv.evaluate (task={task!r})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# plain data


def history_dict(history) -> dict:
    """A training history as columns {name: list, one entry per evaluation}: accepts a
    fastconv.train.History (or its to_dict(), whose "records" hold one dict per evaluation),
    a list of per-evaluation dicts, or a dict of columns."""
    if hasattr(history, "to_dict"):
        history = history.to_dict()
    if isinstance(history, dict) and isinstance(history.get("records"), list):
        history = history["records"]
    if isinstance(history, (list, tuple)):
        keys = []
        for row in history:
            keys += [k for k in row if k not in keys]
        history = {k: [row.get(k) for row in history] for k in keys}
    if not isinstance(history, dict):
        history = dict(vars(history))
    return jsonable(history)


def jsonable(obj):
    """NumPy scalars and arrays, tuples and nested containers as plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    return obj


def json_text(obj) -> str:
    """obj (made jsonable) as strict JSON (RFC 8259), which jq, JavaScript and other strict parsers read
    (Python's json writes NaN and Infinity, which they refuse): a number that is not finite (a diverged
    evaluation's NaN, the AUC of a class absent from the test set) is null. fastconv's output files
    (history.json, report.json, run.json, search.json) hold this."""
    return json.dumps(_finite_or_null(jsonable(obj)), indent=1, allow_nan=False)


def _finite_or_null(obj):
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_null(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
