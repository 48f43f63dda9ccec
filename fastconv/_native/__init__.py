"""The backends that run our CUDA kernels: "cuda" (nvcc build, CuPy arrays) and "emu" (emulator
build, NumPy arrays). Both expose the same op functions; they differ only in the extension module,
the array module, how an array's address is taken, and the stream.

Arrays reaching here are validated (fastconv.ops): C-contiguous, float32/float64, right shapes.
"""
from __future__ import annotations

import functools

from . import conv, dense, loss, optim, pool

FAMILIES = (dense, conv, pool, loss, optim)


class NativeBackend:
    def __init__(self, name, ext, xp, pointer, stream):
        self.name = name
        self.ext = ext
        self.xp = xp
        self.pointer = pointer
        self.stream = stream
        # Bind every family's op functions to this backend: backend.matmul(a, b, ...) etc.
        for family in FAMILIES:
            for op in family.__all__:
                setattr(self, op, functools.partial(getattr(family, op), self))

    def kernel(self, name, dtype):
        """The launcher for `name` at `dtype` (e.g. ext.gemm_f32)."""
        return getattr(self.ext, f"{name}_{'f32' if self.xp.dtype(dtype).itemsize == 4 else 'f64'}")

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def ptr(self, array) -> int:
        """The address of an array's data, or 0 for None (an absent optional input)."""
        return 0 if array is None else self.pointer(array)

    def __repr__(self):
        return f"<fastconv backend {self.name!r}>"
