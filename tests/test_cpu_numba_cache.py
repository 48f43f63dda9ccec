"""Numba's disk cache, checked (fastconv/_cpu/_numba_cache.py): a kernel whose cache index points
one signature at another signature's machine code, as two processes compiling both at once can
leave it (numba/numba#10128), is compiled afresh instead of run on the wrong types."""
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
    """A kernel module imported later than the backend's check (or one that runs a kernel on import
    before it, as _blas.py does) would load unchecked: every fastconv dispatcher with a disk cache,
    anywhere in memory, must have the checked one."""
    import gc

    import fastconv._cpu  # noqa: F401 (the backend, and its check)
    from numba.core.caching import FunctionCache
    from numba.core.dispatcher import Dispatcher

    from fastconv._cpu._numba_cache import _SignatureCheckedCache

    # (type(), not isinstance: the heap holds weak proxies, dead ones raise when asked their class)
    cached = [d for d in gc.get_objects() if issubclass(type(d), Dispatcher)
              and d.py_func.__module__.startswith("fastconv") and isinstance(getattr(d, "_cache", None), FunctionCache)]
    assert len(cached) > 50
    unchecked = [f"{d.py_func.__module__}.{d.py_func.__qualname__}" for d in cached
                 if type(d._cache) is not _SignatureCheckedCache]
    assert not unchecked, unchecked
