"""Fits the polynomials of the vector exp (fastconv/_cpu/_vecmath.py: _EXP_POLYNOMIAL of the
polynomial form, _EXP_TABLE_POLYNOMIAL of the table form) and checks the exp.

    python tools/fit_exp_polynomial.py            # the fit: prints the coefficients and their error
    python tools/fit_exp_polynomial.py --table    # the table form's degree-3 fit
    python tools/fit_exp_polynomial.py --check    # every float32 z in [-110, 0] (AVX-512: and
                                                  # [0, 88.7]) through the kernel

The fit: e^r ~ 1 + r + c2 r^2 + ... + c6 r^6 on |r| <= ln2/2 (plus a margin for k's rounding),
minimax in ulps of the float32 result (an ulp is 2^-24 below 1 and 2^-23 above, so the error
weighs double where e^r < 1), by linear programming on a fine grid; the coefficients are rounded
to float32 one at a time, c2 first, the others refitted after each rounding (fpminimax's greedy
heuristic). 1 and 1 stay exact: they carry most of the value, and Horner's last two steps then
round as the Taylor series' did. Fitting with real coefficients and rounding them afterwards, or
weighting the error by value rather than by ulp, gives a polynomial past 1 ulp.

The table form's polynomial: e^r - 1 ~ r + c2 r^2 + c3 r^3 on |r| <= ln2/32 (plus the same kind of
margin), minimax in relative error (the result is 2^(j/16) e^r, so every part of the interval
weighs alike), in units of 2^-24, by the same greedy rounding.

The check runs the real kernel (row_exp_sum with m = 0, the host's AVX-512 or AVX2 form) on
every float32 in [-110, 0] and prints the largest error in ulps of the float64 exp (normal
results) and in smallest subnormals (the others); with AVX-512 also, through row_exp_sum_guessed
(the loop of the cross-entropy rows shifted by the label's logit, which take z > 0), every float32
from 0 to the last whose exp is finite (88.72), and checks inf past it to 100. About 20 + 20 s on two Zen 4 cores.
"""
import argparse
import time

import numpy as np

DEGREE = 6
HALF_WIDTH = 0.3466 + 2e-4  # ln2/2, and k = round(fl(a log2 e)) lets r pass it by ~1e-5


def _greedy_minimax(r, target, unit, degrees):
    """Float32 c_j (j in degrees) minimizing max |sum c_j r^j - target| / unit over the grid r: each
    round a linear program over the free coefficients (solved for c_j * j!), then the lowest free
    one rounded to float32 and fixed; returns them and that maximum for the rounded ones."""
    from scipy.optimize import linprog

    def minimax(fixed):
        free = [j for j in degrees if j not in fixed]
        scale = np.array([1 / np.prod(np.arange(1, j + 1)) for j in free])
        residual = (target - sum(c * r**j for j, c in fixed.items())) / unit
        columns = np.stack([s * r**j / unit for s, j in zip(scale, free)], 1)
        ones = np.ones((r.size, 1))
        a_ub = np.vstack([np.hstack([columns, -ones]), np.hstack([-columns, -ones])])
        b_ub = np.concatenate([residual, -residual])
        cost = np.zeros(len(free) + 1)
        cost[-1] = 1
        sol = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * cost.size, method="highs")
        return dict(zip(free, sol.x[:-1] * scale))

    fixed = {}
    for j in degrees:
        fixed[j] = float(np.float32(minimax(fixed)[j]))
    return [fixed[j] for j in degrees], float(np.max(np.abs(sum(c * r**j for j, c in fixed.items()) - target) / unit))


def fit(degree=DEGREE):
    """The polynomial form's [1, 1, c2, ..., c_degree] and its largest error in ulps."""
    r = np.linspace(-HALF_WIDTH, HALF_WIDTH, 20001)
    exact = np.exp(r)
    ulp = np.where(exact < 1, 2.0**-24, 2.0**-23)
    coefficients, error = _greedy_minimax(r, exact - 1 - r, ulp, range(2, degree + 1))
    return [1.0, 1.0] + coefficients, error


TABLE_HALF_WIDTH = 0.02166 + 1e-5  # ln2/32 (0.021661); float32 log2 e's error lets r pass it by ~1.5e-6


