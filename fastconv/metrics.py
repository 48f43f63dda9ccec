"""Evaluation metrics the way clinical studies report them (pure NumPy).

Binary conventions: labels are 0/1 with 1 = disease present; a score is "positive"
when ``score >= threshold``.

Formulas
--------
With m positives x_1..x_m and n negatives y_1..y_n, let
``psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise``.

* Mann–Whitney AUC:  ``AUC = (1 / (m n)) * sum_i sum_j psi(x_i, y_j)``.
  Computed in O(N log N) from midranks R of the pooled scores:
  ``AUC = (sum_{i positive} R_i - m (m + 1) / 2) / (m n)``.

* DeLong variance (DeLong, DeLong & Clarke-Pearson 1988), structural components
  ``V10_i = (1/n) sum_j psi(x_i, y_j)`` and ``V01_j = (1/m) sum_i psi(x_i, y_j)``:
  ``Var(AUC) = S10 / m + S01 / n`` with S10, S01 the sample variances (ddof=1) of
  V10 and V01. The fast algorithm (Sun & Xu 2014) gets the components from midranks:
  ``V10_i = (Tz_i - Tx_i) / n`` and ``V01_j = 1 - (Tz_j - Ty_j) / m``, where Tz are
  midranks in the pooled sample, Tx within the positives, Ty within the negatives.
  The interval is ``AUC ± z_{(1+level)/2} * sqrt(Var)``, clipped to [0, 1].

* Sensitivity = TP / (TP + FN), specificity = TN / (TN + FP).

Scores are ranked and thresholded as float64: integer scores beyond 2**53 in magnitude (and long
doubles), which float64 cannot all tell apart, are refused (ValueError) rather than tied; pass
their ranks (``np.unique(scores, return_inverse=True)[1]``), which give the same ROC and AUC.

Inputs may be NumPy arrays, lists, or CuPy arrays (anything with both ``__cuda_array_interface__``
and ``.get()``, copied to the host; fastconv._host.to_numpy).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ._host import refuse_masked, to_numpy
from .ops import _check

__all__ = [
    "AUCResult",
    "OperatingPoint",
    "accuracy",
    "auc",
    "auc_ci",
    "coarse_probabilities",
    "confusion_matrix",
    "evaluate_operating_point",
    "operating_point",
    "per_class_auc",
    "roc_curve",
    "sensitivity_specificity",
]


@dataclass(frozen=True)
class AUCResult:
    """AUC with a confidence interval [low, high] at the given level."""

    auc: float
    low: float
    high: float
    method: str
    level: float


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold and the sensitivity/specificity it gives on some data.

    ``target`` is ``("sensitivity", value)`` or ``("specificity", value)``: the
    requirement the threshold was chosen to meet (on validation data).
    """

    threshold: float
    sensitivity: float
    specificity: float
    target: tuple


# ----------------------------------------------------------------------------------
# input validation


def _to_numpy(x, name):
    """A host array (CuPy copied off the device), or TypeError naming the argument (a masked array
    too: its mask would be dropped)."""
    refuse_masked(x, name)
    try:
        return to_numpy(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} could not be converted to an array: {exc}") from exc


def _as_vector(x, name):
    """A 1-D array; an (N, 1) column (a sigmoid output, say) is accepted too."""
    a = _to_numpy(x, name)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        hint = (f" (two columns of class probabilities? the positive class's is {name}[:, 1])"
                if a.ndim == 2 and a.shape[1] == 2 and name.startswith("scores") else "")
        raise ValueError(f"{name} must be 1-D (or an (N, 1) column), got shape {a.shape}{hint}")
    return a


def _binary_labels(y, name="y_true"):
    y = _as_vector(y, name)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers 0/1, got dtype {y.dtype}")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"{name} must contain only 0 and 1, found e.g. {bad.tolist()}")
    return y.astype(np.int64)


def _finite(a, name):
    """a, or ValueError when it holds NaN or inf (a diverged model's outputs)."""
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf ({int(np.sum(~np.isfinite(a)))} values)")
    return a


