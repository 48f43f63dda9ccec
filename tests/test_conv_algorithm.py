"""The convolution's `algorithm` ("auto" or "direct"): a layer's choice of how it is computed.

"direct" must keep a layer the cpu backend would take by Winograd on the direct kernel, in every
op that computes a convolution (forward, backward, both fused with max pooling), with exactly the
bits FASTCONV_WINOGRAD=0 gives; "auto" must still take Winograd; nn.Conv2d passes its choice to
each op; the choice is in the config only when it is not "auto", and checkpoints load across it.
The native backends have one algorithm: there "direct" gives the bits of "auto"."""
import numpy as np
import pytest

import fastconv
from fastconv import checkpoint, nn, ops
from fastconv._cpu import _vecmath, conv
from fastconv._cpu.conv import _winograd
from helpers import on, to_numpy

needs_winograd = pytest.mark.skipif(not _vecmath.SIMD, reason="Winograd needs AVX-512F or AVX2 with FMA (or FASTCONV_SIMD=0)")

X_SHAPE, C_OUT = (3, 16, 10, 10), 32  # a layer the cpu backend takes by Winograd (3x3, >= 16 channels)


def _layer(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(X_SHAPE).astype(np.float32)
    w = (rng.standard_normal((C_OUT, X_SHAPE[1], 3, 3)) / 12).astype(np.float32)
    return x, w, rng.standard_normal(C_OUT).astype(np.float32)


def _spy_on_winograd(monkeypatch):
    """Counts the Winograd forward and weight-gradient kernels' calls from now on (with Winograd on,
    whatever FASTCONV_WINOGRAD says)."""
    monkeypatch.setattr(conv, "WINOGRAD", True)
    calls = []
    for name in ("_forward_winograd", "_weight_grad_winograd", "_weight_grad_winograd_planes"):
        kernel = getattr(_winograd, name)
        monkeypatch.setattr(_winograd, name, lambda *args, _k=kernel, _n=name: (calls.append(_n), _k(*args))[1])
    return calls


def _every_op(be, x, w, b, algorithm):
    """Each op that computes this convolution (padding 1, relu, 2x2 max pooling): its outputs on the host."""
    x, w, b = on(be, x, w, b)
    y = ops.conv2d_forward(x, w, b, padding=1, activation="relu", algorithm=algorithm)
    dy = on(be, np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
    grads = ops.conv2d_backward(dy, x, w, padding=1, algorithm=algorithm)
    pooled, indices = ops.conv2d_max_pool2d_forward(x, w, b, padding=1, activation="relu", pool_kernel=2,
                                                    algorithm=algorithm)
    dp = on(be, np.random.default_rng(2).standard_normal(pooled.shape).astype(np.float32))
    pool_grads = ops.conv2d_max_pool2d_backward(dp, pooled, indices, x, w, padding=1, activation="relu",
                                                algorithm=algorithm)
    return [to_numpy(a) for a in (y, *grads, pooled, indices, *pool_grads)]


def _assert_same_bits(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert np.array_equal(u.view(np.uint8), v.view(np.uint8))


@needs_winograd
def test_direct_keeps_every_op_off_winograd(monkeypatch):
    x, w, b = _layer()
    with fastconv.use_backend("cpu") as be:
        calls = _spy_on_winograd(monkeypatch)
        direct = _every_op(be, x, w, b, "direct")
        assert calls == []
        monkeypatch.setattr(conv, "WINOGRAD", False)
        _assert_same_bits(direct, _every_op(be, x, w, b, "auto"))


@needs_winograd
def test_auto_takes_winograd_and_rounds_differently(monkeypatch):
    x, w, b = _layer()
    with fastconv.use_backend("cpu") as be:
        calls = _spy_on_winograd(monkeypatch)
        auto = _every_op(be, x, w, b, "auto")
        # the forward, the backward's dx (a forward of dy), the fused forward, the fused backward's dx
        assert calls.count("_forward_winograd") == 4 and calls.count("_weight_grad_winograd") == 2
        direct = _every_op(be, x, w, b, "direct")
    assert not np.array_equal(auto[0], direct[0])  # two algorithms, or the test above proves nothing
    for u, v in zip(auto, direct):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4)


@needs_winograd
@pytest.mark.parametrize("fused", [False, True], ids=["alone", "fused-with-pool"])
def test_conv2d_layer_passes_its_algorithm(monkeypatch, fused):
    x, _, _ = _layer(3)
    layers = [nn.Conv2d(16, C_OUT, 3, padding=1, algorithm="direct", seed=4), nn.ReLU()]
    if fused:
        layers.append(nn.MaxPool2d(2))
    model = nn.Sequential(*layers)
    with fastconv.use_backend("cpu"):
        calls = _spy_on_winograd(monkeypatch)
        y = model(x)
        dx = model.backward(np.ones_like(y))
        assert calls == []
        model[0].algorithm = "auto"
        model.zero_grad()
        y_auto = model(x)
        model.backward(np.ones_like(y_auto))
        assert "_forward_winograd" in calls and "_weight_grad_winograd" in calls
    assert dx.shape == x.shape


def test_config_names_the_algorithm_only_when_not_auto():
    assert "algorithm" not in nn.Conv2d(2, 3, 3).config()  # configs of older checkpoints stay equal
    config = nn.Conv2d(2, 3, 3, algorithm="direct").config()
    assert config["algorithm"] == "direct"
    assert nn.from_config(config).algorithm == "direct"
    assert nn.from_config({k: v for k, v in config.items() if k != "algorithm"}).algorithm == "auto"
    assert "algorithm='direct'" in repr(nn.Conv2d(2, 3, 3, algorithm="direct"))
    layer = nn.Conv2d(2, 3, 3)
    with pytest.raises(ValueError, match="Conv2d: algorithm must be one of 'auto', 'direct', got 'fast'"):
        layer.algorithm = "fast"
    assert layer.algorithm == "auto"


@pytest.mark.parametrize("saved, loaded", [("auto", "direct"), ("direct", "auto")])
def test_checkpoints_load_across_algorithms(tmp_path, saved, loaded):
    def model(algorithm, seed):
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, algorithm=algorithm, seed=seed), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1, algorithm=algorithm, seed=seed + 1), nn.Flatten(),
                             nn.Linear(16 * 4 * 4, 2, seed=seed + 2))

    source = model(saved, 5)
    checkpoint.save(tmp_path / "ck", source, epoch=1)
    target = model(loaded, 8)  # other weights: equal after the load only if it brought the source's
    checkpoint.load_into(tmp_path / "ck", target)
    for p, q in zip(source.parameters(), target.parameters()):
        assert np.array_equal(p.data, q.data)
    rebuilt, _ = checkpoint.load(tmp_path / "ck")
    assert rebuilt[2].algorithm == saved
    with pytest.raises(checkpoint.CheckpointError, match="another architecture"):
        checkpoint.load_into(tmp_path / "ck", nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, algorithm=loaded),
                                                              nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1),
                                                              nn.Flatten(), nn.Linear(8 * 4 * 4, 2)))


def test_native_backends_have_one_algorithm(native_backend):
    x, w, b = _layer(8)
    x = x[:1, :, :6, :6]  # small: the emulator runs every thread of the kernels
    _assert_same_bits(_every_op(native_backend, x, w, b, "direct"), _every_op(native_backend, x, w, b, "auto"))
