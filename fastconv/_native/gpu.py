"""The "cuda" backend: the nvcc-built kernels on CuPy arrays, launched on CuPy's current stream."""
import importlib

from . import NativeBackend


def backend() -> NativeBackend:
    try:
        ext = importlib.import_module("fastconv._cuda")
    except ImportError as exc:
        raise ImportError(f"the _cuda extension is not built ({exc})") from exc
    count, why = ext.device_count()
    if count == 0:
        raise RuntimeError(f"no CUDA device ({why})")
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(f"CuPy is not installed ({exc}); pip install 'fastconv[gpu]'") from exc
    return NativeBackend(
        name="cuda",
        ext=ext,
        xp=cupy,
        pointer=lambda a: a.data.ptr,
        stream=lambda: cupy.cuda.get_current_stream().ptr,
    )
