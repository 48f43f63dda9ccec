"""The AVX-512 / AVX2 float32 BCE-with-logits sum of the cpu backend (fastconv/_cpu/_bce32.py): against
float64 at many lengths and offsets (whole vectors, masked tails, chunk ends, several blocks), the
values around the range not counted and never read (arrays that end at an unreadable page), the
same NaN and infinity results as the portable terms in every lane, huge logits whose float32 chunk
sums overflow, the same bits for any thread count and alignment, and the op's choice of kernel.
Skipped where the host has neither AVX-512F nor AVX2 (the portable kernel is then the only one, tested in
test_loss.py)."""
import ctypes
import mmap

import numba
import numpy as np
import pytest
from numba import njit

from fastconv import ops
from fastconv._cpu import _vecmath, loss
from helpers import needs_simd

pytestmark = needs_simd
F32 = np.finfo(np.float32)

if _vecmath.SIMD:
    from fastconv._cpu._bce32 import bce_sum

    @njit
    def _sum(x, t, start, stop, pw):
        return bce_sum(x, t, start, stop, pw)


@njit
def _portable_terms(x, t, pw):
    out = np.empty_like(x)
    zero, one = np.float32(0), np.float32(1)
    for i in range(x.size):
        out[i] = loss._bce_term(x[i], t[i], pw, zero, one)
    return out


def _terms64(x, t, pw):
    x, t = x.astype(np.float64), t.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return (1 - t) * x + (1 + (pw - 1) * t) * (np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0))


def _scale64(x, t, pw):
    """What float32 rounds in each term: |(1 - t) x| + |w softplus(-x)| (the two parts can cancel:
    x = -20, t = 0 gives 0 in float32, here, in the portable terms and in torch's float32)."""
    x, t = x.astype(np.float64), t.astype(np.float64)
    return np.abs((1 - t) * x) + np.abs(1 + (pw - 1) * t) * (np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0))


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 33, 511, 512, 513, 1024, 1040, 4099])
@pytest.mark.parametrize("pw", [1.0, 2.5])
def test_the_sum_matches_float64_at_every_length_and_offset(n, pw):
    rng = np.random.default_rng(n)
    raw_x = (rng.standard_normal(n + 40) * 6).astype(np.float32)
    raw_t = rng.uniform(0, 1, n + 40).astype(np.float32)
    for start in (0, 3, 16, 37):
        stop = start + n
        x, t = raw_x.copy(), raw_t.copy()
        x[:start], x[stop:] = np.nan, np.nan  # values outside [start, stop) must not be counted
        terms = _terms64(x[start:stop], t[start:stop], pw)
        got = _sum(x, t, start, stop, np.float32(pw))
        # each term within a few float32 roundings of its magnitude, the float32 chunk sums too
        assert abs(got - terms.sum()) <= 8 * F32.eps * np.abs(terms).sum(), (start, got, terms.sum())


def _at_page_ends(values):
    """Two read-write copies of `values` (float32): one ending exactly where an unreadable page
    begins, one starting right after an unreadable page; a read past either end faults."""
    page = mmap.PAGESIZE
    assert values.nbytes <= page
    memory = mmap.mmap(-1, 4 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    mprotect = ctypes.CDLL(None).mprotect
    mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    no_access = 0  # PROT_NONE (Python's mmap module does not name it)
    assert mprotect(base, page, no_access) == 0 and mprotect(base + 3 * page, page, no_access) == 0
    floats = np.frombuffer(memory, np.float32)
    end = 3 * page // 4
    before_guard, after_guard = floats[end - values.size:end], floats[page // 4:page // 4 + values.size]
    before_guard[:], after_guard[:] = values, values
    return before_guard, after_guard


def test_tails_are_read_by_masked_loads_only():
    # A plain load of the last partial vector would read past the array: here, into a page that
    # faults (the process dies: a failure pytest reports as a crash).
    rng = np.random.default_rng(9)
    for n in [*range(1, 40), 511, 512, 513, 1000]:
        x, t = (rng.standard_normal(n) * 4).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)
        want = _sum(x, t, 0, n, np.float32(1.5))
        for guarded_x, guarded_t in zip(_at_page_ends(x), _at_page_ends(t)):
            assert _sum(guarded_x, guarded_t, 0, n, np.float32(1.5)) == want
            assert float(ops.bce_with_logits_forward(guarded_x, guarded_t)) == \
                float(ops.bce_with_logits_forward(x, t))


_SPECIALS = np.array([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 3e38, -3e38,
                      np.inf, -np.inf, np.nan], np.float32)


@pytest.mark.parametrize("pw", [1.0, 3.0, 0.0, -2.0])
def test_nan_and_infinities_as_the_portable_terms_and_float64_in_every_lane(pw):
    # 17 values: 16 through the whole-vector loop, 1 through the masked tail; each special value
    # and target in turn in lanes 0, 7, 15 and 16 among ordinary ones
    pw = np.float32(pw)
    rng = np.random.default_rng(5)
    x0 = (rng.standard_normal(17) * 2).astype(np.float32)
    t0 = rng.uniform(0, 1, 17).astype(np.float32)
    for special in _SPECIALS:
        for target in np.array([0.0, 1.0, 0.5, np.nan], np.float32):
            for lane in (0, 7, 15, 16):
                x, t = x0.copy(), t0.copy()
                x[lane], t[lane] = special, target
                got = _sum(x, t, 0, 17, pw)
                portable, want = float(_portable_terms(x, t, pw).astype(np.float64).sum()), _terms64(x, t, pw).sum()
                case = (special, target, lane, pw, got, portable, want)
                assert np.isnan(got) == np.isnan(portable) == np.isnan(want), case
                if abs(want) > F32.max:  # infinite, or past float32's range
                    assert got == np.copysign(np.inf, want), case
                elif not np.isnan(got):
                    # (the tolerance's absolute part: the portable exp is 0 below -87.3; this one keeps
                    # the subnormals)
                    assert abs(got - want) <= 8 * F32.eps * _scale64(x, t, pw).sum() + 16 * F32.smallest_subnormal, \
                        case


@pytest.mark.parametrize("n", [2, 17, 1000, 8193, 3 * 4096 + 5])
@pytest.mark.parametrize("with_pos_weight", [False, True])
def test_huge_logits_give_the_finite_float64_loss(n, with_pos_weight):
    # Terms of ~1e36-3e38 overflow a float32 chunk sum, not the float64 total: the block is redone.
    rng = np.random.default_rng(n)
    x = (rng.uniform(0.3, 3.0, (n, 1)) * 1e37 * rng.choice([-1, 1], (n, 1))).astype(np.float32)
    x[0, 0] = 3e38
    t = rng.integers(0, 2, (n, 1)).astype(np.float32)
    pw = np.array([2.0], np.float32) if with_pos_weight else None
    want = _terms64(x, t, 2.0 if with_pos_weight else 1.0).mean()
    got = float(ops.bce_with_logits_forward(x, t, pw))
    assert np.isfinite(want) and got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("n", [4096 * 2, 4096 * 2 + 1, 4096 * 3 + 5, 2**20 + 3])
def test_many_blocks_match_float64(n):
    # _chunks(n) blocks of n // chunks or one more values each: none dropped or counted twice
    rng = np.random.default_rng(n)
    x, t = (rng.standard_normal(n) * 3).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)
    assert loss._chunks(n) > 1
    assert float(ops.bce_with_logits_forward(x, t)) == pytest.approx(_terms64(x, t, 1.0).mean(), rel=1e-6)


