"""Input validation for the public ops, done once at the boundary, before any pointer leaves Python.

Rules (docs/bad_inputs.md lists every case and its message):
- arrays must live where the backend computes: NumPy (or anything np.asarray takes) on "cpu" and
  "emu"; CuPy, __cuda_array_interface__ or CUDA DLPack objects on "cuda". The wrong device is a
  TypeError naming the argument. ndarray subclasses are read as plain ndarrays (a view), except a
  numpy.ma.MaskedArray, a TypeError: its mask would be ignored.
- floating arrays only, float32 or float64, the same for every array of one call (TypeError);
- an int where one is needed: any other type (a float, even 2.0, a bool, a string) is a TypeError,
  an int out of range a ValueError (integer(); the layers, optimizers, fit and data use it too);
- the expected number of dimensions and agreeing shapes (ValueError naming argument and shapes);
- non-contiguous views (transposes, steps, negative strides) are copied to C order, never read as
  if they were contiguous; so is an array that does not start at a multiple of its element size (a
  view of bytes at an odd offset): a GPU kernel faults loading from it (misaligned address).
"""
from __future__ import annotations

import ctypes
import math
import numbers

import numpy as np

from .._host import refuse_masked

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_gpu_array(x) -> bool:
    if hasattr(x, "__cuda_array_interface__"):
        return True
    device = getattr(x, "__dlpack_device__", None)
    if device is not None:
        try:
            return int(device()[0]) in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
        except Exception:
            return False
    return False


def _refuse_tensor_that_requires_grad(x, name: str):
    """TypeError for a torch tensor that requires grad (a Parameter too): it refuses to be read as an
    array (its __array__ and __cuda_array_interface__ raise RuntimeError) until detached. Told by its
    type's module, without importing torch."""
    if type(x).__module__.partition(".")[0] == "torch" and getattr(x, "requires_grad", False) is True:
        raise TypeError(f"{name} must be an array, got a torch Tensor that requires grad: pass "
                        f"{name}.detach().numpy(), or {name}.detach() on the backend's device")


def on_backend(x, name: str, be):
    """The backend's array for x (an ndarray subclass as a plain view), or TypeError when x lives on
    another device, is a masked array or a torch tensor that requires grad."""
    refuse_masked(x, name)  # on any backend
    if be.name == "cuda":
        xp = be.xp
        if isinstance(x, xp.ndarray):
            array = x
        else:
            _refuse_tensor_that_requires_grad(x, name)  # (before hasattr: its interface raises RuntimeError)
            if hasattr(x, "__cuda_array_interface__"):
                array = xp.asarray(x)
            elif _is_gpu_array(x):
                array = xp.from_dlpack(x)
            else:
                array = None
        if array is not None:
            # Kernels run on the current device: a pointer into another GPU's memory would fault.
            current = xp.cuda.runtime.getDevice()
            if array.device.id != current:
                raise TypeError(f"{name} is on GPU {array.device.id} but the current device is GPU {current}: "
                                f"move it (cupy.asarray under cupy.cuda.Device({current})) or switch devices")
            return array
        raise TypeError(
            f"{name} is a {type(x).__module__}.{type(x).__name__} in host memory, but the backend is "
            "'cuda': pass a CuPy array (cupy.asarray(...)) or switch backend")
    if type(x) is np.ndarray:  # the common case, never a GPU array
        return x
    _refuse_tensor_that_requires_grad(x, name)  # (before _is_gpu_array: a CUDA one's interface raises)
    if _is_gpu_array(x):
        raise TypeError(
            f"{name} is a GPU array ({type(x).__module__}.{type(x).__name__}), but the backend is "
            f"{be.name!r}: copy it to the host (.get()) or use the 'cuda' backend")
    if isinstance(x, np.ndarray):  # a subclass (np.matrix, ...): a plain view of its data
        return np.asarray(x)
    try:
        return np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}, which NumPy cannot read as one "
                        f"({type(exc).__name__}: {exc})") from exc


def refuse_byte_order(a, name: str):
    """TypeError for a float32 / float64 array in non-native byte order (data read from a
    big-endian file): the kernels read native floats, and its dtype prints as '>f4', not float32."""
    dtype = a.dtype
    if dtype.kind == "f" and not dtype.isnative and dtype.newbyteorder("=") in FLOAT_DTYPES:
        raise TypeError(f"{name} is {dtype.name} in non-native byte order ({dtype.str}): convert it with "
                        f"{name}.astype(np.{dtype.name})")


def refuse_non_float(a, name: str):
    """TypeError unless the backend array a is float32 or float64 in native byte order."""
    if a.dtype not in FLOAT_DTYPES:
        refuse_byte_order(a, name)
        kind = {"i": "integer", "u": "unsigned integer", "b": "boolean", "c": "complex"}.get(a.dtype.kind)
        raise TypeError(f"{name} must be float32 or float64, got {f'{kind} dtype ' if kind else ''}{a.dtype}")


