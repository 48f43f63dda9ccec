"""Steady state on cpu: 10,000 calls of each op and 1,000 training steps keep the resident memory flat,
and the ops give correct results when called from several Python threads at once.

RSS is read from /proc/self/statm after a warm-up (first-call compilation, allocator pools). Arrays are
about 4 KiB per result, so a leak of one result per call (40 MB over 10,000 calls) is far above the
slack; the slack absorbs allocator noise.
"""
import gc
import itertools
import os
import threading

import numpy as np
import pytest

import fastconv
from fastconv import losses, nn, ops, optim

from helpers import to_numpy

CALLS = 10_000
STEPS = 1_000
SLACK = 8 * 2**20  # bytes

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _problems():
    """name -> a zero-argument call of one op on small arrays (results of about 4 KiB)."""
    rng = np.random.default_rng(0)
    f = np.float32

    def r(*shape):
        return rng.standard_normal(shape).astype(f)

    a, b = r(32, 16), r(16, 32)
    x, w, bias, dy = r(32, 16), r(32, 16), r(32), r(32, 32)
    cx, cw, cb = r(2, 2, 8, 8), r(4, 2, 3, 3), r(4)
    cdy = r(2, 4, 8, 8)
    px = r(2, 4, 16, 16)
    py, pidx = ops.max_pool2d_forward(px, 2)
    pdy = r(*py.shape)
    logits, labels = r(32, 32), rng.integers(0, 32, 32)
    probs = to_numpy(ops.softmax_cross_entropy_forward(logits, labels)[1])
    t01 = rng.uniform(0, 1, (32, 32)).astype(f)
    param, grad, vel = r(1024), r(1024), np.zeros(1024, f)
    m, v = np.zeros(1024, f), np.zeros(1024, f)
    params, grads = [r(1024), r(3, 7)], [r(1024), r(3, 7)]
    vels, ms, vs = ([np.zeros_like(p) for p in params] for _ in range(3))
    fy, fidx = ops.conv2d_max_pool2d_forward(cx, cw, cb, padding=1, activation="relu", pool_kernel=2)
    fdy = r(*fy.shape)
    return {
        "matmul": lambda: ops.matmul(a, b),
        "matmul_tt": lambda: ops.matmul(b, a, trans_a=True, trans_b=True),
        "linear_forward": lambda: ops.linear_forward(x, w, bias, activation="relu"),
        "linear_backward": lambda: ops.linear_backward(dy, x, w),
        "relu_forward": lambda: ops.relu_forward(dy),
        "relu_backward": lambda: ops.relu_backward(dy, logits),
        "sigmoid_forward": lambda: ops.sigmoid_forward(dy),
        "sigmoid_backward": lambda: ops.sigmoid_backward(dy, t01),
        "conv2d_forward": lambda: ops.conv2d_forward(cx, cw, cb, padding=1, activation="sigmoid"),
        "conv2d_backward": lambda: ops.conv2d_backward(cdy, cx, cw, padding=1),
        "conv2d_max_pool2d_forward": lambda: ops.conv2d_max_pool2d_forward(cx, cw, cb, padding=1, activation="relu",
                                                                           pool_kernel=2),
        "conv2d_max_pool2d_backward": lambda: ops.conv2d_max_pool2d_backward(fdy, fy, fidx, cx, cw, padding=1,
                                                                             activation="relu"),
        "max_pool2d_forward": lambda: ops.max_pool2d_forward(px, 2),
        "max_pool2d_backward": lambda: ops.max_pool2d_backward(pdy, pidx, px.shape),
        "avg_pool2d_forward": lambda: ops.avg_pool2d_forward(px, 3, 1, 1),
        "avg_pool2d_backward": lambda: ops.avg_pool2d_backward(pdy, px.shape, 2),
        "softmax_cross_entropy_forward": lambda: ops.softmax_cross_entropy_forward(logits, labels, label_smoothing=0.1),
        "softmax_cross_entropy_backward": lambda: ops.softmax_cross_entropy_backward(probs, labels),
        "softmax_cross_entropy_with_grad": lambda: ops.softmax_cross_entropy_with_grad(logits, labels),
        "bce_with_logits_forward": lambda: ops.bce_with_logits_forward(logits, t01),
        "bce_with_logits_backward": lambda: ops.bce_with_logits_backward(logits, t01),
        "mse_forward": lambda: ops.mse_forward(logits, t01),
        "mse_backward": lambda: ops.mse_backward(logits, t01),
        "sgd_step": lambda: ops.sgd_step(param, grad, vel, lr=1e-6, momentum=0.9),
        "adam_step": lambda: ops.adam_step(param, grad, m, v, 1, lr=1e-6),
        "sgd_step_foreach": lambda: ops.sgd_step_foreach(params, grads, vels, lr=1e-6, momentum=0.9),
        "adam_step_foreach": lambda: ops.adam_step_foreach(params, grads, ms, vs, [1, 1], lr=1e-6),
    }


