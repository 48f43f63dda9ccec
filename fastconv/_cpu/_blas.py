"""BLAS GEMM callable from inside Numba parallel loops, and a guard that keeps it single-threaded.

Why: the convolution's GEMMs are small per sample (e.g. 64 x 288 x 196). Run as one batched
np.matmul they were one multi-threaded OpenBLAS call each, and OpenBLAS's 2-thread split of small
GEMMs collapsed whenever the machine was busy (2000 ms instead of 14 ms for 128 of them); its
worker threads also spin after each call, taking the cores from the Numba loop that follows.
Instead each Numba thread runs its own samples' GEMMs with single-threaded BLAS, so one parallel
runtime (Numba's) owns the cores.

`gemm` calls Numba's own BLAS entry point (numba_xxgemm in Numba's helper library, which forwards
to scipy.linalg.cython_blas, i.e. scipy's OpenBLAS): unlike np.dot it takes strided views (any
leading dimension), transposes and beta, so no operand is copied and C += A @ B needs no temporary.
"""
import contextlib
import os
import sys
import threading

import numba.np.linalg
import numpy as np
from numba import njit, types
from threadpoolctl import ThreadpoolController

from ._numba_cache import check_signatures

__all__ = ["gemm", "single_threaded_blas", "blas_guard"]

numba.np.linalg.ensure_blas()  # imports scipy.linalg.cython_blas (raises if SciPy is missing)

_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char,              # kind ('s'/'d'), transa, transb ('n'/'t')
    types.intp, types.intp, types.intp,              # m, n, k
    types.voidptr, types.voidptr, types.intp,        # alpha, a, lda
    types.voidptr, types.intp, types.voidptr,        # b, ldb, beta
    types.voidptr, types.intp))                      # c, ldc

_N, _T = ord("n"), ord("t")


@njit(inline="always")
def _leading(a):
    return a.strides[0] // a.itemsize


@njit(nogil=True)
def gemm(a, b, c, beta, trans_a, trans_b):
    """c = op(a) @ op(b) + beta * c on row-major 2-D arrays whose last dimension is contiguous
    (any row stride); op transposes when trans_* is True. c must not overlap a or b."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty sum: BLAS refuses a leading dimension of 0 and leaves c as it was
        if beta == 0.0:
            c[:] = 0
        else:
            c *= beta
        return
    alpha = np.ones(1, c.dtype)
    beta_ = np.full(1, beta, c.dtype)
    kind = 115 if c.itemsize == 4 else 100  # 's' or 'd'
    # Row-major C = A' B' is column-major C^T = B'^T A'^T: swap the operands, keep the flags.
    _xxgemm(kind, _T if trans_b else _N, _T if trans_a else _N, n, m, k,
            alpha.ctypes, b.ctypes, max(1, _leading(b)), a.ctypes, max(1, _leading(a)),
            beta_.ctypes, c.ctypes, max(1, _leading(c)))


@njit(nogil=True, cache=True)
def _first_call(a):
    # Numba's helper resolves the BLAS function pointer (taking the GIL) on its first call: do that
    # once here, on the calling thread, rather than inside a parallel loop.
    c = np.empty((1, 1), a.dtype)
    gemm(a, a, c, 0.0, False, False)


check_signatures([sys.modules[__name__]])  # (before the first call loads them: _numba_cache.py)
for _dtype in (np.float32, np.float64):
    _first_call(np.ones((1, 1), _dtype))


# The BLAS libraries loaded now (NumPy's and SciPy's OpenBLAS; `gemm` calls SciPy's).
_blas_libraries = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


# BLAS thread counts are process-wide, and several Python threads may run kernels at once: the
# first to enter saves the counts and sets 1, the last to leave restores them. (Each saving and
# restoring on its own, a thread entering while another was inside saved 1 and, leaving last, left
# BLAS at 1 thread for good; one leaving first set it back to 2 under the others' kernels.)
_guard_lock = threading.Lock()
_guard_users = 0
_guard_saved: list = []


def _count_setter(lib):
    """A function setting lib's (process-wide) thread count from any thread.

    threadpoolctl >= 3.8 lets only one thread set OpenBLAS's count: the first that did, for as long
    as it lives (or until it clears that); other threads' set_num_threads do nothing. Held by the
    thread of the first kernel (the main thread, usually), the guard was a no-op in every other
    thread: BLAS on its 2 threads inside Numba's, and other bits than on the main thread (a float64
    linear layer). Its (private) _real_set_num_threads is the call set_num_threads makes for the
    controlling thread; the guard's own lock orders the threads that run kernels. Taking control
    around each public call instead (clear_controlling_thread(force=True), set, clear; the fallback
    where the private method is missing) cost 2.3 us a library: the guard 5 -> 12 us, a 64x65->64
    float32 linear forward 24 -> 31 us (an AMD EPYC host, 2 threads)."""
    real = getattr(lib, "_real_set_num_threads", None)
    release = getattr(lib, "clear_controlling_thread", None)
    if real is not None or release is None:  # (no control to take before 3.8)
        return real or lib.set_num_threads

    def take_control_and_set(count):
        release(force=True)
        lib.set_num_threads(count)
        release()
    return take_control_and_set


_count_setters = [_count_setter(lib) for lib in _blas_libraries]


def _set_threads(counts):
    for set_count, count in zip(_count_setters, counts):
        set_count(count)


def _after_fork_in_child():
    # The threads that were inside are not in the child: it starts with no one inside, its BLAS
    # back at the counts they saved (a thread of the parent may also have held the lock).
    global _guard_lock, _guard_users
    if _guard_users:
        _set_threads(_guard_saved)
    _guard_lock, _guard_users = threading.Lock(), 0


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def single_threaded_blas():
    """Every loaded BLAS library at 1 thread inside, its previous count restored when the last
    thread inside leaves (a few microseconds). Used around Numba loops that call `gemm` from
    several threads."""
    global _guard_users, _guard_saved
    with _guard_lock:
        if _guard_users == 0:
            _guard_saved = [lib.num_threads for lib in _blas_libraries]
            _set_threads([1] * len(_blas_libraries))
        _guard_users += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_users -= 1
            if _guard_users == 0:
                _set_threads(_guard_saved)


_NOTHING_TO_GUARD = contextlib.nullcontext()


def blas_guard(calls_blas):
    """single_threaded_blas() around a kernel that calls `gemm`; nothing around one that does not
    (gemm32's): the guard reads and sets two libraries' thread counts, ~5 us, six times in a small
    CNN's training step of ~1.5 ms."""
    return single_threaded_blas() if calls_blas else _NOTHING_TO_GUARD
