"""The loss layers' class-weight handling: checked once (construction or assignment), copied to the
device once, then handed to the op with check_weight=False (no device-to-host read per call)."""
import numpy as np
import pytest

from fastconv import losses, ops
from helpers import on, to_numpy


def _reference(logits, labels, weight):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    w = weight[labels]
    return -(w * logp[np.arange(len(labels)), labels]).sum() / w.sum()


def test_weighted_cross_entropy_layer_matches_the_reference_on_every_call(backend):
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    weight = np.array([0.5, 2.0, 1.0, 0.0])
    loss_fn = losses.CrossEntropyLoss(weight=weight)
    for _ in range(2):  # the second call takes the weights already on the device
        x = on(backend, logits)
        loss = loss_fn(x, labels)
        np.testing.assert_allclose(float(loss), _reference(logits, labels, weight), rtol=1e-12)
    assert len(loss_fn._weight_on_device) == 1
    dlogits = to_numpy(loss_fn.backward())
    _, expected = ops.softmax_cross_entropy_with_grad(x, on(backend, labels), on(backend, weight))
    np.testing.assert_array_equal(dlogits, to_numpy(expected))


@pytest.mark.parametrize("bad", [[1.0, -0.5], [1.0, np.nan]])
def test_class_weights_are_checked_at_construction_and_assignment(bad):
    with pytest.raises(ValueError, match=r"class weights must be >= 0 \(and not NaN\)"):
        losses.CrossEntropyLoss(weight=bad)
    loss_fn = losses.CrossEntropyLoss(weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"class weights must be >= 0 \(and not NaN\)"):
        loss_fn.weight = bad


def test_the_layer_keeps_a_read_only_copy_of_the_weights():
    weight = np.array([1.0, 2.0])
    loss_fn = losses.CrossEntropyLoss(weight=weight)
    weight[0] = -1.0  # the caller's array: the layer's copy stays as checked
    assert loss_fn.weight[0] == 1.0
    with pytest.raises(ValueError):
        loss_fn.weight[0] = -1.0
    loss_fn(np.zeros((1, 2)), np.array([0]))
    loss_fn.weight = [3.0, 4.0]  # a new assignment is checked and drops the device copies
    assert loss_fn._weight_on_device == {}


