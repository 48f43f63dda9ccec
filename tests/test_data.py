"""fastconv.data: splits, standardization, bundled data sets, batching."""

import json

import numpy as np
import pytest

from fastconv import data as D


def labelled_rows(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    x = np.arange(n)[:, None] * np.ones((1, 2))  # column 0 = original row number
    return x, y


# ---------------------------------------------------------------- splitting


def test_split_is_deterministic_disjoint_and_complete():
    x, y = labelled_rows()
    a = D.train_val_test_split(x, y, seed=3)
    b = D.train_val_test_split(x, y, seed=3)
    c = D.train_val_test_split(x, y, seed=4)
    for part_a, part_b in zip(a, b):
        np.testing.assert_array_equal(part_a, part_b)
    assert not np.array_equal(a[0], c[0])
    rows = [part[:, 0].astype(int) for part in a[0::2]]
    all_rows = np.concatenate(rows)
    assert sorted(all_rows) == list(range(len(y)))  # disjoint and covering
    for part_x, part_y in zip(a[0::2], a[1::2]):
        np.testing.assert_array_equal(y[part_x[:, 0].astype(int)], part_y)


def test_split_is_stratified():
    x, y = labelled_rows(n=1000)
    x_tr, y_tr, x_va, y_va, x_te, y_te = D.train_val_test_split(x, y, val=0.2, test=0.1, seed=0)
    assert len(y_va) == pytest.approx(200, abs=2) and len(y_te) == pytest.approx(100, abs=2)
    overall = np.bincount(y) / len(y)
    for part in (y_tr, y_va, y_te):
        np.testing.assert_allclose(np.bincount(part, minlength=3) / len(part), overall, atol=0.01)


@pytest.mark.parametrize("labels", [
    np.random.default_rng(1).integers(0, 7, 400),
    np.random.default_rng(2).integers(0, 2, 50).astype(bool),
    np.array([0.0, -0.0, 2.0, 1.0, 2.0, 0.0, 1.0]),  # -0.0 and 0.0 are one class, as np.unique says
    np.random.default_rng(3).integers(0, 5, 100).astype(np.uint8),
])
def test_rows_by_class_are_each_class_s_rows_in_order(labels):
    expected = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    got = D._rows_by_class(labels)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_split_stratifies_many_classes_in_one_sort():
    # 10^5 rows of 2*10^4 classes: one pass over the rows per class was 2*10^9 comparisons.
    n, classes = 100_000, 20_000
    y = np.random.default_rng(0).integers(0, classes, n)
    x = np.arange(n)[:, None]
    x_tr, y_tr, x_va, y_va, x_te, y_te = D.train_val_test_split(x, y, val=0.2, test=0.2, seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate([x_tr, x_va, x_te])[:, 0]), np.arange(n))
    for part_x, part_y in ((x_tr, y_tr), (x_va, y_va), (x_te, y_te)):
        np.testing.assert_array_equal(y[part_x[:, 0]], part_y)
    counts = np.bincount(y, minlength=classes)
    for part_y in (y_va, y_te):  # round(0.2 n) rows, each class its share rounded down or up
        assert len(part_y) == round(0.2 * n)
        got = np.bincount(part_y, minlength=classes)
        assert np.all(got >= np.minimum(np.floor(0.2 * counts), counts - 1)) and np.all(got <= np.ceil(0.2 * counts))
    assert np.all(np.bincount(y_tr, minlength=classes) >= np.minimum(counts, 1))


@pytest.mark.parametrize("class_sizes, val, test", [([5] * 10, 0.0, 0.1), ([3] * 100, 0.15, 0.15), ([10, 2], 0.3, 0.3),
                                                    ([1, 1, 40], 0.2, 0.2), ([7, 3, 1, 12], 0.25, 0.25),
                                                    ([212, 357], 0.15, 0.15)])
