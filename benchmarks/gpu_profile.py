"""Kernels to read under Nsight Compute on the GPU, one launch each: the fused cross-entropy at the
suite's shape and at row lengths around it (a multiple of 32 lanes x 8 chunks, and not), the 4096^3
GEMM with the large and the wide tile, and a device copy for comparison. Without --ncu it times the
cross-entropy shapes (GB/s counting the logits read and the gradient written) beside a copy of the
same bytes, which says whether the row length matters.

    python benchmarks/gpu_profile.py                 # the cross-entropy shapes, timed
    python benchmarks/gpu_profile.py --all-rows --json rates.json   # every row path (variant A/Bs)
    ncu --clock-control none --section SpeedOfLight ... python benchmarks/gpu_profile.py --ncu
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import ops  # noqa: E402

from gpu_gemm_sweep import median_time  # noqa: E402
from gpu_step_breakdown import _override  # noqa: E402

CE_SHAPES = [(262144, 1000), (262144, 1024), (262144, 992), (131072, 2000), (524288, 512), (2097152, 128)]
# --all-rows: every lanes-per-row path of the row kernel (csrc/kernels/loss.cuh), ~1 GB of logits each.
CE_ROW_PATHS = [(16777216, 16), (8388608, 32), (4194304, 64), (2097152, 128), (1048576, 256), (524288, 512),
                (262144, 1000), (262144, 1024), (131072, 2000), (65536, 4096), (32768, 8192)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ncu", action="store_true", help="one launch of each kernel, for the profiler")
    parser.add_argument("--all-rows", action="store_true", help="time every row path (CE_ROW_PATHS)")
    parser.add_argument("--json", type=Path, help="also write {'NxC': GB/s} of the fused op there")
    args = parser.parse_args()
    with fastconv.use_backend("cuda") as be:
        cp, ext = be.xp, be.ext
        rng = np.random.default_rng(0)
        if args.ncu:
            n, c = CE_SHAPES[0]
            z = cp.asarray(rng.standard_normal((n, c), dtype=np.float32))
            y = cp.asarray(rng.integers(0, c, n))
            ops.softmax_cross_entropy_with_grad(z, y)
            cp.copyto(cp.empty_like(z), z)
            a = cp.asarray(rng.standard_normal((4096, 4096), dtype=np.float32))
            for tile in (1, 2):
                _override(be, "gemm_tile", lambda *_, t=tile: t)
                ops.matmul(a, a)
                be.ext = ext
            cp.cuda.Device().synchronize()
            return 0
        print(f"{ext.device_name(0)}: fused cross-entropy fwd+bwd by row length (GB/s, logits read + grad written)")
        rates = {}
        for n, c in CE_ROW_PATHS if args.all_rows else CE_SHAPES:
            draw = cp.random.RandomState(0)  # on the device: a variant's process starts in seconds
            z = draw.standard_normal((n, c), dtype=np.float32)
            y = cp.minimum(draw.random_sample(n) * c, c - 1).astype(np.int64)
            out = cp.empty_like(z)
            nbytes = 2 * z.nbytes
            ce = rates[f"{n}x{c}"] = nbytes / median_time(lambda: ops.softmax_cross_entropy_with_grad(z, y), cp) / 1e9
            copy = nbytes / median_time(lambda: cp.copyto(out, z), cp) / 1e9
            print(f"  {n}x{c:<5d} fused {ce:7.1f}   copy {copy:7.1f}   {100 * ce / copy:5.1f}% of copy", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
