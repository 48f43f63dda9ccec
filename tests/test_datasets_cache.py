"""The data sets' cache (fastconv/_datasets.py): a cached load gives scikit-learn's arrays without
importing it, and a cache file that is damaged, tampered with or unwritable costs a load, never
changes one."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fastconv import _datasets, data

NAMES = sorted(_datasets._LOADERS)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA_CACHE", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def _same(a, b):
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.target, b.target)
    assert a.data.dtype == b.data.dtype == np.float64 and a.target.dtype == b.target.dtype
    assert a.feature_names == b.feature_names and all(type(n) is str for n in a.feature_names)


def _cache_only(monkeypatch):
    def refuse(name):
        raise AssertionError(f"{name} was loaded from scikit-learn, not from the cache")

    monkeypatch.setattr(_datasets, "_from_sklearn", refuse)


@pytest.mark.parametrize("name", NAMES)
def test_a_cached_load_is_scikit_learns_arrays(cache, monkeypatch, name):
    fresh = _datasets._from_sklearn(name)
    first = _datasets.load(name)
    _same(first, fresh)
    (path,) = cache.iterdir()
    assert path.name.startswith(f"{name}-v{_datasets.FORMAT}-scikit-learn-") and path.suffix == ".npz"
    _cache_only(monkeypatch)
    _same(_datasets.load(name), fresh)


def test_the_loaders_give_the_same_split_from_the_cache(cache, monkeypatch):
    first = data.load_breast_cancer(seed=3), data.load_digits(seed=3), data.load_regression_pair(seed=3)
    _cache_only(monkeypatch)
    second = data.load_breast_cancer(seed=3), data.load_digits(seed=3), data.load_regression_pair(seed=3)
    for a, b in zip(first, second):
        for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
        assert a.feature_names == b.feature_names


def test_a_cached_load_does_not_import_scikit_learn(cache):
    _datasets.load("digits")
    code = ("import sys; from fastconv import data; d = data.load_digits(); "
            "assert d.x_train.shape[1:] == (1, 8, 8); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, FASTCONV_DATA_CACHE=str(cache)))
    assert out.stdout.strip() == "False"


def _damaged(path):
    """Ways a cache file can come back wrong, each a function of its bytes."""
    whole = path.read_bytes()
    data_at = whole.index(b"data.npy")  # a byte inside the first member's compressed data
    flipped = bytearray(whole)
    flipped[data_at + 200] ^= 0xFF
    return {
        "empty": b"",
        "truncated": whole[: len(whole) // 2],
        "a flipped byte": bytes(flipped),
        "not a zip": b"PK\x03\x04 this is not what was written",
    }


@pytest.mark.parametrize("how", ["empty", "truncated", "a flipped byte", "not a zip"])
def test_a_damaged_cache_file_is_loaded_again_and_replaced(cache, how):
    fresh = _datasets.load("digits")
    (path,) = cache.iterdir()
    path.write_bytes(_damaged(path)[how])
    _same(_datasets.load("digits"), fresh)
    assert _datasets._read(str(path)) is not None  # rewritten whole


@pytest.mark.parametrize("tamper", [
    lambda d: dict(d, data=d["data"].astype(np.float32)),
    lambda d: dict(d, data=d["data"][:, :-1]),
    lambda d: dict(d, target=d["target"][:-1]),
    lambda d: dict(d, feature_names=d["feature_names"][:-1]),
    lambda d: {k: v for k, v in d.items() if k != "target"},
    lambda d: dict(d, target=np.array(["a"] * len(d["target"]))),
])
def test_a_cache_file_of_other_arrays_is_loaded_again(cache, tamper):
    fresh = _datasets.load("breast_cancer")
    (path,) = cache.iterdir()
    with np.load(path) as f:
        arrays = dict(f)
    np.savez(path, **tamper(arrays))
    _same(_datasets.load("breast_cancer"), fresh)
    _same(_datasets._read(str(path)), fresh)  # replaced


def test_a_write_cut_short_leaves_no_file_and_no_temp_file(cache, monkeypatch):
    """A file is written whole or not at all: a write that fails halfway (a full disk) leaves neither
    a half file under the set's name nor its temp file, and the load still gives the set."""
    def half_then_full(path, **arrays):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half of a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_datasets.np, "savez_compressed", half_then_full)
    _same(_datasets.load("digits"), _datasets._from_sklearn("digits"))
    assert list(cache.iterdir()) == []


def test_an_empty_setting_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _datasets.cache_directory() is None
    _same(_datasets.load("diabetes_unscaled"), _datasets._from_sklearn("diabetes_unscaled"))
    assert list(tmp_path.iterdir()) == []


def test_without_a_setting_the_cache_is_under_xdg_cache_home_or_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTCONV_DATA_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _datasets.cache_directory() == str(tmp_path / "xdg" / "fastconv" / "datasets")
    for ignored in ("relative/xdg", ""):  # (the XDG spec: a relative path is to be ignored)
        monkeypatch.setenv("XDG_CACHE_HOME", ignored)
        assert _datasets.cache_directory() == str(tmp_path / ".cache" / "fastconv" / "datasets")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _datasets.cache_directory() == str(tmp_path / ".cache" / "fastconv" / "datasets")
    monkeypatch.setenv("FASTCONV_DATA_CACHE", "~/sets")
    assert _datasets.cache_directory() == str(tmp_path / "sets")


def test_a_cache_that_cannot_be_written_costs_only_the_load(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("in the cache directory's place")
    monkeypatch.setenv("FASTCONV_DATA_CACHE", str(blocker / "datasets"))
    _same(_datasets.load("digits"), _datasets._from_sklearn("digits"))
    assert blocker.read_text() == "in the cache directory's place"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file"]  # no temp file left


def test_a_cache_file_is_named_by_scikit_learns_version(cache, monkeypatch):
    installed = _datasets.metadata.version("scikit-learn")
    _datasets.load("digits")
    monkeypatch.setattr(_datasets.metadata, "version", lambda package: "0.0-another")
    _datasets.load("digits")
    tag = f"digits-v{_datasets.FORMAT}-scikit-learn"
    assert sorted(p.name for p in cache.iterdir()) == sorted([f"{tag}-{installed}.npz", f"{tag}-0.0-another.npz"])
