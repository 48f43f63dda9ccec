"""The backends that run our CUDA kernels: "cuda" (nvcc build, CuPy arrays) and "emu" (emulator
build, NumPy arrays). Both expose the same op functions; they differ only in the extension module,
the array module, how an array's address is taken, and the stream.

Arrays reaching here are validated (fastconv.ops): C-contiguous, float32/float64, right shapes.
"""
from __future__ import annotations

import functools

from . import check, conv, dense, loss, optim, pool

FAMILIES = (dense, conv, pool, loss, optim, check)


def _shapes(args) -> str:
    return ", ".join(str(tuple(a.shape)) for a in args if hasattr(a, "shape"))


def _naming_failures(op, run):
    """run(...), with a kernel failure (a CUDA error or an emulator error: RuntimeError; a launch
    limit: ValueError) re-raised as the same type with the op and its input shapes added. A CuPy
    out-of-memory error passes through unchanged (CuPy's pool stays usable: later calls work)."""
    @functools.wraps(run)
    def checked(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except (RuntimeError, ValueError) as exc:
            if type(exc) not in (RuntimeError, ValueError):
                raise  # a library's own subclass (e.g. CuPy's CUDARuntimeError(status)): as it is
            raise type(exc)(f"{exc} [in {op} with inputs {_shapes(args)}]") from exc
    return checked


class NativeBackend:
    # Our kernels never read or write outside an array for a label or pooling index out of range
    # (they write NaN or skip it), so an op may check the range after launching them.
    kernels_tolerate_bad_indices = True

    def __init__(self, name, ext, xp, pointer, stream):
        self.name = name
        self._kernels = {}
        self.ext = ext
        self.xp = xp
        self.pointer = pointer
        self.stream = stream
        # Bind every family's op functions to this backend: backend.matmul(a, b, ...) etc.
        for family in FAMILIES:
            for op in family.__all__:
                setattr(self, op, _naming_failures(op, functools.partial(getattr(family, op), self)))

    @property
    def ext(self):
        return self._ext

    @ext.setter
    def ext(self, module):
        self._ext = module
        self._kernels.clear()  # launchers are looked up again in the new module

    def kernel(self, name, dtype):
        """The launcher for `name` at `dtype` (e.g. ext.gemm_f32); cached: every op call asks."""
        launcher = self._kernels.get((name, dtype))
        if launcher is None:
            suffix = "f32" if self.xp.dtype(dtype).itemsize == 4 else "f64"
            launcher = self._kernels[(name, dtype)] = getattr(self._ext, f"{name}_{suffix}")
        return launcher

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def empty_cache(self):
        """Frees the array library's cached blocks: CuPy's memory pool (NumPy keeps none)."""
        pool = getattr(self.xp, "get_default_memory_pool", None)
        if pool is not None:
            pool().free_all_blocks()

    def ptr(self, array) -> int:
        """The address of an array's data, or 0 for None (an absent optional input).

        The kernels load whole elements, which a GPU requires at an address that is a multiple of
        their size (else "misaligned address", which ends the CUDA context); x86, where the emulator
        runs, does not. So an array that the ops failed to align is refused here, on both backends; an
        empty one is never loaded from (and NumPy's ALIGNED flag, which the ops check, calls it aligned)."""
        if array is None:
            return 0
        address = self.pointer(array)
        if address % array.itemsize and array.size:
            raise ValueError(f"an array at address {address:#x}, not a multiple of its {array.itemsize}-byte "
                             f"{array.dtype} elements, reached a kernel (a GPU would fault: misaligned address)")
        return address

    def __repr__(self):
        return f"<fastconv backend {self.name!r}>"
