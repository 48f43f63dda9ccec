"""GEMM plan sweep on the GPU: each shape timed with every tile config forced (0 small 64x64,
1 large 128x128, 2 wide 128x256) and every K-slice count in SPLITS
(the same kernels; only the plan differs), beside cuBLAS (CuPy) and PyTorch, and the plan that
gemm_tile / gemm_splits pick (*). Evidence for the plan in csrc/kernels/dense.cuh.

    python benchmarks/gpu_gemm_sweep.py [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import ops  # noqa: E402

from gpu_step_breakdown import _override  # noqa: E402

SHAPES = [(512, 512, 512), (768, 768, 768), (1024, 1024, 1024), (1536, 1536, 1536), (2048, 2048, 2048),
          (4096, 4096, 4096), (128, 128, 3136), (1024, 1024, 4096), (4096, 1024, 1024)]  # (M, N, K)
TILES = {0: "small", 1: "large", 2: "wide"}
SPLITS = (1, 2, 3, 4, 6, 8)


def median_time(fn, cp, warmup=3, repeats=15):
    """Median seconds of fn() by CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    samples = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    rows = []
    with fastconv.use_backend("cuda") as be:
        cp, ext = be.xp, be.ext
        print(f"{ext.device_name(0)}: TFLOP/s by forced tile and K-slice count (* = the plan's choice)")
        for m, n, k in SHAPES:
            rng = np.random.default_rng(0)
            a = cp.asarray(rng.standard_normal((m, k), dtype=np.float32))
            b = cp.asarray(rng.standard_normal((k, n), dtype=np.float32))
            flops = 2.0 * m * n * k
            peers = {"cublas": flops / median_time(lambda: a @ b, cp) / 1e12}
            if torch is not None:
                ta, tb = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")
                torch.backends.cuda.matmul.allow_tf32 = False
                peers["torch"] = flops / median_time(lambda: ta @ tb, cp) / 1e12
            plan = (ext.gemm_tile(m, n, k), ext.gemm_splits(m, n, k, ext.gemm_tile(m, n, k)))
            print(f"  {m}x{n}x{k}  " + "  ".join(f"{p} {v:6.2f}" for p, v in peers.items()))
            for tile, name in TILES.items():
                line = f"    {name:7s}|"
                for s in SPLITS:
                    be.ext = ext
                    _override(be, "gemm_tile", lambda *_, t=tile: t)
                    _override(be, "gemm_splits", lambda *_, s=s: s)
                    tflops = flops / median_time(lambda: ops.matmul(a, b), cp) / 1e12
                    be.ext = ext
                    mark = "*" if (tile, s) == plan else " "
                    line += f" {s}{mark}{tflops:6.2f}"
                    rows.append(dict(m=m, n=n, k=k, tile=name, splits=s, tflops=tflops, chosen=(tile, s) == plan,
                                     **{f"{p}_tflops": v for p, v in peers.items()}))
                print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