def test_stratified_parts_are_the_unstratified_sizes_shared_out_by_largest_remainders(class_sizes, val, test):
    """Rounding each class's share on its own left the parts empty where every class is small (100
    classes of 3 rows at 15%: 0 each) or a class without a training row (2 rows at 30% + 30%). The
    parts hold round(fraction n) rows, as unstratified; each class its share rounded down, then one
    more to the largest remainders (ties to the earlier class); every class keeps a training row."""
    y = np.repeat(np.arange(len(class_sizes)), class_sizes)
    x = np.arange(len(y))[:, None]
    sizes = np.array(class_sizes)
    x_tr, y_tr, x_va, y_va, x_te, y_te = D.train_val_test_split(x, y, val=val, test=test, seed=1)
    unstratified = D.train_val_test_split(x, y, val=val, test=test, seed=1, stratify=False)
    assert (len(y_va), len(y_te)) == (len(unstratified[3]), len(unstratified[5])) == (round(val * len(y)),
                                                                                        round(test * len(y)))
    np.testing.assert_array_equal(np.bincount(y_tr, minlength=len(sizes)) > 0, True)
    test_counts = np.bincount(y_te, minlength=len(sizes))
    capacity = sizes - 1
    quotas = test * sizes
    assert np.all(test_counts <= np.minimum(np.ceil(quotas), capacity))
    assert np.all(test_counts >= np.minimum(np.floor(quotas), capacity))
    remainders = quotas - np.floor(quotas)
    raised = test_counts > np.floor(quotas)  # the classes given one more: no class left out had a larger remainder
    if raised.any() and (~raised & (capacity > np.floor(quotas))).any():
        assert remainders[raised].min() >= remainders[~raised & (capacity > np.floor(quotas))].max()


def test_split_stratifies_string_labels():
    names = np.array(["benign", "malignant", "unknown"])
    x, y = labelled_rows(n=1000)
    parts = D.train_val_test_split(x, names[y], val=0.2, test=0.1, seed=0)
    as_ints = D.train_val_test_split(x, y, val=0.2, test=0.1, seed=0)  # (the classes sort alike)
    for part, same in zip(parts[0::2], as_ints[0::2]):
        np.testing.assert_array_equal(part, same)


@pytest.mark.parametrize("stratify", [True, False])
def test_split_refuses_a_part_asked_for_that_comes_out_empty(stratify):
    x, y = np.arange(10.0)[:, None], np.repeat([0, 1], 5)
    with pytest.raises(ValueError,
                       match=r"val=0.04 of 10 rows leaves the val part empty.*give a larger fraction, or val=0"):
        D.train_val_test_split(x, y, val=0.04, test=0.2, stratify=stratify)
    assert len(D.train_val_test_split(x, y, val=0.0, test=0.2, stratify=stratify)[3]) == 0  # (none asked for)


def test_split_unstratified_for_regression_targets():
    x = np.arange(100.0)[:, None]
    y = x * 2.5 + 0.1
    parts = D.train_val_test_split(x, y, stratify=False)
    assert [len(p) for p in parts] == [70, 70, 15, 15, 15, 15]
    with pytest.raises(ValueError, match="stratify=False"):
        D.train_val_test_split(x, y, stratify=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(val=0.5, test=0.5), r"val \+ test must be below 1 .*got 0.5 \+ 0.5"),
    (dict(val=-0.1), r"val must be a fraction in \[0, 1\), got -0.1"),
    # (test=1.2 also makes val + test >= 1: the match checks that test's own range check refused it)
    (dict(test=1.2), r"test must be a fraction in \[0, 1\), got 1.2")])
def test_split_rejects_bad_fractions(kwargs, message):
    x, y = labelled_rows()
    with pytest.raises(ValueError, match=message):
        D.train_val_test_split(x, y, **kwargs)


def test_split_rejects_length_mismatch():
    with pytest.raises(ValueError, match="same number of rows"):
        D.train_val_test_split(np.zeros((5, 2)), np.zeros(4))


@pytest.mark.parametrize("stratify", [True, False])
def test_split_rejects_empty_input(stratify):
    with pytest.raises(ValueError, match=r"empty \(shapes \(0, 2\) and \(0,\)\)"):
        D.train_val_test_split(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), stratify=stratify)


# ---------------------------------------------------------------- standardization


def test_standardizer_fit_on_train_only_and_state_round_trip():
    rng = np.random.default_rng(0)
    x_train = rng.normal(5.0, 3.0, size=(200, 3))
    x_train[:, 2] = 7.0  # constant feature: std 1, not a division by zero
    x_val = rng.normal(5.0, 3.0, size=(50, 3))
    scaler = D.Standardizer().fit(x_train)
    z = scaler.transform(x_train)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1.0)
    assert scaler.std_[2] == 1.0 and np.all(z[:, 2] == 0)
    assert np.all(scaler.transform(x_val)[:, :2].mean(axis=0) != 0)
    restored = D.Standardizer.from_state(json.loads(json.dumps(scaler.state())))
    np.testing.assert_array_equal(restored.transform(x_val), scaler.transform(x_val))


