"""The AVX-512 / AVX2 softmax row pieces of the cpu backend (fastconv/_cpu/_softmax32.py): exp(z - m)
within 1 ulp of exp of the float32 difference, NaN kept, only the row's values written; its sum
against float64 and in a fixed order; and the row store, plain and streamed, the same bits at every
alignment with the values around it untouched. Skipped where the host has neither AVX-512F nor AVX2."""
import numpy as np
import pytest
from numba import njit

from fastconv._cpu import _stream, _vecmath
from helpers import needs_simd

F32 = np.finfo(np.float32)
pytestmark = needs_simd

if _vecmath.SIMD:
    from fastconv._cpu._softmax32 import LINE_SCRATCH, SUM_CHUNK, flush_line, row_exp_sum, store_row

    @njit
    def _exp_sum(row, m, out, ahead):
        return row_exp_sum(row, m, out, ahead)

    @njit
    def _store(e, classes, a, b, label, t, out, start, stream, skip):
        """One row, as a task of its own."""
        line = np.empty(LINE_SCRATCH, np.float32)
        store_row(e, classes, a, b, label, t, out, start, stream, skip, line, start)
        if stream:
            flush_line(line, out, start + classes, start, skip)
            _stream.store_fence()

    @njit
    def _store_task(es, labels, a, b, t, out, first, end, skip):
        """Rows first .. end - 1 (each es[i] of es.shape[1] classes), streamed, as the rows of one task."""
        classes = es.shape[1]
        line = np.full(LINE_SCRATCH, np.float32(np.nan))
        for i in range(first, end):
            store_row(es[i], classes, a, b, labels[i], t, out, i * classes, True, skip, line, first * classes)
        flush_line(line, out, end * classes, first * classes, skip)
        _stream.store_fence()


def _ulps(actual, reference64):
    spacing = np.maximum(np.spacing(np.abs(reference64).astype(np.float32)).astype(np.float64), F32.smallest_subnormal)
    return np.abs(actual.astype(np.float64) - reference64) / spacing


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 31, 511, 512, 513, 1000, 1003, 1600])
def test_exp_is_within_1_ulp_and_touches_only_its_values(n):
    rng = np.random.default_rng(n)
    z = (rng.standard_normal(n) * 40).astype(np.float32)
    z[1::7] = -np.inf  # (not z[0]: a row of one -inf has max -inf, and -inf - -inf is NaN)
    m = np.float32(z.max())
    raw = np.full(n + 40, 7.0, np.float32)
    ref = np.exp((z - m).astype(np.float64))  # of the float32 difference, as the op computes it
    for offset in (0, 3, 16):
        out = raw[offset:offset + n]
        for ahead in (0, 2048, -5):  # a prefetch anywhere changes nothing
            raw[:] = 7
            s = _exp_sum(z, m, out, ahead)
            normal = ref > F32.tiny
            assert _ulps(out[normal], ref[normal]).max(initial=0) <= 1
            assert np.abs(out[~normal] - ref[~normal]).max(initial=0) <= F32.smallest_subnormal
            assert (raw[:offset] == 7).all() and (raw[offset + n:] == 7).all()
            # the sum: of the values written, in float32 chunks of SUM_CHUNK added in float64
            np.testing.assert_allclose(s, out.astype(np.float64).sum(), rtol=2 * F32.eps * np.sqrt(min(n, SUM_CHUNK)))
    # the tail's values get the same bits as in a whole vector
    if n > 16:
        whole = np.empty(16, np.float32)
        _exp_sum(z[n - 16:], m, whole, 0)
        _exp_sum(z, m, out, 0)
        np.testing.assert_array_equal(out[n - 16:], whole)


