"""Numba's disk cache, made safe (fastconv/_cpu/_numba_cache.py): two processes saving two keys of
one kernel at once never give one key the other's data file (numba/numba#10128), and a kernel whose
cache index already points one signature at another signature's machine code is compiled afresh
instead of run on the wrong types."""
import glob
import os
import pickle
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# check._range_of, (min, max) of a 1-D integer array, for int32 and int64 arrays: two signatures,
# two data files. Run with each other's code, each call fails (without the check: "TypeError: can't
# unbox array from PyObject into native value", in this and every later process).
CHILD = """
import numpy as np
import fastconv._cpu  # the backend: applies the checked cache to its kernels
from fastconv._cpu.check import _range_of
for dtype in (np.int32, np.int64):
    print(dtype.__name__, *_range_of(np.array([5, -3, 7, 1, 9, -8, 2, 4], dtype)))
stats = _range_of.stats
print("loaded", sum(stats.cache_hits.values()), "compiled", sum(stats.cache_misses.values()))
"""
EXPECTED = "int32 -8 9\nint64 -8 9\n"


def _run_child(cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _swap_data_files(index_path):
    """The index's two entries, each pointed at the other's data file (Numba's index format: the
    pickled cache version, then the pickled (source stamp, {key: data file name}))."""
    with open(index_path, "rb") as f:
        version = pickle.load(f)
        stamp, overloads = pickle.loads(f.read())
    assert len(overloads) == 2, overloads
    (key_a, file_a), (key_b, file_b) = overloads.items()
    with open(index_path, "wb") as f:
        pickle.dump(version, f, protocol=-1)
        f.write(pickle.dumps((stamp, {key_a: file_b, key_b: file_a}), protocol=-1))


def test_a_kernel_cached_under_another_signature_is_compiled_afresh(tmp_path):
    assert _run_child(tmp_path) == EXPECTED + "loaded 0 compiled 2\n"  # and caches both
    indexes = glob.glob(str(tmp_path / "**" / "check._range_of-*.nbi"), recursive=True)
    assert len(indexes) == 1, indexes
    _swap_data_files(indexes[0])
    # each finds the other's code: dropped, compiled again and saved over the bad entry ...
    assert _run_child(tmp_path) == EXPECTED + "loaded 0 compiled 2\n"
    # ... so that the next process loads both (a check that refused good entries would compile them)
    assert _run_child(tmp_path) == EXPECTED + "loaded 2 compiled 0\n"


def test_every_cached_cpu_kernel_has_the_checked_cache():
    """(And the data files named by key.) A kernel module imported later than the backend's check
    (or one that runs a kernel on import before it, as _blas.py does) would load unchecked: every
    fastconv dispatcher with a disk cache, anywhere in memory, must have the checked one."""
    import gc

    import fastconv._cpu  # noqa: F401 (the backend, and its check)
    from numba.core.caching import FunctionCache, IndexDataCacheFile
    from numba.core.dispatcher import Dispatcher

    from fastconv._cpu._numba_cache import NAMES_BY_KEY, _DataFilesNamedByKey, _SignatureCheckedCache

    files = _DataFilesNamedByKey if NAMES_BY_KEY else IndexDataCacheFile  # (a Numba whose save changed: its own)
    # (type(), not isinstance: the heap holds weak proxies, dead ones raise when asked their class)
    cached = [d for d in gc.get_objects() if issubclass(type(d), Dispatcher)
              and d.py_func.__module__.startswith("fastconv") and isinstance(getattr(d, "_cache", None), FunctionCache)]
    assert len(cached) > 50
    unchecked = [f"{d.py_func.__module__}.{d.py_func.__qualname__}" for d in cached
                 if (type(d._cache), type(d._cache._cache_file)) != (_SignatureCheckedCache, files)]
    assert not unchecked, unchecked


BASE = "kernel-12.py311"  # a kernel's cache files: BASE.nbi, its index, and BASE.<name>.nbc, its data


def _replay(cls, path, b_during_write):
    """Two processes saving keys a and b of one kernel at once, replayed in one: B's whole save runs
    as A opens its `b_during_write`-th file for writing. Before every write and at the end, each
    entry of the index must load its own key's data (what a reader relies on). Returns what a and b
    then load (None: an entry lost, compiled again later) and the entries that broke that."""
    path.mkdir(parents=True)
    broken = []

    def check():
        reader = cls(str(path), BASE, "stamp")
        for key, name in reader._load_index().items():
            try:
                loaded = reader._load_data(name)
            except OSError:
                loaded = None
            if loaded != f"data of {key}":
                broken.append((key, loaded))

    class Replayed(cls):
        writes, during = 0, None

        def _open_for_write(self, file):
            check()
            self.writes += 1
            if self.during is not None and self.writes == b_during_write:
                self.during()
            return super()._open_for_write(file)

    a, b = Replayed(str(path), BASE, "stamp"), Replayed(str(path), BASE, "stamp")
    a.during = lambda: b.save("key b", "data of key b")
    a.save("key a", "data of key a")
    check()
    reader = cls(str(path), BASE, "stamp")
    return reader.load("key a"), reader.load("key b"), broken


def _named_by_key_variants():
    from fastconv._cpu._numba_cache import _DataFilesNamedByKey

    class IndexFirst(_DataFilesNamedByKey):  # Numba's order: the index written before the data
        def _save_data(self, name, data):
            self.pending = name, data

        def _save_index(self, overloads):
            super()._save_index(overloads)
            super()._save_data(*self.pending)

    class ReadOnce(_DataFilesNamedByKey):  # the index not read again before it is written
        def _load_index(self):
            self.__dict__.setdefault("first", super()._load_index())
            return dict(self.first)

    return _DataFilesNamedByKey, IndexFirst, ReadOnce


def _keeps_both(cls, tmp_path):
    """The replays' verdict: B during A's first write (both entries kept) and during its second
    (then A had read the index before B wrote it: b's entry may be lost), never a broken entry."""
    first, second = _replay(cls, tmp_path / "first", 1), _replay(cls, tmp_path / "second", 2)
    return first == ("data of key a", "data of key b", []) and second[0] == "data of key a" and \
        second[1] in ("data of key b", None) and second[2] == []


def test_two_keys_saved_at_once_never_share_a_data_file(tmp_path):
    ours, index_first, read_once = _named_by_key_variants()
    assert _keeps_both(ours, tmp_path / "ours")
    # the replays catch each property's absence (index before data; one read of the index)
    assert not _keeps_both(index_first, tmp_path / "index_first")
    assert not _keeps_both(read_once, tmp_path / "read_once")


def test_a_kernel_s_data_files_are_named_by_key_and_stamp_and_an_older_source_s_are_removed(tmp_path):
    from fastconv._cpu._numba_cache import _DataFilesNamedByKey

    old = _DataFilesNamedByKey(str(tmp_path), BASE, "old stamp")
    old.save("key a", "old data")
    (tmp_path / f"{BASE}.1.nbc").write_bytes(b"Numba's numbering")
    (tmp_path / "kernel-123.py311.1.nbc").write_bytes(b"another kernel's")
    new = _DataFilesNamedByKey(str(tmp_path), BASE, "new stamp")  # the source edited
    names = {key: new._data_name_of(key) for key in ("key a", "key b")}
    assert names["key a"] != names["key b"] and names["key a"] != old._data_name_of("key a")
    assert new.load("key a") is None
    new.save("key b", "new data")
    new.save("key a", "new data of a")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"{BASE}.nbi", "kernel-123.py311.1.nbc", *names.values()])
    assert (new.load("key a"), new.load("key b")) == ("new data of a", "new data")
    # a fresh instance, as another process makes one, names and finds it alike
    again = _DataFilesNamedByKey(str(tmp_path), BASE, "new stamp")
    assert again._data_name_of("key a") == names["key a"] and again.load("key a") == "new data of a"
