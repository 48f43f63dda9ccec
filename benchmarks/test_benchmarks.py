"""pytest-benchmark suite for the per-op kernels on the current backend (not part of the default
test run): `python -m pytest benchmarks/test_benchmarks.py --benchmark-only`."""
import numpy as np
import pytest

import fastconv
from fastconv import ops

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def be():
    return fastconv.backend.current()


@pytest.fixture(scope="module")
def data(be):
    rng = np.random.default_rng(0)
    xp = be.xp
    arr = lambda *shape: xp.asarray(rng.standard_normal(shape, dtype=np.float32))  # noqa: E731
    return {
        "a": arr(1024, 1024), "b": arr(1024, 1024),
        "x": arr(128, 3136), "w": arr(128, 3136), "bias": arr(128),
        "img": arr(128, 32, 14, 14), "kernel": arr(64, 32, 3, 3),
        "vec": arr(2**22), "logits": arr(4096, 1000), "labels": xp.asarray(rng.integers(0, 1000, 4096)),
    }


def test_matmul(benchmark, data):
    benchmark(ops.matmul, data["a"], data["b"])


def test_linear_relu(benchmark, data):
    benchmark(ops.linear_forward, data["x"], data["w"], data["bias"], "relu")


def test_linear_backward(benchmark, data):
    dy = ops.linear_forward(data["x"], data["w"], data["bias"])
    benchmark(ops.linear_backward, dy, data["x"], data["w"])


def test_conv2d_forward(benchmark, data):
    benchmark(ops.conv2d_forward, data["img"], data["kernel"], None, 1, 1)


def test_conv2d_backward(benchmark, data):
    dy = ops.conv2d_forward(data["img"], data["kernel"], None, 1, 1)
    benchmark(ops.conv2d_backward, dy, data["img"], data["kernel"], 1, 1)


def test_max_pool(benchmark, data):
    benchmark(ops.max_pool2d_forward, data["img"], 2)


def test_relu(benchmark, data):
    benchmark(ops.relu_forward, data["vec"])


def test_sigmoid(benchmark, data):
    benchmark(ops.sigmoid_forward, data["vec"])


def test_cross_entropy(benchmark, data):
    def run():
        _, probs = ops.softmax_cross_entropy_forward(data["logits"], data["labels"])
        return ops.softmax_cross_entropy_backward(probs, data["labels"])

    benchmark(run)


def test_adam_step(benchmark, data, be):
    p, g = data["vec"].copy(), data["vec"]
    m, v = be.xp.zeros_like(p), be.xp.zeros_like(p)
    benchmark(lambda: ops.adam_step(p, g, m, v, 1, lr=1e-3))
