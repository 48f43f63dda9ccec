"""The emulator's shared-memory race detector (a FASTCONV_RACECHECK build of _emu, where every
emulated thread is a ThreadSanitizer fiber and only __syncthreads / warp operations order them).

Runs only when FASTCONV_RACECHECK_LIBRARY names such a build (CI builds one); each case runs in a
subprocess with ThreadSanitizer's runtime preloaded. Shown: a planted missing __syncthreads is
reported with the kernel, the shared array and both threads; the same kernel with its barrier, and
one small launch of every op's kernels, are reported clean."""
import os
import subprocess
import sys
import textwrap

import pytest

LIBRARY = os.environ.get("FASTCONV_RACECHECK_LIBRARY")
pytestmark = pytest.mark.skipif(not LIBRARY, reason="needs FASTCONV_RACECHECK_LIBRARY (a FASTCONV_RACECHECK build)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code):
    tsan = subprocess.run(["gcc", "-print-file-name=libtsan.so"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=tsan, FASTCONV_EMU_LIBRARY=LIBRARY, FASTCONV_BACKEND="emu",
               OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", TSAN_OPTIONS="exitcode=66", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


REVERSE = """
    import numpy as np, fastconv
    be = fastconv.backend.load("emu")
    x = np.arange(64, dtype=np.float32)
    y = np.zeros_like(x)
    be.ext.selftest_reverse_f32(x.ctypes.data, y.ctypes.data, 64, 32, {barrier}, 0)
    print("ran")
"""


def test_planted_missing_barrier_is_reported():
    proc = _run(REVERSE.format(barrier=False))
    report = proc.stderr
    assert proc.returncode == 66, report[-3000:]
    assert "WARNING: ThreadSanitizer: data race" in report
    assert "reverse_kernel" in report and "selftest.cuh" in report            # the kernel and its line
    assert "reverse_kernel<float>(float const*, float*, long, bool)::s'" in report  # the __shared__ array
    threads = [line for line in report.splitlines() if "Thread T" in line and "of block (0,0,0) in reverse_kernel" in line]
    assert len(threads) >= 2, report[-3000:]                                    # both threads, by name


def test_the_same_kernel_with_its_barrier_is_clean():
    proc = _run(REVERSE.format(barrier=True))
    assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert "ran" in proc.stdout


def test_every_op_kernel_is_race_free_on_a_small_launch():
    # One launch of each kernel family, past one tile / block where it matters (multi-block GEMM
    # tiles, several warps in the row reductions, split-K weight gradients).
    proc = _run("""
        import numpy as np
        from fastconv import ops
        rng = np.random.default_rng(0)
        f = lambda *s: rng.standard_normal(s).astype(np.float32)
        ops.matmul(f(130, 9), f(9, 131)); ops.matmul(f(9, 130), f(131, 9), trans_a=True, trans_b=True)
        y = ops.linear_forward(f(5, 7), f(3, 7), f(3), activation="relu")
        ops.linear_backward(f(5, 3), f(5, 7), f(3, 7))
        ops.relu_backward(f(40), f(40)); ops.sigmoid_backward(f(40), ops.sigmoid_forward(f(40)))
        x, w = f(2, 4, 9, 9), f(6, 2, 3, 3)
        out = ops.conv2d_forward(x, w, f(6), stride=2, padding=1, groups=2, activation="sigmoid")
        ops.conv2d_backward(f(*out.shape), x, w, stride=2, padding=1, groups=2)
        p, idx = ops.max_pool2d_forward(x, 3, stride=2, padding=1)
        ops.max_pool2d_backward(f(*p.shape), idx, x.shape)
        a = ops.avg_pool2d_forward(x, 2); ops.avg_pool2d_backward(f(*a.shape), x.shape, 2)
        labels = rng.integers(0, 300, 3)
        loss, probs = ops.softmax_cross_entropy_forward(f(3, 300), labels, label_smoothing=0.1)
        ops.softmax_cross_entropy_backward(probs, labels, label_smoothing=0.1)
        ops.bce_with_logits_forward(f(4, 5), (f(4, 5) > 0).astype(np.float32), pos_weight=np.abs(f(5)))
        ops.bce_with_logits_backward(f(4, 5), (f(4, 5) > 0).astype(np.float32))
        ops.mse_forward(f(9), f(9)); ops.mse_backward(f(9), f(9))
        prm, m, v, vel = f(50), np.zeros(50, np.float32), np.zeros(50, np.float32), np.zeros(50, np.float32)
        ops.adam_step(prm, f(50), m, v, 1, lr=0.1); ops.sgd_step(prm, f(50), vel, lr=0.1, momentum=0.9)
        print("ran")
    """)
    assert proc.returncode == 0 and "ThreadSanitizer" not in proc.stderr, proc.stderr[-5000:]
    assert "ran" in proc.stdout
