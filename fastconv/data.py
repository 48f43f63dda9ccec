"""Bundled real data sets and batching (pure NumPy).

The data ship inside scikit-learn (no download): the Wisconsin breast cancer data (binary
classification), the UCI handwritten digits (8x8 images, 10 classes) and the diabetes data (one
variable against another, for linear regression). After the first load they are read from a cache
of NumPy arrays, without importing scikit-learn (which takes longer than training on them):
`_datasets`.

Every loader splits into train / validation / test with a seeded split (stratified by
class for the two classification sets; the regression pair's targets are not classes,
so its split is not), and fits any standardization on the training rows only, so that
validation and test data stay unseen (as they would be in a clinical study).
"""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import _datasets
from ._host import refuse_masked
from .ops import _check

__all__ = [
    "Dataset",
    "Standardizer",
    "batches",
    "load_breast_cancer",
    "load_digits",
    "load_regression_pair",
    "train_val_test_split",
]


@dataclass
class Dataset:
    """Arrays of one data set, split three ways, plus what they mean."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list
    class_names: list
    description: str
    scaler: Optional["Standardizer"] = field(default=None, repr=False)


# ----------------------------------------------------------------------------------
# splitting and scaling


def _check_fraction(value, name):
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a fraction in [0, 1), got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def train_val_test_split(x, y, val=0.15, test=0.15, seed=0, stratify=True):
    """Split rows into (x_train, y_train, x_val, y_val, x_test, y_test).

    Deterministic for a given seed (``np.random.default_rng(seed)``). The validation
    and test parts hold round(val * n) and round(test * n) of the n rows. With
    ``stratify=True`` (y must hold class labels) those rows are shared out among the
    classes in proportion to their sizes (each class its share rounded down, then one
    more row each to the classes with the largest remainders), every class keeping at
    least one training row (rows a class cannot take go to the others). A part asked for
    (val or test above 0) that would come out empty is refused. Rows keep their original
    order inside each part.
    """
    refuse_masked(x, "x")
    refuse_masked(y, "y")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(f"x and y must have the same number of rows, got shapes {x.shape} and {y.shape}")
    if len(y) == 0:
        raise ValueError(f"x and y are empty (shapes {x.shape} and {y.shape}): no rows to split")
    val, test = _check_fraction(val, "val"), _check_fraction(test, "test")
    if val + test >= 1:
        raise ValueError(f"val + test must be below 1 to leave training rows, got {val} + {test}")

    rng = _check.generator(seed)
    stratify = _check.flag(stratify, "stratify")  # (stratify="no" was true)
    if stratify:
        labels = y.ravel() if y.ndim == 2 and y.shape[1] == 1 else y
        if labels.ndim != 1 or labels.dtype.kind not in "biufUS" or (
            labels.dtype.kind == "f" and not np.all(labels == np.round(labels))
        ):
            raise ValueError(
                f"stratify=True needs 1-D class labels (integers or strings), got y of shape {y.shape} dtype "
                f"{y.dtype}; pass stratify=False for regression targets"
            )
        groups = _rows_by_class(labels)
    else:
        groups = [np.arange(len(y))]

    # Each part's rows shared out among the groups; a class keeps a training row (unstratified, too
    # few rows left for training is refused below).
    sizes = np.array([rows.size for rows in groups])
    capacity = sizes - 1 if stratify else sizes
    n_test = _shares(round(test * len(y)), test * sizes, capacity)
    n_val = _shares(round(val * len(y)), val * sizes, capacity - n_test)
    for fraction, counts, name in ((val, n_val, "val"), (test, n_test, "test")):
        if fraction > 0 and counts.sum() == 0:  # (before, silently: stratified or not, from 3 rows down)
            if stratify and capacity.sum() == 0:
                why, ways = (f"every one of its {len(groups)} classes has a single row, which it keeps for training",
                             "stratify=False")
            else:
                why = (f"stratified: {len(groups)} classes, each keeping a training row" if stratify
                       else f"round({fraction} * {len(y)}) = 0")
                ways = "a larger fraction"
            raise ValueError(f"{name}={fraction} of {len(y)} rows leaves the {name} part empty ({why}): give "
                             f"{ways}, or {name}=0")
    parts = {"train": [], "val": [], "test": []}
    for rows, t, v in zip(groups, n_test, n_val):
        rows = rng.permutation(rows)
        parts["test"].append(rows[:t])
        parts["val"].append(rows[t : t + v])
        parts["train"].append(rows[t + v :])
    train, val_rows, test_rows = (np.sort(np.concatenate(parts[k])) for k in ("train", "val", "test"))
    if train.size == 0:
        raise ValueError(f"no rows left for training out of {len(y)}")
    return x[train], y[train], x[val_rows], y[val_rows], x[test_rows], y[test_rows]


def _shares(total, quotas, capacity):
    """Row counts per group summing to `total` (fewer only where `capacity` runs out), each at most
    its capacity, in proportion to `quotas` (largest remainders: each quota rounded down, then one
    more to the groups with the largest fractional parts, ties to the earlier group). Rounding each
    quota on its own left a part empty when every class was small (100 classes of 3 rows at 15%:
    0 each) and off by many rows with many classes."""
    whole = np.floor(quotas).astype(np.int64)
    counts = np.minimum(whole, capacity)
    by_remainder = np.argsort(-(quotas - whole), kind="stable")
    left = int(total) - int(counts.sum())
    while left > 0:
        room = by_remainder[counts[by_remainder] < capacity[by_remainder]][:left]
        if room.size == 0:
            break
        counts[room] += 1
        left -= room.size
    return counts


def _rows_by_class(labels):
    """The row indices of each class, classes ascending, rows ascending within a class.

    One stable sort, not one pass over the rows per class (which is quadratic when labels
    take many values: 2e5 rows of 1e5 classes took seconds).
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    return np.split(order, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1)


