"""Split-K sweep of the GEMM on the GPU: each square size and the reference layers timed with the
K-slice count forced to 1, 2, 3, 4, 6 and 8 (the same kernels; only the count differs), beside
cuBLAS (CuPy) and the count gemm_splits picks. Evidence for the heuristic in csrc/kernels/dense.cuh.

    python benchmarks/gpu_gemm_splits.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import ops  # noqa: E402

from gpu_step_breakdown import _override  # noqa: E402
from harness import measure  # noqa: E402

SHAPES = [(512, 512, 512), (768, 768, 768), (1024, 1024, 1024), (1536, 1536, 1536), (2048, 2048, 2048),
          (4096, 4096, 4096), (128, 128, 3136), (1024, 1024, 4096)]  # (M, N, K)
SPLITS = (1, 2, 3, 4, 6, 8)


def main() -> int:
    with fastconv.use_backend("cuda") as be:
        cp, ext = be.xp, be.ext
        chosen = ext.gemm_splits
        print(f"{be.ext.device_name(0)}: TFLOP/s by forced K-slice count (* = gemm_splits' choice)")
        for m, n, k in SHAPES:
            rng = np.random.default_rng(0)
            a = cp.asarray(rng.standard_normal((m, k), dtype=np.float32))
            b = cp.asarray(rng.standard_normal((k, n), dtype=np.float32))
            flops = 2.0 * m * n * k
            cublas = measure(lambda: a @ b, device="cuda", repeats=20).median_s
            line = f"  {m}x{n}x{k:<5d} cuBLAS {flops / cublas / 1e12:6.2f} |"
            default = chosen(m, n, k)
            for s in SPLITS:
                be.ext = ext
                _override(be, "gemm_splits", lambda *_, s=s: s)
                t = measure(lambda: ops.matmul(a, b), device="cuda", repeats=20).median_s
                line += f" {s}{'*' if s == default else ' '}{flops / t / 1e12:6.2f}"
            be.ext = ext
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
