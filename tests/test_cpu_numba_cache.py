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
    from numba.core.caching import FunctionCache
    from numba.core.dispatcher import Dispatcher

    from fastconv._cpu._numba_cache import _DataFilesNamedByKey, _SignatureCheckedCache

    # (type(), not isinstance: the heap holds weak proxies, dead ones raise when asked their class)
    cached = [d for d in gc.get_objects() if issubclass(type(d), Dispatcher)
              and d.py_func.__module__.startswith("fastconv") and isinstance(getattr(d, "_cache", None), FunctionCache)]
    assert len(cached) > 50
    unchecked = [f"{d.py_func.__module__}.{d.py_func.__qualname__}" for d in cached
                 if (type(d._cache), type(d._cache._cache_file)) != (_SignatureCheckedCache, _DataFilesNamedByKey)]
    assert not unchecked, unchecked


def _race(cls, tmp_path):
    """Two processes saving two keys of one kernel at once, replayed in one: A's save runs B's whole
    save between its own two file writes, and B's first read of the index is from before A wrote
    anything (empty). What each key then loads: its own data, or None (an entry lost: compiled again
    later); Numba's numbering gives key b key a's data."""
    tmp_path.mkdir()

    def cache_file(hook=None, stale_first_read=False):
        class Replayed(cls):
            reads = writes = 0

            def _load_index(self):
                self.reads += 1
                return {} if stale_first_read and self.reads == 1 else super()._load_index()

            def _open_for_write(self, path):
                self.writes += 1
                if hook is not None and self.writes == 2:
                    hook()
                return super()._open_for_write(path)
        return Replayed(str(tmp_path), "kernel-12.py311", "stamp")

    b = cache_file(stale_first_read=True)
    a = cache_file(hook=lambda: b.save("key b", "data of b"))
    a.save("key a", "data of a")
    reader = cls(str(tmp_path), "kernel-12.py311", "stamp")
    return reader, reader.load("key a"), reader.load("key b")


def test_two_keys_saved_at_once_never_share_a_data_file(tmp_path):
    from numba.core.caching import IndexDataCacheFile

    from fastconv._cpu._numba_cache import _DataFilesNamedByKey

    assert _race(IndexDataCacheFile, tmp_path / "numba")[1:] == (None, "data of a")  # crossed: the failure
    reader, loaded_a, loaded_b = _race(_DataFilesNamedByKey, tmp_path / "ours")
    assert loaded_a in ("data of a", None) and loaded_b in ("data of b", None)
    # each in its own file (here b's index entry is lost: A read the index before B wrote it)
    assert [reader._load_data(f"kernel-12.py311.{_key_hash(key)}.nbc") for key in ("key a", "key b")] == [
        "data of a", "data of b"]


def test_a_kernel_s_data_files_are_named_by_key_and_an_older_source_s_are_removed(tmp_path):
    from fastconv._cpu._numba_cache import _DataFilesNamedByKey

    old = _DataFilesNamedByKey(str(tmp_path), "kernel-12.py311", "old stamp")
    old.save("key a", "old data")
    (tmp_path / "kernel-12.py311.1.nbc").write_bytes(b"Numba's numbering")
    (tmp_path / "kernel-123.py311.1.nbc").write_bytes(b"another kernel's")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "kernel-12.py311.nbi", "kernel-12.py311.1.nbc", "kernel-123.py311.1.nbc",
        f"kernel-12.py311.{_key_hash('key a')}.nbc"])
    new = _DataFilesNamedByKey(str(tmp_path), "kernel-12.py311", "new stamp")  # the source edited
    assert new.load("key a") is None
    new.save("key b", "new data")
    new.save("key a", "new data of a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "kernel-12.py311.nbi", "kernel-123.py311.1.nbc",
        f"kernel-12.py311.{_key_hash('key a')}.nbc", f"kernel-12.py311.{_key_hash('key b')}.nbc"])
    assert (new.load("key a"), new.load("key b")) == ("new data of a", "new data")


def _key_hash(key):
    import hashlib
    return hashlib.sha256(repr(key).encode()).hexdigest()[:20]
