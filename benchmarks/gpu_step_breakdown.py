"""Where the reference training step's time goes on the GPU: each op of the LeNet-style step at
its real shapes, timed alone with CUDA events (median), beside PyTorch's op where there is one;
then the whole step. Run on the cuda backend:  python benchmarks/gpu_step_breakdown.py

`--variant` names in-run A/B switches, so that a change and its predecessor are timed on the same
card in the same process: `no-split-k` (the GEMM never splits K), `slices64` (conv weight-gradient
slices capped at 64, the earlier setting), `global-pool-bwd` (the max-pool backward's global bounds
path for every plane, as before the per-plane kernel).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import ops  # noqa: E402

import bench_train_step  # noqa: E402
from harness import measure, measure_torch_cuda, torch_peer  # noqa: E402


def _override(be, name, fn):
    """be.ext with one function replaced (the extension module itself is read-only)."""
    ext = be.ext

    class Patched:
        def __getattr__(self, attr):
            return fn if attr == name else getattr(ext, attr)

    be.ext = Patched()


def _apply(variant: str, be):
    if variant == "no-split-k":
        _override(be, "gemm_splits", lambda m, n, k, tile: 1)
    elif variant == "global-pool-bwd":  # the max-pool backward before the per-plane kernel
        _override(be, "max_pool2d_plane_fits", lambda *args: False)
    elif variant == "slices64":
        slices = be.ext.conv2d_backward_weight_slices
        _override(be, "conv2d_backward_weight_slices", lambda shape, bias: min(64, slices(shape, bias)))


def ops_table(be, torch):
    xp = be.xp
    rng = np.random.default_rng(0)
    r = lambda *s: xp.asarray(rng.standard_normal(s, dtype=np.float32))  # noqa: E731
    N = bench_train_step.BATCH
    x, w1, b1 = r(N, 1, 28, 28), r(32, 1, 3, 3), r(32)
    h1, w2, b2 = r(N, 32, 14, 14), r(64, 32, 3, 3), r(64)
    dy1, dy2 = r(N, 32, 28, 28), r(N, 64, 14, 14)
    f, wl1, bl1, dl1 = r(N, 3136), r(128, 3136), r(128), r(N, 128)
    wl2, bl2, dl2 = r(10, 128), r(10), r(N, 10)
    labels = xp.asarray(rng.integers(0, 10, N))
    p1, i1 = ops.max_pool2d_forward(dy1, 2)
    p2, i2 = ops.max_pool2d_forward(dy2, 2)
    cases = [
        ("conv1 fwd+relu", lambda: ops.conv2d_forward(x, w1, b1, padding=1, activation="relu"),
         lambda T: T.nn.functional.conv2d(T.x, T.w1, T.b1, padding=1).relu_()),
        ("conv1 bwd (dw, db)", lambda: ops.conv2d_backward(dy1, x, w1, padding=1, input_grad=False),
         lambda T: (T.nn.grad.conv2d_weight(T.x, T.w1.shape, T.dy1, padding=1), T.dy1.sum((0, 2, 3)))),
        ("pool1 fwd", lambda: ops.max_pool2d_forward(dy1, 2), lambda T: T.nn.functional.max_pool2d(T.dy1, 2)),
        ("pool1 bwd", lambda: ops.max_pool2d_backward(p1, i1, dy1.shape, check_indices=False),
         lambda T: T.aten.max_pool2d_with_indices_backward(T.tp1, T.dy1, [2, 2], [2, 2], [0, 0], [1, 1], False, T.ti1)),
        ("pool1 bwd, indices checked", lambda: ops.max_pool2d_backward(p1, i1, dy1.shape), None),
        ("conv2 fwd+relu", lambda: ops.conv2d_forward(h1, w2, b2, padding=1, activation="relu"),
         lambda T: T.nn.functional.conv2d(T.h1, T.w2, T.b2, padding=1).relu_()),
        ("conv2 bwd (dx, dw, db)", lambda: ops.conv2d_backward(dy2, h1, w2, padding=1),
         lambda T: (T.nn.grad.conv2d_input(T.h1.shape, T.w2, T.dy2, padding=1),
                    T.nn.grad.conv2d_weight(T.h1, T.w2.shape, T.dy2, padding=1), T.dy2.sum((0, 2, 3)))),
        ("pool2 bwd", lambda: ops.max_pool2d_backward(p2, i2, dy2.shape, check_indices=False),
         lambda T: T.aten.max_pool2d_with_indices_backward(T.tp2, T.dy2, [2, 2], [2, 2], [0, 0], [1, 1], False, T.ti2)),
        ("linear1 fwd+relu 3136->128", lambda: ops.linear_forward(f, wl1, bl1, activation="relu"),
         lambda T: T.nn.functional.linear(T.f, T.wl1, T.bl1).relu_()),
        ("linear1 bwd", lambda: ops.linear_backward(dl1, f, wl1),
         lambda T: (T.dl1 @ T.wl1, T.dl1.T @ T.f, T.dl1.sum(0))),
        ("linear2 fwd 128->10", lambda: ops.linear_forward(dl1, wl2, bl2), lambda T: T.nn.functional.linear(T.dl1, T.wl2, T.bl2)),
        ("linear2 bwd", lambda: ops.linear_backward(dl2, dl1, wl2), lambda T: (T.dl2 @ T.wl2, T.dl2.T @ T.dl1, T.dl2.sum(0))),
        ("cross-entropy fused fwd+bwd", lambda: ops.softmax_cross_entropy_with_grad(dl2, labels),
         lambda T: T.torch.autograd.grad(T.nn.functional.cross_entropy(T.logits, T.labels), T.logits)),
    ]

    class TorchInputs:  # the same arrays, as torch tensors (zero-copy)
        pass

    T = TorchInputs()
    if torch is not None:
        T.nn = torch.nn
        for name, value in dict(x=x, w1=w1, b1=b1, h1=h1, w2=w2, b2=b2, dy1=dy1, dy2=dy2, f=f, wl1=wl1, bl1=bl1,
                                dl1=dl1, wl2=wl2, bl2=bl2, dl2=dl2).items():
            setattr(T, name, torch.as_tensor(value, device="cuda"))
        T.torch, T.aten = torch, torch.ops.aten
        T.tp1, T.ti1 = torch.nn.functional.max_pool2d(T.dy1, 2, return_indices=True)
        T.tp2, T.ti2 = torch.nn.functional.max_pool2d(T.dy2, 2, return_indices=True)
        T.logits = T.dl2.clone().requires_grad_()
        T.labels = torch.as_tensor(labels, device="cuda")
    total = 0.0
    for name, ours, theirs in cases:
        try:
            t = measure(ours, device="cuda", repeats=30).median_s
            total += 0 if "checked" in name else t  # that row is the step's pool1 bwd again, with the old check
            line = f"  {name:28s} {t * 1e6:9.1f} us"
            if torch is not None and theirs is not None:
                tt = measure_torch_cuda(lambda: theirs(T), repeats=30).median_s
                line += f"   torch {tt * 1e6:9.1f} us  (x{tt / t:5.2f})"
        except Exception as exc:  # one failing case must not hide the others' numbers
            line = f"  {name:28s} failed: {type(exc).__name__}: {exc}"
        print(line, flush=True)
    print(f"  {'sum of the ops above':28s} {total * 1e6:9.1f} us")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="current", choices=("current", "no-split-k", "slices64", "global-pool-bwd"),
                        help="an A/B switch (see above); 'current' runs the code as it is")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the host side of 50 steps (cProfile, by own and by cumulative time): what the "
                             "CPU spends issuing the step's kernels")
    args = parser.parse_args(argv)
    torch, _, _ = torch_peer("cuda")
    with fastconv.use_backend("cuda") as be:
        _apply(args.variant, be)
        print(f"variant: {args.variant}  ({be.ext.device_name(0)})")
        ops_table(be, torch)
        step = measure(bench_train_step.fastconv_step("cuda"), device="cuda", repeats=30)
        line = f"  {'whole training step':28s} {step.median_s * 1e6:9.1f} us"
        if torch is not None:
            theirs = measure_torch_cuda(bench_train_step.torch_step(torch, "cuda"), repeats=30)
            line += f"   torch {theirs.median_s * 1e6:9.1f} us  (x{theirs.median_s / step.median_s:5.2f})"
        print(line)
        if args.profile:
            _profile_host(bench_train_step.fastconv_step("cuda"), be)
    return 0


def _profile_host(step, be, steps=50):
    """Host time per step while the GPU keeps up: wall time of `steps` steps without a final sync
    (the step's one sync, the labels' range check, still waits for the forward), then the profile."""
    import cProfile
    import pstats
    import time

    for _ in range(5):
        step()
    be.xp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    issued = time.perf_counter() - t0
    be.xp.cuda.Device().synchronize()
    done = time.perf_counter() - t0
    print(f"  host: {issued / steps * 1e6:.1f} us per step issued, {done / steps * 1e6:.1f} us per step done")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(steps):
        step()
    be.xp.cuda.Device().synchronize()
    profile.disable()
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    raise SystemExit(main())
