"""fastconv.nn: layers' forward against float64 NumPy, backward against finite differences through a
whole small Sequential, on every backend; state dicts, freezing, configs, input checks."""
import re

import numpy as np
import pytest

import fastconv
from fastconv import nn, ops
from fastconv._cpu import _vecmath
from helpers import DTYPES, assert_gradient, assert_matches, numerical_gradient, on, to_numpy


def needs(*names):
    missing = [n for n in names if not hasattr(ops, n)]
    return pytest.mark.skipif(bool(missing), reason=f"ops not merged yet: {missing}")


CONV = needs("conv2d_forward", "max_pool2d_forward", "avg_pool2d_forward")


# --- float64 NumPy references -------------------------------------------------------------------

def conv_ref(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, co, ho, wo), x.dtype)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return y + b[None, :, None, None]


def pool_ref(x, k, reduce):
    n, c, h, w = x.shape
    return reduce(x[:, :, :h // k * k, :w // k * k].reshape(n, c, h // k, k, w // k, k), axis=(3, 5))


def relu(z):
    return np.maximum(z, 0)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def params64(model):
    return [to_numpy(p.data).astype(np.float64) for p in model.parameters()]


def dense_model(dtype, seed=1):
    return nn.Sequential(nn.Linear(5, 4, dtype=dtype, seed=seed), nn.ReLU(), nn.Linear(4, 3, dtype=dtype, seed=seed + 1),
                         nn.Sigmoid(), nn.Linear(3, 2, dtype=dtype, seed=seed + 2))


def dense_ref(x, w1, b1, w2, b2, w3, b3):
    return sigmoid(relu(x @ w1.T + b1) @ w2.T + b2) @ w3.T + b3


def conv_model(dtype, seed=1):
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, dtype=dtype, seed=seed), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(2, 2, 2, stride=1, dtype=dtype, seed=seed + 1), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(2, 3, dtype=dtype, seed=seed + 2))


def conv_ref_model(x, w1, b1, w2, b2, w3, b3):
    h = pool_ref(relu(conv_ref(x, w1, b1, 1, 1)), 2, np.max)
    h = pool_ref(conv_ref(h, w2, b2, 1, 0), 2, np.mean).reshape(len(x), -1)
    return h @ w3.T + b3


