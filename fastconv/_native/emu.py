"""The "emu" backend: the CUDA kernels, compiled against the emulator, on NumPy arrays.

FASTCONV_EMU_LIBRARY may name another build of the _emu extension (CI's sanitizer build).
"""
import importlib
import importlib.util
import os

import numpy as np

from . import NativeBackend


def _extension():
    path = os.environ.get("FASTCONV_EMU_LIBRARY")
    if not path:
        return importlib.import_module("fastconv._emu")
    spec = importlib.util.spec_from_file_location("fastconv._emu", path)
    if spec is None:
        raise ImportError(f"FASTCONV_EMU_LIBRARY={path!r} is not an extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backend() -> NativeBackend:
    try:
        ext = _extension()
    except ImportError as exc:
        raise ImportError(f"the _emu extension is not built ({exc}); reinstall fastconv") from exc
    return NativeBackend(
        name="emu",
        ext=ext,
        xp=np,
        pointer=lambda a: a.ctypes.data,
        stream=lambda: 0,
    )
