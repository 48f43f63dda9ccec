"""The cpu backend's memory paths: the cache of large output buffers (_cpu/_memory.py) and the
streaming stores for outputs past the last-level cache (_cpu/_stream.py).

The streamed path only runs for outputs larger than the last-level cache (480 MiB on the dev
machine), so the tests call its kernels directly on small arrays, at every alignment and around
the block and task edges, and compare with the plain path bit for bit; the cross-entropy rows
(plain stores) are checked for writing only their rows, at every alignment."""
import threading

import numpy as np
import pytest

import fastconv
import fastconv.ops as ops
from fastconv._cpu import _memory, _stream, _vecmath, dense, loss
from helpers import needs_simd

BIG = _memory.MIN_BYTES // 4  # float32 values in the smallest cached array


@pytest.fixture
def cache():
    _memory.empty_cache()
    yield _memory
    _memory.empty_cache()


def test_a_dead_output_s_buffer_is_reused_and_the_result_is_right(cache):
    x = np.random.default_rng(0).standard_normal(BIG, dtype=np.float32)
    y = ops.relu_forward(x)
    address = y.ctypes.data
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert isinstance(y.base, _memory._Lease) and y.flags.writeable and y.flags.c_contiguous
    del y
    assert cache.cached_bytes() >= x.nbytes
    y = ops.sigmoid_backward(x, x)
    assert y.ctypes.data == address and cache.cached_bytes() == 0
    np.testing.assert_allclose(y, x * x * (1 - x), rtol=1e-6)


def test_live_outputs_and_their_views_keep_their_buffers(cache):
    x = np.ones(BIG, np.float32)
    a = ops.relu_forward(x)
    view = a[5:17]
    del a
    assert cache.cached_bytes() == 0  # the view keeps the buffer
    b = ops.relu_forward(-x)
    assert not np.shares_memory(view, b)
    np.testing.assert_array_equal(view, 1)
    np.testing.assert_array_equal(b, 0)
    del view
    assert cache.cached_bytes() > 0


def test_small_arrays_are_plain_numpy(cache):
    y = ops.relu_forward(np.ones(1000, np.float32))
    assert y.base is None and cache.cached_bytes() == 0


def test_the_cache_keeps_at_most_its_limit_oldest_out_first(cache, monkeypatch):
    monkeypatch.setattr(_memory, "_limit", 3 * _memory.MIN_BYTES)
    arrays = [_memory.empty((BIG,), np.float32) for _ in range(4)]
    first = arrays[0].ctypes.data
    while arrays:
        arrays.pop(0)  # freed in order: the first is the oldest in the cache
    assert cache.cached_bytes() == 3 * _memory.MIN_BYTES
    assert all(b.ctypes.data != first for b in _memory._cached)


def test_buffers_below_32_mib_keep_to_their_own_limit(cache, monkeypatch):
    # many sizes of 1-32 MiB (a search over widths) must not fill the whole cache: the oldest small
    # ones go first, and a large buffer does not count against the small ones' limit
    monkeypatch.setattr(_memory, "SMALL_LIMIT", 3 * _memory.MIN_BYTES)
    large = _memory.empty((32 << 20) // 4, np.float32)
    small = [_memory.empty((BIG,), np.float32) for _ in range(5)]
    kept = [b.ctypes.data for b in small[2:]]
    del large
    while small:
        small.pop(0)
    assert cache.cached_bytes() == (32 << 20) + 3 * _memory.MIN_BYTES
    assert sorted(b.ctypes.data for b in _memory._cached if b.nbytes < 32 << 20) == sorted(kept)


def test_a_zero_limit_turns_the_cache_off(cache, monkeypatch):
    monkeypatch.setattr(_memory, "_limit", 0)
    y = _memory.empty((BIG,), np.float32)
    assert y.base is None
    del y
    assert cache.cached_bytes() == 0


def test_sizes_are_matched_by_their_rounded_size(cache):
    a = _memory.empty((BIG + 1,), np.float32)
    address = a.ctypes.data
    del a
    assert _memory.empty((BIG + 2,), np.float32).ctypes.data == address  # same 64 KiB granule
    assert _memory.empty((2 * BIG,), np.float32).ctypes.data != address


@needs_simd
def test_a_convolution_s_scratch_comes_from_the_cache_and_goes_back(cache):
    # The Winograd weight gradient of 256 channels: dU alone is 4 MiB. glibc's heap, growing and
    # trimmed between calls, had the 512-channel layer's calls fault their pages in, at 40-78 ms
    # against 32-36 with the buffers reused.
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal((2, 256, 8, 8), dtype=np.float32) for _ in range(2))
    w = rng.standard_normal((256, 256, 3, 3), dtype=np.float32) / 48
    ops.conv2d_backward(dy, x, w, padding=1)
    first = cache.cached_bytes()
    assert first >= 16 * 256 * 256 * 4
    ops.conv2d_backward(dy, x, w, padding=1)
    assert cache.cached_bytes() == first  # the same buffers taken and given back, none new