@pytest.mark.parametrize("value,rows", [(0.1, 1000), (3.3, 10**5), (-7.7, 999)])
def test_standardizer_maps_a_constant_feature_to_zero(value, rows):
    """A constant column's float64 mean is rounded (0.1 over 1000 rows: 0.1 + 1.4e-17), so its std
    came out ~1e-17, not 0: the column mapped to -1.0 (or +1.0) everywhere, and a test value off by
    1e-7 to ~1e10. Constant means max == min in training: std 1, mean the value, 0 after."""
    x = np.stack([np.full(rows, value), np.arange(rows, dtype=np.float64)], axis=1)
    scaler = D.Standardizer().fit(x)
    z = scaler.transform(x)
    assert np.all(z[:, 0] == 0.0)
    assert scaler.std_[0] == 1.0
    assert abs(float(scaler.transform(np.array([[value + 1e-7, 0.0]]))[0, 0])) < 1e-6
    np.testing.assert_allclose(z[:, 1].std(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_standardizer_transform_needs_little_more_memory_than_its_result(dtype):
    """The float64 arithmetic ran on all of x at once: temporaries of three times the result for
    float32 data. By blocks of rows it needs one block's; the values are the same bit for bit."""
    import tracemalloc

    x = (np.random.default_rng(0).random((100_000, 20)) * 10).astype(dtype)
    scaler = D.Standardizer().fit(x[:1000])
    expected = ((x[:5000] - scaler.mean_) / scaler.std_).astype(x.dtype if x.dtype.kind == "f" else np.float64)
    tracemalloc.start()
    try:
        z = scaler.transform(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < z.nbytes + 4 * 2**20
    np.testing.assert_array_equal(z[:5000], expected)
    assert z.dtype == expected.dtype and z.shape == x.shape


def test_standardizer_transform_of_images_and_of_one_value():
    x = np.random.default_rng(1).random((30, 2, 3, 3)).astype(np.float32)
    scaler = D.Standardizer().fit(x)
    np.testing.assert_array_equal(scaler.transform(x), ((x - scaler.mean_) / scaler.std_).astype(np.float32))
    scaler = D.Standardizer().fit(np.array([1.0, 2.0, 3.0]))  # one feature: rows are scalars
    assert scaler.transform(np.float64(2.0)).shape == ()
    assert float(scaler.transform(np.float64(2.0))) == 0.0


def test_standardizer_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        D.Standardizer().transform(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        D.Standardizer().fit(np.zeros((3, 2))).transform(np.zeros((3, 4)))
    # NaN or inf would make the column's mean and std NaN, and every standardized value with them.
    x = np.ones((4, 3))
    x[1, 2], x[3, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"NaN or inf values in column\(s\) \[0, 2\]"):
        D.Standardizer().fit(x)
    with pytest.raises(ValueError, match="NaN or inf values;"):
        D.Standardizer().fit(np.array([1.0, np.nan]))
    # A saved state with a NaN std or mean (std <= 0 alone let NaN through) or a zero std.
    for mean, std in (([0.0], [np.nan]), ([np.nan], [1.0]), ([0.0], [0.0]), ([0.0], [np.inf])):
        with pytest.raises(ValueError, match="state mean must be finite and std finite and positive"):
            D.Standardizer.from_state({"mean": mean, "std": std})


# ---------------------------------------------------------------- data sets


def test_breast_cancer_labels_flipped_and_standardized():
    ds = D.load_breast_cancer()
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    assert y.dtype == np.int64 and len(y) == 569
    assert y.sum() == 212  # malignant = 1
    assert ds.class_names == ["benign", "malignant"]
    assert ds.x_train.shape[1] == 30 and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert np.abs(ds.x_val.mean(axis=0)).max() > 1e-3  # scaled with train statistics
    assert ds.scaler is not None


def test_breast_cancer_feature_selection():
    ds = D.load_breast_cancer(features=["mean radius", 1], standardize=False, dtype=np.float64)
    assert ds.feature_names == ["mean radius", "mean texture"]
    assert ds.x_train.shape[1] == 2 and ds.x_train.dtype == np.float64
    assert ds.x_train[:, 0].min() > 5  # raw radius in mm-ish units, not standardized
    assert ds.scaler is None
    with pytest.raises(ValueError, match="did you mean"):
        D.load_breast_cancer(features=["mean radiuss"])
    with pytest.raises(TypeError, match="floating"):
        D.load_breast_cancer(dtype=np.int32)


def test_digits_shapes_and_range():
    ds = D.load_digits()
    parts = (ds.x_train, ds.x_val, ds.x_test)
    assert sum(len(p) for p in parts) == 1797
    assert all(p.shape[1:] == (1, 8, 8) and p.dtype == np.float32 for p in parts)
    assert min(p.min() for p in parts) == 0.0 and max(p.max() for p in parts) == 1.0
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    flat = D.load_digits(as_images=False, standardize=True)
    assert flat.x_train.shape[1] == 64
    np.testing.assert_allclose(flat.x_train.mean(axis=0), 0.0, atol=1e-5)


def test_regression_pair():
    ds = D.load_regression_pair()
    assert ds.x_train.shape[1:] == (1,) and ds.y_train.shape[1:] == (1,)
    assert ds.x_train.dtype == ds.y_train.dtype == np.float32
    assert sum(len(p) for p in (ds.y_train, ds.y_val, ds.y_test)) == 442
    assert abs(ds.x_train.mean()) < 1e-5
    # BMI and progression are clearly positively correlated.
    assert np.corrcoef(ds.x_train[:, 0], ds.y_train[:, 0])[0, 1] > 0.4


# ---------------------------------------------------------------- batching


def test_batches_cover_all_rows_once():
    x = np.arange(10)[:, None]
    y = np.arange(10)
    got = list(D.batches(x, y, 4, shuffle=True, seed=0))
    assert [len(yb) for _, yb in got] == [4, 4, 2]
    assert sorted(np.concatenate([yb for _, yb in got])) == list(range(10))
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0], yb)
    in_order = list(D.batches(x, y, 4, shuffle=False, drop_last=True))
    assert [yb.tolist() for _, yb in in_order] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batches_seeded_and_rng_driven_orders():
    x = y = np.arange(20)
    order = lambda it: np.concatenate([yb for _, yb in it]).tolist()
    assert order(D.batches(x, y, 5, seed=1)) == order(D.batches(x, y, 5, seed=1))
    rng = np.random.default_rng(1)
    first, second = order(D.batches(x, y, 5, rng=rng)), order(D.batches(x, y, 5, rng=rng))
    assert first != second  # one Generator reshuffles every epoch


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (4.0, TypeError),
                                               (True, TypeError), ("8", TypeError)])
