"""Reusing the memory of large dead arrays on the CPU: a caching allocator, as PyTorch's for CUDA.

Why: glibc maps every allocation above its mmap threshold (dynamic, up to 32 MiB) fresh from the
kernel and unmaps it on free, and below it grows and trims its heap's top as blocks come and go, so
a new large array faults in and zeroes its pages on first touch. On the dev machine NumPy's copy of
a 1 GiB array runs at 6.5 GB/s into new memory and 24 GB/s into existing memory; ReLU returning a
new 1 GiB array ran at 16.7 GB/s, into existing memory at 26. Below 32 MiB the same happens: the
512-channel 7x7 convolution's backward (16-24 MiB of scratch and outputs) took 40-78 ms a call,
erratically, in a process that also allocated other sizes, and 34-36 ms with glibc's thresholds
fixed (GLIBC_TUNABLES) or with its buffers from here. An op called in a loop (a training step, a
benchmark) paid that on every call.

How: the cpu backend allocates its outputs, and its large scratch, with `empty` / `empty_like`.
Below MIN_BYTES that is np.empty. From MIN_BYTES up the array views a cached buffer through a small
`_Lease` object, its base; when the last array or view of it dies, the lease's __del__ puts the
buffer back. Buffers are matched by size (rounded up to 64 KiB, or 2 MiB from 32 MiB on) and kept up
to FASTCONV_CPU_CACHE_MB in all (default 2048; 0 turns the cache off), those below 32 MiB up to
SMALL_LIMIT of it, the oldest let go first;
`fastconv.empty_cache()` hands them all back to the system.
"""
import math
import operator
import os
import threading

import numpy as np

__all__ = ["MIN_BYTES", "SMALL_LIMIT", "empty", "empty_like", "empty_cache", "cached_bytes"]

MIN_BYTES = 1 << 20
# Of the cache, buffers below _LARGE_BYTES keep at most this: a process whose sizes keep changing (a
# search over widths and batch sizes) would otherwise fill the whole limit with buffers of 1 MiB up,
# few of them ever matched again (600 random sizes of 1-32 MiB: 2 GiB cached, 127 reused).
SMALL_LIMIT = 256 << 20
_GRANULE, _LARGE_GRANULE, _LARGE_BYTES = 64 << 10, 2 << 20, 32 << 20  # the rounding of sizes


def _limit_from_environment():
    raw = os.environ.get("FASTCONV_CPU_CACHE_MB", "").strip() or "2048"
    try:
        mib = int(raw)
    except ValueError:
        mib = -1
    if mib < 0:
        raise ValueError(f"FASTCONV_CPU_CACHE_MB must be a whole number of MiB >= 0, got {raw!r}")
    return mib << 20


_limit = _limit_from_environment()
_cached = []                # free buffers, oldest first
_lock = threading.Lock()


def _after_fork_in_child():
    # A thread of the parent may have held the lock at the fork: the child starts afresh.
    global _lock, _cached
    _lock, _cached = threading.Lock(), []
    _totals[0] = _totals[1] = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Lease:
    """The base of an array that views a cached buffer: gives the buffer back when it dies."""
    __slots__ = ("buffer", "__array_interface__")

    def __init__(self, buffer, shape, dtype):
        self.buffer = buffer
        self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "descr": dtype.descr,
                                    "data": (buffer.ctypes.data, False), "version": 3}

    def __reduce__(self):  # a copy would give the same buffer back twice, to two later arrays
        raise TypeError("a cached buffer's lease cannot be copied or pickled (copy the array instead)")

    def __del__(self):
        try:
            _give_back(self.buffer)
        except Exception:  # at interpreter exit the module may be half torn down: just let it go
            pass


def empty(shape, dtype):
    """np.empty(shape, dtype), from the cache when it is MIN_BYTES or more."""
    dtype = np.dtype(dtype)
    try:  # (not np.ndim(shape): 1 us of a 10 us small linear layer)
        shape = (operator.index(shape),)
    except TypeError:
        shape = tuple(map(int, shape))
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or _limit == 0:
        return np.empty(shape, dtype)
    granule = _LARGE_GRANULE if nbytes >= _LARGE_BYTES else _GRANULE
    size = -(-nbytes // granule) * granule
    buffer = _take(size)
    if buffer is None:
        try:
            buffer = np.empty(size, np.uint8)
        except MemoryError:  # the cached buffers of other sizes may be what is missing
            empty_cache()
            buffer = np.empty(size, np.uint8)
    return np.asarray(_Lease(buffer, shape, dtype))


def empty_like(a):
    return empty(a.shape, a.dtype)


# Nothing here waits for the lock: its holder may be this very thread (a garbage collection, a
# finalizer or a signal handler that allocates or frees an array while _take or _give_back runs), and
# waiting would hang it. A miss then allocates afresh, a buffer given back is simply freed. Nor is
# anything the collector tracks allocated while the lock is held (the totals are kept, not summed by
# generators), so no collection starts inside it.
_totals = [0, 0]  # the bytes in _cached: all of them, those below _LARGE_BYTES


def _count(nbytes, sign):
    _totals[0] += sign * nbytes
    if nbytes < _LARGE_BYTES:
        _totals[1] += sign * nbytes


def _take(size):
    if not _lock.acquire(blocking=False):
        return None
    try:
        for k in range(len(_cached) - 1, -1, -1):  # the most recently freed first: its pages are warmest
            if _cached[k].nbytes == size:
                _count(size, -1)
                return _cached.pop(k)
        return None
    finally:
        _lock.release()


def _give_back(buffer):
    if not _lock.acquire(blocking=False):
        return
    try:
        if buffer.nbytes > _limit:
            return
        _cached.append(buffer)
        _count(buffer.nbytes, 1)
        k = 0
        while _totals[1] > min(_limit, SMALL_LIMIT):  # the oldest of the small ones first
            if _cached[k].nbytes < _LARGE_BYTES:
                _count(_cached.pop(k).nbytes, -1)
            else:
                k += 1
        while _totals[0] > _limit:
            _count(_cached.pop(0).nbytes, -1)
    finally:
        _lock.release()


def empty_cache():
    """Hands every cached buffer back to the system (arrays in use keep theirs)."""
    if not _lock.acquire(timeout=1.0):  # (another thread holds it for microseconds; this one: never released)
        return
    try:
        freed = _cached[:]
        _cached.clear()
        _totals[0] = _totals[1] = 0
    finally:
        _lock.release()
    del freed  # unmapped outside the lock


def cached_bytes():
    return _totals[0]
