"""Which backend runs the ops: "cuda" (CuPy arrays, the nvcc-built kernels), "cpu" (NumPy arrays,
Numba kernels) or "emu" (NumPy arrays, the CUDA kernels run by the CPU emulator, for testing).

"auto" (the default) picks "cuda" when the _cuda extension imports, a device is present and CuPy
imports, otherwise "cpu". "emu" is only ever chosen explicitly. The choice comes from, in order:
`with use_backend(name):` (per thread/async context), `set_backend(name)`, the environment
variable FASTCONV_BACKEND, "auto".
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import sys
import threading

NAMES = ("cpu", "emu", "cuda")
CHOICES = ("auto",) + NAMES

_loaded: dict = {}
_load_lock = threading.Lock()
_override: contextvars.ContextVar = contextvars.ContextVar("fastconv_backend", default=None)
_global: dict = {}


def _check_name(name) -> str:
    if not isinstance(name, str) or name.lower() not in CHOICES:
        raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(CHOICES)}")
    return name.lower()


def availability(name: str) -> tuple[bool, str]:
    """(usable, reason) for a backend name, without raising."""
    try:
        load(name)
        return True, "available"
    except (ImportError, RuntimeError) as exc:
        return False, str(exc)


def load(name: str):
    """The backend object for `name` (imported once), or ImportError/RuntimeError saying why not."""
    name = _check_name(name)
    if name == "auto":
        raise ValueError("load() takes a concrete backend name, not 'auto'")
    with _load_lock:
        if name not in _loaded:
            module = {"cpu": "fastconv._cpu", "emu": "fastconv._native.emu", "cuda": "fastconv._native.gpu"}[name]
            _loaded[name] = importlib.import_module(module).backend()
        return _loaded[name]


def _resolve(requested: str) -> tuple[str, str]:
    """(backend name, why it was chosen) for a requested name."""
    if requested != "auto":
        ok, why = availability(requested)
        if not ok:
            raise RuntimeError(f"backend {requested!r} is not available: {why}")
        return requested, "chosen explicitly"
    ok, why = availability("cuda")
    if ok:
        return "cuda", "auto: the _cuda extension, a CUDA device and CuPy are present"
    return "cpu", f"auto: cuda unavailable ({why})"


def _default() -> tuple[str, str]:
    if not _global:
        try:
            requested = _check_name(os.environ.get("FASTCONV_BACKEND", "auto") or "auto")
        except ValueError as exc:  # (it named no variable: the user had passed no backend)
            raise ValueError(f"FASTCONV_BACKEND: {exc}") from None
        name, why = _resolve(requested)
        if requested != "auto":
            why = f"FASTCONV_BACKEND={requested}"
        _global.update(name=name, why=why)
    return _global["name"], _global["why"]


def get_backend() -> str:
    """The name of the backend the ops run on now: "cuda", "cpu" or "emu"."""
    override = _override.get()
    return override if override is not None else _default()[0]


def backend_reason() -> str:
    """Why the current backend was chosen."""
    if _override.get() is not None:
        return "use_backend() context"
    return _default()[1]


def set_backend(name: str) -> str:
    """Sets the process-wide backend ("auto", "cuda", "cpu" or "emu"); returns the one chosen."""
    requested = _check_name(name)
    chosen, why = _resolve(requested)
    _global.update(name=chosen, why=why if requested == "auto" else "set_backend()")
    return chosen


@contextlib.contextmanager
def use_backend(name: str):
    """Runs the block on another backend (this thread / async context only: threads started inside,
    a ThreadPoolExecutor's workers too, run on the process-wide backend unless they enter
    use_backend themselves)."""
    chosen, _ = _resolve(_check_name(name))
    token = _override.set(chosen)
    try:
        yield load(chosen)
    finally:
        _override.reset(token)


def current():
    """The backend object the ops dispatch to. (Every op asks: once loaded, a dict lookup, no lock.)"""
    name = get_backend()
    be = _loaded.get(name)
    return be if be is not None else load(name)


def empty_cache() -> None:
    """Frees the memory the loaded backends keep for reuse: the cpu backend's buffers of dead large
    outputs, CuPy's memory pool on cuda. Arrays in use keep theirs."""
    for be in list(_loaded.values()):
        be.empty_cache()
    memory = sys.modules.get("fastconv._cpu._memory")  # imported without the backend being chosen
    if memory is not None:
        memory.empty_cache()