def test_empty_cache_is_public_and_frees_everything(cache):
    y = _memory.empty((3, BIG), np.float64)
    assert y.shape == (3, BIG) and y.dtype == np.float64
    del y
    assert cache.cached_bytes() > 0
    fastconv.empty_cache()
    assert cache.cached_bytes() == 0


def test_outputs_freed_from_other_threads_come_back(cache):
    arrays = [_memory.empty((BIG,), np.float32) for _ in range(2)]

    def drop():
        arrays.clear()

    worker = threading.Thread(target=drop)
    worker.start()
    worker.join()
    assert cache.cached_bytes() == 2 * _memory.MIN_BYTES


def test_a_bad_cache_size_in_the_environment_is_a_clear_error(monkeypatch):
    for value in ("lots", "-1", "1.5"):
        monkeypatch.setenv("FASTCONV_CPU_CACHE_MB", value)
        with pytest.raises(ValueError, match="FASTCONV_CPU_CACHE_MB must be a whole number of MiB >= 0"):
            _memory._limit_from_environment()
    monkeypatch.setenv("FASTCONV_CPU_CACHE_MB", "64")
    assert _memory._limit_from_environment() == 64 << 20


# ---- streaming stores ----------------------------------------------------------------------------

def _offset_view(n, dtype, skip):
    """A 1-D array of n values whose element `skip` starts a 64-byte line."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(n + 64, dtype)
    start = ((-raw.ctypes.data) % 64 // itemsize - skip) % (64 // itemsize)
    view = raw[start:start + n]
    assert _stream.align_skip(view) == skip
    return view


SIZES = [0, 1, 5, 15, 16, 17, 127, 128, 129, 300, _stream.SPAN - 1, _stream.SPAN, _stream.SPAN + 17,
         3 * _stream.SPAN + 200]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_streamed_kernels_write_every_value_once_and_nothing_else(n, dtype):
    rng = np.random.default_rng(n)
    lanes = 64 // np.dtype(dtype).itemsize
    for skip in sorted({0, 1, lanes - 1, 3 % lanes}):
        x = rng.standard_normal(n).astype(dtype)
        dy = rng.standard_normal(n).astype(dtype)
        for kernel, streamed, inputs, reference in [
            (dense._relu_forward, dense._relu_forward_streamed, (x,), np.maximum(x, 0)),
            (dense._relu_backward, dense._relu_backward_streamed, (dy, x), np.where(x > 0, dy, 0)),
            (dense._sigmoid_backward, dense._sigmoid_backward_streamed, (dy, x), dy * x * (1 - x)),
        ]:
            raw_out = _offset_view(n + 2 * lanes, dtype, skip)  # guard values either side
            raw_out[:] = 7
            out = raw_out[lanes:lanes + n]
            streamed(*inputs, out, _stream.align_skip(out))
            plain = np.empty_like(out)
            kernel(*inputs, plain)
            np.testing.assert_array_equal(out, plain)
            np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-7)
            assert (raw_out[:lanes] == 7).all() and (raw_out[lanes + n:] == 7).all()


def test_only_outputs_past_the_last_level_cache_are_streamed(monkeypatch):
    monkeypatch.setattr(_stream, "_STREAM_FROM", 1000)
    assert _stream.should_stream(np.empty(251, np.float32))
    assert not _stream.should_stream(np.empty(250, np.float32))
    assert not _stream.should_stream(np.empty((40, 40), np.float32)[:, ::2])  # not contiguous
    unaligned = np.frombuffer(bytearray(4 * 300 + 1), np.uint8)[1:].view(np.float32)
    assert not _stream.should_stream(unaligned)


def test_the_last_level_cache_size_is_read_from_sysfs(tmp_path):
    for index, size in [("index0", "48K"), ("index2", "2048K"), ("index3", "491520K")]:
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    assert _stream._last_level_cache_bytes(str(tmp_path)) == 491520 << 10
    assert _stream._last_level_cache_bytes(str(tmp_path / "nothing")) == 32 << 20


def _guarded_results(kernels, raw, out, guard):
    """Each kernel's output `out` (a view of raw after `guard` values), with raw's values before
    and after it checked untouched."""
    results = []
    for kernel in kernels:
        raw[:] = 7
        kernel()
        assert (raw[:guard] == 7).all() and (raw[guard + out.size:] == 7).all()
        results.append(out.copy())
    return results


@pytest.mark.parametrize("classes", [1, 7, 16, 17, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_rows_write_only_their_rows(classes, dtype):
    """Rows at every alignment: the values around the output untouched, the output the op's."""
    n = 300
    rng = np.random.default_rng(classes)
    z = rng.standard_normal((n, classes)).astype(dtype) * 4
    labels = rng.integers(0, classes, n)
    weight = rng.uniform(0.5, 2, classes).astype(dtype)
    lanes = 64 // np.dtype(dtype).itemsize
    for has_weight, smoothing, grad in [(False, 0.0, True), (True, 0.1, True), (False, 0.2, False)]:
        raw = _offset_view(n * classes + 2 * lanes, dtype, 3 % lanes)
        raw[:] = 7
        probs = raw[lanes:lanes + n * classes].reshape(n, classes)
        row_loss, row_weight = np.empty(n), np.empty(n)
        args = (z, labels, weight if has_weight else np.empty(0, dtype), has_weight, smoothing, probs, row_loss,
                row_weight, grad, 123.0, 45.0)
        kernels = [lambda: loss._cross_entropy_rows(*args)]
        if dtype == np.float32 and _vecmath.SIMD:  # plain and streamed stores
            kernels += [lambda stream=stream: loss._cross_entropy_rows_simd(*args, stream, _stream.align_skip(probs))
                        for stream in (False, True)]
        results = _guarded_results(kernels, raw, probs, lanes)
        # the AVX-512 exp is within a few ulp of the portable one; streaming changes no bit
        np.testing.assert_allclose(results[-1], results[0], rtol=1e-5, atol=1e-7)
        if len(results) == 3:
            np.testing.assert_array_equal(results[1], results[2])
        zs = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        softmax = np.exp(zs) / np.exp(zs).sum(axis=1, keepdims=True)
        if not grad:
            np.testing.assert_allclose(results[0], softmax, rtol=1e-5, atol=1e-7)
        else:
            # The fused gradient in float64 (test_loss's formula), with the sums passed in (123: the
            # labels' weights, 45: the classes'): the kernels above only agree with each other (float64
            # has one; float32's weighted, smoothed rows all go through the same _grad_row).
            w = weight.astype(np.float64) if has_weight else np.ones(classes)
            wy, onehot = w[labels][:, None], np.eye(classes)[labels]
            expected = (softmax * ((1 - smoothing) * wy + smoothing / classes * 45.0) - (1 - smoothing) * wy * onehot
                        - smoothing / classes * w) / 123.0
            # (of the terms' scale: with one class the gradient is 0, the kernel's rounding noise)
            tol = 8 * np.finfo(dtype).eps * max(np.abs(expected).max(), w.max() / 123.0)
            np.testing.assert_allclose(results[0], expected, rtol=0, atol=tol, err_msg=f"smoothing {smoothing}")