def check_model(be, model_fn, ref, x_shape, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape)
    model = model_fn(dtype)
    out = model(on(be, x.astype(dtype)))
    assert_matches(out, ref, [x, *params64(model)], dtype, what="forward")

    # Backward through the whole model in float64 against central differences of its forward.
    model = model_fn(np.float64)
    dy = rng.standard_normal(to_numpy(model(on(be, x))).shape)
    model.zero_grad()
    model(on(be, x))
    dx = model.backward(on(be, dy))

    def forward_x(x_):
        return to_numpy(model(on(be, x_)))
    assert_gradient(dx, numerical_gradient(forward_x, [x], 0, dy), "dx")
    for name, p in model.named_parameters():
        grad = to_numpy(p.grad).copy()
        original = to_numpy(p.data).copy()

        def forward_p(value, p=p):
            p.data[...] = on(be, value)
            return to_numpy(model(on(be, x)))
        numeric = numerical_gradient(forward_p, [original], 0, dy)
        p.data[...] = on(be, original)
        assert_gradient(grad, numeric, f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_sequential_forward_backward(backend, dtype):
    check_model(backend, dense_model, dense_ref, (3, 5), dtype)


@CONV
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_sequential_forward_backward(backend, dtype):
    check_model(backend, conv_model, conv_ref_model, (2, 1, 6, 6), dtype)


def test_gradients_accumulate_and_zero_grad(backend):
    model = dense_model(np.float64)
    x = on(backend, np.random.default_rng(1).standard_normal((4, 5)))
    dy = on(backend, np.ones((4, 2)))
    model(x)
    model.backward(dy)
    once = [to_numpy(p.grad).copy() for p in model.parameters()]
    model(x)
    model.backward(dy)
    for g1, p in zip(once, model.parameters()):
        np.testing.assert_allclose(to_numpy(p.grad), 2 * g1, rtol=1e-12, atol=1e-12)
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_fused_linear_relu_matches_separate_layers(backend):
    x = on(backend, np.random.default_rng(2).standard_normal((6, 5)).astype(np.float32))
    lin, act = nn.Linear(5, 4, seed=3), nn.ReLU()
    fused = nn.Sequential(lin, act)
    separate = act(lin(x))
    np.testing.assert_array_equal(to_numpy(fused(x)), to_numpy(separate))
    dy = on(backend, np.random.default_rng(3).standard_normal((6, 4)).astype(np.float32))
    fused(x)
    dx_fused = to_numpy(fused.backward(dy))
    grads = [to_numpy(p.grad).copy() for p in lin.parameters()]
    lin.zero_grad()
    act(lin(x))
    dx_separate = to_numpy(lin.backward(act.backward(dy)))
    np.testing.assert_array_equal(dx_fused, dx_separate)
    for g, p in zip(grads, lin.parameters()):
        np.testing.assert_array_equal(g, to_numpy(p.grad))


def _ulps(a, b):
    ints = np.int32 if a.dtype == np.float32 else np.int64
    return np.abs(a.view(ints).astype(np.int64) - b.view(ints).astype(np.int64))


@pytest.mark.parametrize("activation, simd", [("sigmoid", True), ("sigmoid", False), ("relu", True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_activation_is_the_layers_bit_for_bit(monkeypatch, backend, dtype, activation, simd):
    """Linear / Conv2d then Sigmoid or ReLU, fused, against the layers one by one: the same bits
    across the sigmoid's whole range (subnormal outputs too), on every kernel path the layers take:
    Linear by row or column blocks, on the calling thread or the workers; Conv2d with stride 1 (taps,
    Winograd at 64 channels, 1x1) or 2 (im2col), with and without a max pooling fused. On cpu,
    float32 with the vector kernels off too (the scalar sigmoid for both)."""
    Activation = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[activation]
    if not simd:
        if backend.name != "cpu":
            pytest.skip("the vector kernels are the cpu backend's")
        monkeypatch.setattr(_vecmath, "SIMD", False)
    vector = backend.name == "cpu" and dtype == np.float32 and _vecmath.SIMD
    rng = np.random.default_rng(4)
    edge = np.nextafter(np.float32(-87.3), np.float32([-np.inf, np.inf] * 8))  # the old scalar cutoff
    values = np.concatenate([np.linspace(-110, 30, 2048), rng.standard_normal(2048) * 8, edge, edge / 2])
    small = backend.name != "cpu"  # the emulator runs every thread of a kernel: keep its sizes small
    convs = [(3, 5, 3, 1, 12), (3, 5, 3, 2, 12), (4, 6, 1, 1, 9)] + ([] if small else [(64, 64, 3, 1, 14)])
    cases = [(nn.Linear(16, 16, dtype=dtype, seed=1), values.reshape(-1, 16), True),
             (nn.Linear(20, 1, dtype=dtype, seed=2), rng.standard_normal((300, 20)) * 4, False),
             (nn.Linear(20, 37, dtype=dtype, seed=3), rng.standard_normal((3, 20)) * 4, False)]
    if not small:
        cases.append((nn.Linear(64, 1000, dtype=dtype, seed=4), rng.standard_normal((5, 64)) * 2, False))
    for c, c_out, k, stride, size in convs:
        cases.append((nn.Conv2d(c, c_out, k, stride=stride, padding=k // 2, dtype=dtype, seed=c_out),
                      rng.standard_normal((2, c, size, size)) * 6, False))
    for layer, x, identity in cases:
        if identity:  # the sigmoid of exactly x, across its range
            layer.weight.data[...] = on(backend, np.eye(16, dtype=dtype))
            layer.bias.data[...] = 0
        x = on(backend, x.astype(dtype))
        pre = layer(x)
        alone = to_numpy(Activation()(pre))
        fused = to_numpy(nn.Sequential(layer, Activation())(x))
        np.testing.assert_array_equal(fused.view(np.uint8), alone.view(np.uint8), err_msg=repr(layer))
        if isinstance(layer, nn.Conv2d) and layer.stride == (1, 1):
            pooled = to_numpy(nn.Sequential(layer, Activation(), nn.MaxPool2d(2))(x))
            np.testing.assert_array_equal(pooled, to_numpy(nn.MaxPool2d(2)(on(backend, alone))), err_msg=repr(layer))
        if identity and vector and activation == "sigmoid":  # sigmoid16: subnormal down there, 0 only past x ~ -104
            assert np.all(fused[to_numpy(pre) > -100] > 0)


def test_initialization_is_pytorch_default_and_seeded():
    lin = nn.Linear(50, 40, seed=7)
    w, b = to_numpy(lin.weight.data), to_numpy(lin.bias.data)
    bound = 1 / np.sqrt(50)
    assert w.shape == (40, 50) and b.shape == (40,) and w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.9 * bound  # uniform over the whole range, not a narrower one
    np.testing.assert_array_equal(w, to_numpy(nn.Linear(50, 40, seed=7).weight.data))
    assert not np.array_equal(w, to_numpy(nn.Linear(50, 40, seed=8).weight.data))
    conv = nn.Conv2d(4, 6, 3, groups=2, seed=1)
    assert conv.weight.shape == (6, 2, 3, 3)
    assert np.abs(to_numpy(conv.weight.data)).max() <= 1 / np.sqrt(2 * 9)
    nn.manual_seed(5)
    first = to_numpy(nn.Linear(3, 3).weight.data)
    nn.manual_seed(5)
    np.testing.assert_array_equal(first, to_numpy(nn.Linear(3, 3).weight.data))
    assert nn.Linear(3, 3, dtype=np.float64).weight.dtype == np.float64


def test_dropout_train_and_eval(backend):
    drop = nn.Dropout(0.25, seed=0)
    x = on(backend, np.ones((200, 50), np.float32))
    y = to_numpy(drop(x))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    dx = to_numpy(drop.backward(on(backend, np.ones((200, 50), np.float32))))
    np.testing.assert_array_equal(dx, y)  # same mask, same scale
    drop.eval()
    np.testing.assert_array_equal(to_numpy(drop(x)), to_numpy(x))
    # Seeded: the same seed draws the same masks.
    np.testing.assert_array_equal(to_numpy(nn.Dropout(0.25, seed=0)(x)), y)
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(1.5)


def test_dropout_backward_needs_a_forward_even_when_it_is_the_identity(backend):
    """backward before any forward is a RuntimeError (as for every layer; it returned dy unchanged);
    after a forward in eval mode or with p = 0, the identity, it passes dy on."""
    dy = on(backend, np.arange(6, dtype=np.float32).reshape(2, 3))
    x = on(backend, np.ones((2, 3), np.float32))
    for drop in (nn.Dropout(0.5), nn.Dropout(0.5).eval(), nn.Dropout(0.0)):
        with pytest.raises(RuntimeError, match=r"Dropout\(p=.*\): backward\(\) called before forward\(\)"):
            drop.backward(dy)
        drop(x)
        expected = to_numpy(dy) * (to_numpy(drop._mask) if drop.training and drop.p else 1)
        np.testing.assert_array_equal(to_numpy(drop.backward(dy)), expected)
    drop = nn.Dropout(0.5, seed=1)
    drop(x)  # a training forward's mask, then an eval forward: backward follows the latest
    drop.eval()(x)
    np.testing.assert_array_equal(to_numpy(drop.backward(dy)), to_numpy(dy))



def test_dropout_identity_forward_survives_copy_and_pickle():
    """After an identity forward (eval mode, or p = 0) a copied or unpickled model's backward passes
    dy on: the marker must stay the module's own object (an object() sentinel became a new object
    in the copy, and backward computed dy * object(): TypeError)."""
    import copy
    import pickle
    dy = np.arange(6, dtype=np.float32).reshape(2, 3)
    for drop in (nn.Dropout(0.5).eval(), nn.Dropout(0.0)):
        model = nn.Sequential(drop)
        model(np.ones((2, 3), np.float32))
        for clone in (copy.copy(drop), copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            np.testing.assert_array_equal(to_numpy(clone.backward(dy)), dy)

def test_a_cnn_with_flatten_runs_on_an_empty_batch(backend):
    """N = 0 goes through every layer (the ops accept it); Flatten reshaped to (0, -1), which NumPy and
    CuPy refuse for a zero-size array."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, seed=0), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2),
                          nn.Flatten(), nn.Linear(32, 3, seed=1))
    x = on(backend, np.zeros((0, 1, 8, 8), np.float32))
    for mode in (True, False):
        model.train(mode)
        model.zero_grad()
        assert to_numpy(model(x)).shape == (0, 3)
        assert to_numpy(model.backward(on(backend, np.zeros((0, 3), np.float32)))).shape == (0, 1, 8, 8)
        for p in model.parameters():
            np.testing.assert_array_equal(to_numpy(p.grad), np.zeros(p.shape))
    flatten = nn.Flatten()
    assert to_numpy(flatten(on(backend, np.zeros((0, 2, 3), np.float32)))).shape == (0, 6)
    assert to_numpy(flatten.backward(on(backend, np.zeros((0, 6), np.float32)))).shape == (0, 2, 3)


def test_sequential_backward_before_forward_raises_even_with_no_layer_to_call(backend):
    """An empty model, or one with nothing trainable under input_grad=False, calls no layer's backward;
    before its forward it raises too, as the layers do."""
    dy = on(backend, np.ones((2, 3), np.float32))
    for model, kw in ((nn.Sequential(), {}), (nn.Sequential(nn.ReLU(), nn.Dropout(0.1)), {"input_grad": False})):
        with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
            model.backward(dy, **kw)
        model(on(backend, np.ones((2, 3), np.float32)))
        out = model.backward(dy, **kw)
        assert out is None if kw else out is dy


def test_state_dict_round_trip_and_names(backend):
    model = dense_model(np.float32, seed=1)
    other = dense_model(np.float32, seed=10)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    x = on(backend, np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32))
    other.load_state_dict({k: to_numpy(v).copy() for k, v in model.state_dict().items()})
    np.testing.assert_array_equal(to_numpy(other(x)), to_numpy(model(x)))


class ForeignTensor:
    """An array of another library (as a torch tensor): a shape, and a dtype NumPy cannot read."""
    shape = (2,)

    class dtype:
        def __repr__(self):
            return "foreign.float32"

    dtype = dtype()


def test_load_state_dict_errors_leave_model_untouched():
    model = dense_model(np.float32)
    before = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
    good = {k: np.zeros_like(v) for k, v in before.items()}
    cases = [
        ({k: v for k, v in good.items() if k != "2.bias"}, KeyError, "missing keys \\['2.bias'\\]"),
        ({**good, "9.weight": np.zeros(3, np.float32)}, KeyError, "unexpected keys \\['9.weight'\\]"),
        ({**good, "4.weight": np.zeros((2, 4), np.float32)}, ValueError, "4.weight has shape \\(2, 4\\)"),
        ({**good, "4.bias": np.zeros(2, np.float64)}, TypeError, "4.bias is float64"),
        ({**good, "4.bias": [0.0, 0.0]}, TypeError, r"4.bias is a list in the state dict, not an array \(the model's "
                                                    r"parameter is an array of shape \(2,\)\)"),
        # (a torch state dict: "Cannot interpret 'torch.float32' as a data type", naming no key)
        ({**good, "4.bias": ForeignTensor()}, TypeError, r"4.bias has dtype foreign.float32, not a NumPy dtype: pass "
                                                        r"arrays \(a torch state dict sd as"),
        # (a masked array's mask was ignored)
        ({**good, "4.bias": np.ma.masked_array(np.zeros(2, np.float32), [True, False])}, TypeError,
         r"state_dict\['4.bias'\] is a numpy.ma.MaskedArray"),
    ]
    for sd, error, message in cases:
        with pytest.raises(error, match=message):
            model.load_state_dict(sd)
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(to_numpy(v), before[k])
    model[4].bias.data.flags.writeable = False  # (the copies before it were made, then NumPy's error)
    with pytest.raises(ValueError, match=r"the model's parameter 4.bias is read-only .*: nothing was loaded"):
        model.load_state_dict(good)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(to_numpy(v), before[k])
    model[4].bias.data.flags.writeable = True
    missing, unexpected = model.load_state_dict({"0.bias": np.ones(4, np.float32), "x": np.ones(1)}, strict=False)
    assert "0.weight" in missing and unexpected == ["x"]
    np.testing.assert_array_equal(to_numpy(model[0].bias.data), np.ones(4))


def test_freeze_stops_gradients(backend):
    model = dense_model(np.float32)
    model[0].freeze()
    assert [p.frozen for p in model.parameters()] == [True, True, False, False, False, False]
    x = on(backend, np.ones((2, 5), np.float32))
    model(x)
    model.backward(on(backend, np.ones((2, 2), np.float32)))
    assert model[0].weight.grad is None and model[2].weight.grad is not None
    model.unfreeze()
    assert not any(p.frozen for p in model.parameters())


@pytest.mark.parametrize("make", [
    lambda: dense_model(np.float64),
    lambda: nn.Sequential(nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0), groups=1, bias=False), nn.ReLU(),
                          nn.MaxPool2d(2, stride=1), nn.AvgPool2d(2, padding=1), nn.Flatten(), nn.Dropout(0.1),
                          nn.Linear(8, 2)),
])
def test_config_rebuilds_the_architecture(make):
    import json
    model = make()
    cfg = json.loads(json.dumps(model.config()))
    rebuilt = nn.from_config(cfg)
    assert rebuilt.config() == model.config()
    assert [(n, p.shape, p.dtype) for n, p in rebuilt.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in model.named_parameters()]
    with pytest.raises(ValueError, match="unknown layer type"):
        nn.from_config({"type": "Transformer"})


def test_wrong_input_shapes_name_the_layer(backend):
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"Linear\(in_features=4.*expected input of shape \(N, 4\), got \(2, 5\)"):
        lin(on(backend, np.zeros((2, 5), np.float32)))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4\), got \(4,\)"):
        lin(on(backend, np.zeros(4, np.float32)))
    with pytest.raises(TypeError, match="input is float64 but the layer's parameters are float32"):
        lin(on(backend, np.zeros((2, 4))))
    conv = nn.Conv2d(3, 2, 3)
    with pytest.raises(ValueError, match=r"Conv2d\(in_channels=3.*expected input of shape \(N, 3, H, W\), got \(1, 2, 5, 5\)"):
        conv(on(backend, np.zeros((1, 2, 5, 5), np.float32)))
    with pytest.raises(ValueError, match=r"MaxPool2d.*expected input of shape \(N, C, H, W\), got \(5, 5\)"):
        nn.MaxPool2d(2)(on(backend, np.zeros((5, 5), np.float32)))
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward"):
        nn.Linear(2, 2).backward(on(backend, np.zeros((1, 2), np.float32)))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="in_features must be an int >= 1"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match=r"Conv2d: padding must be an int >= 0, got -1"):
        nn.Conv2d(1, 2, 3, padding=(1, -1))
    # A float (even 2.0) or a string where an int is needed is a TypeError, as in the ops.
    for make, match in [(lambda: nn.Linear(2.5, 3), r"Linear: in_features must be an int, got 2.5"),
                        (lambda: nn.Linear(3, 2.0), r"Linear: out_features must be an int, got 2.0"),
                        (lambda: nn.Conv2d(1, 2, 3, stride=1.5), r"Conv2d: stride must be an int, got 1.5"),
                        (lambda: nn.Conv2d(1, 2, (3, 2.5)), r"Conv2d: kernel_size must be an int, got 2.5"),
                        (lambda: nn.Conv2d(2, 2, 3, groups="2"), r"Conv2d: groups must be an int, got '2'"),
                        (lambda: nn.MaxPool2d(2, padding=0.5), r"MaxPool2d: padding must be an int, got 0.5"),
                        (lambda: nn.AvgPool2d(True), r"AvgPool2d: kernel_size must be an int, got True")]:
        with pytest.raises(TypeError, match=match):
            make()
    with pytest.raises(TypeError, match="not a fastconv.nn.Module"):
        nn.Sequential(nn.ReLU(), "relu")


@pytest.mark.parametrize("kernel, dilation", [(3, 1), (4, 1), (3, 2), ((2, 3), (1, 2))])
def test_conv2d_takes_same_and_valid_padding_as_the_op_does(backend, kernel, dilation, tmp_path):
    """padding="same" / "valid", as ops.conv2d_forward and torch take them: the op's output (an even
    kernel's extra row and column at the bottom / right), alone and fused with max pooling, kept as
    given in repr and config, and rebuilt from a checkpoint."""
    from fastconv import checkpoint
    rng = np.random.default_rng(0)
    x = on(backend, rng.standard_normal((2, 2, 7, 8)).astype(np.float32))
    for padding in ("same", "valid"):
        conv = nn.Conv2d(2, 3, kernel, padding=padding, dilation=dilation, seed=1)
        want = to_numpy(ops.conv2d_forward(x, conv.weight.data, conv.bias.data, padding=padding, dilation=dilation))
        assert padding == "valid" or want.shape[2:] == (7, 8)
        np.testing.assert_array_equal(to_numpy(conv(x)), want)
        model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))
        y = model(x)
        np.testing.assert_array_equal(to_numpy(y), to_numpy(ops.max_pool2d_forward(on(backend, relu(want)), 2)[0]))
        model.backward(backend.xp.ones_like(y))  # the fused backward's shapes agree with the forward's
        assert f"padding={padding!r}" in repr(conv) and conv.config()["padding"] == padding
        checkpoint.save(tmp_path / padding, model, epoch=0)
        assert checkpoint.load(tmp_path / padding)[0].config() == model.config()
    with pytest.raises(ValueError, match=r"Conv2d: padding='same' needs stride 1, got stride \(2, 2\)"):
        nn.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match=r"Conv2d: padding must be an int, a pair of ints, 'same' or 'valid', got 'full'"):
        nn.Conv2d(1, 1, 3, padding="full")


def test_relu_then_max_pool_backward_is_the_unfused_result_bit_for_bit(backend):
    """Sequential applies ReLU's mask to the pooled gradient (pooled > 0) instead of running
    relu_backward on the full-size input: same bits, including ties, overlap, padding and NaN."""
    rng = np.random.default_rng(7)
    for kernel, stride, padding in [(2, None, 0), (3, 2, 1), (3, 1, 1)]:
        x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
        x[0, 0, :2, :2] = 0.0   # ties at zero
        x[1, 2, 3, 3] = np.nan  # NaN wins the pool and is masked by ReLU
        model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(kernel, stride, padding))
        xb = on(backend, x)
        y = model(xb)
        dy = on(backend, rng.standard_normal(tuple(y.shape)).astype(np.float32))
        fused = to_numpy(model.backward(dy))
        r = ops.relu_forward(xb)
        _, idx = ops.max_pool2d_forward(r, kernel, stride, padding)
        unfused = to_numpy(ops.relu_backward(ops.max_pool2d_backward(dy, idx, tuple(x.shape)), xb))
        assert fused.tobytes() == unfused.tobytes()


def test_a_torch_tensor_in_a_layer_is_taken_as_the_ops_take_it():
    # The layers compared its dtype (torch.float32) with theirs: "input is torch.float32 but the layer's
    # parameters are float32", where the ops read it as an array, or say how to pass one that requires grad.
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32)
    with fastconv.use_backend("cpu"):  # (a host backend: on cuda a CPU tensor is refused as host memory)
        for layer, sample, named in ((nn.Linear(3, 2, seed=0), x[:, :, 0, 0].copy(), "Linear"),
                                     (nn.Conv2d(3, 2, 3, seed=0), x, "Conv2d"), (nn.MaxPool2d(2), x, "MaxPool2d"),
                                     (nn.Sequential(nn.Conv2d(3, 2, 3, seed=0), nn.ReLU(), nn.MaxPool2d(2)), x, "Conv2d")):
            expected = layer(sample)
            got = layer(torch.from_numpy(sample))
            assert type(got) is np.ndarray and np.array_equal(got, expected)
            if layer.parameters():
                dx = layer.backward(np.ones_like(got))  # from the input the forward read
                assert type(dx) is np.ndarray and dx.shape == sample.shape
            with pytest.raises(TypeError, match=rf"^{named}\(.*: x must be an array, got a torch Tensor that "
                                                r"requires grad: pass x.detach\(\).numpy\(\)"):
                layer(torch.from_numpy(sample).requires_grad_())
        with pytest.raises(TypeError, match=r"Linear\(.*\): input is float64 but the layer's parameters are float32"):
            nn.Linear(3, 2)(torch.zeros(4, 3, dtype=torch.float64))
        # Flatten had returned the tensor itself (the only layer not to read it as an array)
        flat = nn.Flatten()(torch.from_numpy(x))
        assert type(flat) is np.ndarray and np.array_equal(flat, x.reshape(4, -1))
        # The losses had failed on its dtype: "'torch.dtype' object has no attribute 'kind'"
        logits, labels = torch.from_numpy(x[:, :, 0, 0].copy()), np.array([0, 1, 2, 1])
        ce = fastconv.losses.CrossEntropyLoss()
        assert float(ce(logits, labels)) == float(ce(logits.numpy(), labels))
        mse = fastconv.losses.MSELoss()
        assert float(mse(logits, np.zeros((4, 3), np.float32))) == pytest.approx(float(np.mean(logits.numpy() ** 2)))
        with pytest.raises(TypeError, match=r"^BCEWithLogitsLoss: the output must be an array, got a torch Tensor "
                                            r"that requires grad: pass the output.detach\(\).numpy\(\)"):
            fastconv.losses.BCEWithLogitsLoss()(logits.requires_grad_(), np.zeros((4, 3), np.float32))


def test_a_sequentials_layer_is_replaced_by_item_assignment():
    # Fine-tuning's new head: model[-1] = Linear(...) was a TypeError (no item assignment).
    model = nn.Sequential(nn.Linear(4, 8, seed=0), nn.ReLU(), nn.Linear(8, 3, seed=1))
    body = model[0]
    model[-1] = nn.Linear(8, 2, seed=2)
    assert model(np.zeros((5, 4), np.float32)).shape == (5, 2) and model[0] is body
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model.config()["layers"][2]["out_features"] == 2
    for index, layer, error in ((3, nn.ReLU(), IndexError), (-4, nn.ReLU(), IndexError), ("2", nn.ReLU(), TypeError),
                                (1, "relu", TypeError)):
        with pytest.raises(error, match="Sequential: "):
            model[index] = layer


def test_pooling_layers_take_torchs_other_options_in_their_default_form_only():
    # torch code passes them explicitly (MaxPool2d(3, 2, 1, dilation=1, ceil_mode=False)): the same layer
    # here, where they had been a TypeError naming _Pool2d.__init__; other values say what holds here.
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 7)).astype(np.float32)
    same = [(nn.MaxPool2d(3, 2, 1, dilation=1, return_indices=False, ceil_mode=False), nn.MaxPool2d(3, 2, 1)),
            (nn.MaxPool2d(3, 2, 1, (1, 1)), nn.MaxPool2d(3, 2, 1)),
            (nn.AvgPool2d(3, 1, 1, False, True, None), nn.AvgPool2d(3, 1, 1)),
            (nn.AvgPool2d(2, count_include_pad=True, divisor_override=None), nn.AvgPool2d(2)),
            (nn.AvgPool2d(2, ceil_mode=0, count_include_pad=1), nn.AvgPool2d(2))]  # (0/1 for bools, as torch takes)
    for explicit, plain in same:
        assert explicit.config() == plain.config() and np.array_equal(explicit(x), plain(x))
    for make, match in ((lambda: nn.MaxPool2d(2, dilation=(1, 2)), r"MaxPool2d: dilation=\(1, 2\) is not supported"),
                        (lambda: nn.MaxPool2d(2, dilation=True), r"MaxPool2d: dilation=True is not supported"),
                        (lambda: nn.MaxPool2d(2, return_indices=True), r"return_indices=True is not supported, only "
                         r"return_indices=False: the layer keeps its indices for backward"),
                        (lambda: nn.MaxPool2d(2, ceil_mode=1), r"ceil_mode=1 is not supported"),
                        (lambda: nn.AvgPool2d(2, divisor_override=4), r"AvgPool2d: divisor_override=4 is not supported")):
        with pytest.raises(ValueError, match=match):
            make()
    with pytest.raises(TypeError, match=r"MaxPool2d.__init__\(\) got an unexpected keyword argument 'count_include_pad'"):
        nn.MaxPool2d(2, count_include_pad=True)  # (an average's option: torch's MaxPool2d has none either)


@pytest.mark.parametrize("freeze_first", [False, True])
def test_backward_without_input_grad_gives_the_same_parameter_gradients(backend, freeze_first):
    """Sequential.backward(dy, input_grad=False) returns None, skips the layers in front of the first
    trainable one (and that one's dx), and leaves every parameter gradient bit for bit as it was."""
    rng = np.random.default_rng(3)
    x = on(backend, rng.standard_normal((3, 2, 6, 6)).astype(np.float32))

    def run(input_grad):
        model = nn.Sequential(nn.Flatten(), nn.Linear(18, 9, seed=1), nn.ReLU(), nn.Linear(9, 4, seed=2))
        conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, seed=3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(3, 2, 3, padding=1, seed=4), nn.ReLU())
        full = nn.Sequential(conv, model)
        if freeze_first:
            conv[0].freeze()
        y = full(x)
        dx = full.backward(on(backend, np.ones(tuple(y.shape), np.float32)), input_grad=input_grad)
        return dx, [None if p.grad is None else to_numpy(p.grad).tobytes() for p in full.parameters()]

    dx, grads = run(True)
    skipped, grads_skipped = run(False)
    assert dx is not None and dx.shape == x.shape
    assert skipped is None
    assert grads_skipped == grads
    assert (grads[0] is None) == freeze_first


def test_sequential_conv_pool_fusion_is_the_layers_one_by_one_bit_for_bit(backend):
    """Sequential runs Conv2d + ReLU + MaxPool2d and Conv2d + MaxPool2d as conv2d_max_pool2d ops: the
    output, the input gradient and every parameter gradient are those of the layers run one by one."""
    rng = np.random.default_rng(11)
    x = on(backend, rng.standard_normal((3, 2, 10, 10)).astype(np.float32))

    def layers():
        return [nn.Conv2d(2, 4, 3, padding=1, seed=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 3, seed=2),
                nn.MaxPool2d(3, stride=1, padding=1), nn.Flatten(), nn.Linear(27, 2, seed=3)]

    model = nn.Sequential(*layers())
    y = model(x)
    assert sorted(model._pooled_convs) == [2, 4]  # both pairs fused
    dy = on(backend, rng.standard_normal(tuple(y.shape)).astype(np.float32))
    dx = model.backward(dy)

    one_by_one = layers()
    h = x
    for layer in one_by_one:
        h = layer(h)
    g = dy
    for layer in reversed(one_by_one):
        g = layer.backward(g)
    assert to_numpy(y).tobytes() == to_numpy(h).tobytes()
    assert to_numpy(dx).tobytes() == to_numpy(g).tobytes()
    for fused, plain in zip(model.parameters(), [p for layer in one_by_one for p in layer.parameters()]):
        assert to_numpy(fused.grad).tobytes() == to_numpy(plain.grad).tobytes(), fused.name


def test_layers_of_a_fused_conv_pool_say_what_they_can_do_alone(backend):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, seed=1), nn.ReLU(), nn.MaxPool2d(2))
    x = on(backend, np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32))
    y = model(x)
    dy = on(backend, np.ones(tuple(y.shape), np.float32))
    # the pooling's own backward still works: its input (the ReLU's output) had shape (2, 3, 6, 6)
    assert tuple(model[2].backward(dy).shape) == (2, 3, 6, 6)
    with pytest.raises(RuntimeError, match="fused with the Conv2d before it"):
        model[1].backward(dy)


@pytest.mark.parametrize("shared", ["linear", "relu"])
def test_backward_refuses_a_layer_object_used_at_two_places(shared):
    """Each layer caches its latest forward's input: with one object at two places the earlier place's
    backward used the later one's input (Linear: dW wrong by O(1), silently). Tied weights (shared
    Parameters, one layer object per place) stay correct."""
    lin, relu = nn.Linear(4, 4, dtype=np.float64, seed=0), nn.ReLU()
    model = (nn.Sequential(lin, nn.ReLU(), lin) if shared == "linear"
             else nn.Sequential(nn.Linear(4, 4, dtype=np.float64), relu, nn.Linear(4, 4, dtype=np.float64), relu))
    x = np.random.default_rng(0).standard_normal((3, 4))
    y = model(x)  # the forward is right
    with pytest.raises(RuntimeError, match=r"layer '2' is layer '0' again|layer '3' is layer '1' again"):
        model.backward(np.ones_like(y))

    first, second = nn.Linear(4, 4, dtype=np.float64, seed=0), nn.Linear(4, 4, dtype=np.float64, seed=1)
    second.weight, second.bias = first.weight, first.bias
    tied = nn.Sequential(first, nn.ReLU(), second)
    y = tied(x)
    tied.backward(np.ones_like(y))
    w, b = first.weight.data, first.bias.data
    h = np.maximum(x @ w.T + b, 0)
    dh = (np.ones_like(y) @ w) * (h > 0)
    np.testing.assert_allclose(first.weight.grad, np.ones_like(y).T @ h + dh.T @ x, rtol=1e-12)


def test_relu_backward_after_an_unfused_forward_that_followed_a_fused_one(backend):
    """A ReLU that ran fused into a conv + pool, then on its own (the layers one by one, as when
    inspecting activations), backpropagates from its own input: the earlier fusion leaves no mark."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, seed=0), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(18, 1, seed=1))
    x = on(backend, np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype(np.float32))
    y = model(x)
    fused_dx = to_numpy(model.backward(on(backend, np.ones(tuple(y.shape), np.float32))))
    h = x
    for layer in model:
        h = layer(h)
    g = on(backend, np.ones(tuple(h.shape), np.float32))
    for layer in reversed(list(model)):
        g = layer.backward(g)
    assert to_numpy(g).tobytes() == fused_dx.tobytes()


def test_assigning_an_array_to_a_parameter_or_a_submodule_is_refused():
    """As torch: layer.weight = array silently unregistered the weight (no longer in parameters(),
    state_dict() or a checkpoint, so never trained nor saved) while forward still used the array."""
    layer = nn.Linear(3, 2, seed=0)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        layer.weight = np.ones((2, 3), np.float32)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    model = nn.Sequential(nn.Linear(3, 2, seed=0))

    class Wrapper(nn.Module):
        def __init__(self):
            self.body = model

    wrapper = Wrapper()
    with pytest.raises(TypeError, match="submodule 'body'"):
        wrapper.body = 3
    assert len(wrapper.parameters()) == 2
    layer.bias = None  # None stays allowed: a layer without bias
    assert [n for n, _ in layer.named_parameters()] == ["weight"]


def test_a_replaced_parameter_keeps_its_place():
    """layer.weight = Parameter(...) (new weights, or tying to another layer's) moved the weight
    after the bias: named_parameters() and state_dict() came out of torch's order, and an optimizer
    built afterwards numbered the parameters unlike one built on a fresh model, so its saved state
    did not load into the same architecture."""
    first, second = nn.Linear(3, 3, seed=0), nn.Linear(3, 3, seed=1)
    second.weight = first.weight
    model = nn.Sequential(first, nn.ReLU(), second)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [p.shape for p in model.parameters()] == [(3, 3), (3,), (3,)]


def test_a_custom_first_layer_that_takes_input_grad_is_told_nobody_reads_it():
    # fit told such a layer (as the whole model) input_grad=False by its signature; Sequential, as
    # its first layer, only the built-in layers: one rule now, for both.
    seen = []

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(np.ones(1, np.float32))  # trainable: its backward must run

        def forward(self, x):
            return x * 2

        def backward(self, dy, input_grad=True):
            seen.append(input_grad)
            return dy * 2 if input_grad else None

    model = nn.Sequential(Scale(), nn.Linear(3, 2, seed=0))
    model(np.ones((4, 3), np.float32))
    model.backward(np.ones((4, 2), np.float32), input_grad=False)
    model(np.ones((4, 3), np.float32))
    model.backward(np.ones((4, 2), np.float32))
    assert seen == [False, True]


def test_backward_without_input_grad_keeps_no_module_alive_and_takes_any_callable():
    # Its signature cache (functools.lru_cache) held every backward function it saw for good: a
    # backward made per module, a closure over it, kept that module (its parameters, its cached
    # input) alive after the last reference to it; and a backward that is a callable object
    # without a hash raised TypeError (unhashable type).
    import gc
    import weakref

    class PerModuleBackward(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(3, 2, seed=0)
            self.backward = lambda dy, input_grad=True: self.inner.backward(dy, input_grad=input_grad)

        def forward(self, x):
            return self.inner(x)

    module = PerModuleBackward()
    module(np.ones((4, 3), np.float32))
    nn.backward_without_input_grad(module, np.ones((4, 2), np.float32))
    assert module.inner.weight.grad is not None
    gone = weakref.ref(module)
    del module
    gc.collect()
    assert gone() is None, "the module outlived its last reference"

    class Unhashable:
        __hash__ = None
        seen = []

        def __call__(self, dy, input_grad=True):
            self.seen.append(input_grad)

    custom = nn.Module()
    custom.backward = Unhashable()
    nn.backward_without_input_grad(custom, None)
    assert Unhashable.seen == [False]


def test_help_on_module_methods_shows_a_docstring_not_a_section_comment():
    """help(nn.Module.forward) showed the "# --- computation ---" comment above it (pydoc shows the
    comments before a function without a docstring)."""
    import pydoc

    for method in (nn.Module.forward, nn.Module.backward, nn.Module._args):
        text = pydoc.render_doc(method, renderer=pydoc.plaintext)
        assert "# ---" not in text and method.__doc__, text


def test_the_dtype_message_says_how_to_cast_this_kind_of_input():
    """The advice was x.astype(float32) for every input: a torch tensor has no astype."""
    torch = pytest.importorskip("torch")
    x = np.zeros((2, 4))  # float64, for a float32 layer
    with fastconv.use_backend("cpu"):  # (a host backend: on cuda a CPU tensor is refused as host memory)
        for given, advice in ((torch.from_numpy(x), "x.to(torch.float32)"), (x, "x.astype(np.float32)"),
                              (memoryview(x), "np.asarray(x, dtype=np.float32)")):
            with pytest.raises(TypeError, match=r"input is float64 but the layer's parameters are float32; cast the "
                                                rf"input \({re.escape(advice)}\)$"):
                nn.Linear(4, 3)(given)
        with pytest.raises(TypeError, match=re.escape("cast the input (x.to(torch.float64))")):
            nn.Linear(4, 3, dtype=np.float64)(torch.zeros(2, 4))


@pytest.mark.parametrize("training", [True, False])
def test_dropout_and_flatten_backward_refuse_a_dy_of_another_shape(training):
    # Dropout's dy * mask broadcast a (1, 3) or (5, 4, 3) dy to a wrong gradient; Flatten reshaped any dy
    # of the right size (a flat one) and gave NumPy's error for others.
    x = np.ones((4, 3), np.float32)
    drop = nn.Dropout(0.5, seed=0)
    drop.train(training)
    drop(x)
    for bad in (np.ones((1, 3), np.float32), np.ones((5, 4, 3), np.float32), np.ones(3, np.float32), [1.0]):
        with pytest.raises(ValueError, match=r"Dropout\(p=0\.5\)\.backward: dy must have the shape of the last "
                                             r"forward's output, \(4, 3\); got "):
            drop.backward(bad)
    assert drop.backward(np.ones((4, 3), np.float32)).shape == (4, 3)
    flat = nn.Flatten()
    flat(np.ones((2, 3, 4), np.float32))
    for bad in (np.ones(24, np.float32), np.ones((2, 13), np.float32), np.ones((3, 8), np.float32)):
        with pytest.raises(ValueError, match=r"Flatten\(\)\.backward: dy must have the shape of the last forward's "
                                             r"output, \(2, 12\); got \("):
            flat.backward(bad)
    assert flat.backward(np.ones((2, 12), np.float32)).shape == (2, 3, 4)


def test_load_state_dict_takes_arrays_whose_flags_say_nothing_of_writeable():
    # CuPy's ndarray.flags has c_contiguous, f_contiguous and owndata only: the read-only check
    # (flags.writeable) was an AttributeError on every load on the cuda backend.
    class Flags:
        c_contiguous, f_contiguous, owndata = True, False, True

    class CupyLike(np.ndarray):
        @property
        def flags(self):
            return Flags()

    model = nn.Linear(3, 2)
    for _, p in model.named_parameters():
        p.data = p.data.view(CupyLike)
    state = {k: np.full(np.shape(v), 0.5, np.float32) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    np.testing.assert_array_equal(np.asarray(model.weight.data), 0.5)


@pytest.mark.parametrize("dtype, kind", [(np.int64, "integer dtype "), (np.bool_, "boolean dtype "), (np.float16, "")])
def test_dropout_refuses_what_is_not_float32_or_float64(dtype, kind):
    # An integer input took the mask in its own dtype: the scale 1 / (1 - p) became 1 (values {0, 4}
    # where float gives {0, 5.33}); bool gave bool. Every other layer refuses these dtypes.
    layer = nn.Dropout(0.25, seed=0)
    for mode in (layer.train, layer.eval):
        mode()
        with pytest.raises(TypeError, match=rf"Dropout\(p=0.25\): x must be float32 or float64, got {kind}"
                                            rf"{np.dtype(dtype)}$"):
            layer(np.ones(8, dtype))


def test_flatten_refuses_an_input_without_its_batch_axis():
    # (64,) came out (64, 1): one sample taken for 64 samples of one feature.
    with pytest.raises(ValueError, match=r"Flatten\(\): expected input of shape \(N, d1, \.\.\.\), a row per sample, "
                                         r"got \(64,\) \(one sample\? give it a batch axis: x\[None\]\)"):
        nn.Flatten()(np.zeros(64, np.float32))
    with pytest.raises(ValueError, match=r"got \(\)$"):
        nn.Flatten()(np.zeros((), np.float32))
    assert nn.Flatten()(np.zeros((3, 2, 2), np.float32)).shape == (3, 4)


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.Sigmoid(), nn.MaxPool2d(2), nn.AvgPool2d(2)], ids=repr)
def test_an_activations_or_poolings_refusals_name_the_layer(layer):
    # The ops' messages ("x must be float32 or float64") named no layer; Linear and Conv2d's did.
    name = re.escape(repr(layer))
    with pytest.raises(TypeError, match=rf"^{name}: x must be float32 or float64, got integer dtype int32"):
        layer(np.zeros((1, 1, 4, 4), np.int32))
    layer(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(TypeError, match=rf"^{name}: .*float16"):
        layer.backward(np.zeros((1, 1, 2, 2) if "Pool" in repr(layer) else (1, 1, 4, 4), np.float16))


def test_a_fused_conv_and_pool_refusal_names_the_layer_at_fault():
    # The fused op's message named conv2d_max_pool2d_forward and the convolution's output as "input".
    x = np.zeros((1, 1, 3, 3), np.float32)
    for activation in ([], [nn.ReLU()]):
        pool = nn.MaxPool2d(2)
        with pytest.raises(ValueError, match=rf"^{re.escape(repr(pool))}: max_pool2d_forward: kernel_size \(2, 2\) is "
                                             r"larger than the padded input \(1, 1\) \(input \(1, 1, 1, 1\)"):
            nn.Sequential(nn.Conv2d(1, 1, 3), *activation, pool)(x)
    conv = nn.Conv2d(1, 1, 5)
    with pytest.raises(ValueError, match=rf"^{re.escape(repr(conv))}: conv2d_max_pool2d_forward: no output"):
        nn.Sequential(conv, nn.MaxPool2d(2))(x)
    with pytest.raises(ValueError, match=rf"^{re.escape(repr(conv))}: conv2d: no output"):
        conv(x)
