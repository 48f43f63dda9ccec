"""Runs the benchmark suite: `python benchmarks/run.py [--device cpu|cuda] [--only dense,conv,...]`.

Writes results/<device>-<date>.{json,md,png} and prints one line per case.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

try:  # PyTorch first, so its OpenMP runtime starts with its own defaults (fastconv sets passive waiting)
    import torch  # noqa: F401
except ImportError:
    pass

import harness  # noqa: E402

FAMILIES = ("dense", "activations", "conv", "pool", "losses", "optim", "train_step")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the cases run (default: cpu)")
    parser.add_argument("--only", default=",".join(FAMILIES),
                        help=f"comma-separated families (default: all: {','.join(FAMILIES)})")
    parser.add_argument("--name", default=None, help="results file name (default: <device>-<date>)")
    parser.add_argument("--out", default=str(harness.RESULTS), metavar="DIR",
                        help="where the .json, .md and .png go (default: benchmarks/results)")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")

    t0 = time.perf_counter()
    ceilings = harness.gpu_ceilings() if args.device == "cuda" else harness.cpu_ceilings()
    print(f"ceilings: SGEMM {ceilings['sgemm_gflops']:.1f} GFLOP/s, copy {ceilings['copy_gbs']:.1f} GB/s")
    print(harness.header())
    rows = []
    for family in families:
        module = importlib.import_module(f"bench_{family}")  # (every family has its script)
        for row in module.cases(args.device, ceilings):
            print(row.line(), flush=True)
            rows.append(row)
    name = args.name or f"{args.device}-{datetime.date.today().isoformat()}"
    path = harness.write(rows, args.device, ceilings, name, Path(args.out))
    print(f"wrote {path} (+ .md, .png) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
