"""fastconv.info(): the version, the extension modules built, the backend chosen and why, the device."""
from __future__ import annotations

import importlib
import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _extension(name: str) -> str:
    try:
        ext = importlib.import_module(f"fastconv.{name}")
    except ImportError as exc:
        return f"not built ({exc})"
    text = f"built ({os.path.basename(ext.__file__)})"
    if name == "_cuda":
        count, why = ext.device_count()
        text += f", architectures {ext.archs}; devices: {count}" + (f" ({why})" if why else "")
    return text


def _cpu_code() -> str:
    """Which of the cpu backend's code paths this process runs, and the switches that chose them."""
    try:
        from ._cpu import _vecmath, conv
    except (ImportError, RuntimeError) as exc:  # backends: above already says why; this must not hide it
        return f"n/a (the cpu backend does not load: {exc})"
    if not _vecmath.SIMD:  # (the reason that holds, not the list of those that could)
        if _vecmath._target_isa() is not None:  # (the host or NUMBA_CPU_FEATURES has them: switched off)
            why = "FASTCONV_SIMD=0" if os.environ.get("FASTCONV_SIMD", "").strip() == "0" else "FASTCONV_AVX512=0"
        elif os.environ.get("NUMBA_CPU_NAME") not in (None, "", "host") or "NUMBA_CPU_FEATURES" in os.environ:
            why = "NUMBA_CPU_NAME / NUMBA_CPU_FEATURES name no AVX-512F, nor AVX2 with FMA"
        else:
            why = "this host has neither AVX-512F nor AVX2 with FMA"
        return f"portable Numba loops ({why})"
    winograd = ("3x3 convolutions of >= 16 channels by Winograd (forward F(4x4, 3x3) where its tiles fit the output, "
                "else F(2x2, 3x3)) unless a layer says algorithm='direct'" if conv.WINOGRAD
                else "every convolution direct (FASTCONV_WINOGRAD=0)")
    isa = "AVX-512" if _vecmath.AVX512 else "AVX2"
    return f"{isa} kernels (FASTCONV_SIMD=0: portable loops); {winograd}"


def _data_cache() -> str:
    from . import _datasets

    directory = _datasets.cache_directory()
    if directory is None:
        return "off (FASTCONV_DATA_CACHE is empty)"
    try:
        held = len(_datasets.cached_files(directory)) if os.path.exists(directory) else 0
    except OSError as exc:  # (not a directory, unreadable)
        held = f"unusable: {exc.strerror or exc}"
    else:
        held = f"{held} file{'s' * (held != 1)}"
    return f"{os.path.abspath(directory)} ({held}; FASTCONV_DATA_CACHE chooses another, empty: off)"


def info(file=None) -> str:
    """Prints (and returns) a report of the build, the backend and the data sets' cache."""
    import numba
    import numpy

    from . import __version__, backend

    lines = [f"fastconv {__version__}",
             f"  python {platform.python_version()}, numpy {numpy.__version__}, numba {numba.__version__}",
             "extensions:",
             f"  _emu   {_extension('_emu')}",
             f"  _cuda  {_extension('_cuda')}",
             "backends:"]
    for name in backend.NAMES:
        ok, why = backend.availability(name)
        lines.append(f"  {name:5s}  {'available' if ok else 'unavailable: ' + why}")
    try:
        chosen, why = backend.get_backend(), backend.backend_reason()
    except RuntimeError as exc:
        chosen, why = "none", str(exc)
    lines.append(f"backend: {chosen} ({why})")
    if chosen == "cuda":
        device = backend.load("cuda").ext.device_name(0)
    else:
        device = f"{_cpu_model()}, {os.cpu_count()} logical cores, {numba.get_num_threads()} Numba threads"
    lines.append(f"device:  {device}")
    lines.append(f"cpu code: {_cpu_code()}")
    lines.append(f"data cache: {_data_cache()}")
    text = "\n".join(lines)
    print(text, file=file)
    return text