@pytest.fixture
def cpu():
    if not fastconv.backend.availability("cpu")[0]:
        pytest.skip("cpu backend unavailable")
    with fastconv.use_backend("cpu") as be:
        yield be


def test_the_problems_cover_every_op():
    assert {name.removesuffix("_tt") for name in _problems()} == set(ops.__all__)


def test_repeated_calls_keep_memory_flat(cpu):
    growth = {}
    for name, call in _problems().items():
        for _ in range(200):  # warm-up
            call()
        before = rss()
        for _ in range(CALLS):
            call()
        growth[name] = rss() - before
    leaking = {k: f"{g / 2**20:.1f} MiB" for k, g in growth.items() if g > SLACK}
    assert not leaking, f"resident memory grew over {CALLS} calls: {leaking}"


def test_training_steps_keep_memory_flat(cpu):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, seed=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Dropout(0.1, seed=1), nn.Linear(64, 3, seed=2))
    loss_fn, opt = losses.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        return float(loss)

    for _ in range(100):
        step()
    before = rss()
    losses_seen = [step() for _ in range(STEPS)]
    grown = rss() - before
    assert grown <= SLACK, f"resident memory grew by {grown / 2**20:.1f} MiB over {STEPS} training steps"
    assert all(np.isfinite(losses_seen)) and losses_seen[-1] < losses_seen[0]


def test_ops_from_several_threads_at_once(cpu):
    """Threads run different ops and shapes concurrently; each result must equal the one the same op
    gave single-threaded (bit for bit: the cpu kernels are deterministic)."""
    problems = _problems()
    names = [n for n in problems if "_step" not in n]  # the steps update shared buffers in place
    expected = {n: [to_numpy(a).copy() for a in _as_tuple(problems[n]())] for n in names}
    errors, barrier = [], threading.Barrier(4)

    def worker(k):
        with fastconv.use_backend("cpu"):  # the backend choice is per thread (a context variable)
            barrier.wait()
            mine = names[k::4]
            for i in range(300):
                name = mine[i % len(mine)]
                got = [to_numpy(a) for a in _as_tuple(problems[name]())]
                if not all(np.array_equal(g, e) for g, e in zip(got, expected[name])):
                    errors.append(name)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"wrong results under concurrency: {sorted(set(errors))}"


