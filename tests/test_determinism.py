"""Determinism: the same seed gives bit-identical training on cpu (two fits in separate processes:
identical weight bytes and history), and no CUDA kernel uses floating-point atomics, so every kernel
is deterministic by construction (docs/reliability.md)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "csrc", "kernels")

# A small CNN on the bundled digits, with Dropout, Adam and a schedule: every source of randomness the
# training loop has (initialization, shuffling, dropout masks). argv: output directory, backend.
FIT = r"""
import json, os, sys
import numpy as np
import fastconv
from fastconv import data, losses, nn, optim, train
out, backend = sys.argv[1], sys.argv[2]
fastconv.set_backend(backend)
nn.manual_seed(123)
d = data.load_digits(seed=0)
model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2),
                      nn.Linear(64, 10))
opt = optim.Adam(model.parameters(), lr=3e-3)
history = train.fit(model, losses.CrossEntropyLoss(), opt, (d.x_train[:256], d.y_train[:256]),
                    (d.x_val[:64], d.y_val[:64]), epochs=3, batch_size=32, metric="accuracy",
                    scheduler=optim.StepLR(opt, 2), progress=False, seed=5)
np.savez(os.path.join(out, "weights.npz"), **{k: np.asarray(v) for k, v in model.state_dict().items()})
with open(os.path.join(out, "history.json"), "w") as f:
    json.dump([{k: v for k, v in r.items() if k != "time"} for r in history.records], f)
"""


def _fit(out, backend="cpu", threads=None):
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT)
    if threads is not None:
        env["NUMBA_NUM_THREADS"] = str(threads)
    subprocess.run([sys.executable, "-c", FIT, str(out), backend], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    weights = dict(np.load(os.path.join(out, "weights.npz")))
    with open(os.path.join(out, "history.json")) as f:
        return weights, json.load(f)


def _assert_identical(a, b):
    (wa, ha), (wb, hb) = a, b
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].tobytes() == wb[k].tobytes(), f"{k} differs between two runs with the same seed"
    assert ha == hb


def test_same_seed_same_bits_on_cpu(tmp_path):
    first = _fit(tmp_path / "a")
    second = _fit(tmp_path / "b")
    _assert_identical(first, second)
    assert len(first[1]) == 3


def test_same_bits_whatever_the_thread_count(tmp_path):
    # Every other cpu kernel splits work over threads without changing any summation order.
    _assert_identical(_fit(tmp_path / "one", threads=1), _fit(tmp_path / "two", threads=2))


def _code(path):
    """The file without comments (so that a comment saying "no atomics" is not a hit)."""
    with open(path) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def test_no_floating_point_atomics_in_any_kernel():
    # selftest.cuh is not an op: it exercises the emulator's atomics on purpose.
    sources = [os.path.join(KERNELS, n) for n in sorted(os.listdir(KERNELS))
               if n.endswith((".cuh", ".h", ".cu")) and not n.startswith("selftest.")]
    assert len(sources) >= 6
    calls = []
    for path in sources:
        for m in re.finditer(r"\batomic[A-Z]\w*\s*\(", _code(path)):
            calls.append(f"{os.path.basename(path)}: {m.group(0)}")
    # Integer atomics would be deterministic too, but there are none at all: any atomic call is a change
    # to review against docs/reliability.md (a float atomicAdd would make results run-dependent).
    assert not calls, f"atomic operations in the kernels: {calls}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,out_features,in_features",
                         [(128, 128, 3136), (16, 128, 700), (16, 32, 130), (37, 13, 517), (4096, 64, 96), (5, 3, 1)])
def test_linear_bits_do_not_depend_on_threads_or_input_grad(rows, out_features, in_features, dtype):
    # BLAS rounds some elements differently depending on where a block edge falls, so the cpu
    # linear layers split their GEMMs by size only: the same bits on 1 or 2 threads, and the same
    # dw / db whether or not dx is computed (fit skips it).
    import numba

    from fastconv._cpu import dense

    rng = np.random.default_rng(rows + in_features)
    dy = rng.standard_normal((rows, out_features)).astype(dtype)
    x = rng.standard_normal((rows, in_features)).astype(dtype)
    w = rng.standard_normal((out_features, in_features)).astype(dtype)
    b = rng.standard_normal(out_features).astype(dtype)
    results = []
    saved = numba.get_num_threads()
    try:
        for threads in sorted({1, saved}):
            numba.set_num_threads(threads)
            y = dense.linear_forward(x, w, b, "relu")
            for input_grad in (True, False):
                dx, dw, db = dense.linear_backward(dy, x, w, True, input_grad)
                results.append((y.tobytes(), dw.tobytes(), db.tobytes()))
                if input_grad:
                    results[-1] += (dx.tobytes(),)
    finally:
        numba.set_num_threads(saved)
    assert all(r[:3] == results[0][:3] for r in results)
    assert all(r[3] == results[0][3] for r in results if len(r) == 4)
    np.testing.assert_allclose(dw, dy.T.astype(np.float64) @ x, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True), (False, True), (True, False)])
@pytest.mark.parametrize("m,n,k", [(130, 300, 70), (600, 16, 200), (64, 100, 4200), (257, 33, 129)])  # (600, 16): by rows
def test_matmul_bits_do_not_depend_on_threads(m, n, k, trans_a, trans_b):
    # float32 matmul by gemm32 splits its blocks by the thread count (dense._gemm32_blocks, by rows or by
    # columns), which must not change a bit: every value sums over K in the same order wherever it sits.
    import numba

    from fastconv._cpu import _vecmath, dense

    assert dense._by_gemm32(m, n, k) or not _vecmath.SIMD, "the shape no longer takes gemm32; pick another"
    rng = np.random.default_rng(m + n + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    results = []
    saved = numba.get_num_threads()
    try:
        for threads in sorted({1, 2, saved}):
            if threads <= numba.config.NUMBA_NUM_THREADS:
                numba.set_num_threads(threads)
                results.append(dense.matmul(a, b, trans_a, trans_b).tobytes())
    finally:
        numba.set_num_threads(saved)
    assert len(results) >= 2 or numba.config.NUMBA_NUM_THREADS == 1
    assert all(r == results[0] for r in results)
