"""Backend selection: names, the context manager, the environment variable, info()."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import ops


def test_every_backend_has_every_op(backend):
    """One function table (design.md): the ops call be.<op> for all but the optional fused ones."""
    from fastconv.ops.conv_pool import OPTIONAL

    assert [op for op in ops.__all__ if op not in OPTIONAL and not callable(getattr(backend, op, None))] == []


def test_default_is_cpu_or_cuda():
    assert fastconv.get_backend() in ("cpu", "cuda")


def test_use_backend_restores():
    before = fastconv.get_backend()
    with fastconv.use_backend("emu") as be:
        assert fastconv.get_backend() == "emu" and be.name == "emu"
    assert fastconv.get_backend() == before


def test_set_backend_and_back():
    before = fastconv.get_backend()
    try:
        assert fastconv.set_backend("emu") == "emu"
        assert fastconv.get_backend() == "emu"
        out = ops.relu_forward(np.array([-1.0, 2.0], np.float32))
        assert out.tolist() == [0.0, 2.0]
    finally:
        fastconv.set_backend(before)


@pytest.mark.parametrize("name", ["gpu", "", None, 3, "CUDA!"])
def test_unknown_backend(name):
    with pytest.raises(ValueError, match="unknown backend"):
        fastconv.set_backend(name)
    with pytest.raises(ValueError, match="unknown backend"):
        with fastconv.use_backend(name):
            pass


def test_unavailable_cuda_is_a_clear_error():
    ok, why = fastconv.backend.availability("cuda")
    if ok:
        pytest.skip("cuda is available here")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        fastconv.set_backend("cuda")


def test_environment_variable_and_info():
    env = dict(os.environ, FASTCONV_BACKEND="emu")
    out = subprocess.run([sys.executable, "-m", "fastconv", "info"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "fastconv " + fastconv.__version__ in out
    assert "_emu   built" in out
    assert "backend: emu (FASTCONV_BACKEND=emu)" in out
    assert "device:" in out


@pytest.mark.parametrize("switches, expected", [
    ({}, None),
    ({"FASTCONV_WINOGRAD": "0"}, "every convolution direct (FASTCONV_WINOGRAD=0)"),
    ({"FASTCONV_SIMD": "0"}, "cpu code: portable Numba loops (FASTCONV_SIMD=0)"),  # (not the list of reasons)
])
def test_info_names_the_cpu_code_paths(monkeypatch, switches, expected):
    from fastconv._cpu import _vecmath

    for name in ("FASTCONV_WINOGRAD", "FASTCONV_SIMD", "FASTCONV_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    isa = _vecmath._host_isa()  # with the switches unset, as the subprocess below starts
    if isa is None and switches.get("FASTCONV_WINOGRAD") == "0":
        pytest.skip("no AVX-512 or AVX2 here: the portable loops run whatever FASTCONV_WINOGRAD says")
    out = subprocess.run([sys.executable, "-m", "fastconv", "info"], env=dict(os.environ, **switches),
                         capture_output=True, text=True, check=True).stdout
    if isa is None:
        expected = "cpu code: portable Numba loops"
    elif expected is None:  # the defaults
        expected = (f"cpu code: {'AVX-512' if isa == 'avx512' else 'AVX2'} kernels (FASTCONV_SIMD=0: portable loops); "
                    "3x3 convolutions of >= 16 channels by Winograd (forward F(4x4, 3x3) where its tiles fit the output, "
                    "else F(2x2, 3x3)) unless a layer says algorithm='direct'")
    assert expected in out


def test_info_reports_a_cpu_backend_that_does_not_load(monkeypatch):
    import fastconv._info

    monkeypatch.setitem(sys.modules, "fastconv._cpu", None)  # import fastconv._cpu now raises ImportError
    assert "cpu code: n/a (the cpu backend does not load:" in fastconv._info.info(file=io.StringIO())


def test_bad_environment_variable():
    env = dict(os.environ, FASTCONV_BACKEND="tpu")
    proc = subprocess.run([sys.executable, "-c", "import fastconv; fastconv.get_backend()"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "FASTCONV_BACKEND: unknown backend 'tpu'" in proc.stderr  # (which variable)


def test_gpu_array_refused_on_host_backends():
    class FakeGpuArray:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 3}

    with fastconv.use_backend("cpu"):
        with pytest.raises(TypeError, match="x is a GPU array .* but the backend is 'cpu'"):
            ops.relu_forward(FakeGpuArray())


def test_kernel_failures_name_the_op_and_shapes():
    """A failing launch (here a stand-in raising like a CUDA error would) reaches the caller as the
    same exception type, naming the kernel, the op and the input shapes."""
    from fastconv._native import NativeBackend

    class FailingExtension:
        def __getattr__(self, name):
            def launch(*args):
                raise RuntimeError("fastconv: CUDA error in gemm_kernel<NN>: cudaErrorIllegalAddress (an illegal memory access)")
            return launch

    be = NativeBackend("emu", FailingExtension(), np, lambda a: a.ctypes.data, lambda: 0)
    with pytest.raises(RuntimeError, match=r"gemm_kernel<NN>.*\[in matmul with inputs \(3, 4\), \(4, 5\)\]"):
        be.matmul(np.ones((3, 4), np.float32), np.ones((4, 5), np.float32), False, False)


def test_library_errors_with_their_own_constructor_pass_through_unchanged():
    """CuPy's CUDARuntimeError(status) cannot be rebuilt from a message: it must reach the caller
    as it is (not as a TypeError from re-raising it)."""
    from fastconv._native import NativeBackend

    class CudaRuntimeError(RuntimeError):  # like cupy_backends.cuda.api.runtime.CUDARuntimeError
        def __init__(self, status: int):
            super().__init__(f"cudaErrorIllegalAddress ({status})")
            self.status = status

    class FailingExtension:
        def __getattr__(self, name):
            def launch(*args):
                raise CudaRuntimeError(700)
            return launch

    be = NativeBackend("emu", FailingExtension(), np, lambda a: a.ctypes.data, lambda: 0)
    with pytest.raises(CudaRuntimeError) as info:
        be.relu_forward(np.ones(3, np.float32))
    assert info.value.status == 700


def test_array_on_another_gpu_is_refused():
    """On the cuda backend a CuPy array must live on the current device (checked with a stand-in
    for CuPy: no GPU is needed for the check itself)."""
    import types

    from fastconv.ops._check import on_backend

    class FakeArray:
        def __init__(self, device_id):
            self.device = types.SimpleNamespace(id=device_id)

    xp = types.SimpleNamespace(ndarray=FakeArray,
                               cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0)))
    be = types.SimpleNamespace(name="cuda", xp=xp)
    same = FakeArray(0)
    assert on_backend(same, "x", be) is same
    with pytest.raises(TypeError, match=r"x is on GPU 1 but the current device is GPU 0"):
        on_backend(FakeArray(1), "x", be)


_FORK_AFTER_KERNELS = """
import multiprocessing, sys
import numpy as np
from fastconv import ops

