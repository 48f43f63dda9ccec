"""Dense path: matmul, linear forward with fused bias + ReLU, linear backward.

CPU peers: NumPy (its BLAS) and PyTorch CPU. GPU peers: CuPy (cuBLAS) and PyTorch CUDA, TF32 off.
"""
import numpy as np

import fastconv
from fastconv import ops

from harness import Row, cupy_or_none, measure, torch_peer

MATMUL_SIZES = {"cpu": (256, 512, 1024, 2048), "cuda": (512, 1024, 2048, 4096)}
# (batch, in, out): the reference CNN's dense layers, and a large square one.
LINEAR_SHAPES = ((128, 3136, 128), (128, 128, 10), (4096, 1024, 1024))


def cases(device: str, ceilings: dict) -> list:
    rows = []
    with fastconv.use_backend(device) as be:
        xp = be.xp
        rng = np.random.default_rng(0)
        torch, tdev, tmeasure = torch_peer(device)

        for n in MATMUL_SIZES[device]:
            a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
            b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
            peers = {}
            if device == "cpu":
                peers["numpy"] = measure(lambda: np.dot(a, b))
            elif cupy_or_none() is not None:
                peers["cupy"] = measure(lambda: a @ b, device="cuda")
            if torch is not None:
                ta, tb = torch.as_tensor(a, device=tdev), torch.as_tensor(b, device=tdev)
                peers["torch"] = tmeasure(lambda: torch.mm(ta, tb))
            rows.append(Row("dense", f"matmul {n}x{n}x{n} f32", "GFLOP/s", 2 * n**3,
                            measure(lambda: ops.matmul(a, b), device=device), peers, ceilings["sgemm_gflops"]))

        for batch, fin, fout in LINEAR_SHAPES:
            x = xp.asarray(rng.standard_normal((batch, fin), dtype=np.float32))
            w = xp.asarray(rng.standard_normal((fout, fin), dtype=np.float32))
            bias = xp.asarray(rng.standard_normal(fout, dtype=np.float32))
            dy = xp.asarray(rng.standard_normal((batch, fout), dtype=np.float32))
            peers = {}
            if device == "cpu":
                peers["numpy"] = measure(lambda: np.maximum(x @ w.T + bias, 0))
            else:
                peers["cupy"] = measure(lambda: xp.maximum(x @ w.T + bias, 0), device="cuda")
            if torch is not None:
                tx, tw, tb = (torch.as_tensor(t, device=tdev) for t in (x, w, bias))
                peers["torch"] = tmeasure(lambda: torch.relu(torch.nn.functional.linear(tx, tw, tb)))
            rows.append(Row("dense", f"linear+bias+relu fwd {batch}x{fin}->{fout}", "GFLOP/s", 2 * batch * fin * fout,
                            measure(lambda: ops.linear_forward(x, w, bias, activation="relu"), device=device), peers,
                            ceilings["sgemm_gflops"]))

            peers = {}
            if device == "cpu":
                peers["numpy"] = measure(lambda: (dy @ w, dy.T @ x, dy.sum(0)))
            else:
                peers["cupy"] = measure(lambda: (dy @ w, dy.T @ x, dy.sum(0)), device="cuda")
            if torch is not None:
                tdy = torch.as_tensor(dy, device=tdev)
                peers["torch"] = tmeasure(lambda: (tdy @ tw, tdy.T @ tx, tdy.sum(0)))
            rows.append(Row("dense", f"linear bwd {batch}x{fin}->{fout}", "GFLOP/s", 4 * batch * fin * fout,
                            measure(lambda: ops.linear_backward(dy, x, w), device=device), peers,
                            ceilings["sgemm_gflops"]))
    return rows