@needs_simd
@pytest.mark.parametrize("classes", [7, 1000])
def test_streamed_cross_entropy_rows_over_several_tasks(classes):
    """Streamed rows in tasks of STREAMED_SPAN values, the last one partial, the output starting
    anywhere in a line: the same bits as the plain stores, nothing around the output written, for
    the fused rows and for the backward from probs."""
    rows_per_task = loss.STREAMED_SPAN // classes
    n = 2 * rows_per_task + rows_per_task // 3
    rng = np.random.default_rng(classes)
    z = rng.standard_normal((n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    no_weight = np.empty(0, np.float32)
    for skip in (0, 5):
        raw = _offset_view(n * classes + 32, np.float32, (skip + 16) % 16)
        out = raw[16:16 + n * classes].reshape(n, classes)
        assert _stream.align_skip(out) == skip
        row_loss, row_weight = np.empty(n), np.empty(n)
        fused = [lambda stream=stream: loss._cross_entropy_rows_simd(
            z, labels, no_weight, False, 0.0, out, row_loss, row_weight, True, float(n), 1.0, stream,
            _stream.align_skip(out)) for stream in (False, True)]
        plain, streamed = _guarded_results(fused, raw, out, 16)
        np.testing.assert_array_equal(streamed, plain)
        probs = np.ascontiguousarray(plain)
        backward = [lambda stream=stream: loss._cross_entropy_grad_simd(
            probs, labels, no_weight, False, 0.0, float(n), 1.0, out, stream, _stream.align_skip(out))
            for stream in (False, True)]
        plain, streamed = _guarded_results(backward, raw, out, 16)
        np.testing.assert_array_equal(streamed, plain)


@pytest.mark.parametrize("classes", [1, 7, 16, 17, 1000])
def test_cross_entropy_backward_rows_write_only_their_rows(classes):
    """The backward from probs: portable, AVX-512 plain and streamed, rows at every alignment."""
    n = 300
    rng = np.random.default_rng(classes)
    probs = rng.uniform(0, 1, (n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    weight = rng.uniform(0.5, 2, classes).astype(np.float32)
    for has_weight, smoothing in [(False, 0.0), (True, 0.0), (False, 0.1), (True, 0.1)]:
        raw = _offset_view(n * classes + 32, np.float32, 3)
        out = raw[16:16 + n * classes].reshape(n, classes)
        args = (probs, labels, weight if has_weight else np.empty(0, np.float32), has_weight, smoothing, 123.0, 45.0,
                out)
        kernels = [lambda: loss._cross_entropy_grad(*args)]
        if _vecmath.SIMD:
            kernels += [lambda stream=stream: loss._cross_entropy_grad_simd(*args, stream, _stream.align_skip(out))
                        for stream in (False, True)]
        results = _guarded_results(kernels, raw, out, 16)
        scale = np.abs(results[0]).max()
        for result in results[1:]:  # the label's constant is rounded to float32 first: within an ulp or so
            np.testing.assert_allclose(result, results[0], rtol=0, atol=2 * np.finfo(np.float32).eps * scale)
        if len(results) == 3:
            np.testing.assert_array_equal(results[1], results[2])


def test_the_ops_dispatch_to_the_streamed_kernels_past_the_threshold(monkeypatch):
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    z, labels = rng.standard_normal((50, 33)).astype(np.float32), rng.integers(0, 33, 50)
    calls = [lambda: ops.relu_forward(x), lambda: ops.relu_backward(dy, x), lambda: ops.sigmoid_backward(dy, x),
             lambda: ops.softmax_cross_entropy_with_grad(z, labels)[1], lambda: ops.softmax_cross_entropy_forward(z, labels)[1],
             lambda: ops.softmax_cross_entropy_backward(ops.softmax_cross_entropy_forward(z, labels)[1], labels)]
    plain = [call() for call in calls]
    monkeypatch.setattr(_stream, "_STREAM_FROM", 0)
    used = []
    real = _stream.align_skip
    for module in (dense, loss):
        monkeypatch.setattr(module, "align_skip", lambda out: used.append(1) or real(out))
    for call, expected in zip(calls, plain):
        np.testing.assert_array_equal(call(), expected)
    # the three elementwise ops took the streamed kernels, and on AVX-512 hosts the three losses
    # (the backward's forward too)
    assert len(used) == 3 + 4 * _vecmath.SIMD


def test_an_empty_cache_setting_means_the_default(monkeypatch):
    monkeypatch.setenv("FASTCONV_CPU_CACHE_MB", " ")
    assert _memory._limit_from_environment() == 2048 << 20


def test_a_failed_allocation_empties_the_cache_and_tries_again(cache, monkeypatch):
    import types

    held = _memory.empty((BIG,), np.float32)
    del held
    assert cache.cached_bytes() > 0
    failures = []

    def empty(shape, dtype=float):
        if not failures:
            failures.append(shape)
            raise MemoryError
        return np.empty(shape, dtype)

    shim = types.SimpleNamespace(**{name: getattr(np, name) for name in ("uint8", "asarray", "dtype", "integer")},
                                 empty=empty)
    monkeypatch.setattr(_memory, "np", shim)
    y = _memory.empty((2 * BIG,), np.float32)
    assert failures and y.shape == (2 * BIG,) and cache.cached_bytes() == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_fork_while_the_cache_is_locked_does_not_deadlock_the_child(cache):
    import os

    with _memory._lock:  # another thread inside _take at the moment of the fork
        pid = os.fork()
        if pid == 0:
            try:
                y = _memory.empty((BIG,), np.float32)
                code = 0 if y.shape == (BIG,) and _memory.cached_bytes() == 0 else 1
            except BaseException:
                code = 2
            os._exit(code)
    deadline = __import__("time").monotonic() + 30
    while __import__("time").monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        __import__("time").sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the child deadlocked on the cache's lock")


def test_repeated_large_calls_reuse_one_buffer_instead_of_growing(cache):
    def resident():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    x = np.ones(BIG, np.float32)
    y = ops.relu_forward(x)
    del y
    before = resident()
    addresses = set()
    for _ in range(20):
        y = ops.relu_forward(x)
        addresses.add(y.ctypes.data)
        del y
    assert len(addresses) == 1
    assert resident() - before < _memory.MIN_BYTES  # 20 fresh outputs would have been 640 MiB of traffic


def test_an_allocation_while_this_thread_holds_the_cache_s_lock_does_not_wait(cache):
    """A finalizer or signal handler that runs an op while this thread is inside _take or _give_back
    (a garbage collection there) hung on the lock: now it misses the cache, and a buffer it frees is
    simply let go. Run in a thread that gives up on it, so that a regression fails instead of hanging."""
    import copy

    kept = _memory.empty((BIG,), np.float32)
    del kept  # one buffer cached
    outcome = []

    def inside_the_lock():
        with _memory._lock:
            y = _memory.empty((BIG,), np.float32)  # a miss, though a buffer of its size is cached
            outcome.append(_memory.cached_bytes())
            del y  # given back while the lock is held: freed
            _memory.empty_cache()  # waits a second at most, then leaves the cache as it is
            outcome.append(_memory.cached_bytes())

    worker = threading.Thread(target=inside_the_lock, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "an allocation waited for the lock its own thread holds"
    assert outcome == [_memory.MIN_BYTES] * 2
    y = _memory.empty((BIG,), np.float32)  # the cached buffer is still there, and taken
    assert _memory.cached_bytes() == 0
    with pytest.raises(TypeError, match="cannot be copied"):  # a copy would give its buffer back twice
        copy.copy(y.base)


@pytest.mark.parametrize("kernel, stride, fused", [(3, 1, False), (3, 1, True), (5, 2, False), (1, 1, False)])
def test_an_empty_batch_takes_no_sample_s_scratch(cache, kernel, stride, fused):
    """A batch of 0 images of 2048^2 (h101, h102): every path, forward and backward, sized its scratch for
    one sample at least, 260 MB for 16 channels by Winograd's forward; the results (empty, or zero
    gradients) need none."""
    import tracemalloc

    x = np.zeros((0, 16, 2048, 2048), np.float32)
    w = np.ones((16, 16, kernel, kernel), np.float32)
    with fastconv.use_backend("cpu"):
        ops.conv2d_forward(x[:, :, :8, :8], w, stride=stride, padding=kernel // 2)  # (compiled before the count)
        tracemalloc.start()
        try:
            if fused:
                y, indices = ops.conv2d_max_pool2d_forward(x, w, padding=1, pool_kernel=2)
                assert indices.shape == y.shape == (0, 16, 1024, 1024)
            else:
                y = ops.conv2d_forward(x, w, stride=stride, padding=kernel // 2)
                assert y.shape == (0, 16, 2048 // stride, 2048 // stride)
            forward_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            dy = np.zeros(y.shape, np.float32)
            if fused:
                dx, dw, db = ops.conv2d_max_pool2d_backward(dy, y, indices, x, w, padding=1, bias=True)
            else:
                dx, dw, db = ops.conv2d_backward(dy, x, w, stride=stride, padding=kernel // 2, bias=True)
            backward_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert forward_peak < 1 << 20 and backward_peak < 1 << 20
    assert dx.shape == x.shape and not dw.any() and dw.shape == w.shape and not db.any() and db.shape == (16,)
