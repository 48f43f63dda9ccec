"""Import plus the first call of every public op, in fresh processes: once with an empty Numba
cache (every kernel compiled) and once more with the cache that run left (the target: <= 10 s).

    python benchmarks/bench_first_call.py            # cpu backend, a temporary cache directory

Each op is called once on small float32 inputs (the kernels a training step uses first); the
child prints the seconds from before `import fastconv` to after the last call.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time


def _every_op():
    import numpy as np

    import fastconv
    from fastconv import ops

    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, w, b = r(4, 6), r(5, 6), r(5)
    ops.matmul(x, w, trans_b=True)
    ops.matmul(r(128, 128), r(128, 128))  # past dense._by_gemm32: gemm32 through the threads
    y = ops.linear_forward(x, w, b, activation="relu")
    ops.linear_backward(y, x, w)
    ops.relu_backward(ops.relu_forward(x), x)
    ops.sigmoid_backward(x, ops.sigmoid_forward(x))
    img, k = r(2, 3, 8, 8), r(4, 3, 3, 3)
    out = ops.conv2d_forward(img, k, r(4), padding=1, activation="relu")
    ops.conv2d_backward(out, img, k, padding=1)
    ops.conv2d_forward(img, k, stride=2)
    pooled, idx = ops.conv2d_max_pool2d_forward(img, k, r(4), padding=1, activation="relu", pool_kernel=2)
    ops.conv2d_max_pool2d_backward(pooled, pooled, idx, img, k, padding=1, activation="relu")
    p, i = ops.max_pool2d_forward(img, 2)
    ops.max_pool2d_backward(p, i, img.shape)
    a = ops.avg_pool2d_forward(img, 2)
    ops.avg_pool2d_backward(a, img.shape, 2)
    logits, labels = r(6, 5), rng.integers(0, 5, 6)
    _, probs = ops.softmax_cross_entropy_forward(logits, labels)
    ops.softmax_cross_entropy_backward(probs, labels)
    ops.softmax_cross_entropy_with_grad(logits, labels)
    t = (r(6, 5) > 0).astype(np.float32)
    ops.bce_with_logits_forward(logits, t)
    ops.bce_with_logits_backward(logits, t)
    ops.mse_forward(logits, t)
    ops.mse_backward(logits, t)
    param, grad = r(10), r(10)
    ops.sgd_step(param, grad, np.zeros_like(param), lr=0.1, momentum=0.9)
    ops.sgd_step_foreach([param], [grad], [np.zeros_like(param)], lr=0.1, momentum=0.9)
    ops.adam_step(param, grad, np.zeros_like(param), np.zeros_like(param), 1, lr=1e-3)
    return fastconv.get_backend()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # (the timed process)
    if parser.parse_args().child:
        start = time.perf_counter()
        backend = _every_op()
        print(f"{time.perf_counter() - start:.2f} {backend}")
        return
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, FASTCONV_BACKEND=os.environ.get("FASTCONV_BACKEND", "cpu"))
        for label in ("empty cache", "warm cache", "warm cache"):
            out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            print(f"import + first call of every op, {label}: {out[0]} s (backend {out[1]})")


if __name__ == "__main__":
    main()
