"""2-D convolution forward and both backward passes on the reference network's layers, on wider
layers of the kind deeper CNNs end with, and on a ResNet's downsampling (3x3, stride 2) and
pointwise (1x1) layers (GFLOP/s).

Peers: PyTorch (CPU: same thread count; GPU: cuDNN with TF32 off). NumPy has no convolution.
"""
import numpy as np

import fastconv
from fastconv import ops

from harness import Row, Timing, measure, torch_peer

# (name, N, C_in, H, W, C_out, k, padding[, stride[, groups]]): the LeNet-style reference CNN at batch
# 128; on the CPU two wide 3x3 layers at batch 16 (transformed weights of 4 and 16 MiB for Winograd),
# two of a ResNet's last stages (neither goes by Winograd or the stride-1 tiles' strengths: per-tap
# GEMMs over the input's phases for stride 2; 49 positions a sample for the 1x1) and a MobileNet's
# depthwise 3x3 layer (one channel a group: _depthwise.py); on the GPU a larger layer.
LAYERS = {
    "cpu": [("conv1 1->32 28x28 k3", 128, 1, 28, 28, 32, 3, 1), ("conv2 32->64 14x14 k3", 128, 32, 14, 14, 64, 3, 1),
            ("wide 256->256 14x14 k3", 16, 256, 14, 14, 256, 3, 1), ("deep 512->512 7x7 k3", 16, 512, 7, 7, 512, 3, 1),
            ("down 128->128 56x56 k3 s2", 16, 128, 56, 56, 128, 3, 1, 2),
            ("pointwise 512->2048 7x7 k1", 16, 512, 7, 7, 2048, 1, 0),
            ("depthwise 256 14x14 k3", 32, 256, 14, 14, 256, 3, 1, 1, 256)],
    "cuda": [("conv1 1->32 28x28 k3", 128, 1, 28, 28, 32, 3, 1), ("conv2 32->64 14x14 k3", 128, 32, 14, 14, 64, 3, 1),
             ("resnet 64->64 56x56 k3", 64, 64, 56, 56, 64, 3, 1)],
}


def cases(device: str, ceilings: dict) -> list:
    rows = []
    torch, tdev, tmeasure = torch_peer(device)
    with fastconv.use_backend(device) as be:
        xp = be.xp
        rng = np.random.default_rng(0)
        for name, n, cin, h, w_, cout, k, pad, *rest in LAYERS[device]:
            st, groups = (rest + [1, 1])[:2]
            x = xp.asarray(rng.standard_normal((n, cin, h, w_), dtype=np.float32))
            w = xp.asarray(rng.standard_normal((cout, cin // groups, k, k), dtype=np.float32) * 0.1)
            b = xp.asarray(rng.standard_normal(cout, dtype=np.float32))
            y = ops.conv2d_forward(x, w, b, padding=pad, stride=st, groups=groups)
            dy = xp.asarray(rng.standard_normal(y.shape, dtype=np.float32))
            flops = 2 * n * cout * y.shape[2] * y.shape[3] * cin // groups * k * k
            peers_f, peers_bd, peers_bw = {}, {}, {}
            if torch is not None:
                F = torch.nn.functional
                tx, tw, tb, tdy = (torch.as_tensor(t, device=tdev) for t in (x, w, b, dy))
                peers_f["torch"] = tmeasure(lambda: F.conv2d(tx, tw, tb, padding=pad, stride=st, groups=groups))
                gi = torch.nn.grad.conv2d_input
                gw = torch.nn.grad.conv2d_weight
                peers_bd["torch"] = tmeasure(lambda: gi(tx.shape, tw, tdy, padding=pad, stride=st, groups=groups))
                peers_bw["torch"] = tmeasure(lambda: (gw(tx, tw.shape, tdy, padding=pad, stride=st, groups=groups),
                                                      tdy.sum((0, 2, 3))))
                # Both backward passes at once, as autograd runs them.
                txg = tx.clone().requires_grad_(True)
                twg = tw.clone().requires_grad_(True)
                tbg = tb.clone().requires_grad_(True)

                def torch_backward():
                    out = F.conv2d(txg, twg, tbg, padding=pad, stride=st, groups=groups)
                    torch.autograd.grad(out, (txg, twg, tbg), tdy)

                peers_both = {"torch (fwd+bwd autograd)": tmeasure(torch_backward)}
            rows.append(Row("conv", f"{name} fwd", "GFLOP/s", flops,
                            measure(lambda: ops.conv2d_forward(x, w, b, padding=pad, stride=st, groups=groups),
                                    device=device),
                            peers_f, ceilings["sgemm_gflops"]))
            # conv2d_backward computes dx, dw and db together; the peers' dx and dw are timed
            # separately and summed for the ratio line below.
            ours = measure(lambda: ops.conv2d_backward(dy, x, w, padding=pad, stride=st, groups=groups), device=device)
            peers_b = {}
            if torch is not None:

                t_in, t_w = peers_bd["torch"], peers_bw["torch"]
                peers_b["torch (dx + dw)"] = Timing(t_in.first_s + t_w.first_s, t_in.median_s + t_w.median_s,
                                                    t_in.p10_s + t_w.p10_s, t_in.p90_s + t_w.p90_s, t_in.repeats)
            rows.append(Row("conv", f"{name} bwd (dx, dw, db)", "GFLOP/s", 2 * flops, ours, peers_b,
                            ceilings["sgemm_gflops"]))
            if torch is not None:
                ours_both = measure(lambda: (ops.conv2d_forward(x, w, b, padding=pad, stride=st, groups=groups),
                                             ops.conv2d_backward(dy, x, w, padding=pad, stride=st, groups=groups)),
                                    device=device)
                rows.append(Row("conv", f"{name} fwd+bwd", "GFLOP/s", 3 * flops, ours_both, peers_both,
                                ceilings["sgemm_gflops"]))
    return rows
