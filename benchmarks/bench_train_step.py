"""The reference training step: the LeNet-style CNN on 28x28 inputs at batch 128 — forward,
backward and SGD-with-momentum update — in images/s, against PyTorch eager on the same thread
count; plus each framework's peak memory for the step (measured in a fresh subprocess each)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import fastconv

from harness import Row, measure, measure_torch_cuda, torch_or_none

BATCH = 128


def fastconv_model(seed=0):
    from fastconv import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, seed=seed), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, seed=seed + 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128, seed=seed + 2), nn.ReLU(), nn.Linear(128, 10, seed=seed + 3))


def fastconv_step(device):
    """A closure running one training step on `device`'s backend."""
    from fastconv import losses, optim

    be = fastconv.backend.load(device)
    with fastconv.use_backend(device):
        model = fastconv_model()
        loss_fn = losses.CrossEntropyLoss()
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = be.xp.asarray(rng.standard_normal((BATCH, 1, 28, 28), dtype=np.float32))
    y = be.xp.asarray(rng.integers(0, 10, BATCH))

    def step():
        with fastconv.use_backend(device):
            opt.zero_grad()
            out = model(x)
            loss_fn(out, y)
            model.backward(loss_fn.backward(), input_grad=False)  # as torch: x needs no grad
            opt.step()

    return step


def torch_step(torch, device):
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(BATCH, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


_PEAK_SCRIPT = r"""
import resource, sys, json
sys.path.insert(0, {bench_dir!r})
which, device = sys.argv[1], sys.argv[2]
if which == "torch":
    import torch, numba
    torch.set_num_threads(numba.get_num_threads())
    import bench_train_step as b
    step = b.torch_step(torch, device)
else:
    import bench_train_step as b
    step = b.fastconv_step(device)
step()  # compile / first-call allocations before the baseline
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current resident size
base = status("VmRSS:")
for _ in range(5):
    step()
peak = status("VmHWM:")
print(json.dumps({{"baseline_mib": base, "peak_mib": peak}}))
"""


def peak_memory(which: str, device: str) -> dict:
    """Resident memory (MiB) of a fresh process running the step: after imports and one step
    (baseline), and the peak while running five more (Linux: VmHWM, reset via clear_refs)."""
    script = _PEAK_SCRIPT.format(bench_dir=str(Path(__file__).resolve().parent))
    out = subprocess.run([sys.executable, "-c", script, which, device], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cases(device: str, ceilings: dict) -> list:
    torch = torch_or_none()
    peers = {}
    if torch is not None:
        tdev = "cuda" if device == "cuda" else "cpu"
        peers["torch"] = (measure_torch_cuda if device == "cuda" else measure)(torch_step(torch, tdev), repeats=10)
    row = Row("train_step", f"LeNet-style CNN, batch {BATCH}, SGD momentum", "images/s", BATCH,
              measure(fastconv_step(device), device=device, repeats=10), peers)
    rows = [row]
    if device == "cpu":
        ours = peak_memory("fastconv", device)
        growth = lambda m: m["peak_mib"] - m["baseline_mib"]  # noqa: E731  the step's working memory
        line = f"train_step peak RSS: fastconv {ours['peak_mib']:.0f} MiB (+{growth(ours):.0f} over its baseline)"
        if torch is not None:
            theirs = peak_memory("torch", device)
            line += f", torch {theirs['peak_mib']:.0f} MiB (+{growth(theirs):.0f})"
            row.case += (f" (peak RSS {ours['peak_mib']:.0f} MiB, step +{growth(ours):.0f}; torch {theirs['peak_mib']:.0f} MiB,"
                         f" step +{growth(theirs):.0f})")
        print(line)
    return rows
