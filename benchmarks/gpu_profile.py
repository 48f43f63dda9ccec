"""Kernels to read under Nsight Compute on the GPU, one launch each: the fused cross-entropy at the
suite's shape and at row lengths around it (a multiple of 32 lanes x 8 chunks, and not), the 4096^3
GEMM with the large and the wide tile, and a device copy for comparison. Without --ncu it times the
cross-entropy shapes (GB/s counting the logits read and the gradient written) beside a copy of the
same bytes, which says whether the row length matters.

    python benchmarks/gpu_profile.py                 # the cross-entropy shapes, timed
    ncu --clock-control none --section SpeedOfLight ... python benchmarks/gpu_profile.py --ncu
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import ops  # noqa: E402

from gpu_gemm_sweep import median_time  # noqa: E402
from gpu_step_breakdown import _override  # noqa: E402

CE_SHAPES = [(262144, 1000), (262144, 1024), (262144, 992), (131072, 2000), (524288, 512), (2097152, 128)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ncu", action="store_true", help="one launch of each kernel, for the profiler")
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
        for n, c in CE_SHAPES:
            z = cp.asarray(rng.standard_normal((n, c), dtype=np.float32))
            y = cp.asarray(rng.integers(0, c, n))
            out = cp.empty_like(z)
            nbytes = 2 * z.nbytes
            ce = nbytes / median_time(lambda: ops.softmax_cross_entropy_with_grad(z, y), cp) / 1e9
            copy = nbytes / median_time(lambda: cp.copyto(out, z), cp) / 1e9
            print(f"  {n}x{c:<5d} fused {ce:7.1f}   copy {copy:7.1f}   {100 * ce / copy:5.1f}% of copy", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