def test_optimizer_steps_from_several_threads_at_once(cpu):
    """Each thread steps its own parameter; the result equals the same steps taken single-threaded."""
    rng = np.random.default_rng(2)
    params0 = [rng.standard_normal(257 * (k + 1)).astype(np.float32) for k in range(4)]
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params0]

    def run(k, out):
        with fastconv.use_backend("cpu"):
            steps(k, out)

    def steps(k, out):
        p, m, v = params0[k].copy(), np.zeros_like(params0[k]), np.zeros_like(params0[k])
        vel = np.zeros_like(p)
        for step in range(1, 51):
            ops.adam_step(p, grads[k], m, v, step, lr=1e-2) if k % 2 else \
                ops.sgd_step(p, grads[k], vel, lr=1e-2, momentum=0.9)
        out[k] = p

    alone, together = {}, {}
    for k in range(4):
        run(k, alone)
    threads = [threading.Thread(target=run, args=(k, together)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert together[k].tobytes() == alone[k].tobytes()


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


def test_blas_stays_single_threaded_until_the_last_thread_inside_leaves():
    """single_threaded_blas saved and restored the process-wide BLAS thread counts in each thread on
    its own: a thread entering while another was inside saved 1, so whichever left first set BLAS
    back to its threads under the other's kernel, and the one leaving last left it at 1 for good.
    Two threads' guards in that order, stepped by hand."""
    from fastconv._cpu import _blas

    libraries = _blas._blas_libraries
    if not libraries:
        pytest.skip("no BLAS library found by threadpoolctl")
    saved = [lib.num_threads for lib in libraries]
    try:
        for lib in libraries:
            lib.set_num_threads(2)
        first, second = _blas.single_threaded_blas(), _blas.single_threaded_blas()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert [lib.num_threads for lib in libraries] == [1] * len(libraries)  # the second is inside
        second.__exit__(None, None, None)
        assert [lib.num_threads for lib in libraries] == [2] * len(libraries)
    finally:
        _restore_blas_threads(libraries, saved)


def test_blas_is_single_threaded_inside_kernels_on_any_thread():
    """threadpoolctl (>= 3.8) lets only the thread that first set OpenBLAS's thread count set it
    again; single_threaded_blas then did nothing on other threads (the main thread held it after its
    first kernel, or after a set_num_threads like the one here): OpenBLAS ran on its threads inside
    Numba's, and a float64 linear layer's bits differed from the main thread's."""
    from fastconv._cpu import _blas

    libraries = _blas._blas_libraries
    if not libraries:
        pytest.skip("no BLAS library found by threadpoolctl")
    saved = [lib.num_threads for lib in libraries]
    inside = []

    def probe():
        with _blas.single_threaded_blas():
            inside.extend(lib.num_threads for lib in libraries)

    try:
        for lib in libraries:
            lib.set_num_threads(2)  # (threadpoolctl >= 3.8: the main thread now holds control)
        worker = threading.Thread(target=probe)
        worker.start()
        worker.join()
        assert inside == [1] * len(libraries)
        assert [lib.num_threads for lib in libraries] == [2] * len(libraries)
    finally:
        _restore_blas_threads(libraries, saved)


def _restore_blas_threads(libraries, counts):
    for lib, count in zip(libraries, counts):
        lib.set_num_threads(count)
        release = getattr(lib, "clear_controlling_thread", None)
        if release is not None:
            release()  # (control back to whichever thread sets next)


def _guarded(monkeypatch, call):
    """How many times `call` entered single_threaded_blas (counted through the module's global, which
    blas_guard looks up on each call)."""
    from fastconv._cpu import _blas

    entered = []
    real = _blas.single_threaded_blas

    def counting():
        entered.append(1)
        return real()

    monkeypatch.setattr(_blas, "single_threaded_blas", counting)
    call()
    return len(entered)


def test_the_blas_guard_is_held_around_blas_kernels_only(cpu, monkeypatch):
    """The kernels that call BLAS's GEMM (OpenBLAS linear layers, float64, the strided backward by
    im2col without AVX-512) run inside single_threaded_blas; gemm32's (float32 on AVX-512 or AVX2
    hosts) skip its ~5 us of thread-count reads and writes."""
    from fastconv._cpu import _vecmath
    from fastconv._cpu.conv._im2col import _backward_uses_gemm32

    rng = np.random.default_rng(0)

    def r(*shape, dtype=np.float32):
        return rng.standard_normal(shape).astype(dtype)

    for dtype in (np.float32, np.float64):
        gemm32 = dtype == np.float32 and _vecmath.SIMD
        x, w, b = r(256, 64, dtype=dtype), r(128, 64, dtype=dtype), r(128, dtype=dtype)  # past the serial size
        assert _guarded(monkeypatch, lambda: ops.linear_forward(x, w, b)) == (not gemm32)
        assert _guarded(monkeypatch, lambda: ops.linear_backward(r(256, 128, dtype=dtype), x, w)) == \
            (not (gemm32 and _vecmath.AVX512))  # (the backward's gemm32 path: AVX-512 only)
        layers = [(r(4, 16, 10, 10, dtype=dtype), r(16, 16, 3, 3, dtype=dtype), False),  # strided: 57,600 a product
                  (r(2, 16, 20, 20, dtype=dtype), r(16, 16, 3, 3, dtype=dtype), True)]  # 230,400
        for (xc, wc, big), stride in itertools.product(layers, (1, 2)):
            y = ops.conv2d_forward(xc, wc, stride=stride, padding=1)
            assert _guarded(monkeypatch, lambda: ops.conv2d_forward(xc, wc, stride=stride, padding=1)) == (not gemm32)
            # strided backward: im2col's products, gemm32_blocked's with AVX-512 on products of >= 2^16
            # multiply-adds, else BLAS's
            blas = stride == 2 and not _backward_uses_gemm32(xc, wc, 1, y.shape[2] * y.shape[3])
            assert blas == (stride == 2 and not (_vecmath.AVX512 and dtype == np.float32 and big))
            assert _guarded(monkeypatch, lambda: ops.conv2d_backward(np.ones_like(y), xc, wc, stride=stride,
                                                                      padding=1)) == (not gemm32 or blas)
