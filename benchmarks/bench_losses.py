"""Softmax cross-entropy forward + backward (as two ops, and fused in one pass), BCE with logits and
MSE (GB/s)."""
import numpy as np

import fastconv
from fastconv import ops

from harness import Row, copy_reference, last_level_cache_bytes, measure, measure_beside_copy, torch_peer

# (rows, classes): 1 GiB of logits, well past the last-level cache, and the course's 10-class case.
CE_SHAPES = {"cpu": [(262144, 1000), (4096, 10)], "cuda": [(262144, 1000), (65536, 10)]}


def _numpy_cross_entropy(xp, logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    probs = e / s
    loss = -(z[xp.arange(len(labels)), labels] - xp.log(s[:, 0])).mean()
    grad = probs.copy()
    grad[xp.arange(len(labels)), labels] -= 1
    return loss, grad / len(labels)


def _row(case, nbytes, ours, peers, ceilings, copy, device):
    """A losses row, ours timed alone (copy None) or beside the copy (measure_beside_copy)."""
    if copy is None:
        return Row("losses", case, "GB/s", nbytes, measure(ours, device=device, repeats=7), peers, ceilings["copy_gbs"])
    timing, beside = measure_beside_copy(ours, copy, device=device)
    return Row("losses", case, "GB/s", nbytes, timing, peers, ceilings["copy_gbs"], beside)


def cases(device: str, ceilings: dict) -> list:
    rows = []
    torch, tdev, tmeasure = torch_peer(device)
    with fastconv.use_backend(device) as be:
        xp = be.xp
        rng = np.random.default_rng(0)
        copy = copy_reference(device)
        for n, c in CE_SHAPES[device]:
            logits = xp.asarray(rng.standard_normal((n, c), dtype=np.float32))
            labels = xp.asarray(rng.integers(0, c, n))
            nbytes = 4 * 3 * n * c  # read logits, write probs, write dlogits (reading probs again is cache-missed too)

            def ours():
                loss, probs = ops.softmax_cross_entropy_forward(logits, labels)
                return ops.softmax_cross_entropy_backward(probs, labels)

            peers = {("numpy" if device == "cpu" else "cupy"): measure(lambda: _numpy_cross_entropy(xp, logits, labels),
                                                                       device=device, repeats=7)}
            if torch is not None:
                tl = torch.as_tensor(logits, device=tdev).clone().requires_grad_(True)
                tlab = torch.as_tensor(labels, device=tdev)

                def torch_ce():
                    loss = torch.nn.functional.cross_entropy(tl, tlab)
                    return torch.autograd.grad(loss, tl)

                peers["torch"] = tmeasure(torch_ce)
            past_cache = 4 * n * c > 2 * last_level_cache_bytes(device)  # the 1 GiB case, not the course's 10 classes
            rows.append(_row(f"softmax CE fwd+bwd {n}x{c}", nbytes, ours, peers, ceilings, copy if past_cache else None,
                             device))
            # The fused op (what CrossEntropyLoss runs): the least traffic is reading the logits and
            # writing the gradient once, so that is the work counted; the peers are the same calls.
            rows.append(_row(f"softmax CE fused fwd+bwd {n}x{c}", 4 * 2 * n * c,
                             lambda: ops.softmax_cross_entropy_with_grad(logits, labels), peers, ceilings,
                             copy if past_cache else None, device))

        n = 2**27  # 512 MiB per array
        pred = xp.asarray(rng.standard_normal(n, dtype=np.float32))
        target = xp.asarray((rng.random(n) > 0.5).astype(np.float32))
        peers = {("numpy" if device == "cpu" else "cupy"): measure(
            lambda: (xp.mean(xp.maximum(pred, 0) - pred * target + xp.log1p(xp.exp(-xp.abs(pred))))), device=device)}
        if torch is not None:
            tp, tt = torch.as_tensor(pred, device=tdev), torch.as_tensor(target, device=tdev)
            peers["torch"] = tmeasure(lambda: torch.nn.functional.binary_cross_entropy_with_logits(tp, tt))
        rows.append(_row(f"bce_with_logits fwd {n}", 8 * n, lambda: ops.bce_with_logits_forward(pred, target), peers,
                         ceilings, copy, device))
        peers = {("numpy" if device == "cpu" else "cupy"): measure(lambda: xp.mean((pred - target) ** 2), device=device)}
        if torch is not None:
            peers["torch"] = tmeasure(lambda: torch.nn.functional.mse_loss(tp, tt))
        rows.append(_row(f"mse fwd {n}", 8 * n, lambda: ops.mse_forward(pred, target), peers, ceilings, copy, device))
    return rows