def test_exp_is_within_its_bound_across_the_whole_float32_range_it_serves():
    """Every 61st float32 in [-110, 0] (18 million, every exponent and a spread of mantissas) within
    the bound of the host's form: the table form (AVX-512) 0.57 ulp, the polynomial form (AVX2) 0.9;
    subnormal results within 0.9 of the smallest subnormal. The README's bounds (the whole range, by
    tools/fit_exp_polynomial.py --check: 0.568 and 0.762; 0.891 and 0.858). The Taylor series the
    polynomial form had before met its bound on this sample too (0.891 against 0.881):
    test_cpu_vecmath pins the coefficients."""
    from fastconv._cpu._vecmath import TARGET_AVX512

    first, last = 0x80000000, int(np.float32(-110).view(np.uint32))
    z = np.arange(first, last + 1, 61, dtype=np.uint32).view(np.float32)
    out = np.empty_like(z)
    for start in range(0, z.size, 1 << 20):
        chunk = slice(start, start + (1 << 20))
        _exp_sum(z[chunk], np.float32(0), out[chunk], 0)
    ref = np.exp(z.astype(np.float64))
    normal = ref > F32.tiny
    assert _ulps(out[normal], ref[normal]).max() <= (0.57 if TARGET_AVX512 else 0.9)
    assert np.abs(out[~normal] - ref[~normal]).max() <= 0.9 * float(F32.smallest_subnormal)


def test_the_guessed_exp_of_any_positive_shift():
    """With AVX-512, loss.py may shift a row by less than its max (its label's logit, GUESS_BLOCK), so
    x - m > 0, by row_exp_sum_guessed: every 61st float32 from 0 to inf within the table form's
    0.57 ulp up to exp's overflow and inf past it (the table's rounding trick alone gave 0 at
    66735172 and -inf from ~4.6e7 on); the same bits as row_exp_sum below the overflow; a NaN
    lane NaN or inf (either fails the guess)."""
    from fastconv._cpu._softmax32 import row_exp_sum_guessed
    from fastconv._cpu._vecmath import TARGET_AVX512

    if not TARGET_AVX512:
        pytest.skip("the AVX2 rows shift by the row's max: x - m <= 0")
    guessed = njit(lambda row, m, out: row_exp_sum_guessed(row, m, out, 0))
    z = np.arange(0, int(np.float32(np.inf).view(np.uint32)) + 1, 61, dtype=np.uint32).view(np.float32)
    z = np.concatenate([z, np.float32([66735172.0, np.inf, np.nan, -np.nan, -1.0, -200.0])])
    out, exact = np.empty_like(z), np.empty_like(z)
    for start in range(0, z.size, 1 << 22):
        chunk = slice(start, start + (1 << 22))
        guessed(z[chunk], np.float32(0), out[chunk])
        _exp_sum(z[chunk], np.float32(0), exact[chunk], 0)
    with np.errstate(over="ignore"):
        ref = np.exp(z.astype(np.float64))
    finite = ref <= F32.max  # (False for the NaNs)
    assert _ulps(out[finite], ref[finite]).max() <= 0.57
    np.testing.assert_array_equal(out[finite], exact[finite])
    assert np.isposinf(out[~finite & ~np.isnan(z)]).all() and (~finite).sum() > 1000
    assert all(np.isnan(v) or np.isposinf(v) for v in out[np.isnan(z)])
    assert np.isnan(exact[np.isnan(z)]).all()