def tensor(x, name: str, be, ndim=None, dtype=None):
    """Validates one floating input and returns it as a C-contiguous backend array.

    ndim: an int, or a tuple of accepted ints. dtype: the dtype it must share with other inputs.
    """
    if x is None:
        raise TypeError(f"{name} is required, got None")
    a = on_backend(x, name, be)
    refuse_non_float(a, name)
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} is {a.dtype} but the other inputs are {np.dtype(dtype)}: "
                        "mixed dtypes are not converted implicitly; cast one of them")
    if ndim is not None:
        accepted = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in accepted:
            want = " or ".join(f"{d}-D" for d in accepted)
            raise ValueError(f"{name} must be {want}, got shape {tuple(a.shape)} ({a.ndim}-D)")
    # The common case at one flags read (C-contiguous, aligned, writeable): through for_kernels, each
    # array of every op's check cost 130 ns more than the contiguity test alone, here 25.
    if type(a) is np.ndarray and a.flags.carray:
        return a
    return for_kernels(a, be)


def address(a) -> int:
    """Where an array's data starts (NumPy or CuPy). A NumPy array's through the buffer protocol
    where it can export one (C-contiguous, aligned, writeable, not empty): 0.4 us, where
    __array_interface__ (which builds a dict and a descr list) cost 1.3-2 us, on each of the 4 arrays
    a parameter's Adam step checks for overlaps."""
    if type(a) is np.ndarray and a.flags.carray and a.nbytes:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    data = a.data
    return data.ptr if hasattr(data, "ptr") else a.__array_interface__["data"][0]


def aligned(a) -> bool:
    """Whether a starts at a multiple of its element size, as a GPU kernel's loads need. For NumPy
    its ALIGNED flag (the same test for these dtypes: 80 ns, where the address through
    __array_interface__ cost 1.9 us, on every array every op checks), which holds an empty array
    aligned wherever it starts (nothing is loaded from it): so does the address test."""
    if isinstance(a, np.ndarray):
        return a.flags.aligned
    return address(a) % a.itemsize == 0 or a.size == 0


def for_kernels(a, be):
    """a as the kernels read it: C-contiguous and aligned to its elements; a copy where it is not."""
    if not a.flags.c_contiguous:
        return be.xp.ascontiguousarray(a)
    if not aligned(a):
        # Moved as bytes: an elementwise copy would load the misaligned elements itself (on a GPU:
        # the fault this copy avoids).
        out = be.xp.empty(a.shape, a.dtype)
        out.reshape(-1).view(np.uint8)[...] = a.reshape(-1).view(np.uint8)
        return out
    return a


def labels(x, name: str, be, n: int):
    """Class indices: an integer array of shape (n,), returned as a contiguous int64 backend array."""
    if x is None:
        raise TypeError(f"{name} is required, got None")
    a = on_backend(x, name, be)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got {tuple(a.shape)}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        # Checked before the cast to int64, which would wrap the value to a negative one.
        raise ValueError(f"{name} holds {int(a.max())}, beyond any class index (int64)")
    return for_kernels(be.xp.ascontiguousarray(a, dtype=be.xp.int64), be)


def value_range(a, be) -> tuple[int, int]:
    """(min, max) of a non-empty, contiguous int64 array of the backend, read back in one transfer
    (one sync on a GPU)."""
    return value_range_start(a, be)()


def value_range_start(a, be):
    """value_range started: returns a function that gives it. On the native backends the range is
    computed on the device meanwhile, so kernels that tolerate indices out of range (ours skip
    them or write NaN, never outside an array) may be launched before the one sync that reads it;
    on the cpu backend it is computed before returning."""
    if a.dtype != np.int64 or not a.flags.c_contiguous:  # the kernel reads 8-byte values in a row
        raise TypeError(f"value_range needs a contiguous int64 array, got {a.dtype}, "
                        f"{'' if a.flags.c_contiguous else 'not '}contiguous")
    return be.index_range_start(a)


def flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def number(value, name: str, *, low=None, high=None, low_open=False, high_open=False, finite=False) -> float:
    """A real scalar in [low, high] (open ends where asked), finite where asked; TypeError/ValueError
    otherwise."""
    # A plain float skips the slow abstract-base-class check (optimizers pass several per tensor).
    if type(value) is not float and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if v != v:
        raise ValueError(f"{name} must not be NaN")
    if finite and not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def integer(value, name: str, *, low=None) -> int:
    """An int (any numbers.Integral but a bool) >= low: TypeError for another type, a float like 2.5
    or 2.0 included (as range() refuses it, rather than truncating), ValueError for a value below low."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def generator(seed, name: str = "seed") -> np.random.Generator:
    """np.random.default_rng(seed), a seed being what NumPy takes (None, an int >= 0, a SeedSequence or a
    generator...); NumPy's refusal ("SeedSequence expects int or sequence of ints...") named no argument:
    this one says which, and what it got. A bool is refused (seed=True was seed 1)."""
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{name} must be None or an int >= 0, got {seed!r}")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} must be None or an int >= 0, got {seed!r} ({exc})") from None


def shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))
