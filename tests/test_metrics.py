"""fastconv.metrics against scikit-learn and direct (slow, obvious) implementations."""

import warnings
from statistics import NormalDist

import numpy as np
import pytest
import sklearn.metrics as skm

from fastconv import metrics as M


def tied_data(seed, n=200, decimals=1):
    """Labels and scores where many scores tie (rounded), to exercise tie handling."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 0, 1  # both classes, at least 2 of each
    scores = np.round(rng.normal(size=n) + 0.8 * y, decimals)
    return y, scores


def delong_direct(y, s, level=0.95):
    """O(N^2) DeLong: structural components from the full psi matrix."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    area = psi.mean()
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    half = NormalDist().inv_cdf(0.5 + level / 2) * np.sqrt(var)
    return area, max(0.0, area - half), min(1.0, area + half)


# ---------------------------------------------------------------- ROC and AUC


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_roc_curve_and_auc_match_sklearn(seed, decimals):
    y, s = tied_data(seed, decimals=decimals)
    fpr, tpr, thr = M.roc_curve(y, s)
    fpr_sk, tpr_sk, thr_sk = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(thr, thr_sk)
    np.testing.assert_allclose(fpr, fpr_sk, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, tpr_sk, rtol=0, atol=1e-15)
    assert thr[0] == np.inf
    assert M.auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_auc_edge_values():
    assert M.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert M.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied: each pair 1/2


def test_accepts_column_vectors_and_float32():
    y, s = tied_data(0)
    ref = M.auc(y, s)
    assert M.auc(y[:, None].astype(np.float32), s[:, None].astype(np.float32)) == pytest.approx(ref)


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_direct_implementation(seed):
    y, s = tied_data(seed, n=150)
    result = M.auc_ci(y, s, method="delong")
    area, low, high = delong_direct(y, s)
    assert result.auc == pytest.approx(area, abs=1e-12)
    assert result.low == pytest.approx(low, abs=1e-12)
    assert result.high == pytest.approx(high, abs=1e-12)
    assert result.low < result.auc < result.high
    assert 0.02 < result.high - result.low < 0.4  # 150 samples: a few points either side
    assert result.method == "delong" and result.level == 0.95