def test_batches_rejects_bad_batch_size(batch_size, error):
    """A bad int is a ValueError; a float, bool or string where an int is needed a TypeError (as in the ops)."""
    with pytest.raises(error, match="batch_size must be an int"):
        D.batches(np.zeros(4), np.zeros(4), batch_size)


@pytest.mark.parametrize("flag", ["shuffle", "drop_last"])
def test_batches_refuses_flags_that_are_not_bools(flag):
    # shuffle="no" shuffled, drop_last="no" dropped
    with pytest.raises(TypeError, match=f"batches: {flag} must be True or False, got 'no'"):
        D.batches(np.zeros((10, 2)), np.zeros(10), 4, **{flag: "no"})


def test_batches_rejects_length_mismatch_and_seed_with_rng():
    with pytest.raises(ValueError, match="same length"):
        D.batches(np.zeros(4), np.zeros(5), 2)
    with pytest.raises(ValueError, match="not both"):
        D.batches(np.zeros(4), np.zeros(4), 2, seed=0, rng=np.random.default_rng())


def test_batches_of_lists_shuffle_as_arrays():
    # a list's rows cannot be taken by the shuffled order (an index array): NumPy's "only integer scalar
    # arrays can be converted..." at the first batch
    got = list(D.batches([[1.0], [2.0], [3.0]], [0, 1, 2], 2, seed=0))
    rows = np.concatenate([xb[:, 0] for xb, _ in got])
    assert sorted(rows.tolist()) == [1.0, 2.0, 3.0] and [len(yb) for _, yb in got] == [2, 1]
    assert all(np.array_equal(xb[:, 0] - 1, yb) for xb, yb in got)
    # unshuffled, a list is sliced as before (a ragged one too)
    ragged = [[1.0], [2.0, 3.0], [4.0]]
    assert [xb for xb, _ in D.batches(ragged, [0, 1, 2], 2, shuffle=False)] == [ragged[:2], ragged[2:]]


def test_masked_arrays_and_bools_for_numbers_are_refused():
    # np.asarray dropped a mask: the masked ("missing") values were standardized and split as data.
    x = np.ma.masked_array(np.arange(12.0).reshape(6, 2), mask=np.zeros((6, 2), bool))
    y = np.repeat([0, 1], 3)
    for call in (lambda: D.train_val_test_split(x, y, val=0.0, test=0.4), lambda: D.Standardizer().fit(x),
                 lambda: D.Standardizer().fit(np.zeros((3, 2))).transform(x), lambda: D.batches(x, y, 2)):
        with pytest.raises(TypeError, match=r"x is a numpy.ma.MaskedArray; fastconv does not apply masks"):
            call()
    with pytest.raises(TypeError, match=r"seed must be None or an int >= 0, got True"):
        D.train_val_test_split(np.zeros((10, 2)), np.repeat([0, 1], 5), seed=True)
    with pytest.raises(TypeError, match=r"val must be a fraction in \[0, 1\), got '0.1'"):
        D.train_val_test_split(np.zeros((10, 2)), np.repeat([0, 1], 5), val="0.1")
