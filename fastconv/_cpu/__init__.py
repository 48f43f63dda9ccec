"""The "cpu" backend: Numba kernels (parallel over the machine's cores) on NumPy arrays, with BLAS
(through np.dot) for the GEMM cores. Exposes the same op functions as the native backends.

Kernels are compiled on first use and cached on disk (cache=True); Numba falls back to a per-user
cache directory when the install directory is read-only.
"""
import numpy as np

from . import conv, dense, loss, optim, pool

FAMILIES = (dense, conv, pool, loss, optim)


class CpuBackend:
    name = "cpu"
    xp = np

    def __init__(self):
        for family in FAMILIES:
            for op in family.__all__:
                setattr(self, op, getattr(family, op))

    def __repr__(self):
        return "<fastconv backend 'cpu'>"


def backend() -> CpuBackend:
    return CpuBackend()