def test_delong_wider_at_higher_level_and_clipped():
    y, s = tied_data(1)
    narrow = M.auc_ci(y, s, level=0.8)
    wide = M.auc_ci(y, s, level=0.99)
    assert wide.low < narrow.low and narrow.high < wide.high
    perfect = M.auc_ci([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert (perfect.auc, perfect.low, perfect.high) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_delong_logit_is_the_delong_variance_on_the_logit_scale(seed):
    y, s = tied_data(seed, n=150)
    plain, logit = M.auc_ci(y, s, level=0.9), M.auc_ci(y, s, level=0.9, method="delong-logit")
    assert logit.auc == plain.auc and logit.method == "delong-logit"
    z = 1.6448536269514722  # the normal 95th percentile
    se = (plain.high - plain.low) / (2 * z)  # (not clipped: these AUCs are far from 0 and 1)
    centre, half = np.log(plain.auc / (1 - plain.auc)), z * se / (plain.auc * (1 - plain.auc))
    assert logit.low == pytest.approx(1 / (1 + np.exp(-(centre - half))), rel=1e-12)
    assert logit.high == pytest.approx(1 / (1 + np.exp(-(centre + half))), rel=1e-12)
    assert 0 < logit.low < logit.auc < logit.high < 1
    perfect = M.auc_ci([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], method="delong-logit")
    assert (perfect.auc, perfect.low, perfect.high) == (1.0, 1.0, 1.0)


def test_delong_intervals_coverage_near_auc_1_as_documented():
    """auc_ci's docstring: on 32 positives and 54 negatives at a true AUC of 0.98, the plain DeLong
    interval holds the truth well under 95% of the time, the logit one near 95% (binormal draws)."""
    from statistics import NormalDist

    truth, rng = 0.98, np.random.default_rng(5)
    shift = np.sqrt(2) * NormalDist().inv_cdf(truth)
    y = np.r_[np.ones(32), np.zeros(54)]
    held = {"delong": 0, "delong-logit": 0}
    for _ in range(400):
        s = np.concatenate([rng.normal(shift, 1, 32), rng.normal(0, 1, 54)])
        for method in held:
            r = M.auc_ci(y, s, method=method)
            held[method] += r.low <= truth <= r.high
    assert held["delong"] / 400 < 0.9 and held["delong-logit"] / 400 > 0.91, held


def test_bootstrap_reproducible_and_close_to_delong():
    y, s = tied_data(2, n=300)
    a = M.auc_ci(y, s, method="bootstrap", n_bootstrap=500, seed=7)
    b = M.auc_ci(y, s, method="bootstrap", n_bootstrap=500, seed=7)
    c = M.auc_ci(y, s, method="bootstrap", n_bootstrap=500, seed=8)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.low < a.auc < a.high
    d = M.auc_ci(y, s, method="delong")
    assert abs(a.low - d.low) < 0.03 and abs(a.high - d.high) < 0.03


@pytest.mark.parametrize("level, enough", [(0.95, 400), (0.9, 200), (0.99, 2000), (0.5, 40)])
def test_bootstrap_needs_ten_resamples_in_each_tail(level, enough):
    # n_bootstrap=1 gave a "95% interval" of zero width: the one resample's AUC as both bounds.
    y, s = tied_data(2, n=60)
    M.auc_ci(y, s, level=level, method="bootstrap", n_bootstrap=enough)
    for too_few in (1, enough - 1):
        with pytest.raises(ValueError, match=rf"auc_ci: n_bootstrap={too_few} leaves .* resamples in each tail of a "
                                             rf"{level * 100:g}% percentile interval; it needs at least 10 there: "
                                             rf"n_bootstrap >= {enough} at level {level:g}"):
            M.auc_ci(y, s, level=level, method="bootstrap", n_bootstrap=too_few)


def test_bootstrap_aucs_match_direct_resampling():
    # The counting shortcut must equal computing AUC on each explicit resample.
    y, s = tied_data(3, n=60)
    pos, neg = s[y == 1], s[y == 0]
    fast = M._bootstrap_aucs(pos, neg, 50, np.random.default_rng(0))
    # Same draws as the implementation (one chunk): all positive indices, then negative.
    rng = np.random.default_rng(0)
    pos_draws = rng.integers(0, pos.size, (50, pos.size))
    neg_draws = rng.integers(0, neg.size, (50, neg.size))
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    for value, i, j in zip(fast, pos_draws, neg_draws):
        resample = np.r_[np.sort(pos)[i], np.sort(neg)[j]]
        assert value == pytest.approx(skm.roc_auc_score(labels, resample), abs=1e-12)


def test_bootstrap_interval_does_not_depend_on_the_rows_order():
    # The same cases in another order are the same test set: the same seed must give the same interval.
    y, s = tied_data(5, n=80)
    first = M.auc_ci(y, s, method="bootstrap", n_bootstrap=400, seed=3)
    order = np.random.default_rng(1).permutation(y.size)
    assert M.auc_ci(y[order], s[order], method="bootstrap", n_bootstrap=400, seed=3) == first


def test_per_class_auc():
    rng = np.random.default_rng(0)
    Y = rng.integers(0, 2, (100, 3))
    S = rng.normal(size=(100, 3)) + Y
    got = M.per_class_auc(Y, S)
    assert got == pytest.approx([skm.roc_auc_score(Y[:, c], S[:, c]) for c in range(3)])
    Y[:, 1] = 0
    with pytest.warns(RuntimeWarning, match="column 1"):
        got = M.per_class_auc(Y, S)
    assert np.isnan(got[1]) and not np.isnan(got[0])


# ---------------------------------------------------------------- operating points


def brute_force_rates(y, s, t):
    called = s >= t
    return called[y == 1].mean(), (~called[y == 0]).mean()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.0, 0.5, 0.8, 0.9, 0.95, 1.0])
def test_operating_point_sensitivity_is_highest_threshold(seed, target):
    y, s = tied_data(seed, n=120)
    op = M.operating_point(y, s, target_sensitivity=target)
    sens, spec = brute_force_rates(y, s, op.threshold)
    assert (op.sensitivity, op.specificity) == (sens, spec)
    assert sens >= target
    # Every higher candidate threshold misses the target.
    for t in np.r_[np.unique(s), np.inf]:
        if t > op.threshold:
            assert brute_force_rates(y, s, t)[0] < target
    assert op.target == ("sensitivity", target)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.0, 0.5, 0.8, 0.9, 0.95, 1.0])
def test_operating_point_specificity_is_lowest_threshold(seed, target):
    y, s = tied_data(seed, n=120)
    op = M.operating_point(y, s, target_specificity=target)
    sens, spec = brute_force_rates(y, s, op.threshold)
    assert (op.sensitivity, op.specificity) == (sens, spec)
    assert spec >= target
    for t in np.unique(s):
        if t < op.threshold:
            assert brute_force_rates(y, s, t)[1] < target