def _scores(s, name="scores"):
    s = _as_vector(s, name)
    if s.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be real numbers, got dtype {s.dtype}")
    return _finite(_exactly_float64(s, name), name)


_EXACT_INT = 2**53  # float64 holds every integer up to this magnitude, and not every one beyond


def _exactly_float64(s, name):
    """s as float64, or ValueError where that would merge distinct scores: integers beyond 2**53 (int64 risk
    scores, uint64 hashes) or long doubles round to the same float64, which every ranking here (ROC, AUC,
    CIs) and every threshold (a float) would then take for a tie. Ranks keep the order exactly."""
    if s.dtype.kind in "iu" and s.size and (s.min() < -_EXACT_INT or s.max() > _EXACT_INT):
        raise ValueError(
            f"{name} holds integers beyond 2**53 in magnitude (dtype {s.dtype}, min {s.min()}, max {s.max()}), "
            "which float64 cannot all tell apart: distinct scores would tie; pass their ranks instead (the ROC "
            f"and AUC depend on the order only), e.g. np.unique({name}, return_inverse=True)[1]"
        )
    exact = s.astype(np.float64)
    if s.dtype.kind == "f" and s.dtype.itemsize > 8 and not np.array_equal(exact, s, equal_nan=True):
        raise ValueError(
            f"{name} has dtype {s.dtype}, whose values do not all convert to float64 exactly: distinct scores "
            f"would tie; pass their ranks instead, e.g. np.unique({name}, return_inverse=True)[1]"
        )
    return exact


def _labels_and_scores(y_true, scores, need_both_classes=True, names=("y_true", "scores")):
    y = _binary_labels(y_true, names[0])
    s = _scores(scores, names[1])
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in length: {y.shape} vs {s.shape}")
    if need_both_classes:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == y.size:
            only = 1 if n_pos else 0
            raise ValueError(
                f"y_true contains only class {only} ({y.size} samples); "
                "this metric needs both positives and negatives"
            )
    return y, s


def _class_labels(y, name):
    """Non-negative integer class labels (integer-valued floats are accepted)."""
    y = _as_vector(y, name)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            hint = ("; for scores pass a 2-D (N, C) array, for probabilities threshold them first"
                    if name == "y_pred_or_scores" else "")
            raise ValueError(f"{name} must hold integer class labels, got non-integer values{hint}")
    if y.size and y.min() < 0:
        raise ValueError(f"{name} has negative class labels (min {y.min()})")
    if y.size and y.max() > _EXACT_INT:  # (beyond int64, astype wrapped them: 1e20 became class -2**63)
        raise ValueError(f"{name} has class labels beyond 2**53 (max {y.max()}); class labels are the indices "
                         f"0 .. C-1: number the classes, e.g. np.unique({name}, return_inverse=True)[1]")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------------
# classification


def accuracy(y_true, y_pred_or_scores):
    """Fraction of correct predictions.

    The second argument is either predicted labels (N,), or (N, 1) of an integer or
    bool dtype, or class scores (N, C), in which case the prediction is the argmax
    over axis 1 (scores must be finite).
    """
    y = _class_labels(y_true, "y_true")
    p = _to_numpy(y_pred_or_scores, "y_pred_or_scores")
    if p.ndim == 2 and p.shape[1] > 1:
        # argmax would call a row of NaN (a diverged model) class 0, and count it correct for class 0.
        if p.dtype.kind == "f":
            _finite(p, "y_pred_or_scores")
        p = np.argmax(p, axis=1)
    elif p.ndim == 2 and p.shape[1] == 0:
        raise ValueError(f"y_pred_or_scores has shape {p.shape}: no score columns")
    elif p.ndim == 2 and p.dtype.kind in "biu":  # a column of predicted labels, as y_true may be
        p = p[:, 0]
    elif p.ndim == 2:
        # argmax of one float column is always 0: almost surely a sigmoid output by mistake.
        raise ValueError(
            f"y_pred_or_scores has shape {p.shape}: one score column, so argmax is always 0; "
            "pass predicted labels instead, e.g. (probs >= 0.5)"
        )
    p = _class_labels(p, "y_pred_or_scores")
    if y.shape != p.shape:
        raise ValueError(f"y_true and predictions differ in length: {y.shape} vs {p.shape}")
    if y.size == 0:
        raise ValueError("y_true is empty")
    return float(np.mean(y == p))


