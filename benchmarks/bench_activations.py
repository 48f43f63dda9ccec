"""ReLU and sigmoid, forward and backward, on arrays well past the last-level cache (GB/s)."""
import numpy as np

import fastconv
from fastconv import ops

from harness import Row, copy_reference, measure, measure_beside_copy, torch_peer

# 1 GiB of float32 per array: well past the last-level cache (32 MiB on the Zen 4 dev hosts, 480 MiB on the Intel ones)
SIZES = {"cpu": 2**28, "cuda": 2**28}


def cases(device: str, ceilings: dict) -> list:
    rows = []
    with fastconv.use_backend(device) as be:
        xp = be.xp
        n = SIZES[device]
        rng = np.random.default_rng(0)
        x = xp.asarray(rng.standard_normal(n, dtype=np.float32))
        dy = xp.asarray(rng.standard_normal(n, dtype=np.float32))
        y = ops.sigmoid_forward(x)
        torch, tdev, tmeasure = torch_peer(device)
        if torch is not None:
            tx, tdy, ty = (torch.as_tensor(t, device=tdev) for t in (x, dy, y))
        timer = lambda f: measure(f, device=device, repeats=7)  # noqa: E731
        copy = copy_reference(device)
        cases_ = [
            ("relu fwd", 2, lambda: ops.relu_forward(x), lambda: xp.maximum(x, 0),
             lambda: torch.relu(tx)),
            ("relu bwd", 3, lambda: ops.relu_backward(dy, x), lambda: dy * (x > 0),
             lambda: torch.ops.aten.threshold_backward(tdy, tx, 0)),
            ("sigmoid fwd", 2, lambda: ops.sigmoid_forward(x), lambda: 1 / (1 + xp.exp(-x)),
             lambda: torch.sigmoid(tx)),
            ("sigmoid bwd", 3, lambda: ops.sigmoid_backward(dy, y), lambda: dy * y * (1 - y),
             lambda: torch.ops.aten.sigmoid_backward(tdy, ty)),
        ]
        for name, arrays, ours, array_peer, torch_case in cases_:
            peers = {("numpy" if device == "cpu" else "cupy"): timer(array_peer)}
            if torch is not None:
                peers["torch"] = tmeasure(torch_case)
            timing, beside = measure_beside_copy(ours, copy, device=device)
            rows.append(Row("activations", f"{name} {n} f32", "GB/s", arrays * 4 * n, timing, peers,
                            ceilings["copy_gbs"], beside))
    return rows