def fit_table():
    """(c2, c3) of the table form and their largest relative error in units of 2^-24."""
    r = np.linspace(-TABLE_HALF_WIDTH, TABLE_HALF_WIDTH, 20001)
    return _greedy_minimax(r, np.expm1(r) - r, np.exp(r) * 2.0**-24, (2, 3))


def check():
    from numba import njit, prange

    from fastconv._cpu import _vecmath
    from fastconv._cpu._softmax32 import row_exp_sum, row_exp_sum_guessed

    tiny, subnormal = np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal

    @njit(parallel=True)
    def kernel_exp(exp_sum, z, out):
        for i in prange(z.size // 4096):
            exp_sum(z[i * 4096:(i + 1) * 4096], np.float32(0), out[i * 4096:(i + 1) * 4096], 0)

    def run(first, last, exp_sum=row_exp_sum):
        """exp of every float32 whose bits lie in [first, last] by `exp_sum`'s loop: (worst ulps,
        where, worst subnormal)."""
        worst, worst_at, worst_subnormal = 0.0, None, 0.0
        for start in range(first, last + 1, 1 << 24):
            bits = np.arange(start, min(start + (1 << 24), last + 1), dtype=np.uint32)
            z = np.concatenate([bits, np.full(-bits.size % 4096, first, np.uint32)]).view(np.float32)
            out = np.empty_like(z)
            kernel_exp(exp_sum, z, out)
            ref = np.exp(z.astype(np.float64))
            normal = ref > tiny
            ulps = np.abs(out[normal] - ref[normal]) / np.spacing(ref[normal].astype(np.float32))
            if ulps.size and ulps.max() > worst:
                worst, worst_at = float(ulps.max()), float(z[normal][ulps.argmax()])
            if (~normal).any():
                worst_subnormal = max(worst_subnormal, float(np.abs(out[~normal] - ref[~normal]).max() / subnormal))
        return worst, worst_at, worst_subnormal

    t0 = time.time()
    worst, worst_at, worst_subnormal = run(0x80000000, int(np.float32(-110).view(np.uint32)))
    print(f"{_vecmath.ISA}, z in [-110, 0]: max {worst:.4f} ulp (at z = {worst_at!r}); subnormal results "
          f"within {worst_subnormal:.3f} x the smallest subnormal; {time.time() - t0:.0f} s")
    if _vecmath.TARGET_AVX512:  # loss.py's rows shifted by the label's logit take z > 0, by their own loop
        t0 = time.time()
        largest = np.float32(np.log(np.finfo(np.float32).max))  # the last z whose exp is finite, or near it
        with np.errstate(over="ignore"):
            while np.isinf(np.exp(np.float64(largest)).astype(np.float32)):
                largest = np.nextafter(largest, np.float32(0))
        worst, worst_at, _ = run(0, int(largest.view(np.uint32)), row_exp_sum_guessed)
        past = np.arange(int(largest.view(np.uint32)) + 1, int(np.float32(100).view(np.uint32)) + 1, dtype=np.uint32)
        past = np.concatenate([past, np.full(-past.size % 4096, past[-1], np.uint32)]).view(np.float32)
        out = np.empty_like(past)
        kernel_exp(row_exp_sum_guessed, past, out)
        infinite = bool(np.isposinf(out).all())
        print(f"{_vecmath.ISA}, z in [0, {largest!r}]: max {worst:.4f} ulp (at z = {worst_at!r}); "
              f"inf past it to 100: {infinite}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="every float32 z in [-110, 0] (and [0, 88.7]) through "
                                                             "the kernel instead of the fit (~20 s each)")
    parser.add_argument("--table", action="store_true", help="the table form's degree-3 fit")
    args = parser.parse_args()
    if args.check:
        check()
    elif args.table:
        coefficients, error = fit_table()
        print(f"coefficients {coefficients!r}\npolynomial error {error:.4f} x 2^-24 (relative, before the roundings)")
    else:
        coefficients, error = fit()
        print(f"coefficients {coefficients!r}\npolynomial error {error:.4f} ulp (before the evaluation's roundings)")