def test_operating_point_exact_fraction_target():
    # 9 of 10 positives is exactly 0.9: that threshold qualifies.
    y = np.r_[np.ones(10), np.zeros(5)].astype(int)
    s = np.r_[np.arange(10, 0, -1), np.zeros(5)].astype(float)
    op = M.operating_point(y, s, target_sensitivity=0.9)
    assert op.threshold == 2.0 and op.sensitivity == 0.9


def test_evaluate_operating_point_keeps_threshold():
    y_val, s_val = tied_data(0)
    y_test, s_test = tied_data(1)
    op = M.operating_point(y_val, s_val, target_sensitivity=0.9)
    test_op = M.evaluate_operating_point(op, y_test, s_test)
    assert test_op.threshold == op.threshold and test_op.target == op.target
    assert (test_op.sensitivity, test_op.specificity) == brute_force_rates(y_test, s_test, op.threshold)
    assert (test_op.sensitivity, test_op.specificity) == M.sensitivity_specificity(
        y_test, s_test, op.threshold
    )


# ---------------------------------------------------------------- classification


def test_accuracy_and_confusion_matrix():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 50)
    scores = rng.normal(size=(50, 4))
    pred = scores.argmax(axis=1)
    assert M.accuracy(y, scores) == M.accuracy(y, pred) == skm.accuracy_score(y, pred)
    assert M.accuracy(y, pred[:, None]) == M.accuracy(y[:, None], pred)  # a column of labels, either side
    assert M.accuracy([0, 1, 1], np.array([[False], [True], [False]])) == 2 / 3
    cm = M.confusion_matrix(y, pred)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(4)))
    assert M.confusion_matrix([0, 1], [1, 1], num_classes=3).shape == (3, 3)


def test_confusion_matrix_of_many_classes_is_not_copied():
    """The (C, C) counts were copied once more by astype: twice the matrix at 1000s of classes."""
    import tracemalloc

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 2000, 10_000), rng.integers(0, 2000, 10_000)
    tracemalloc.start()
    try:
        cm = M.confusion_matrix(y, pred, num_classes=2000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cm.dtype == np.int64 and peak < 1.5 * cm.nbytes
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(2000)))


BIG_SCORES = [np.array([2**53, 2**53 + 1, 2**53 + 2, 2**53 + 3, 1, 0], np.int64),  # float64: 2**53, 2**53, ...
              np.array([2**64 - 1, 2**64 - 2, 2**64 - 3, 2**64 - 4, 1, 0], np.uint64),  # hashes
              np.array([-2**53 - 1, 0, 1, 2, 3, 4], np.int64)]
BIG_CALLS = {
    "roc_curve": lambda y, s: M.roc_curve(y, s),
    "auc": lambda y, s: M.auc(y, s),
    "auc_ci delong": lambda y, s: M.auc_ci(y, s),
    "auc_ci delong-logit": lambda y, s: M.auc_ci(y, s, method="delong-logit"),
    "auc_ci bootstrap": lambda y, s: M.auc_ci(y, s, method="bootstrap", n_bootstrap=400),
    "per_class_auc": lambda y, s: M.per_class_auc(np.asarray(y)[:, None], s[:, None]),
    "sensitivity_specificity": lambda y, s: M.sensitivity_specificity(y, s, 0.5),
    "operating_point": lambda y, s: M.operating_point(y, s, target_sensitivity=0.9),
    "evaluate_operating_point": lambda y, s: M.evaluate_operating_point(M.OperatingPoint(0.5, 1, 1, ("x", 1)), y, s),
}


@pytest.mark.parametrize("call", BIG_CALLS)
@pytest.mark.parametrize("scores", range(len(BIG_SCORES)))
def test_integer_scores_float64_cannot_tell_apart_are_refused(call, scores):
    # They were converted to float64, where 2**53 + 1 == 2**53: distinct scores tied, and the AUC of
    # [0, 1, 0, 1] on 2**53 + [0, 1, 2, 3] came out 0.625, not 0.75.
    y = [0, 1, 0, 1, 1, 0]
    column = r"(\[:, 0\])?"  # (per_class_auc names the column)
    with pytest.raises(ValueError, match=rf"scores{column} holds integers beyond 2\*\*53 in magnitude "
                                         rf"\(dtype u?int64, .*pass their ranks instead "
                                         rf".*np.unique\(scores{column}, return_inverse=True\)\[1\]"):
        BIG_CALLS[call](y, BIG_SCORES[scores])


