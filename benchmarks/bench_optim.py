"""Optimizer steps on one large parameter tensor, in place (GB/s of state traffic)."""
import numpy as np

import fastconv
from fastconv import ops

from harness import Row, copy_reference, measure_beside_copy, torch_peer


def cases(device: str, ceilings: dict) -> list:
    rows = []
    torch, tdev, tmeasure = torch_peer(device)
    n = 2**27  # 512 MiB per state array: past the last-level cache
    with fastconv.use_backend(device) as be:
        xp = be.xp
        rng = np.random.default_rng(0)
        p = xp.asarray(rng.standard_normal(n, dtype=np.float32))
        g = xp.asarray(rng.standard_normal(n, dtype=np.float32))
        vel, m, v = xp.zeros_like(p), xp.zeros_like(p), xp.zeros_like(p)
        copy = copy_reference(device)
        peers = {}
        if torch is not None:
            tp = torch.as_tensor(p, device=tdev).clone()
            tp.grad = torch.as_tensor(g, device=tdev).clone()
            sgd = torch.optim.SGD([tp], lr=1e-3, momentum=0.9, foreach=False)
            peers["torch"] = tmeasure(sgd.step)
        # SGD with momentum: read p, g, velocity; write p, velocity.
        timing, beside = measure_beside_copy(lambda: ops.sgd_step(p, g, vel, lr=1e-3, momentum=0.9), copy,
                                             device=device, repeats=15)
        rows.append(Row("optim", f"sgd momentum {n}", "GB/s", 5 * 4 * n, timing, peers, ceilings["copy_gbs"], beside))
        peers = {}
        if torch is not None:
            tp2 = torch.as_tensor(p, device=tdev).clone()
            tp2.grad = torch.as_tensor(g, device=tdev).clone()
            adam = torch.optim.Adam([tp2], lr=1e-3, foreach=False)
            peers["torch"] = tmeasure(adam.step)
        step = [0]

        def ours():
            step[0] += 1
            ops.adam_step(p, g, m, v, step[0], lr=1e-3)

        # Adam: read p, g, m, v; write p, m, v.
        timing, beside = measure_beside_copy(ours, copy, device=device, repeats=15)
        rows.append(Row("optim", f"adam {n}", "GB/s", 7 * 4 * n, timing, peers, ceilings["copy_gbs"], beside))
    return rows