_MAX_INFERRED_CLASSES = 10_000  # (a 10^4 x 10^4 matrix: 800 MB)


def confusion_matrix(y_true, y_pred, num_classes=None):
    """Counts (C, C), int64: entry [i, j] = samples of true class i predicted as j."""
    y = _class_labels(y_true, "y_true")
    p = _class_labels(y_pred, "y_pred")
    if y.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y.shape} vs {p.shape}")
    seen = int(max(y.max(initial=-1), p.max(initial=-1))) + 1
    if num_classes is None:
        if seen > _MAX_INFERRED_CLASSES:  # (a stray label of 10^6 asked for a matrix of 7 TiB)
            raise ValueError(f"confusion_matrix: the labels go up to {seen - 1}, which asks for a {seen} x {seen} "
                             f"matrix (rows and columns are the labels 0 .. C-1); pass num_classes={seen} if that "
                             "is meant, or number the classes 0 .. C-1 (np.unique(labels, return_inverse=True))")
        num_classes = seen
    elif not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    elif num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    elif num_classes < seen:
        raise ValueError(f"num_classes={num_classes} but labels go up to {seen - 1}")
    c = int(num_classes)
    counts = np.bincount(y * c + p, minlength=c * c)
    return counts.reshape(c, c).astype(np.int64, copy=False)  # (bincount's intp: int64 already on 64-bit)


# ----------------------------------------------------------------------------------
# ROC and AUC


def roc_curve(y_true, scores):
    """(fpr, tpr, thresholds) at every distinct score, highest threshold first.

    Same as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: the first
    threshold is +inf (nothing called positive); tied scores form one point.
    """
    y, s = _labels_and_scores(y_true, scores)
    fps, tps, thresholds = _roc_counts(y, s)
    return fps / fps[-1], tps / tps[-1], thresholds


def _roc_counts(y, s):
    """False- and true-positive counts (float64) at thresholds +inf, then distinct scores."""
    # Stable sort, descending; the last index of each run of equal scores is a cut.
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted, y_sorted = s[order], y[order]
    cut = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1]  # (np.diff overflows past 1.8e308)
    tps = np.cumsum(y_sorted)[cut]
    fps = cut + 1 - tps
    tps = np.r_[0, tps].astype(np.float64)
    fps = np.r_[0, fps].astype(np.float64)
    return fps, tps, np.r_[np.inf, s_sorted[cut]]


def _midranks(values):
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    v = values[order]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    ends = np.r_[starts[1:], v.size]  # exclusive
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def auc(y_true, scores):
    """Area under the ROC curve, Mann–Whitney form (ties count 1/2)."""
    y, s = _labels_and_scores(y_true, scores)
    return _auc_from_ranks(y, s)


def _auc_from_ranks(y, s):
    m = int(y.sum())
    n = y.size - m
    rank_sum = _midranks(s)[y == 1].sum()
    return float((rank_sum - m * (m + 1) / 2.0) / (m * n))


def _delong_components(pos, neg):
    """V10 (one per positive) and V01 (one per negative), via midranks (Sun & Xu)."""
    m, n = pos.size, neg.size
    tz = _midranks(np.concatenate([pos, neg]))
    tx = _midranks(pos)
    ty = _midranks(neg)
    v10 = (tz[:m] - tx) / n
    v01 = 1.0 - (tz[m:] - ty) / m
    return v10, v01