def test_integer_scores_up_to_2_53_and_ranks_of_larger_ones_are_exact():
    def exact_auc(y, s):  # Mann-Whitney on Python ints
        pos, neg = s[y == 1].tolist(), s[y == 0].tolist()
        return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))

    y = np.array([0, 1, 0, 1, 1, 0])
    big = np.array([2**53, 2**53 - 1, 2**53 - 2, 2**53 - 3, -2**53, 0], np.int64)
    assert M.auc(y, big) == pytest.approx(exact_auc(y, big), abs=1e-15) and exact_auc(y, big) == 1 / 3
    for hashes in BIG_SCORES:
        ranks = np.unique(hashes, return_inverse=True)[1]
        assert M.auc(y, ranks) == pytest.approx(exact_auc(y, hashes), abs=1e-15)
    # A threshold beyond 2**53 was compared rounded: 2**53 >= 2**53 + 1 counted as positive.
    with pytest.raises(ValueError, match=r"threshold 9007199254740993 is an integer beyond 2\*\*53"):
        M.sensitivity_specificity(y, big, 2**53 + 1)
    with pytest.raises(ValueError, match=r"threshold \d+ is an integer beyond 2\*\*53"):  # (was a TypeError of isnan)
        M.sensitivity_specificity(y, big, 2**70)
    assert M.sensitivity_specificity(y, big, 2**53) == (0.0, 2 / 3)
    with pytest.raises(ValueError, match=r"dtype float128, whose values do not all convert to float64 exactly"):
        M.auc(y, np.array([1, 1 + np.finfo(np.longdouble).eps, 3, 4, 5, 6], np.longdouble))


