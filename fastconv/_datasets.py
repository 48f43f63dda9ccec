"""scikit-learn's bundled data sets, kept on disk as NumPy arrays after the first load.

Importing scikit-learn takes about a second (it imports SciPy): longer than training the digits CNN,
for data of a few hundred kB. So the first load of each set stores its arrays in an .npz under the
cache directory, named by scikit-learn's version (read from the package metadata, without importing
it); later loads read that file and never import scikit-learn.

The directory: FASTCONV_DATA_CACHE if set (empty: no cache), else $XDG_CACHE_HOME/fastconv/datasets
(an absolute XDG_CACHE_HOME, as the XDG spec has it), else ~/.cache/fastconv/datasets. A damaged file
costs a load: one that does not read back whole (the zip's CRCs), or whose arrays have other dtypes
or shapes than the loader gives, is loaded again from scikit-learn and replaced. A file is written
whole or not at all (a hidden temp file, then a rename); a directory that cannot be written is left
alone. The names carry FORMAT, to be raised when what a file holds changes, so that no later fastconv
reads an earlier one's files as its own.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from importlib import metadata

import numpy as np

FORMAT = 1  # of the files' content: data, target, feature_names as _from_sklearn gives them

# each set: scikit-learn's loader and its keyword arguments
_LOADERS = {
    "breast_cancer": ("load_breast_cancer", {}),
    "digits": ("load_digits", {}),
    "diabetes_unscaled": ("load_diabetes", {"scaled": False}),  # raw BMI in kg/m², not sklearn's rescaling
}


@dataclass(frozen=True)
class Raw:
    """A set as scikit-learn gives it: data (N, F) float64, target (N,), feature_names (F,) str."""

    data: np.ndarray
    target: np.ndarray
    feature_names: list


def load(name: str) -> Raw:
    """The set `name` (a key of _LOADERS), from the cache when it holds it."""
    path = _cache_file(name)
    raw = _read(path) if path else None
    if raw is None:
        raw = _from_sklearn(name)
        if path:
            _write(path, raw)
    return raw


def cache_directory() -> str | None:
    """Where the sets are kept; None when FASTCONV_DATA_CACHE is set empty."""
    chosen = os.environ.get("FASTCONV_DATA_CACHE")
    if chosen is not None:
        return os.path.expanduser(chosen) if chosen else None
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastconv", "datasets")


def cached_files(directory) -> list:
    """The names of this format's files in `directory` (not the temp files of a write in progress, nor
    files of another format, which no load reads)."""
    return sorted(f for f in os.listdir(directory)
                  if f.endswith(".npz") and not f.startswith(".") and f"-v{FORMAT}-scikit-learn-" in f)


def _cache_file(name):
    directory = cache_directory()
    if directory is None:
        return None
    try:
        version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return None  # _from_sklearn's import says what is missing
    return os.path.join(directory, f"{name}-v{FORMAT}-scikit-learn-{version}.npz")


def _from_sklearn(name):
    from sklearn import datasets

    function, kwargs = _LOADERS[name]
    bunch = getattr(datasets, function)(**kwargs)
    return Raw(np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target),
               [str(n) for n in bunch.feature_names])


def _read(path):
    """The set in `path`, or None if there is none or it is not whole and well-formed."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data, target, names = f["data"], f["target"], f["feature_names"]
    except Exception:  # missing, unreadable, truncated, a bad CRC, another format: load it again
        return None
    well_formed = (data.dtype == np.float64 and data.ndim == 2 and target.ndim == 1
                   and target.dtype.kind in "iuf" and len(target) == len(data)
                   and names.dtype.kind == "U" and names.shape == (data.shape[1],))
    return Raw(data, target, names.tolist()) if well_formed else None


def _write(path, raw):
    """path = raw, whole or not at all; nothing when the directory cannot be written."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp.npz")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.savez_compressed(tmp, data=raw.data, target=raw.target, feature_names=np.array(raw.feature_names, dtype=str))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full disk: the next load reads scikit-learn again
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