def _bootstrap_aucs(pos, neg, n_bootstrap, rng):
    """AUCs of stratified resamples, without re-sorting per resample.

    For a positive x, the sum of psi(x, ·) over a resample of negatives only needs
    how many copies of each negative were drawn: with negatives sorted, it is a
    cumulative count read at x's insertion points (left: start of ties, right: end).
    """
    m, n = pos.size, neg.size
    # Resampling indices of a sorted copy is still uniform; sorting both makes the interval a function
    # of the scores, not of the rows' order (unsorted positives drew other resamples when shuffled).
    pos, neg = np.sort(pos), np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")  # negatives < x
    below_or_tied = np.searchsorted(neg, pos, side="right")  # negatives <= x
    # Chunks bound memory at a few million counts per array.
    chunk = max(1, 4_000_000 // (m + n + 1))
    out = []
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        pos_count = _row_bincount(rng.integers(0, m, size=(b, m)), m)
        neg_count = _row_bincount(rng.integers(0, n, size=(b, n)), n)
        cum = np.concatenate([np.zeros((b, 1)), np.cumsum(neg_count, axis=1)], axis=1)
        psi_sum = 0.5 * (cum[:, below] + cum[:, below_or_tied])  # (b, m)
        out.append((pos_count * psi_sum).sum(axis=1) / (m * n))
    return np.concatenate(out)


def _row_bincount(indices, size):
    """Per-row counts of each value in [0, size) of a 2-D integer array."""
    b = indices.shape[0]
    flat = indices + size * np.arange(b)[:, None]
    return np.bincount(flat.ravel(), minlength=b * size).reshape(b, size).astype(np.float64)


def auc_ci(y_true, scores, level=0.95, method="delong", n_bootstrap=2000, seed=0):
    """AUC with a confidence interval.

    Every method needs at least 2 positives and 2 negatives.
    method="delong": normal interval from the DeLong variance (fast midrank
    algorithm), clipped to [0, 1], as pROC's default. Near AUC 1 on small sets it covers less than its level: simulated
    binormal data with 32 positives, 54 negatives and a true AUC of 0.98 (about the tumour
    example's test set) gave a "95%" interval that held the true AUC in 82-85% of
    1000 draws (91-92% at AUC 0.90; 94-96% from 100 + 100 cases at AUC 0.86).
    method="delong-logit": the same variance carried to logit(AUC) by the delta
    method, the normal interval there mapped back; it stays inside (0, 1) and covers
    better near 1 (92-94% in that simulation).
    method="bootstrap": percentile interval of ``n_bootstrap`` stratified resamples
    (positives and negatives resampled separately, so each keeps its count), drawn
    from ``np.random.default_rng(seed)`` (87% in that simulation). Each tail beyond the
    interval must hold at least 10 resamples, n_bootstrap * (1 - level) / 2 >= 10: 400
    at level 0.95, 2000 (the default) at 0.99; fewer are refused (ValueError), since the
    bounds would be the few most extreme resamples (one resample gives a zero-width
    "interval").

    Every method gives a zero-width interval where the scores separate the classes
    perfectly (AUC 0 or 1) or all tie (AUC 0.5): the DeLong variance is then 0, and every
    resample has the same AUC. That is no certainty: on few cases, report the counts too
    (AUC 1 from 3 + 3 cases reads "1.00 (1.00-1.00)").
    As sklearn's roc_auc_score, and unlike pROC's default direction="auto", an AUC below
    0.5 stays as it is (scores that rank the negatives higher are not flipped).
    ``n_bootstrap`` and ``seed`` are checked whatever the method, used by the bootstrap only.
    """
    y, s = _labels_and_scores(y_true, scores)
    level = _check.number(level, "level", low=0.0, high=1.0, low_open=True, high_open=True)
    pos, neg = s[y == 1], s[y == 0]
    area = _auc_from_ranks(y, s)
    if method not in ("delong", "delong-logit", "bootstrap"):
        raise ValueError(f"method must be 'delong', 'delong-logit' or 'bootstrap', got {method!r}")
    if pos.size < 2 or neg.size < 2:  # (a lone case's variation is unseen: resamples redraw it every time)
        raise ValueError(
            f"auc_ci needs at least 2 positives and 2 negatives, got {pos.size} and {neg.size}"
        )
    n_bootstrap = _check.integer(n_bootstrap, "n_bootstrap", low=1)  # (a typo is an error with any method)
    rng = _check.generator(seed)

    if method in ("delong", "delong-logit"):
        v10, v01 = _delong_components(pos, neg)
        se = np.sqrt(v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size)
        z = NormalDist().inv_cdf(0.5 + level / 2.0)
        if method == "delong":
            low, high = max(0.0, area - z * se), min(1.0, area + z * se)
        elif 0.0 < area < 1.0:
            logit, logit_se = math.log(area / (1.0 - area)), se / (area * (1.0 - area))
            low, high = (1.0 / (1.0 + math.exp(-(logit + sign * z * logit_se))) for sign in (-1, 1))
        else:
            low = high = area
    else:  # bootstrap
        _check_tails(n_bootstrap, level)
        aucs = _bootstrap_aucs(pos, neg, n_bootstrap, rng)
        alpha = 1.0 - level
        low, high = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return AUCResult(float(area), float(low), float(high), method, float(level))


_MIN_TAIL = 10  # resamples each tail of a percentile interval must hold (auc_ci's docstring)


def _check_tails(n_bootstrap, level):
    """ValueError when a percentile interval's tails would hold fewer than _MIN_TAIL resamples."""
    tail = n_bootstrap * (1.0 - level) / 2.0
    if tail < _MIN_TAIL * (1 - 1e-9):  # (1 - 0.95 is not 0.05 exactly)
        need = math.ceil(_MIN_TAIL * 2.0 / (1.0 - level) * (1 - 1e-9))
        raise ValueError(
            f"auc_ci: n_bootstrap={n_bootstrap} leaves {tail:.4g} resamples in each tail of a {level * 100:g}% "
            f"percentile interval; it needs at least {_MIN_TAIL} there: n_bootstrap >= {need} at level {level:g}"
        )


def per_class_auc(Y_true, scores):
    """AUC of each of C binary outputs: (N, C) 0/1 labels and (N, C) scores -> (C,).

    A column whose labels hold one class only has no AUC: NaN, with a warning.
    """
    Y = _to_numpy(Y_true, "Y_true")
    S = _to_numpy(scores, "scores")
    if Y.ndim != 2 or S.ndim != 2:
        raise ValueError(f"Y_true and scores must be 2-D (N, C), got {Y.shape} and {S.shape}")
    if Y.shape != S.shape:
        raise ValueError(f"Y_true and scores differ in shape: {Y.shape} vs {S.shape}")
    out = np.full(Y.shape[1], np.nan)
    for c in range(Y.shape[1]):
        y, s = _labels_and_scores(Y[:, c], S[:, c], need_both_classes=False,
                                  names=(f"Y_true[:, {c}]", f"scores[:, {c}]"))
        if 0 < y.sum() < y.size:
            out[c] = _auc_from_ranks(y, s)
        else:
            warnings.warn(
                f"per_class_auc: column {c} of Y_true has one class only; its AUC is NaN",
                RuntimeWarning,
                stacklevel=2,
            )
    return out


# ----------------------------------------------------------------------------------
# thresholds and operating points


def sensitivity_specificity(y_true, scores, threshold):
    """(sensitivity, specificity) when ``score >= threshold`` means positive."""
    y, s = _labels_and_scores(y_true, scores)
    if isinstance(threshold, numbers.Integral) and not isinstance(threshold, (bool, np.bool_)) \
            and abs(int(threshold)) > _EXACT_INT:  # (float64 compares it rounded)
        raise ValueError(f"threshold {threshold} is an integer beyond 2**53 in magnitude, which float64 (the scores' "
                         "type here) cannot hold exactly: it would be compared rounded; pass a float")
    if isinstance(threshold, np.floating) and threshold.dtype.itemsize > 8 and float(threshold) != threshold:
        raise ValueError(f"threshold {threshold!r} is a {threshold.dtype} that float64 (the scores' type here) "
                         f"cannot hold exactly: it would be compared as {float(threshold)!r}; pass a float")
    threshold = _check.number(threshold, "threshold")  # (+-inf allowed: everything, or nothing, positive)
    called_positive = s >= threshold
    sensitivity = np.mean(called_positive[y == 1])
    specificity = np.mean(~called_positive[y == 0])
    return float(sensitivity), float(specificity)


def operating_point(y_true, scores, target_sensitivity=None, target_specificity=None):
    """Choose a threshold (on validation data) meeting one clinical requirement.

    target_sensitivity: the HIGHEST threshold with sensitivity >= target — as few
    false positives as possible while catching enough cases (screening).
    target_specificity: the LOWEST threshold with specificity >= target — as many
    cases caught as possible while keeping false alarms rare (high-risk decisions).

    Candidate thresholds are +inf and the distinct scores; any threshold between two
    scores acts like the score above it, so these are the extreme choices.
    Report test performance with ``evaluate_operating_point``.
    """
    if (target_sensitivity is None) == (target_specificity is None):
        raise ValueError("give exactly one of target_sensitivity and target_specificity")
    name, target = (
        ("sensitivity", target_sensitivity)
        if target_specificity is None
        else ("specificity", target_specificity)
    )
    if isinstance(target, numbers.Real) and not isinstance(target, bool) and 50 <= target <= 100:
        raise ValueError(f"target_{name} must be a fraction in [0, 1], got {target!r} (a percentage? "
                         f"{target / 100:g} for {target:g}%)")
    target = _check.number(target, f"target_{name}", low=0.0, high=1.0)

    y, s = _labels_and_scores(y_true, scores)
    fps, tps, thresholds = _roc_counts(y, s)
    n_pos, n_neg = tps[-1], fps[-1]
    # Rates straight from counts (not 1 - fpr), so k/n compares exactly with a target.
    sensitivity = tps / n_pos
    specificity = (n_neg - fps) / n_neg
    # Along decreasing thresholds sensitivity rises and specificity falls.
    if name == "sensitivity":
        k = int(np.flatnonzero(sensitivity >= target)[0])  # last entry is 1.0
    else:
        k = int(np.flatnonzero(specificity >= target)[-1])  # first entry is 1.0
    return OperatingPoint(
        float(thresholds[k]), float(sensitivity[k]), float(specificity[k]), (name, float(target))
    )


def evaluate_operating_point(op, y_true, scores):
    """The same threshold applied to other (test) data: a new OperatingPoint."""
    if not isinstance(op, OperatingPoint):
        raise TypeError(f"op must be an OperatingPoint, got {type(op).__name__}")
    sensitivity, specificity = sensitivity_specificity(y_true, scores, op.threshold)
    return OperatingPoint(op.threshold, sensitivity, specificity, op.target)


# ----------------------------------------------------------------------------------
# multi-class helpers


def coarse_probabilities(probs, groups):
    """Sum fine-grained class probabilities (N, F) into coarse classes (N, G).

    groups: a list of G lists of fine class indices (each of 0..F-1 exactly once),
    or a length-F integer array mapping fine class -> coarse class 0..G-1.

    Each row must be a distribution over the fine classes (a softmax's row: non-negative,
    summing to 1 within 1e-3, 1e-2 in float16): a coarse class's probability is its fine
    classes' sum only when they exclude each other. Independent outputs (sigmoids, one per
    label) are refused: for them P(A or B) is not P(A) + P(B).
    """
    p = _to_numpy(probs, "probs")
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, F), got shape {p.shape}")
    if p.dtype.kind not in "fiu":
        raise TypeError(f"probs must be real numbers, got dtype {p.dtype}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or inf")
    if np.any(p < 0):
        raise ValueError("probs has negative values; pass probabilities (softmax), not logits")
    n_fine = p.shape[1]
    mapping = _fine_to_coarse(groups, n_fine)
    row_sums = p.sum(axis=1, dtype=np.float64)
    tolerance = 1e-2 if p.dtype == np.float16 else 1e-3  # (a float32 softmax's rows sum to 1 within ~1e-6)
    off = np.flatnonzero(np.abs(row_sums - 1.0) > tolerance)
    if off.size:
        i = int(off[0])
        raise ValueError(f"probs row {i} sums to {row_sums[i]:.6g} ({off.size} of {p.shape[0]} rows do not sum to 1): "
                         "coarse probabilities are sums of fine ones only where the fine classes exclude each other, "
                         "as a softmax's do; normalize scores that are not probabilities, and do not pass independent "
                         "(sigmoid) outputs, whose union is not their sum")
    n_coarse = int(mapping.max()) + 1
    dtype = p.dtype if p.dtype.kind == "f" else np.float64
    one_hot = np.zeros((n_fine, n_coarse), dtype=dtype)
    one_hot[np.arange(n_fine), mapping] = 1
    return p.astype(dtype, copy=False) @ one_hot