def test_coarse_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 6))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    groups = [[0, 3], [1], [2, 4, 5]]
    coarse = M.coarse_probabilities(probs, groups)
    assert coarse.shape == (20, 3)
    np.testing.assert_allclose(coarse.sum(axis=1), 1.0)
    np.testing.assert_allclose(coarse[:, 0], probs[:, 0] + probs[:, 3])
    mapping = np.array([0, 1, 2, 0, 2, 2])
    np.testing.assert_allclose(M.coarse_probabilities(probs, mapping), coarse)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: M.auc([0, 1, 2], [0.1, 0.2, 0.3]), ValueError, "only 0 and 1"),
        (lambda: M.auc([0, 1, 1], [0.1, 0.2]), ValueError, "length"),
        (lambda: M.auc([1, 1, 1], [0.1, 0.2, 0.3]), ValueError, "only class 1"),
        (lambda: M.auc([0, 1, 1], [0.1, np.nan, 0.3]), ValueError, "NaN"),
        (lambda: M.auc([0, 1], ["a", "b"]), TypeError, "scores"),
        (lambda: M.roc_curve([0, 0], [0.1, 0.3]), ValueError, "only class 0"),
        (lambda: M.auc_ci([0, 1, 1, 0], [1, 2, 3, 4], method="magic"), ValueError, "method"),
        (lambda: M.auc_ci([0, 1, 1, 0], [1, 2, 3, 4], level=95), ValueError, "level"),
        (lambda: M.auc_ci([0, 1, 1], [1, 2, 3]), ValueError, "at least 2"),
        (lambda: M.auc_ci([0, 1, 1, 0], [1, 2, 3, 4], method="bootstrap", n_bootstrap=0),
         ValueError, "n_bootstrap must be an int >= 1, got 0"),
        # A float where an int is needed: TypeError, as in the ops.
        (lambda: M.auc_ci([0, 1, 1, 0], [1, 2, 3, 4], method="bootstrap", n_bootstrap=100.5),
         TypeError, "n_bootstrap must be an int, got 100.5"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [[0, 1.5], [2]]), TypeError, "not an int fine class"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, np.array([0.0, 1.0, 1.0])), TypeError, "dtype float64"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, np.zeros((3, 1), int)), ValueError, "shape \\(3, 1\\)"),
        (lambda: M.operating_point([0, 1], [0.1, 0.2]), ValueError, "exactly one"),
        (lambda: M.operating_point([0, 1], [0.1, 0.2], 0.9, 0.9), ValueError, "exactly one"),
        (lambda: M.operating_point([0, 1], [0.1, 0.2], target_sensitivity=1.5), ValueError,
         "target_sensitivity must be <= 1.0, got 1.5"),
        (lambda: M.operating_point([0, 1], [0.1, 0.2], target_specificity="0.9"), TypeError,
         "target_specificity must be a real number"),
        (lambda: M.sensitivity_specificity([0, 1], [0.1, 0.2], True), TypeError, "threshold must be a real number"),
        (lambda: M.auc_ci([0, 1, 1, 0], [1, 2, 3, 4], level="0.95"), TypeError, "level must be a real number"),
        (lambda: M.auc_ci([0, 1, 0, 0], [1, 2, 3, 4], method="bootstrap"), ValueError,
         "auc_ci needs at least 2 positives and 2 negatives, got 1 and 3"),
        (lambda: M.accuracy([1e20, 3e20], [2e20, 4e20]), ValueError, "class labels beyond 2\\*\\*53"),
        (lambda: M.confusion_matrix([0, np.uint64(2**63)], [0, 1]), ValueError, "class labels beyond 2\\*\\*53"),
        (lambda: M.confusion_matrix([], [], num_classes=-1), ValueError, "num_classes must be at least 1, got -1"),
        (lambda: M.auc(np.ma.masked_array([0, 1, 1], [0, 0, 1]), [0.1, 0.2, 0.3]), TypeError,
         "y_true is a numpy.ma.MaskedArray"),
        (lambda: M.evaluate_operating_point(0.5, [0, 1], [0.1, 0.2]), TypeError, "OperatingPoint"),
        (lambda: M.per_class_auc([[0, 1], [1, 2]], [[0.1, 0.2], [0.3, 0.4]]), ValueError,
         r"Y_true\[:, 1\] must contain only 0 and 1"),
        (lambda: M.per_class_auc([[0, 1], [1, 0]], [[0.1, np.nan], [0.3, 0.4]]), ValueError,
         r"scores\[:, 1\] contains NaN or inf"),
        (lambda: M.accuracy([0, 1], [0.2, 0.7]), ValueError, "integer"),
        (lambda: M.accuracy([0, 1], [[0.2], [0.7]]), ValueError, "one score column"),
        (lambda: M.accuracy([0, 1, 1], [0, 1]), ValueError, "length"),
        # A NaN row (a diverged model) is not a prediction of class 0.
        (lambda: M.accuracy([0, 1], [[np.nan, 0.0], [0.0, 1.0]]), ValueError, "NaN or inf"),
        (lambda: M.accuracy([0, 1], [[np.inf, 0.0], [0.0, 1.0]]), ValueError, "NaN or inf"),
        (lambda: M.confusion_matrix([0, 3], [0, 1], num_classes=2), ValueError, "num_classes"),
        (lambda: M.per_class_auc(np.zeros((3, 2)), np.zeros((3, 3))), ValueError, "shape"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [[0, 1], [1, 2]]), ValueError, "appears"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [[0], [1]]), ValueError, "no group"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [0, 2, 2]), ValueError, "no fine"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [0, 1]), ValueError, "length"),
        (lambda: M.coarse_probabilities(-np.ones((2, 3)), [0, 1, 1]), ValueError, "logits"),
        # Rows that are no distribution (independent sigmoids, unnormalized scores): their sums mean nothing.
        (lambda: M.coarse_probabilities(np.full((3, 3), 0.6), [0, 1, 1]), ValueError,
         r"probs row 0 sums to 1\.8 \(3 of 3 rows do not sum to 1\)"),
        (lambda: M.coarse_probabilities(np.full((2, 3), 1 / 3) * [[1], [1.01]], [0, 1, 1]), ValueError,
         r"probs row 1 sums to 1\.01 \(1 of 2"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [[0, 0, 2], [1]]), ValueError,
         r"fine class 0 is listed twice in groups\[0\]"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [[0, 2], [1, 2]]), ValueError,
         r"fine class 2 appears in groups\[0\] and groups\[1\]"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [0.0, 1.0, 0.0]), TypeError,
         r"groups as a mapping must hold ints \(fine class -> coarse class\), got 0\.0 \(float\)"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [0, [1, 2]]), TypeError,
         r"groups\[0\] is 0 among lists: give each group as a list"),
        (lambda: M.coarse_probabilities(np.ones((2, 3)) / 3, [[0, 1], [7]]), ValueError,
         r"groups\[1\] has 7, not a fine class index in \[0, 3\)"),
        (lambda: M.sensitivity_specificity([0, 1, 0, 1], [0.1, 0.5, 0.2, 0.9],
                                           np.longdouble(0.5) + np.finfo(np.longdouble).eps), ValueError,
         r"threshold .* is a float128 that float64 .* cannot hold exactly: it would be compared as 0\.5"),
        # seed and n_bootstrap are checked whatever the method (a typo is not silently ignored).
        (lambda: M.auc_ci([0, 1, 1, 0], [1, 2, 3, 4], seed="junk"), TypeError, "seed must be None or an int"),
        (lambda: M.auc_ci([0, 1, 1, 0], [1, 2, 3, 4], method="delong-logit", n_bootstrap=-5), ValueError,
         "n_bootstrap must be an int >= 1, got -5"),
        (lambda: M.accuracy([], np.zeros((0, 0))), ValueError, r"shape \(0, 0\): no score columns"),
        (lambda: M.operating_point([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], target_sensitivity=95), ValueError,
         r"target_sensitivity must be a fraction in \[0, 1\], got 95 \(a percentage\? 0.95 for 95%\)"),
        (lambda: M.auc([0, 1, 0, 1], np.zeros((4, 2))), ValueError,
         r"scores must be 1-D .*\(two columns of class probabilities\? the positive class's is scores\[:, 1\]\)"),
    ],
)
def test_bad_inputs_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_objects_with_get_are_copied_to_host():
    class FakeCupy:  # what fastconv._host looks for: the CUDA array interface and .get()
        __cuda_array_interface__ = {}

        def __init__(self, a):
            self.a = np.asarray(a)

        def get(self):
            return self.a

    y, s = tied_data(0)
    assert M.auc(FakeCupy(y), FakeCupy(s)) == M.auc(y, s)