def test_each_rows_shift_is_the_same_however_the_rows_are_split_into_tasks():
    """A streamed output (past the last-level cache) splits the rows into larger tasks than an
    ordinary one (1056 rows of 1000 classes against 80). With a window of max-shifted rows after a
    missed guess counted within a task, row 65 after a miss at row 62 took its max in the streamed
    forward and its label's logit when the same rows came unstreamed: other bits (and a review found
    the forward and fused losses 1 ulp apart that way, where only the forward streams). With
    loss.GUESS_BLOCK's aligned blocks every row's probabilities are the same bits either way."""
    import fastconv
    from fastconv import ops

    classes = 1000
    n = max(8400, _stream._STREAM_FROM // (4 * classes) + 16)  # the whole batch's output is streamed
    z = np.random.default_rng(5).standard_normal((n, classes)).astype(np.float32)
    y = np.zeros(n, np.int64)
    z[62, 1] = 30.0  # a missed guess: s > 2^23
    with fastconv.use_backend("cpu"):
        _, whole = ops.softmax_cross_entropy_forward(z, y)
        _, part = ops.softmax_cross_entropy_forward(z[:200].copy(), y[:200])
    assert _stream.should_stream(whole) and not _stream.should_stream(part)
    np.testing.assert_array_equal(whole[:200].view(np.uint32), part.view(np.uint32))


def test_the_sum_depends_on_the_values_and_their_order_only():
    rng = np.random.default_rng(3)
    z = rng.standard_normal(1000).astype(np.float32)
    m = np.float32(z.max())
    sums = {_exp_sum(z, m, np.empty(1000, np.float32), ahead) for ahead in (0, 16, 4096)}
    assert len(sums) == 1
    # one chunk's float32 sum: 16 lanes, each a sequential sum, then the lanes in a fixed tree
    e = np.empty(SUM_CHUNK, np.float32)
    s = _exp_sum(z[:SUM_CHUNK], m, e, 0)
    lanes = np.zeros(16, np.float32)
    for k in range(0, SUM_CHUNK, 16):
        lanes += e[k:k + 16]
    while lanes.size > 1:
        lanes = lanes[:lanes.size // 2] + lanes[lanes.size // 2:]
    assert s == float(lanes[0])


def test_exp_keeps_nan():
    z = np.array([0.0, np.nan, -1.0, -200.0, -88.0, -103.0] + [0.0] * 11, np.float32)
    out = np.empty_like(z)
    assert np.isnan(_exp_sum(z, np.float32(0), out, 0))
    assert np.isnan(out[1]) and out[0] == 1 and out[3] == 0
    assert np.isnan(_exp_sum(np.zeros(3, np.float32), np.float32(np.nan), out[:3], 0))
    assert np.isnan(out[:3]).all()


@pytest.mark.parametrize("classes", [1, 7, 15, 16, 17, 33, 100, 1000])
def test_row_store_plain_and_streamed_agree_at_every_alignment(classes):
    rng = np.random.default_rng(classes)
    e = rng.uniform(0, 1, classes).astype(np.float32)
    a, b, t = np.float32(0.37), np.float32(0.01), np.float32(0.5)
    for label in (-1, 0, classes // 2, classes - 1):
        g = e.astype(np.float32) * a - b  # the formula in float32, the label's lane less t
        if label >= 0:
            g[label] -= t
        for first in range(16):  # where the row starts within a 64-byte line
            results = []
            for stream in (False, True):
                raw = np.full(classes + 64 + 16, 7.0, np.float32)
                start = ((-raw.ctypes.data) % 64 // 4 + first) % 16 + 16  # a guard line before the row
                _store(e, classes, a, b, label, t, raw, start, stream, _stream.align_skip(raw))
                assert (raw[:start] == 7).all() and (raw[start + classes:] == 7).all()
                results.append(raw[start:start + classes].copy())
            np.testing.assert_array_equal(results[0], g)
            np.testing.assert_array_equal(results[1], g)


@pytest.mark.parametrize("classes", [1, 3, 7, 15, 16, 17, 33, 100, 1000])
def test_streamed_rows_share_their_lines_across_rows_and_tasks(classes):
    """Consecutive rows of tasks that split the output anywhere, streamed: every value the formula's
    bits, the lines that rows (and tasks) share assembled whole, nothing outside the rows written."""
    rng = np.random.default_rng(classes)
    n = 40
    es = rng.uniform(0, 1, (n, classes)).astype(np.float32)
    labels = rng.integers(-1, classes, n)
    a, b, t = np.float32(0.37), np.float32(0.01), np.float32(0.5)
    g = es * a - b
    g[labels >= 0, labels[labels >= 0]] -= t
    for first_lane in (0, 1, 9, 15):  # where the output starts within a 64-byte line
        raw = np.full(n * classes + 64, 7.0, np.float32)
        begin = ((-raw.ctypes.data) % 64 // 4 + first_lane) % 16 + 16  # a guard line before the rows
        for cuts in ([0, n], [0, 1, n], [0, 3, 4, 17, n], list(range(n + 1))):  # the tasks' rows
            out = raw[begin:begin + n * classes]
            raw[:] = 7
            # the tasks in reverse order, as another thread might finish first
            for first, end in reversed(list(zip(cuts[:-1], cuts[1:]))):
                _store_task(es, labels, a, b, t, out, first, end, _stream.align_skip(out))
            np.testing.assert_array_equal(out.reshape(n, classes), g)
            assert (raw[:begin] == 7).all() and (raw[begin + n * classes:] == 7).all()
