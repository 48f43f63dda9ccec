"""The AVX-512 float32 BCE-with-logits sum of the cpu backend (fastconv/_cpu/_bce32.py): against
float64 at every length and offset (whole vectors, masked tails, chunk ends), the values around
the range not counted, the same NaN and infinity results as the portable terms, and the op's choice of kernel.
Skipped where the host has no AVX-512F (the portable kernel is then the only one, tested in
test_loss.py)."""
import numpy as np
import pytest
from numba import njit

from fastconv import ops
from fastconv._cpu import _vecmath, loss

pytestmark = pytest.mark.skipif(not _vecmath.AVX512, reason="the host has no AVX-512F (or FASTCONV_AVX512=0)")
F32 = np.finfo(np.float32)

if _vecmath.AVX512:
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
    return (1 - t) * x + (1 + (pw - 1) * t) * (np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0))


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 33, 511, 512, 513, 1024, 1040, 4099])
@pytest.mark.parametrize("pw", [1.0, 2.5])
def test_the_sum_matches_float64_at_every_length_and_offset(n, pw):
    rng = np.random.default_rng(n)
    raw_x = (rng.standard_normal(n + 40) * 6).astype(np.float32)
    raw_t = rng.uniform(0, 1, n + 40).astype(np.float32)
    for start in (0, 3, 16, 37):
        stop = start + n
        x, t = raw_x.copy(), raw_t.copy()
        x[:start], x[stop:] = np.nan, np.nan  # values outside [start, stop) must not be read
        terms = _terms64(x[start:stop], t[start:stop], pw)
        got = _sum(x, t, start, stop, np.float32(pw))
        # each term within a few float32 roundings of its magnitude, the float32 chunk sums too
        assert abs(got - terms.sum()) <= 8 * F32.eps * np.abs(terms).sum(), (start, got, terms.sum())


def test_nan_and_infinities_as_the_portable_terms_and_float64():
    specials = np.array([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 3e38, -3e38,
                         np.inf, -np.inf, np.nan], np.float32)
    x = np.repeat(specials, 4)
    t = np.tile(np.array([0.0, 1.0, 0.5, np.nan], np.float32), specials.size)
    for pw in (np.float32(1), np.float32(3)):
        portable = _portable_terms(x, t, pw)
        with np.errstate(invalid="ignore", over="ignore"):
            want = _terms64(x, t, pw)
        for i in range(x.size):  # one value at a time: a NaN or infinity would hide the others
            got = _sum(x, t, i, i + 1, pw)
            assert np.isnan(got) == np.isnan(portable[i]) == np.isnan(want[i]), (x[i], t[i], pw, got)
            if abs(want[i]) > F32.max:  # infinite, or past float32's range
                assert got == np.copysign(np.inf, want[i]), (x[i], t[i], pw, got)
            elif not np.isnan(got):
                # float32 rounds each part: (1 - t) x + w softplus(-x) can cancel (x = -20, t = 0 gives 0,
                # as it does in the portable terms and in torch's float32)
                xi, ti = float(x[i]), float(t[i])
                scale = abs((1 - ti) * xi) + abs(1 + (pw - 1) * ti) * (np.log1p(np.exp(-abs(xi))) + max(-xi, 0.0))
                # (abs: the portable exp is 0 below -87.3; this one keeps the subnormals)
                assert abs(got - want[i]) <= 4 * F32.eps * scale + 16 * F32.smallest_subnormal, \
                    (x[i], t[i], pw, got, want[i])


def test_the_op_takes_the_avx512_sum_for_float32_and_one_pos_weight_only(monkeypatch):
    used = []
    for name in ("_bce_sum_avx512", "_elementwise_loss_sum"):
        real = getattr(loss, name)
        monkeypatch.setattr(loss, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    rng = np.random.default_rng(4)
    x, t = (rng.standard_normal((300, 1)) * 3).astype(np.float32), rng.uniform(0, 1, (300, 1)).astype(np.float32)
    pw1, pw3 = np.array([2.0], np.float32), np.array([2.0, 1.0, 0.5], np.float32)
    x3, t3 = x.reshape(100, 3), t.reshape(100, 3)
    results = [ops.bce_with_logits_forward(x, t), ops.bce_with_logits_forward(x, t, pw1),
               ops.bce_with_logits_forward(x3, t3, pw3), ops.bce_with_logits_forward(x.astype(np.float64), t.astype(np.float64))]
    assert used == ["_bce_sum_avx512", "_bce_sum_avx512", "_elementwise_loss_sum", "_elementwise_loss_sum"]
    for got, (xx, tt, pw) in zip(results, [(x, t, 1.0), (x, t, pw1), (x3, t3, pw3), (x, t, 1.0)]):
        assert float(got) == pytest.approx(_terms64(xx, tt, pw).mean(), rel=2e-6)
    monkeypatch.setattr(_vecmath, "AVX512", False)
    assert float(ops.bce_with_logits_forward(x, t)) == pytest.approx(float(results[0]), rel=2e-6)
    assert used[-1] == "_elementwise_loss_sum"