_BLOCK_VALUES = 1 << 17  # values per block of Standardizer.transform (1 MiB of float64)


class Standardizer:
    """(x - mean) / std per feature, with mean and std from the training rows.

    Statistics run over axis 0 (the rows). A feature that is constant in training
    (max == min) gets its value as mean and std 1, so it maps to 0 instead of dividing
    by zero (or by its mean's rounding error).
    """

    def __init__(self):
        self.mean_ = None
        self.std_ = None

    def fit(self, x):
        refuse_masked(x, "x")
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"fit needs at least one row, got shape {x.shape}")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"x must be numeric, got dtype {x.dtype}")
        finite = np.isfinite(x).all(axis=0)
        if not np.all(finite):  # their mean and std would be NaN, silently
            bad = np.flatnonzero(~finite).tolist()
            listed = f"{bad[:10]}{' ...' if len(bad) > 10 else ''}"
            where = {1: "", 2: f" in column(s) {listed}"}.get(x.ndim, f" in feature(s) {listed} (flattened)")
            raise ValueError(f"x has NaN or inf values{where}; remove or impute them before standardizing")
        # Constant means max == min: the float64 mean of a constant column is rounded (0.1 over 1000
        # rows is 0.1 + 1.4e-17), so its std is ~1e-17, not 0, and would map the column to +-1.
        constant = x.max(axis=0) == x.min(axis=0)
        self.mean_ = np.where(constant, x[0], x.mean(axis=0, dtype=np.float64)).astype(np.float64)
        std = x.std(axis=0, dtype=np.float64)
        self.std_ = np.where(constant | ~(std > 0), 1.0, std)
        return self

    def transform(self, x):
        if self.mean_ is None:
            raise RuntimeError("Standardizer is not fitted; call fit(x_train) first")
        refuse_masked(x, "x")
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":  # (as fit: strings gave NumPy's UFuncTypeError)
            raise TypeError(f"x must be numeric, got dtype {x.dtype}")
        if x.shape[1:] != self.mean_.shape:
            raise ValueError(f"x rows have shape {x.shape[1:]}, the fit saw {self.mean_.shape}")
        # By blocks of rows: the float64 arithmetic then needs temporaries of one block, not of all
        # of x (for float32 data those were three times the size of the result).
        rows = x if x.ndim else x.reshape(1)  # (a 0-d x of a 1-d fit: one row)
        out = np.empty(rows.shape, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
        step = max(1, _BLOCK_VALUES // max(self.mean_.size, 1))
        for start in range(0, len(rows), step):
            out[start : start + step] = (rows[start : start + step] - self.mean_) / self.std_
        return out.reshape(x.shape)

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    def state(self):
        """Plain lists, so the scaler can be saved to JSON next to model weights."""
        if self.mean_ is None:
            raise RuntimeError("Standardizer is not fitted; nothing to save")
        return {"mean": self.mean_.tolist(), "std": self.std_.tolist()}

    @classmethod
    def from_state(cls, state):
        mean = np.asarray(state["mean"], dtype=np.float64)
        std = np.asarray(state["std"], dtype=np.float64)
        if mean.shape != std.shape:
            raise ValueError(f"state mean and std differ in shape: {mean.shape} vs {std.shape}")
        if not np.all(std > 0) or not np.all(np.isfinite(std)) or not np.all(np.isfinite(mean)):
            raise ValueError("state mean must be finite and std finite and positive (NaN would make every "
                             "standardized value NaN)")
        scaler = cls()
        scaler.mean_, scaler.std_ = mean, std
        return scaler


# ----------------------------------------------------------------------------------
# loaders


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating type, got {dtype}")
    return dtype


def _split_and_scale(x, y, *, seed, val, test, stratify, standardize, dtype):
    """Split, then (optionally) standardize with statistics of the training rows."""
    x_train, y_train, x_val, y_val, x_test, y_test = train_val_test_split(
        x, y, val=val, test=test, seed=seed, stratify=stratify
    )
    scaler = None
    if standardize:
        scaler = Standardizer().fit(x_train)
        x_train, x_val, x_test = (scaler.transform(a) for a in (x_train, x_val, x_test))
    x_train, x_val, x_test = (np.ascontiguousarray(a, dtype=dtype) for a in (x_train, x_val, x_test))
    return dict(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
        x_test=x_test, y_test=y_test, scaler=scaler,
    )


def _select_features(features, names):
    """Column indices for a list of feature names and/or indices."""
    if features is None:
        return list(range(len(names)))
    if isinstance(features, (str, numbers.Integral)):
        features = [features]
    columns = []
    for f in features:
        if isinstance(f, str):
            if f not in names:
                close = difflib.get_close_matches(f, names, n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise ValueError(f"unknown feature {f!r}{hint}")
            columns.append(names.index(f))
        elif isinstance(f, numbers.Integral) and not isinstance(f, bool):
            if not -len(names) <= f < len(names):
                raise ValueError(f"feature index {f} out of range for {len(names)} features")
            columns.append(int(f) % len(names))
        else:
            raise TypeError(f"features must be names or integer indices, got {f!r}")
    if not columns:
        raise ValueError("features is empty")
    if len(set(columns)) != len(columns):
        raise ValueError(f"features repeats a column: {features}")
    return columns


def load_breast_cancer(features=None, standardize=True, seed=0, dtype=np.float32, *, val=0.15, test=0.15):
    """Wisconsin diagnostic breast cancer: 569 tumours, 30 features, binary label.

    Labels: 1 = malignant (212 cases), 0 = benign (357). NOTE: scikit-learn's own
    target is the opposite (0 = malignant); it is flipped here so that the positive
    class is the disease, as ROC analysis and sensitivity assume.

    features: None for all 30, or a list of names (e.g. ``["mean radius"]``) or
    column indices. x is (N, F) ``dtype``; y is int64 (N,).
    """
    dtype = _float_dtype(dtype)
    raw = _datasets.load("breast_cancer")
    names = raw.feature_names
    columns = _select_features(features, names)
    x = raw.data[:, columns].astype(np.float64)
    y = (raw.target == 0).astype(np.int64)  # flip: sklearn has 0 = malignant
    parts = _split_and_scale(
        x, y, seed=seed, val=val, test=test, stratify=True, standardize=standardize, dtype=dtype
    )
    return Dataset(
        **parts,
        feature_names=[names[c] for c in columns],
        class_names=["benign", "malignant"],
        description=(
            "Wisconsin diagnostic breast cancer (UCI, via scikit-learn): features of cell "
            "nuclei from fine-needle aspirates; label 1 = malignant, 0 = benign."
        ),
    )


def load_digits(seed=0, dtype=np.float32, as_images=True, standardize=False, *, val=0.15, test=0.15):
    """UCI handwritten digits: 1797 images of 8x8 pixels, labels 0..9 (int64).

    x is (N, 1, 8, 8) (NCHW, one channel) if ``as_images`` else (N, 64), with pixel
    values 0..16 divided by 16 into [0, 1]; or, with ``standardize=True``, each pixel
    standardized with training statistics.
    """
    dtype = _float_dtype(dtype)
    raw = _datasets.load("digits")
    x = raw.data.astype(np.float64) / 16.0
    if as_images:
        x = x.reshape(-1, 1, 8, 8)
    y = raw.target.astype(np.int64)
    parts = _split_and_scale(
        x, y, seed=seed, val=val, test=test, stratify=True, standardize=standardize, dtype=dtype
    )
    return Dataset(
        **parts,
        feature_names=raw.feature_names,
        class_names=[str(d) for d in range(10)],
        description="UCI optical recognition of handwritten digits (via scikit-learn): 8x8 images, 10 classes.",
    )


def load_regression_pair(seed=0, dtype=np.float32, standardize=True, *, val=0.15, test=0.15):
    """One real variable against another, for fitting y = m·x + b.

    scikit-learn's diabetes data (442 patients): x = body-mass index (kg/m², column
    "bmi"), standardized with training statistics unless ``standardize=False``;
    y = a quantitative measure of disease progression one year after baseline,
    left in its own units. Both are (N, 1) ``dtype``. The split is not stratified.
    """
    dtype = _float_dtype(dtype)
    raw = _datasets.load("diabetes_unscaled")  # raw BMI in kg/m², not sklearn's rescaling
    bmi = raw.feature_names.index("bmi")
    x = raw.data[:, [bmi]].astype(np.float64)
    y = raw.target.reshape(-1, 1).astype(dtype)
    parts = _split_and_scale(
        x, y, seed=seed, val=val, test=test, stratify=False, standardize=standardize, dtype=dtype
    )
    return Dataset(
        **parts,
        feature_names=["bmi"],
        class_names=[],
        description=(
            "Diabetes (Efron et al. 2004, via scikit-learn): x = body-mass index, "
            "y = disease progression one year after baseline."
        ),
    )


# ----------------------------------------------------------------------------------
# batching


def batches(x, y, batch_size, shuffle=True, seed=None, drop_last=False, rng=None):
    """Iterate over (xb, yb) mini-batches of rows.

    shuffle: a fresh order from ``rng`` (a ``np.random.Generator``) or, if not given,
    from ``np.random.default_rng(seed)``. A fixed seed repeats the same order on every
    call; to reshuffle each epoch reproducibly, pass one Generator as ``rng``.
    drop_last: skip a final batch smaller than ``batch_size``.
    """
    # Validate here, not inside the generator, so errors surface at the call.
    batch_size = _check.integer(batch_size, "batch_size", low=1)
    shuffle = _check.flag(shuffle, "batches: shuffle")  # (shuffle="no" shuffled)
    drop_last = _check.flag(drop_last, "batches: drop_last")
    refuse_masked(x, "x")
    refuse_masked(y, "y")
    if shuffle:  # A list becomes an array: its rows cannot be taken by an index array (the shuffled order),
        # which failed with NumPy's "only integer scalar arrays..." at the first batch. (Unshuffled, slices.)
        x, y = (a if getattr(a, "shape", None) is not None else np.asarray(a) for a in (x, y))
    for name, a in (("x", x), ("y", y)):
        if getattr(a, "shape", None) is not None and len(a.shape) == 0:
            raise ValueError(f"batches: {name} must have rows, got a 0-d array")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if seed is not None and rng is not None:
        raise ValueError("give seed or rng, not both")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    order = None
    if shuffle:
        order = (rng if rng is not None else _check.generator(seed)).permutation(len(x))
    return _batch_iterator(x, y, batch_size, order, drop_last)


def _batch_iterator(x, y, batch_size, order, drop_last):
    n = len(x)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            rows = order[start : start + batch_size]
            yield x[rows], y[rows]
