"""The "cpu" backend: Numba kernels (parallel over the machine's cores) on NumPy arrays. The GEMMs:
our float32 gemm32 (_gemm32.py) on AVX-512 and AVX2 hosts for most of them, and BLAS for the rest,
called single-threaded from inside the Numba threads (see _blas.py), but for matmul's small,
narrow, large-B and float64 products, which are np.dot's (dense._by_gemm32). Exposes the same op
functions as the native backends.

Kernels are compiled on first use and cached on disk (cache=True); Numba falls back to a per-user
cache directory when the install directory is read-only. Its data files are named by key and a
cached entry is loaded only for the signature it was compiled for (_numba_cache.py: under Numba's
own naming, concurrent compiles could cross them). Numba checks a cached kernel against its own
file only: after editing a helper that kernels compile in from another module (any module of
fastconv/_cpu: _blas.py's gemm too, and between the modules of the conv package, e.g.
conv/_epilogue.py's _bias_activate), clear fastconv/_cpu/__pycache__ and
fastconv/_cpu/conv/__pycache__ or set NUMBA_CACHE_DIR, or the old code runs.
"""
import os
import sys

# Numba's OpenMP workers and OpenBLAS's threads take turns on the same cores (a BLAS GEMM, then a
# fused Numba epilogue). With OpenMP's default spin-waiting, each side spins on the cores the other
# needs: a 128x3136x128 linear forward took 7.4 ms instead of 0.69 ms on 2 cores. Passive waiting
# must be set before libgomp starts, i.e. before Numba's first parallel call.
# ...but not at once: a worker that sleeps the moment a loop ends must be woken for the next one,
# and on a virtual machine waking an idle vCPU is slow. A short spin (2000 spins: libgomp's own
# estimate is 20 us, measured here ~40 us) keeps the workers awake between back-to-back kernels.
# Zen 4 KVM host, 2 threads: a 1M-value ReLU in a loop 124-149 -> 63-74 us; a 128x3136->128 linear
# forward after a 0.1 s pause ~1050 -> ~495 us for the next 25 calls. Alternating with NumPy's
# two-thread SGEMM cost the same as without the spin (20000 spins cost it ~0.4 ms a switch).
# GOMP_SPINCOUNT overrides OMP_WAIT_POLICY's count, so both are set only where the user chose no
# wait policy.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")

import numpy as np  # noqa: E402

from . import _memory, check, conv, dense, loss, optim, pool
from ._numba_cache import check_signatures

# Before any kernel loads from Numba's disk cache (_blas.py checks its own, which run on import).
check_signatures(module for name, module in list(sys.modules.items()) if name.startswith(__name__ + "."))

FAMILIES = (dense, conv, pool, loss, optim, check)


class CpuBackend:
    name = "cpu"
    xp = np
    kernels_tolerate_bad_indices = False  # the Numba kernels index without bounds checks

    def __init__(self):
        _bind_ops(self)
        _instances.append(self)

    @staticmethod
    def empty_cache():
        """Frees the cached buffers of dead large outputs (_memory.py)."""
        _memory.empty_cache()

    def __repr__(self):
        return "<fastconv backend 'cpu'>"


def backend() -> CpuBackend:
    return CpuBackend()


# GNU OpenMP, Numba's usual threading layer on Linux, cannot run in a process forked after its
# threads started: Numba then kills the child with SIGTERM at its first parallel kernel (a
# multiprocessing.Pool whose worker dies that way waits for its task forever). So in such a child
# every op raises instead, saying what to do; the parent is untouched. With another layer
# (NUMBA_THREADING_LAYER=workqueue or tbb), or no kernel run before the fork, nothing changes.
_instances: list = []
_forked_after_openmp = False


def _bind_ops(instance):
    """The families' op functions as the instance's attributes; in a child forked after OpenMP ran,
    functions that raise instead."""
    for family in FAMILIES:
        for op in family.__all__:
            setattr(instance, op, _refused_in_fork(op) if _forked_after_openmp else getattr(family, op))


def _refused_in_fork(op):
    def refused(*args, **kwargs):
        raise RuntimeError(
            f"{op}: this process was forked from one that had already run fastconv's cpu kernels on Numba's "
            "GNU OpenMP threads, which cannot run in a forked child (Numba would kill it). Start worker "
            "processes with multiprocessing's 'spawn' or 'forkserver' method (multiprocessing.get_context"
            "('spawn')), or fork before the first op runs, or set NUMBA_THREADING_LAYER=workqueue in the "
            "environment before importing fastconv")
    return refused


def _after_fork_in_child():
    global _forked_after_openmp
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    if parallel is None or not parallel._is_initialized:
        return
    import numba
    from numba.np.ufunc import omppool
    if numba.threading_layer() != "omp" or omppool.openmp_vendor != "GNU":
        return
    _forked_after_openmp = True
    for instance in _instances:
        _bind_ops(instance)


os.register_at_fork(after_in_child=_after_fork_in_child)