def _fine_to_coarse(groups, n_fine):
    """Validate `groups` and return the length-F mapping fine index -> coarse index."""
    if not isinstance(groups, (list, tuple)):
        groups = _to_numpy(groups, "groups")  # an array mapping (NumPy or CuPy)
    is_mapping = isinstance(groups, np.ndarray) or (
        isinstance(groups, (list, tuple))
        and len(groups) > 0
        and all(isinstance(g, numbers.Integral) for g in groups)
    )
    if is_mapping:
        mapping = np.asarray(groups)
        if mapping.ndim != 1:
            raise ValueError(f"groups as a mapping must be a 1-D integer array, got shape {mapping.shape}")
        if mapping.dtype.kind not in "iu":
            raise TypeError(f"groups as a mapping must be a 1-D integer array, got dtype {mapping.dtype}")
        if mapping.size != n_fine:
            raise ValueError(f"groups mapping has length {mapping.size}, probs has {n_fine} columns")
        if mapping.size == 0:
            raise ValueError("probs has no columns: there are no fine classes to group")
        if mapping.min() < 0:
            raise ValueError("groups mapping has negative coarse indices")
        if mapping.max() >= mapping.size:  # (and np.arange below would be that large)
            raise ValueError(f"groups mapping has coarse index {int(mapping.max())}, but {mapping.size} fine classes "
                             f"can fill coarse classes 0 .. {mapping.size - 1} at most: each coarse class needs a "
                             "fine one")
        empty = np.setdiff1d(np.arange(mapping.max() + 1), mapping)
        if empty.size:
            raise ValueError(f"coarse classes {empty.tolist()} receive no fine class")
        return mapping.astype(np.int64)

    if not isinstance(groups, (list, tuple)) or len(groups) == 0:
        raise TypeError("groups must be a non-empty list of lists of fine class indices")
    bare = [g for g, members in enumerate(groups) if _is_scalar(members)]
    if bare and len(bare) == len(groups):
        raise TypeError(f"groups as a mapping must hold ints (fine class -> coarse class), got "
                        f"{groups[0]!r} ({type(groups[0]).__name__}) at [0]; as groups, each must be a list")
    if bare:  # [0, [1, 2]]: a mapping's entry, or a group of one? Neither form says.
        raise TypeError(f"groups[{bare[0]}] is {groups[bare[0]]!r} among lists: give each group as a list of fine "
                        f"class indices ([{groups[bare[0]]!r}]), or a mapping of ints only")
    mapping = np.full(n_fine, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        members = list(np.atleast_1d(_to_numpy(members, f"groups[{g}]")))
        if not members:
            raise ValueError(f"groups[{g}] is empty")
        for f in members:
            f = f.item() if isinstance(f, np.generic) else f  # (shown as 5, not np.int64(5))
            if isinstance(f, (bool, np.bool_)) or not isinstance(f, numbers.Integral):
                raise TypeError(f"groups[{g}] has {f!r}, not an int fine class index")
            if not 0 <= f < n_fine:
                raise ValueError(f"groups[{g}] has {f!r}, not a fine class index in [0, {n_fine})")
            if mapping[f] == g:
                raise ValueError(f"fine class {f} is listed twice in groups[{g}]")
            if mapping[f] != -1:
                raise ValueError(f"fine class {f} appears in groups[{mapping[f]}] and groups[{g}]")
            mapping[f] = g
    missing = np.flatnonzero(mapping == -1)
    if missing.size:
        raise ValueError(f"fine classes {missing.tolist()} are in no group")
    return mapping


def _is_scalar(value):
    try:
        return np.ndim(value) == 0
    except ValueError:  # (a ragged list: not a scalar; converting it says what is wrong)
        return False
