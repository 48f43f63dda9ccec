"""Every op test runs on each backend present: the `backend` fixture yields the backend object
inside `fastconv.use_backend(name)`. FASTCONV_TEST_BACKENDS (e.g. "emu") restricts the set; CI's
sanitizer pass uses it."""
import atexit
import os
import shutil
import tempfile

import pytest

import fastconv.backend

# fit's compile-ahead helper process (fastconv/train/_compile_ahead.py) stays off in the tests, and in
# the processes they start, unless a test turns it on: the suite's timings and processes stay its own.
os.environ["FASTCONV_COMPILE_AHEAD"] = "0"

# The data sets' cache (fastconv/_datasets.py) goes to a directory of this process's own, shared by the
# processes the tests start, and removed at exit: the tests never read or write the user's cache.
_DATASET_CACHE = tempfile.mkdtemp(prefix="fastconv-test-cache-")
os.environ["FASTCONV_DATA_CACHE"] = _DATASET_CACHE
atexit.register(shutil.rmtree, _DATASET_CACHE, ignore_errors=True)

ALL_BACKENDS = ("cpu", "emu", "cuda")


def _selected():
    names = os.environ.get("FASTCONV_TEST_BACKENDS")
    return tuple(n.strip() for n in names.split(",")) if names else ALL_BACKENDS


def _params(names):
    return [pytest.param(n, marks=pytest.mark.cuda) if n == "cuda" else n for n in names]


def _use(name):
    if name not in _selected():
        pytest.skip(f"backend {name} not selected (FASTCONV_TEST_BACKENDS)")
    ok, why = fastconv.backend.availability(name)
    if not ok:
        pytest.skip(f"backend {name} unavailable: {why}")
    return fastconv.use_backend(name)


@pytest.fixture(params=_params(ALL_BACKENDS))
def backend(request):
    """Each backend present: cpu (Numba), emu (CUDA kernels on the emulator), cuda (a GPU)."""
    with _use(request.param) as be:
        yield be


@pytest.fixture(params=_params(("emu", "cuda")))
def native_backend(request):
    """The backends that run the CUDA kernels."""
    with _use(request.param) as be:
        yield be


def pytest_collection_modifyitems(config, items):
    # Tests that run ops on a backend are the kernel tests: CI reruns them (emu only) with the
    # sanitizer build of the emulator, selected by `-m kernels`.
    for item in items:
        if {"backend", "native_backend"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernels)
