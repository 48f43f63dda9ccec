"""Max and average pooling, forward and backward (GB/s of input + output traffic)."""
import numpy as np

import fastconv
from fastconv import ops

from harness import Row, measure, torch_peer

SHAPES = {"cpu": [(128, 32, 28, 28), (128, 64, 14, 14)], "cuda": [(128, 32, 28, 28), (64, 64, 112, 112)]}


def cases(device: str, ceilings: dict) -> list:
    rows = []
    torch, tdev, tmeasure = torch_peer(device)
    with fastconv.use_backend(device) as be:
        xp = be.xp
        rng = np.random.default_rng(0)
        for shape in SHAPES[device]:
            x = xp.asarray(rng.standard_normal(shape, dtype=np.float32))
            y, idx = ops.max_pool2d_forward(x, 2)
            dy = xp.asarray(rng.standard_normal(y.shape, dtype=np.float32))
            nbytes_f = 4 * (x.size + y.size)
            nbytes_b = 4 * (x.size + y.size) + 8 * y.size
            peers = {}
            if device == "cpu":
                n, c, h, w = shape
                peers["numpy"] = measure(lambda: x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5)))
            if torch is not None:
                F = torch.nn.functional
                tx, tdy = torch.as_tensor(x, device=tdev), torch.as_tensor(dy, device=tdev)
                peers["torch"] = tmeasure(lambda: F.max_pool2d(tx, 2, return_indices=True))
                _, tidx = F.max_pool2d(tx, 2, return_indices=True)
            label = "x".join(map(str, shape))
            rows.append(Row("pool", f"max_pool2d k2 fwd {label}", "GB/s", nbytes_f,
                            measure(lambda: ops.max_pool2d_forward(x, 2), device=device), peers, ceilings["copy_gbs"]))
            peers = {}
            if torch is not None:
                peers["torch"] = tmeasure(lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                    tdy, tx, [2, 2], [2, 2], [0, 0], [1, 1], False, tidx))
            rows.append(Row("pool", f"max_pool2d k2 bwd {label}", "GB/s", nbytes_b,
                            measure(lambda: ops.max_pool2d_backward(dy, idx, x.shape), device=device), peers,
                            ceilings["copy_gbs"]))
            peers = {}
            if torch is not None:
                peers["torch"] = tmeasure(lambda: F.avg_pool2d(tx, 2))
            rows.append(Row("pool", f"avg_pool2d k2 fwd {label}", "GB/s", nbytes_f,
                            measure(lambda: ops.avg_pool2d_forward(x, 2), device=device), peers, ceilings["copy_gbs"]))
            peers = {}
            if torch is not None:
                peers["torch"] = tmeasure(lambda: torch.ops.aten.avg_pool2d_backward(
                    tdy, tx, [2, 2], [2, 2], [0, 0], False, True, None))
            rows.append(Row("pool", f"avg_pool2d k2 bwd {label}", "GB/s", nbytes_f,
                            measure(lambda: ops.avg_pool2d_backward(dy, x.shape, 2), device=device), peers,
                            ceilings["copy_gbs"]))
    return rows
