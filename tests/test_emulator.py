"""The CUDA emulator's self-test kernels (csrc/kernels/selftest.cuh): barriers, static and dynamic
shared memory, warp shuffles with full and partial masks, atomics, 3-D launch geometry, and the
errors it must raise instead of hanging. On the cuda backend the same tests check the GPU agrees."""
import os

import numpy as np
import pytest

import fastconv.backend
from helpers import DTYPES, misaligned, on, to_numpy

pytestmark = pytest.mark.kernels  # every test here runs kernels: CI's sanitizer pass reruns them all

# Block sizes: one thread, a partial single warp (5, 20: some lanes skip some shuffles), one full
# warp, several warps with a partial last one, a full maximal block.
THREADS = [1, 5, 20, 32, 80, 1024]


def _call(be, name, dtype, *args):
    fn = be.kernel(name, dtype) if dtype is not None else getattr(be.ext, name)
    fn(*[be.ptr(a) if a is None or hasattr(a, "shape") else a for a in args], be.stream())
    if hasattr(be.ext, "synchronize"):
        be.ext.synchronize()


def _chunks(n, threads):
    return [slice(s, min(s + threads, n)) for s in range(0, n, threads)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads,n", [(1, 3), (5, 12), (80, 200), (1024, 1500)])
def test_reverse_through_shared_memory(native_backend, threads, n, dtype):
    x = np.arange(1, n + 1, dtype=dtype)
    y = on(native_backend, np.zeros(n, dtype))
    _call(native_backend, "selftest_reverse", dtype, on(native_backend, x), y, n, threads, True)
    expected = np.concatenate([x[c][::-1] for c in _chunks(n, threads)])
    np.testing.assert_array_equal(to_numpy(y), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads,n", [(1, 4), (7, 30), (80, 200), (1024, 2100)])
def test_block_sum_in_dynamic_shared_memory(native_backend, threads, n, dtype):
    x = np.random.default_rng(threads).integers(-50, 50, n).astype(dtype)  # integers: exact sums
    blocks = -(-n // threads)
    sums = on(native_backend, np.zeros(blocks, dtype))
    _call(native_backend, "selftest_block_sum", dtype, on(native_backend, x), sums, n, threads, True)
    np.testing.assert_array_equal(to_numpy(sums), [x[c].sum() for c in _chunks(n, threads)])


@pytest.fixture
def emu():
    """The emulator backend alone: for what only it can check (on a GPU these hang or are undefined)."""
    selected = os.environ.get("FASTCONV_TEST_BACKENDS")
    if selected and "emu" not in [n.strip() for n in selected.split(",")]:
        pytest.skip("backend emu not selected (FASTCONV_TEST_BACKENDS)")
    ok, why = fastconv.backend.availability("emu")
    if not ok:
        pytest.skip(f"backend emu unavailable: {why}")
    return fastconv.backend.load("emu")


@pytest.mark.parametrize("kernel", ["selftest_reverse", "selftest_block_sum"])
def test_missing_barrier_gives_a_wrong_answer_on_the_emulator(emu, kernel):
    # The planted bug: without __syncthreads a thread reads slots other threads have not written
    # yet. The emulator runs each thread up to its next barrier, so the bug shows every time.
    be = emu
    n, threads = 64, 32
    x = np.arange(1, n + 1, dtype=np.float32)
    out = np.zeros(n, np.float32)
    _call(be, kernel, np.float32, x, out, n, threads, True)
    right = out.copy()
    _call(be, kernel, np.float32, x, out, n, threads, False)
    if kernel == "selftest_block_sum":
        right, out = right[:2], out[:2]
        np.testing.assert_array_equal(right, [x[:32].sum(), x[32:].sum()])
    assert not np.array_equal(out, right)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", THREADS)
def test_warp_shuffles(native_backend, threads, dtype):
    n = 2 * threads + 3  # a short last block too
    x = np.random.default_rng(threads).integers(-9, 10, n).astype(dtype)
    warps_per_block = -(-threads // 32)
    blocks = -(-n // threads)
    scan, bcast, xsum = (on(native_backend, np.full(n, np.nan, dtype)) for _ in range(3))
    wsum = on(native_backend, np.full(blocks * warps_per_block, np.nan, dtype))
    _call(native_backend, "selftest_warp_ops", dtype, on(native_backend, x), scan, bcast, xsum, wsum, n, threads)

    padded = np.zeros(blocks * threads, dtype)
    padded[:n] = x
    want_scan, want_bcast, want_xsum, want_wsum = [], [], [], []
    for block in padded.reshape(blocks, threads):
        for start in range(0, threads, 32):
            warp = block[start:start + 32]
            want_scan.append(np.cumsum(warp))
            want_bcast.append(np.full(len(warp), warp[0]))
            want_xsum.append(np.full(len(warp), warp.sum()))
            want_wsum.append(warp.sum())
    np.testing.assert_array_equal(to_numpy(scan), np.concatenate(want_scan)[:n])
    np.testing.assert_array_equal(to_numpy(bcast), np.concatenate(want_bcast)[:n])
    np.testing.assert_array_equal(to_numpy(xsum), np.concatenate(want_xsum)[:n])
    np.testing.assert_array_equal(to_numpy(wsum), want_wsum)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads,n,nbins", [(1, 5, 3), (64, 1000, 7), (96, 300, 1)])
def test_atomics_histogram(native_backend, threads, n, nbins, dtype):
    rng = np.random.default_rng(n)
    bins_of = rng.integers(-1, nbins + 1, n).astype(np.int32)  # some out of range: skipped
    w = rng.integers(0, 8, n).astype(dtype) / 4  # quarters: every sum is exact in any order
    keys = rng.integers(-1000, 1000, n).astype(np.int32)
    counts = np.full(nbins, 2, np.int32)
    weights = np.full(nbins, 0.5, dtype)
    maxima = np.full(nbins, -500, np.int32)
    outs = on(native_backend, counts, weights, maxima)
    _call(native_backend, "selftest_histogram", dtype, *on(native_backend, bins_of, w, keys), *outs, n, nbins, threads)

    for b in range(nbins):
        hit = bins_of == b
        counts[b] += hit.sum()
        weights[b] += w[hit].sum()
        maxima[b] = max(maxima[b], keys[hit].max(initial=-500))
    for got, want in zip(outs, (counts, weights, maxima)):
        np.testing.assert_array_equal(to_numpy(got), want)


@pytest.mark.parametrize("grid,block", [((1, 1, 1), (1, 1, 1)), ((3, 2, 2), (4, 3, 2)), ((2, 1, 3), (33, 1, 1)),
                                        ((1, 2, 1), (8, 8, 16)), ((2, 2, 2), (1, 1, 64))])
def test_coordinates_in_3d(native_backend, grid, block):
    gx, gy, gz = grid
    bx, by, bz = block
    out = on(native_backend, np.full((gz, gy, gx, bz, by, bx, 12), -1, np.int32))
    _call(native_backend, "selftest_coords", None, out, gx, gy, gz, bx, by, bz)
    want = np.empty((gz, gy, gx, bz, by, bx, 12), np.int32)
    z, y, x, tz, ty, tx = np.indices((gz, gy, gx, bz, by, bx))
    for i, a in enumerate([tx, ty, tz, x, y, z]):
        want[..., i] = a
    want[..., 6:9] = block
    want[..., 9:12] = grid
    np.testing.assert_array_equal(to_numpy(out), want)


@pytest.mark.parametrize("grid,block", [((2**31, 1, 1), (1, 1, 1)), ((1, 65536, 1), (1, 1, 1)),
                                        ((1, 1, 65536), (1, 1, 1)), ((1, 1, 1), (1025, 1, 1)),
                                        ((1, 1, 1), (32, 33, 1)), ((1, 1, 1), (1, 1, 65)), ((1, 1, 1), (0, 1, 1))])
def test_launch_beyond_the_limits_raises(native_backend, grid, block):
    # A GPU refuses these launches (cudaErrorInvalidConfiguration): the emulator too, before any
    # block runs (the output has room for none).
    out = on(native_backend, np.full(12, -1, np.int32))
    with pytest.raises(RuntimeError, match=r"coords_kernel"):
        _call(native_backend, "selftest_coords", None, out, *grid, *block)
    np.testing.assert_array_equal(to_numpy(out), -1)


@pytest.mark.parametrize("dtype", DTYPES + (np.int64,))
def test_array_not_aligned_to_its_elements_never_reaches_a_kernel(native_backend, dtype):
    # A GPU loads an element only from a multiple of its size (else: misaligned address, and the
    # CUDA context is lost); x86 does not care. The backends refuse such an array's address.
    a = misaligned(native_backend, np.arange(6, dtype=dtype))
    with pytest.raises(ValueError, match=r"not a multiple of its (4|8)-byte .* elements.*misaligned address"):
        native_backend.ptr(a)
    assert native_backend.ptr(misaligned(native_backend, np.arange(6, dtype=dtype), np.dtype(dtype).itemsize)) > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_copy(native_backend, dtype):
    x = np.arange(1, 4 * 70 + 1, dtype=dtype)
    y = on(native_backend, np.zeros_like(x))
    _call(native_backend, "selftest_vector_copy", dtype, on(native_backend, x), y, 70)
    np.testing.assert_array_equal(to_numpy(y), x)


# ---- errors: the emulator only (on a GPU these kernels hang or give undefined values) -----------

def _emu_still_works(be):
    x = np.arange(40, dtype=np.float32)
    y = np.zeros(40, np.float32)
    _call(be, "selftest_reverse", np.float32, x, y, 40, 40, True)
    np.testing.assert_array_equal(y, x[::-1])


@pytest.mark.parametrize("threads,active", [(2, 1), (64, 63), (100, 40), (1024, 1)])
def test_return_before_syncthreads_raises(emu, threads, active):
    y = np.zeros(threads, np.float32)
    with pytest.raises(RuntimeError, match=r"early_return_kernel.*__syncthreads") as info:
        _call(emu, "selftest_early_return", None, y, threads, active)
    assert "exited" in str(info.value)
    _emu_still_works(emu)


def test_return_before_syncthreads_of_none_is_fine(emu):
    # All threads reach the barrier: no error, and the kernel's result is right.
    y = np.zeros(8, np.float32)
    _call(emu, "selftest_early_return", None, y, 8, 8)
    np.testing.assert_array_equal(y, np.arange(8)[::-1])


@pytest.mark.parametrize("mask,src", [(0x0000FFFF, 20), (0x00FF00FF, 8), (0x00000001, 1), (0xFFFF0000, 3)])
def test_shuffle_outside_mask_raises(emu, mask, src):
    y = np.zeros(32, np.float32)
    with pytest.raises(RuntimeError, match=r"shuffle_kernel.*__shfl_\*_sync"):
        _call(emu, "selftest_shuffle", None, y, mask, src)
    _emu_still_works(emu)


@pytest.mark.parametrize("mask,src", [(0xFFFFFFFF, 7), (0x0000FFFF, 3), (0xFFFF0000, 31), (0x00000004, 2)])
def test_shuffle_inside_mask(native_backend, mask, src):
    y = on(native_backend, np.full(32, -1, np.float32))
    _call(native_backend, "selftest_shuffle", None, y, mask, src)
    lanes = np.arange(32)
    want = np.where((mask >> lanes) & 1, src, -1)
    np.testing.assert_array_equal(to_numpy(y), want)


# UBSan (CI's sanitizer pass preloads it) aborts at the kernel's misaligned vector access itself
# ("reference binding to misaligned address"), before the emulator's check can raise.
_UNDER_UBSAN = "libubsan" in os.environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(_UNDER_UBSAN, reason="UBSan aborts at the misaligned access this test makes on purpose")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", ["load", "store"])
def test_misaligned_vector_access_raises(emu, dtype, side):
    # A 16-byte vector access needs a 16-byte aligned address: a GPU traps (misaligned address) on
    # one that is not, so the emulator raises where x86 would just read or write.
    x = np.zeros(4 * 8 + 4, dtype)
    y = np.zeros(4 * 8 + 4, dtype)
    assert x.ctypes.data % 16 == 0 and y.ctypes.data % 16 == 0
    src, dst = (x[1:], y) if side == "load" else (x, y[1:])  # one element (4 or 8 bytes) off
    with pytest.raises(RuntimeError, match=r"vector_copy_kernel.*thread \(0,0,0\).*misaligned address"):
        _call(emu, "selftest_vector_copy", dtype, src, dst, 8)
    _emu_still_works(emu)