x = np.arange(-8, 8, dtype=np.float32)
ops.relu_forward(x)  # the parent runs a kernel: Numba's threading layer starts


def child(_):
    try:
        return ops.relu_forward(x).tolist()
    except RuntimeError as exc:
        return str(exc)


with multiprocessing.get_context("fork").Pool(1) as pool:
    print(pool.map_async(child, [0]).get(timeout=120)[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and GNU OpenMP: Linux")
@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_cpu_ops_in_a_process_forked_after_kernels_ran(layer):
    # With GNU OpenMP (Numba's layer here) the child's first kernel got SIGTERM from Numba, and a
    # Pool whose worker died so waited for its task forever; now each op raises, saying what to do.
    # A fork-safe layer chosen as the message says runs the ops in the child.
    env = {k: v for k, v in os.environ.items() if k not in ("FASTCONV_BACKEND", "NUMBA_THREADING_LAYER")}
    env["FASTCONV_BACKEND"] = "cpu"
    if layer == "workqueue":
        env["NUMBA_THREADING_LAYER"] = "workqueue"
    run = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", _FORK_AFTER_KERNELS], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    import numba
    from numba.np.ufunc import omppool
    if layer == "default" and omppool.openmp_vendor == "GNU":
        assert run.stdout.startswith("relu_forward: this process was forked from one that had already run "
                                     "fastconv's cpu kernels"), run.stdout
        assert "'spawn'" in run.stdout and "NUMBA_THREADING_LAYER=workqueue" in run.stdout
    else:
        assert run.stdout.strip() == str([float(max(v, 0)) for v in range(-8, 8)]), run.stdout


def test_package_exposes_its_modules_after_a_plain_import():
    """design.md: fastconv's surface holds nn, losses, optim, train, metrics, data besides the ops; a
    user's `import fastconv` then `fastconv.nn.Linear(...)` (a fresh process: here they are imported)."""
    code = ("import fastconv\n"
            "for name in ('nn', 'losses', 'optim', 'train', 'metrics', 'data', 'checkpoint', 'evaluate'):\n"
            "    assert getattr(fastconv, name).__name__ == 'fastconv.' + name, name\n"
            "assert fastconv.nn.Linear(3, 2).weight.data.shape == (2, 3)\n"
            "try:\n"
            "    fastconv.nope\n"
            "except AttributeError as exc:\n"
            "    assert \"has no attribute 'nope'\" in str(exc)\n"
            "else:\n"
            "    raise AssertionError('fastconv.nope did not raise')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_pyproject_installs_every_package():
    """pyproject.toml names fastconv's packages one by one, and setuptools installs those alone: every
    folder of fastconv with an __init__.py is there (fastconv/_cpu/conv/ left out, a regular install
    would have no cpu backend)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        listed = tomllib.load(f)["tool"]["setuptools"]["packages"]
    found = [os.path.relpath(folder, root).replace(os.sep, ".")
             for folder, _, files in os.walk(os.path.join(root, "fastconv")) if "__init__.py" in files]
    assert sorted(found) == sorted(listed)