def test_check_weight_false_skips_only_the_value_check(backend):
    logits, labels = on(backend, np.zeros((2, 3)), np.array([0, 2]))
    negative = on(backend, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weight must be non-negative"):
        ops.softmax_cross_entropy_with_grad(logits, labels, negative)
    ops.softmax_cross_entropy_with_grad(logits, labels, negative, check_weight=False)  # the caller's promise
    with pytest.raises(ValueError, match=r"weight must be \(3,\)"):
        ops.softmax_cross_entropy_forward(logits, labels, on(backend, np.ones(2)), check_weight=False)
    with pytest.raises(TypeError, match="check_weight must be True or False"):
        ops.softmax_cross_entropy_backward(logits, labels, None, check_weight="no")


def test_copies_of_the_layer_keep_checked_read_only_weights():
    import copy
    import pickle

    loss_fn = losses.CrossEntropyLoss(weight=[1.0, 2.0], label_smoothing=0.1)
    loss_fn(np.zeros((1, 2)), np.array([0]))
    with pytest.raises(ValueError):
        loss_fn.weight.flags.writeable = True  # a view of a read-only base stays read-only
    for twin in (copy.deepcopy(loss_fn), pickle.loads(pickle.dumps(loss_fn))):
        assert not twin.weight.flags.writeable and twin._weight_on_device == {}
        assert twin.label_smoothing == 0.1 and list(twin.weight) == [1.0, 2.0]
        with pytest.raises(ValueError):
            twin.weight.flags.writeable = True
        assert np.isfinite(float(twin(np.zeros((1, 2)), np.array([1]))))


class _SeriesLike:
    """Host data with a dict-style .get (as a pandas Series has): not a device array."""

    def __init__(self, values):
        self.values = np.asarray(values)

    def get(self, key, default=None):
        return default

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


@pytest.mark.parametrize("bad", [-0.5, np.nan, [1.0, np.nan]])
def test_pos_weight_is_checked_at_construction(bad):
    # NaN passed the `< 0` check and gave a NaN loss at every step, silently (CrossEntropyLoss refuses it)
    with pytest.raises(ValueError, match=r"pos_weight must be a non-negative scalar or 1-D array"):
        losses.BCEWithLogitsLoss(pos_weight=bad)


def test_weights_with_a_dict_style_get_are_read_as_host_data():
    assert list(losses.CrossEntropyLoss(weight=_SeriesLike([1.0, 2.0])).weight) == [1.0, 2.0]
    assert list(losses.BCEWithLogitsLoss(pos_weight=_SeriesLike([3.0])).pos_weight) == [3.0]


def test_a_layer_whose_labels_all_have_weight_zero_gives_nan_not_an_error(backend):
    """sum_i w[y_i] = 0: 0/0, a NaN loss and gradient, as the op documents (the cpu backend raised)."""
    loss_fn = losses.CrossEntropyLoss(weight=[1.0, 0.0])
    for dtype in (np.float32, np.float64):
        loss = loss_fn(on(backend, np.array([[0.0, 1.0], [0.0, 1.0]], dtype)), np.array([1, 1]))
        assert np.isnan(float(loss))
        assert np.isnan(to_numpy(loss_fn.backward())).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mse_and_bce_layers_take_0d_outputs_and_give_0d_gradients(backend, dtype):
    """A 0-d prediction and target (one value), as the ops take them; a scalar pos_weight too."""
    pred, target = on(backend, np.array(2.0, dtype)), np.array(1.0)
    cases = [(losses.MSELoss(), 1.0, 2.0),
             (losses.BCEWithLogitsLoss(), np.log1p(np.exp(-2.0)), -1 / (1 + np.exp(2.0))),
             (losses.BCEWithLogitsLoss(pos_weight=2.0), 2 * np.log1p(np.exp(-2.0)), -2 / (1 + np.exp(2.0)))]
    for loss_fn, expected_loss, expected_grad in cases:
        loss = loss_fn(pred, target)
        grad = to_numpy(loss_fn.backward())
        assert loss.shape == () and grad.shape == () and grad.dtype == dtype, repr(loss_fn)
        np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-6)
        np.testing.assert_allclose(float(grad), expected_grad, rtol=1e-6)


def test_masked_targets_and_labels_are_refused(backend):
    """The layers convert targets with asarray, which drops a mask: refused, as the ops refuse one."""
    masked = np.ma.masked_array([1.0, 0.0], mask=[0, 1])
    with pytest.raises(TypeError, match=r"MSELoss: target is a numpy.ma.MaskedArray; fastconv does not apply masks"):
        losses.MSELoss()(on(backend, np.zeros(2)), masked)
    with pytest.raises(TypeError, match=r"BCEWithLogitsLoss: targets is a numpy.ma.MaskedArray"):
        losses.BCEWithLogitsLoss()(on(backend, np.zeros(2)), masked)
    with pytest.raises(TypeError, match=r"CrossEntropyLoss: labels is a numpy.ma.MaskedArray"):
        losses.CrossEntropyLoss()(on(backend, np.zeros((2, 2))), np.ma.masked_array([0, 1], mask=[0, 1]))


def test_bce_pos_weight_is_a_read_only_copy():
    """BCEWithLogitsLoss checks pos_weight once, as CrossEntropyLoss its class weights, so it keeps a
    copy: the caller's array changed to -5 afterwards made the loss negative, unchecked."""
    pos_weight = np.array([2.0], np.float32)
    loss_fn = losses.BCEWithLogitsLoss(pos_weight=pos_weight)
    pos_weight[0] = -5.0
    assert float(loss_fn.pos_weight[0]) == 2.0
    with pytest.raises(ValueError):
        loss_fn.pos_weight[0] = -5.0
    with pytest.raises(ValueError):  # (a view of a read-only base, as CrossEntropyLoss's: not made writeable again)
        loss_fn.pos_weight.flags.writeable = True
    logits = np.array([[0.5], [-1.0]], np.float32)
    targets = np.array([[1.0], [0.0]], np.float32)
    expected = ops.bce_with_logits_forward(logits, targets, np.array([2.0], np.float32))
    assert float(loss_fn(logits, targets)) == float(expected) > 0


