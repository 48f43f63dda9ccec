"""Shared test helpers: compare against a float64 NumPy reference with a tolerance derived from what
float32 NumPy itself achieves, and finite-difference gradients in float64."""
from __future__ import annotations

import numpy as np
import pytest

from fastconv._cpu import _vecmath

DTYPES = (np.float32, np.float64)

# The cpu backend's vector kernels run where Numba compiles for AVX-512F, or AVX2 with FMA; the
# register-tiled convolution taps for AVX-512F only.
needs_simd = pytest.mark.skipif(not _vecmath.SIMD, reason="the host has neither AVX-512F nor AVX2 with FMA "
                                                          "(or FASTCONV_SIMD=0)")
needs_avx512 = pytest.mark.skipif(not _vecmath.AVX512, reason="the host has no AVX-512F (or FASTCONV_SIMD=0)")


def to_numpy(a):
    if a is None:
        return None
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def on(be, *arrays):
    """The arrays on the backend's device."""
    out = tuple(None if a is None else be.xp.asarray(a) for a in arrays)
    return out if len(out) > 1 else out[0]


def address(a):
    """Where an array's data starts (NumPy or CuPy)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def misaligned(be, a, offset=1):
    """a, on the backend, at an address `offset` bytes past a 16-byte boundary, hence not a multiple
    of its element size (as a view of bytes at an odd offset is, e.g. np.frombuffer(data, offset=1)).
    Filled through bytes: an elementwise copy into it would itself load misaligned elements, which
    faults on a GPU."""
    a = np.ascontiguousarray(a)
    buf = be.xp.zeros(a.nbytes + 32, np.uint8)
    start = (-address(buf)) % 16 + offset
    buf[start:start + a.nbytes] = be.xp.asarray(a.reshape(-1).view(np.uint8))
    if be.xp is np:
        out = np.ndarray(a.shape, a.dtype, buffer=buf, offset=start)
    else:
        out = be.xp.ndarray(a.shape, a.dtype, memptr=buf.data + start)
    assert address(out) % 16 == offset
    return out


def cast(arrays, dtype):
    return [a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in arrays]


def tolerance(reference, inputs, dtype, index=None):
    """Absolute tolerance for a `dtype` result of reference(*inputs).

    The error model: float32 NumPy computing the same reference deviates from float64 by err32; a
    kernel may deviate by a few times that (a different summation order), plus a few ulps of the
    result's scale. For float64 results the float32 error is scaled down by eps64/eps32.
    """
    ref64 = reference(*cast(inputs, np.float64))
    ref32 = reference(*cast(inputs, np.float32))
    if index is not None:
        ref64, ref32 = ref64[index], ref32[index]
    ref64 = np.asarray(ref64, dtype=np.float64)
    err32 = float(np.max(np.abs(np.asarray(ref32, np.float64) - ref64), initial=0.0))
    scale = float(np.max(np.abs(ref64), initial=0.0)) or 1.0
    eps = float(np.finfo(dtype).eps)
    ratio = eps / float(np.finfo(np.float32).eps)
    return 8 * err32 * ratio + 16 * eps * scale, ref64


def assert_matches(actual, reference, inputs, dtype, index=None, what="result"):
    """actual (from a backend, at `dtype`) against reference(*inputs) computed in float64."""
    actual = to_numpy(actual)
    tol, ref64 = tolerance(reference, inputs, dtype, index)
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    assert actual.shape == ref64.shape, f"{what}: shape {actual.shape}, expected {ref64.shape}"
    err = np.abs(actual.astype(np.float64) - ref64)
    bad = ~(err <= tol) & ~(np.isnan(actual) & np.isnan(ref64))
    if bad.any():
        where = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1)), err.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {err.size} values off by more than {tol:.3g}; "
                             f"worst at {where}: got {actual[where]!r}, expected {ref64[where]!r}")


def numerical_gradient(f, inputs, wrt, dy, h=1e-6):
    """d sum(f(*inputs) * dy) / d inputs[wrt], by central differences in float64."""
    x = np.array(inputs[wrt], dtype=np.float64)
    grad = np.zeros_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    args = list(inputs)
    for i in range(flat.size):
        orig = flat[i]
        step = h * max(1.0, abs(orig))
        flat[i] = orig + step
        args[wrt] = x
        up = np.sum(np.asarray(f(*args)) * dy)
        flat[i] = orig - step
        down = np.sum(np.asarray(f(*args)) * dy)
        flat[i] = orig
        g[i] = (up - down) / (2 * step)
    return grad


def assert_gradient(analytic, numeric, what="gradient"):
    analytic = to_numpy(analytic).astype(np.float64)
    scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
    err = float(np.max(np.abs(analytic - numeric), initial=0.0))
    assert err <= 1e-6 * scale, f"{what}: analytic and finite-difference gradients differ by {err:.3g} (scale {scale:.3g})"


def strip_run_record(directory):
    """Takes the run record out of a checkpoint's JSON (as earlier releases wrote last/, and best/ until the
    end of the run), its checksum made again."""
    import json
    from pathlib import Path

    from fastconv import checkpoint, runs

    index = Path(directory) / checkpoint.INDEX
    info = json.loads(index.read_text())
    del info["extra"][runs.RECORD_KEY]
    info["index_sha256"] = checkpoint._index_digest(info)
    index.write_text(json.dumps(info))