def test_report_names_the_weakest_class_among_those_in_the_test_labels():
    """Class 0 is absent (NaN sensitivity); class 2 is the weakest present (`fastconv train digits_cnn
    --subset 5` printed "weakest class 0: sensitivity nan")."""
    import warnings

    from fastconv.evaluate import format_report, multiclass_report

    y = np.array([1, 1, 2, 2])
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # class 0's one-vs-rest AUC: one class only
        text = format_report(multiclass_report(y, probs))
    assert "weakest class 2: sensitivity 0.500" in text


def test_multiclass_report_does_not_copy_the_probabilities():
    """The report took a float64 copy of float64 probabilities and an (N, C) int64 one-hot of the
    labels: twice the probabilities' size on top of them (800 MB for 50 000 images of 1000 classes).
    It needs neither; its numbers are those of the metrics it calls."""
    import tracemalloc

    from fastconv.evaluate import multiclass_report

    rng = np.random.default_rng(0)
    n, c = 20_000, 100
    y = rng.integers(0, c, n)
    probs = rng.random((n, c))
    probs /= probs.sum(axis=1, keepdims=True)
    tracemalloc.start()
    try:
        report = multiclass_report(y, probs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < probs.nbytes / 2
    np.testing.assert_array_equal(report["confusion_matrix"], skm.confusion_matrix(y, probs.argmax(1)))
    aucs = [row["auc"] for row in report["per_class"]]
    np.testing.assert_allclose(aucs, skm.roc_auc_score(np.eye(c)[y], probs, average=None), rtol=0, atol=1e-12)


def test_report_of_test_labels_in_one_coarse_class_has_nan_coarse_auc():
    """Test labels all odd: the parity grouping's AUC is undefined. It raised "y_true contains only
    class 1", losing the whole report (`fastconv train digits_cnn --subset 1` failed after training);
    it is NaN with a warning, as the per-class AUC of an absent class is."""
    from fastconv.evaluate import format_report, multiclass_report

    y = np.array([1, 3, 3])
    probs = np.full((3, 4), 0.1)
    probs[[0, 1, 2], [1, 3, 2]] = 0.7
    parity = {"parity": {"even": [0, 2], "odd": [1, 3]}, "low/high": {"low": [0, 1], "high": [2, 3]}}
    with pytest.warns(RuntimeWarning) as caught:
        report = multiclass_report(y, probs, coarse=parity)
    assert any("coarse grouping 'parity': the test labels hold one of its two" in str(w.message) for w in caught)
    assert np.isnan(report["coarse"]["parity"]["auc"]) and report["coarse"]["parity"]["accuracy"] == 2 / 3
    assert report["coarse"]["low/high"]["auc"] == M.auc([0, 1, 1], [0.2, 0.8, 0.8])
    assert "parity (even / odd, summed probabilities): accuracy 0.6667, AUC nan" in format_report(report)


@pytest.mark.parametrize("which", ["val", "test"])
def test_binary_report_errors_name_the_split(which):
    """metrics' errors say "y_true": binary_report's say whether y_val or y_test holds one class."""
    from fastconv.evaluate import binary_report

    y, s = np.array([0, 1, 0, 1, 1, 0]), np.linspace(0, 1, 6)
    one_class = (np.ones(6, int), s)
    args = (*one_class, y, s) if which == "val" else (y, s, *one_class)
    with pytest.raises(ValueError, match=rf"binary_report: .*\(y_{which}, {which}_scores\): y_true contains only class 1"):
        binary_report(*args)
    with pytest.raises(ValueError, match=r"binary_report: the test AUC .*: level must be"):
        binary_report(y, s, y, s, level=2)


def test_check_binary_labels_is_what_binary_report_needs():
    """check_binary_labels (the examples' check before training) passes exactly where binary_report can
    run: at the smallest label sets it allows, and not one label fewer."""
    from fastconv.evaluate import binary_report, check_binary_labels

    val, test = np.array([0, 1]), np.array([0, 1, 0, 1])
    check_binary_labels(val, test)
    binary_report(val, [0.2, 0.7], test, [0.1, 0.9, 0.6, 0.4])
    for v, t in ((val, test[1:]), (val, test[:3]), (val[1:], test), (val[:1], test)):
        with pytest.raises(ValueError, match=r"binary_report needs at least 2 positives and 2 negatives in the test "
                                             r"labels .* got \d and \d in test, \d and \d in validation"):
            check_binary_labels(v, t)
        with pytest.raises(ValueError, match=r"^binary_report: the (test AUC .*auc_ci needs at least 2 positives and 2 "
                                             r"negatives|operating points, .*contains only class)"):
            binary_report(v, np.linspace(0, 1, len(v)), t, np.linspace(0, 1, len(t)))


def test_binary_report_compares_float32_test_scores_in_float64():
    """Validation scores float64, test scores float32: a threshold just above a float32 test score was
    rounded to float32 in the comparison (NumPy 2), so the report called that score positive, while
    metrics.sensitivity_specificity (float64) did not: test sensitivity 1.0 reported for 0.5."""
    from fastconv.evaluate import binary_report

    low = float(np.float32(0.1))
    y_val = np.array([1, 1, 0, 0])
    s_val = np.array([np.nextafter(low, 1.0), 0.9, 0.0, 0.05])  # screening threshold: just above `low`
    y_test = np.array([1, 1, 0, 0])
    s_test = np.array([low, 0.9, 0.0, 0.05], dtype=np.float32)
    point = binary_report(y_val, s_val, y_test, s_test, target_sensitivity=1.0)["operating_points"]["screening"]
    assert point["threshold"] > low
    expected = M.sensitivity_specificity(y_test, s_test, point["threshold"])
    assert (point["test"]["sensitivity"], point["test"]["specificity"]) == expected == (0.5, 1.0)
    assert (point["test"]["tp"], point["test"]["fn"]) == (1, 1)


@pytest.mark.parametrize("labels", [[0, 1.5, 2], [0, np.nan, 2]])
def test_multiclass_report_rejects_labels_that_are_not_classes(labels):
    """Test labels were cast to int64 unchecked: 1.5 became class 1 (accuracy 1.0 reported), NaN a
    negative number (an error about negative labels)."""
    from fastconv.evaluate import multiclass_report

    probs = np.full((3, 3), 0.1) + 0.7 * np.eye(3)
    with pytest.raises(ValueError, match="y_test must hold integer class labels"):
        multiclass_report(labels, probs)


@pytest.mark.parametrize("coarse, error, match", [
    # Checked before they index anything: fine class 5 of 4 had been a bare IndexError.
    ({"g": {"a": [0, 1], "b": [2, 5]}}, ValueError, r"groups\[1\] has 5, not a fine class index in \[0, 4\)"),
    ({"g": {"a": [0, 1.0], "b": [2, 3]}}, TypeError, r"groups\[0\] has 0\.0, not an int fine class index"),
    # Ints, not lists, would read as a mapping fine -> coarse: {"a": 1, "b": 0} put fine 0 in "b".
    ({"g": {"a": 1, "b": 0}}, TypeError, r"coarse\['g'\]\['a'\] must be a list of fine class indices, got 1"),
    ({"g": [[0, 1], [2, 3]]}, TypeError, r"coarse\['g'\] must be a non-empty dict"),
    ([("g", {"a": [0, 1], "b": [2, 3]})], TypeError, "coarse must be a dict"),
])
def test_multiclass_report_checks_the_coarse_groupings(coarse, error, match):
    from fastconv.evaluate import multiclass_report

    probs = np.full((4, 4), 0.1) + 0.6 * np.eye(4)
    with pytest.raises(error, match=match):
        multiclass_report([0, 1, 2, 3], probs, coarse=coarse)
    report = multiclass_report([0, 1, 2, 3], probs, coarse={"g": {"a": [0, 3], "b": [1, 2]}})
    assert report["coarse"]["g"]["classes"] == {"a": [0, 3], "b": [1, 2]} and report["coarse"]["g"]["accuracy"] == 1


def test_regression_report_matches_sklearn_and_refuses_targets_that_are_not_finite():
    from fastconv.evaluate import regression_report

    rng = np.random.default_rng(3)
    y, f = rng.standard_normal(50), rng.standard_normal(50)
    report = regression_report(y, f)
    assert report["mse"] == pytest.approx(skm.mean_squared_error(y, f), rel=1e-12)
    assert report["r2"] == pytest.approx(skm.r2_score(y, f), rel=1e-12)
    assert np.isnan(regression_report(y, np.full(50, np.nan))["mse"])  # a diverged model: its figures are NaN
    for bad in (np.r_[y[:-1], np.nan], np.r_[y[:-1], np.inf]):
        with pytest.raises(ValueError, match="y_true holds 1 values that are not finite"):
            regression_report(bad, f)  # gave NaN figures, as if the model had diverged
    with pytest.raises(ValueError, match="y_true is empty"):
        regression_report([], [])


def test_multiclass_report_names_a_label_past_the_probabilities_columns():
    from fastconv.evaluate import multiclass_report

    probs = np.full((3, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"multiclass_report: y_test has class 3, but probs has 3 columns "
                                         r"\(classes 0 to 2\)"):
        multiclass_report([0, 1, 3], probs)  # said "num_classes=3 but labels go up to 3", an argument never passed
    with pytest.raises(ValueError, match=r"y_test must hold integer class labels, got non-integer values$"):
        multiclass_report([0, 1.5, 2], probs)  # (without the hint about scores, which is for predictions)



def test_confusion_matrix_refuses_a_label_that_would_size_a_huge_matrix():
    # a stray label of 10^6 asked for a 10^6 x 10^6 matrix (7 TiB): MemoryError, or swapping
    with pytest.raises(ValueError, match=r"the labels go up to 1000000, which asks for a 1000001 x 1000001 matrix"):
        M.confusion_matrix([0, 1, 1_000_000], [0, 1, 1])
    assert M.confusion_matrix([0, 9999], [9999, 0]).shape == (10_000, 10_000)  # the largest inferred
    assert M.confusion_matrix([0, 1], [1, 0], num_classes=3).tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]


def test_coarse_probabilities_takes_rows_that_sum_to_one_in_their_precision():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 1000)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert M.coarse_probabilities(probs, np.arange(1000) % 2).shape == (50, 2)
    half = np.exp(logits[:, :10]).astype(np.float16)
    half = (half / half.sum(axis=1, keepdims=True)).astype(np.float16)
    assert M.coarse_probabilities(half, np.arange(10) % 3).dtype == np.float16
    assert M.coarse_probabilities(np.eye(3, dtype=np.int64), [[0], [1, 2]]).tolist() == [[1, 0], [0, 1], [0, 1]]


def test_roc_curve_of_scores_spanning_more_than_the_float64_range_warns_of_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (np.diff of the sorted scores overflowed)
        fpr, tpr, thresholds = M.roc_curve([0, 1, 0, 1], [-1.7e308, 1.7e308, 1e308, -1e308])
    assert thresholds.tolist() == [np.inf, 1.7e308, 1e308, -1e308, -1.7e308]
    assert tpr.tolist() == [0, 0.5, 0.5, 1, 1] and fpr.tolist() == [0, 0, 0.5, 0.5, 1]


def test_coarse_probabilities_refuses_an_impossible_coarse_index_and_no_columns():
    probs = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"coarse index 1000000000000, but 3 fine classes can fill coarse classes "
                                         r"0 \.\. 2 at most"):
        M.coarse_probabilities(probs, np.array([0, 1, 10**12]))
    with pytest.raises(ValueError, match="probs has no columns"):
        M.coarse_probabilities(np.zeros((2, 0)), np.zeros(0, np.int64))