def test_the_same_bits_for_any_thread_count_and_alignment(monkeypatch):
    rng = np.random.default_rng(6)
    n = 2**16 + 77  # past _parallel.SERIAL_BELOW: the threads share the blocks
    x, t = (rng.standard_normal(n) * 3).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)
    x[5000:5003] = 3e38  # one block through the float64 fallback
    want = ops.bce_with_logits_forward(x, t)
    seen = []
    real = loss._bce_sum_simd
    monkeypatch.setattr(loss, "_bce_sum_simd", lambda *a: seen.append(numba.get_num_threads()) or real(*a))
    threads = numba.get_num_threads()
    try:
        for count in range(1, threads + 1):
            numba.set_num_threads(count)
            assert ops.bce_with_logits_forward(x, t).tobytes() == want.tobytes()
    finally:
        numba.set_num_threads(threads)
    assert seen == list(range(1, threads + 1))
    for offset in (1, 3, 8, 15):  # in floats from a 64-byte line
        bx, bt = np.empty(n + 16, np.float32), np.empty(n + 16, np.float32)
        skip = (-bx.ctypes.data // 4) % 16 + offset, (-bt.ctypes.data // 4) % 16 + offset
        ax, at = bx[skip[0] % 16:][:n], bt[skip[1] % 16:][:n]
        ax[:], at[:] = x, t
        assert ops.bce_with_logits_forward(ax, at).tobytes() == want.tobytes()


def test_the_op_takes_the_avx512_sum_for_float32_and_one_pos_weight_only(monkeypatch):
    used = []
    for name in ("_bce_sum_simd", "_elementwise_loss_sum"):
        real = getattr(loss, name)
        monkeypatch.setattr(loss, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    rng = np.random.default_rng(4)
    x, t = (rng.standard_normal((300, 1)) * 3).astype(np.float32), rng.uniform(0, 1, (300, 1)).astype(np.float32)
    pw1, pw3 = np.array([2.0], np.float32), np.array([2.0, 1.0, 0.5], np.float32)
    x3, t3 = x.reshape(100, 3), t.reshape(100, 3)
    results = [ops.bce_with_logits_forward(x, t), ops.bce_with_logits_forward(x, t, pw1),
               ops.bce_with_logits_forward(x3, t3, pw3),
               ops.bce_with_logits_forward(x.astype(np.float64), t.astype(np.float64))]
    assert used == ["_bce_sum_simd", "_bce_sum_simd", "_elementwise_loss_sum", "_elementwise_loss_sum"]
    for got, (xx, tt, pw) in zip(results, [(x, t, 1.0), (x, t, pw1), (x3, t3, pw3), (x, t, 1.0)]):
        assert float(got) == pytest.approx(_terms64(xx, tt, pw).mean(), rel=2e-6)
    monkeypatch.setattr(_vecmath, "SIMD", False)
    assert float(ops.bce_with_logits_forward(x, t)) == pytest.approx(float(results[0]), rel=2e-6)
    assert used[-1] == "_elementwise_loss_sum"