def test_a_second_cross_entropy_backward_is_the_gradient_whatever_the_first_became(backend):
    # The first call hands out the fused op's own array; later calls copied that array, which the caller
    # may have changed in place (g *= 0 made every later gradient zero).
    rng = np.random.default_rng(3)
    z, y = on(backend, rng.standard_normal((4, 3)).astype(np.float32)), np.array([0, 1, 2, 1])
    for loss_fn in (losses.CrossEntropyLoss(), losses.CrossEntropyLoss(weight=np.array([1.0, 2.0, 0.5]),
                                                                       label_smoothing=0.1)):
        loss_fn(z, y)
        first = loss_fn.backward()
        expected = to_numpy(first).copy()
        first *= 0
        again = loss_fn.backward()
        np.testing.assert_array_equal(to_numpy(again), expected)
        again *= 0
        np.testing.assert_array_equal(to_numpy(loss_fn.backward()), expected)


def test_bce_pos_weight_set_later_is_checked_too():
    # A plain attribute took -3.0 (a loss below 0) and 2.0 (an AttributeError at the next call).
    loss_fn = losses.BCEWithLogitsLoss()
    with pytest.raises(ValueError, match="pos_weight must be a non-negative scalar or 1-D array"):
        loss_fn.pos_weight = np.array([-3.0])
    assert loss_fn.pos_weight is None
    loss_fn.pos_weight = 2.0
    assert loss_fn.pos_weight.tolist() == [2.0] and not loss_fn.pos_weight.flags.writeable
    z, t = np.array([[0.5], [-1.0]], np.float32), np.array([[1.0], [0.0]], np.float32)
    expected = np.mean([2 * np.log1p(np.exp(-0.5)), np.log1p(np.exp(-1.0))])
    assert float(loss_fn(z, t)) == pytest.approx(expected, rel=1e-6)
    import pickle

    copy = pickle.loads(pickle.dumps(loss_fn))
    assert copy.pos_weight.tolist() == [2.0] and not copy.pos_weight.flags.writeable


def test_float_labels_get_advice_that_fits_their_shape():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"got dtype float64 \(class indices held as floats: pass "
                                        r"labels.astype\(np.int64\); binary"):
        losses.CrossEntropyLoss()(logits, np.array([0.0, 2.0]))
    with pytest.raises(TypeError, match=r"got dtype float32 \(one-hot targets: pass labels.argmax\(axis=1\); "
                                        r"probability \(soft\) targets are not supported"):
        losses.CrossEntropyLoss()(logits, np.eye(3, dtype=np.float32)[:2])


def test_bce_pos_weight_is_a_keyword():
    # torch's first positional argument is weight (each element's loss scaled): taken here as pos_weight, a
    # port of torch code computed another loss, silently.
    with pytest.raises(TypeError, match="positional"):
        losses.BCEWithLogitsLoss(np.ones(3))
    assert list(losses.BCEWithLogitsLoss(pos_weight=np.ones(3)).pos_weight) == [1, 1, 1]


def test_a_loss_pickled_before_its_weights_became_properties_keeps_them():
    # The state of before: {"label_smoothing", "weight"} and {"pos_weight"}; read as the new one it lost them.
    ce = losses.CrossEntropyLoss.__new__(losses.CrossEntropyLoss)
    ce.__setstate__({"label_smoothing": 0.1, "weight": np.array([1.0, 2.0, 3.0])})
    assert ce.weight.tolist() == [1.0, 2.0, 3.0] and not ce.weight.flags.writeable and "weight" not in ce.__dict__
    assert ce.label_smoothing == 0.1
    bce = losses.BCEWithLogitsLoss.__new__(losses.BCEWithLogitsLoss)
    bce.__setstate__({"pos_weight": np.array([2.0])})
    assert bce.pos_weight.tolist() == [2.0] and "pos_weight" not in bce.__dict__
    with pytest.raises(ValueError, match="pos_weight must be a non-negative"):
        losses.BCEWithLogitsLoss.__new__(losses.BCEWithLogitsLoss).__setstate__({"pos_weight": np.array([-1.0])})
