"""Benchmark harness: time fastconv and its peers on the same inputs in the same process.

Every case: the first call is timed on its own (JIT compilation, first-call costs), then warm-up
calls, then `repeats` timed calls; the median is reported with the 10th-90th percentile spread.
On the GPU, calls are timed with CUDA events on CuPy's current stream (torch.cuda events for
PyTorch). Throughput is GFLOP/s for compute-bound ops and GB/s for memory-bound ones, each also
as a percentage of the machine's ceiling measured by this script (a large SGEMM, a large copy);
the memory-bound cases past the last-level cache also against a copy timed just before each of
their rounds (measure_beside_copy).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import fastconv

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Timing:
    first_s: float
    median_s: float
    p10_s: float
    p90_s: float
    repeats: int


def quiesce():
    """Lets the thread pools of whatever ran before (OpenMP, OpenBLAS) stop spin-waiting, so that the
    next measurement, ours or a peer's, does not share the cores with them."""
    time.sleep(0.1)


def _sync(device: str):
    if device == "cuda":
        import cupy

        cupy.cuda.get_current_stream().synchronize()


# A case of a few microseconds was timed over 150 calls (1.5 ms) right after quiesce()'s pause and 3
# warm-up calls: the core had not reached a steady state, and the figure moved by 20-30% between runs
# (the 128x128->10 linear: 27-32 GFLOP/s in the suite, 39 in a loop of 2000 calls; NumPy's 9.6 us
# call suffered less). So warm-up lasts WARMUP_SECONDS too, and the timed calls go on for
# min_seconds, up to MAX_SAMPLES: steady state for the fast cases, the same `repeats` for slow ones.
WARMUP_SECONDS = 0.05
MAX_SAMPLES = 5000


def measure(fn, *, device="cpu", warmup=3, repeats=15, min_seconds=0.2, _samples=None) -> Timing:
    """Times fn() (which runs one case); returns first-call and steady-state statistics (and adds
    the timed samples to the list _samples, when given)."""
    quiesce()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    warm_until, calls = time.perf_counter() + WARMUP_SECONDS, 0
    while calls < warmup or (time.perf_counter() < warm_until and calls < MAX_SAMPLES):
        fn()
        _sync(device)  # (on the GPU: else the host would queue up to MAX_SAMPLES launches unawaited)
        calls += 1
    samples = []
    if device == "cuda":
        import cupy

        start, end = cupy.cuda.Event(), cupy.cuda.Event()
    deadline = time.perf_counter() + min_seconds
    while len(samples) < repeats or (time.perf_counter() < deadline and len(samples) < MAX_SAMPLES):
        if device == "cuda":
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
    if _samples is not None:
        _samples.extend(samples)
    return _timing(first, samples)


def _timing(first: float, samples: list) -> Timing:
    q = np.percentile(samples, [10, 90])
    return Timing(first, statistics.median(samples), float(q[0]), float(q[1]), len(samples))


def measure_torch_cuda(fn, warmup=3, repeats=15) -> Timing:
    import torch

    quiesce()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return _timing(first, samples)


def torch_or_none():
    """PyTorch, set to the same thread count as Numba, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    import numba

    torch.set_num_threads(numba.get_num_threads())
    return torch


def torch_peer(device: str):
    """(torch or None, the torch device for `device`, the timer for it). On the GPU, TF32 is off so
    that FP32 is compared with FP32."""
    torch = torch_or_none()
    if torch is not None and device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch, ("cuda" if device == "cuda" else "cpu"), (measure_torch_cuda if device == "cuda" else measure)


def cupy_or_none():
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy
    except Exception:
        return None


# ---- ceilings ---------------------------------------------------------------------------------

COPY_BYTES = 2**30  # 1 GiB: past the last-level cache


def last_level_cache_bytes(device: str) -> int:
    """The largest cache in front of `device`'s memory: the GPU's L2 (CuPy's device properties), else
    the host's last-level cache as the cpu backend reads it (Linux sysfs; 32 MiB where unknown)."""
    if device == "cuda":
        cupy = cupy_or_none()
        if cupy is not None:
            size = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id).get("l2CacheSize")
            if size:
                return int(size)
    from fastconv._cpu._stream import _last_level_cache_bytes

    return _last_level_cache_bytes()


def _check_copy_operands(src, dst):
    if not (src.shape == dst.shape and src.dtype == dst.dtype and src.flags.c_contiguous and dst.flags.c_contiguous
            and dst.ctypes.data % dst.itemsize == 0):
        raise ValueError("a copy takes two aligned C-contiguous arrays of the same shape and dtype")


def _ordinary_copy():
    """A copy on all Numba threads with ordinary stores (each of which reads its line first)."""
    from numba import njit, prange

    @njit(parallel=True)
    def copy(src, dst):
        for i in prange(src.size):
            dst[i] = src[i]

    def run(src, dst):
        _check_copy_operands(src, dst)
        copy(src.reshape(-1), dst.reshape(-1))

    return run


def _streamed_copy():
    """A copy on all Numba threads whose stores stream past the caches (fastconv's own _stream.py,
    as its elementwise ops write outputs past the last-level cache): two streams through memory
    where the ordinary stores' copy moves three. On the twenty-third session's Zen 4 host the
    ordinary copy ran at 44-48 GB/s and this one at 50-73 (ReLU's forward, which streams, at 50-76:
    up to 166% of the ceiling before this copy was one of its candidates)."""
    from numba import njit

    from fastconv._cpu._stream import align_skip, stream_map1

    @njit(inline="always")
    def same(v):
        return v

    @njit(parallel=True)
    def copy(src, dst, skip):
        stream_map1(same, src, dst, skip)

    def run(src, dst):
        _check_copy_operands(src, dst)
        flat = dst.reshape(-1)  # (a view: dst is C-contiguous)
        copy(src.reshape(-1), flat, align_skip(flat))

    return run


def _numpy_copy():
    return lambda src, dst: np.copyto(dst, src)


def _cupy_copy():
    import cupy

    return lambda src, dst: cupy.copyto(dst, src)


# The ceiling's candidates per device, each made by copy(src, dst). NumPy's copy runs on one thread
# (25-27 GB/s on that host).
COPY_CANDIDATES = {"cpu": {"numpy": _numpy_copy, "ordinary": _ordinary_copy, "streamed": _streamed_copy},
                   "cuda": {"cupy": _cupy_copy}}
CHOICE_ROUNDS = 3


class CopyReference:
    """A copy of COPY_BYTES, the bandwidth ceiling's measurement, as a callable; `bytes` counts read +
    write. The fastest of the device's COPY_CANDIDATES, by the median of CHOICE_ROUNDS rounds that
    alternate them: `kind` names it, `candidates_gbs` has each one's rate. One per device and run:
    copy_reference()."""

    def __init__(self, device: str):
        xp = np
        if device == "cuda":
            import cupy as xp
        src = xp.ones(COPY_BYTES // 4, xp.float32)
        dst = xp.empty_like(src)
        self.bytes = 2 * COPY_BYTES
        # (partials of the arrays, not lambdas of self: those would make a cycle that keeps 2 GiB
        # alive until the garbage collector's next full pass)
        copies = {name: functools.partial(make(), src, dst) for name, make in COPY_CANDIDATES[device].items()}
        seconds = {name: [] for name in copies}
        for _ in range(CHOICE_ROUNDS):
            for name, copy in copies.items():
                seconds[name].append(measure(copy, device=device, repeats=5, min_seconds=0.1).median_s)
        self.candidates_gbs = {name: self.bytes / statistics.median(s) / 1e9 for name, s in seconds.items()}
        self.kind = max(self.candidates_gbs, key=self.candidates_gbs.get)
        self._copy = copies[self.kind]

    def __call__(self):
        self._copy()


_copy_references: dict = {}


def copy_reference(device: str) -> CopyReference:
    """The run's CopyReference for `device`: the ceiling's copy, and the one each memory-bound case is
    timed beside (measure_beside_copy), chosen once."""
    if device not in _copy_references:
        _copy_references[device] = CopyReference(device)
    return _copy_references[device]


def _copy_ceiling(device: str) -> dict:
    """The copy ceiling: the chosen copy's rate over its rounds."""
    copy = copy_reference(device)
    return {"copy_gbs": copy.candidates_gbs[copy.kind], "copy": copy.kind, "copy_candidates_gbs": copy.candidates_gbs}


def cpu_ceilings() -> dict:
    """Peak SGEMM GFLOP/s (NumPy's BLAS, 2048^3) and copy bandwidth GB/s (copy_reference)."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    t = measure(lambda: np.dot(a, a, out=c), repeats=5)
    return {"sgemm_gflops": 2 * n**3 / t.median_s / 1e9, **_copy_ceiling("cpu")}


# A shared host's memory bandwidth drifts, in phases of seconds to minutes: on the twenty-third
# session's Zen 4 host one float32 sum over 1 GiB ran at 31 and then 53 GB/s in the same process,
# and the copy ceiling, measured once at the start of a run, put the same fused cross-entropy at
# 62-96% of it over sessions 19-22. So a memory-bound case past the last-level cache is also
# measured against a copy timed just before it, in BESIDE_ROUNDS rounds: its "% of the copy beside
# it" is the median of the rounds' ratios, which a phase moves much less than either rate.
BESIDE_ROUNDS = 5


def measure_beside_copy(fn, copy: CopyReference, *, device="cpu", repeats=7):
    """(fn's Timing over all rounds' samples, [(fn's median seconds, the copy's GB/s) per round]),
    each round the copy measured, then fn. The Timing's first call is the first round's."""
    rounds, samples, first = [], [], None
    for _ in range(BESIDE_ROUNDS):
        copy_s = measure(copy, device=device, repeats=5, min_seconds=0.1).median_s
        t = measure(fn, device=device, repeats=repeats, min_seconds=0.1, _samples=samples)
        first = t.first_s if first is None else first
        rounds.append((t.median_s, copy.bytes / copy_s / 1e9))
    return _timing(first, samples), rounds


def gpu_ceilings() -> dict:
    import cupy

    n = 8192
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    t = measure(lambda: a @ a, device="cuda", repeats=5)
    return {"sgemm_gflops": 2 * n**3 / t.median_s / 1e9, **_copy_ceiling("cuda")}


# ---- results ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    family: str
    case: str
    unit: str                  # "GFLOP/s", "GB/s" or "images/s"
    work: float                # flops, bytes or images per call
    fastconv: Timing
    peers: dict                # name -> Timing
    ceiling: float | None = None  # in `unit`, for the % column
    beside: list | None = None    # measure_beside_copy's rounds: [(fastconv's seconds, copy GB/s)]

    def rate(self, t: Timing) -> float:
        scale = 1.0 if self.unit == "images/s" else 1e9
        return self.work / t.median_s / scale

    def percents_beside(self) -> list[float]:
        """Per round, fastconv's rate as a percentage of the copy measured just before it."""
        return [100 * self.work / seconds / 1e9 / copy_gbs for seconds, copy_gbs in self.beside or []]

    def as_dict(self) -> dict:
        d = {"family": self.family, "case": self.case, "unit": self.unit, "work": self.work,
             "fastconv": dataclasses.asdict(self.fastconv), "fastconv_rate": self.rate(self.fastconv),
             "peers": {k: dataclasses.asdict(v) for k, v in self.peers.items()},
             "peer_rates": {k: self.rate(v) for k, v in self.peers.items()},
             "ratios": {k: v.median_s / self.fastconv.median_s for k, v in self.peers.items()}}
        if self.ceiling:
            d["percent_of_ceiling"] = 100 * self.rate(self.fastconv) / self.ceiling
        if self.beside:
            pct = self.percents_beside()
            d["copy_beside"] = {"rounds": [list(r) for r in self.beside], "percent": statistics.median(pct),
                                "percent_range": [min(pct), max(pct)]}
        return d

    def line(self) -> str:
        spread = f"[{self.work / self.fastconv.p90_s / (1 if self.unit == 'images/s' else 1e9):.3g}-" \
                 f"{self.work / self.fastconv.p10_s / (1 if self.unit == 'images/s' else 1e9):.3g}]"
        text = f"{self.family:11s} {self.case:44s} {self.rate(self.fastconv):10.2f} {self.unit:9s} {spread:>17s}"
        for name, t in self.peers.items():
            text += f"  {name} {self.rate(t):8.2f} (x{t.median_s / self.fastconv.median_s:5.2f})"
        if self.ceiling:
            text += f"  {100 * self.rate(self.fastconv) / self.ceiling:5.1f}% of ceiling"
        if self.beside:
            pct = self.percents_beside()
            text += f" ({statistics.median(pct):.1f}% of the copy beside it, [{min(pct):.0f}-{max(pct):.0f}])"
        text += f"  first call {self.fastconv.first_s * 1e3:.1f} ms"
        return text


def machine(device: str) -> dict:
    import numba

    info = {"date": datetime.date.today().isoformat(), "device": device, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "fastconv": fastconv.__version__,
            "threads": numba.get_num_threads(), "cpu": fastconv._info._cpu_model()}
    torch = torch_or_none()
    if torch is not None:
        info["torch"] = torch.__version__
    if device == "cuda":
        import cupy

        info["gpu"] = fastconv.backend.load("cuda").ext.device_name(0)
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return info


def header() -> str:
    return "x(peer) = peer time / fastconv time: above 1 means fastconv is faster"


def write(rows: list[Row], device: str, ceilings: dict, name: str, out_dir: Path = RESULTS) -> Path:
    """Writes <name>.json, <name>.md and <name>.png into out_dir; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = machine(device)
    data = {"machine": meta, "ceilings": ceilings, "rows": [r.as_dict() for r in rows]}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    (out_dir / f"{name}.md").write_text(markdown(data))
    plot(data, out_dir / f"{name}.png")
    return path


def markdown(data: dict) -> str:
    m, c = data["machine"], data["ceilings"]
    where = m.get("gpu") or m["cpu"]
    lines = [f"### {where} — {m['date']}", "",
             f"fastconv {m['fastconv']}, numpy {m['numpy']}, numba {m['numba']}"
             + (f", torch {m['torch']}" if "torch" in m else "") + (f", cupy {m['cupy']}" if "cupy" in m else "")
             + f"; {m['threads']} threads. Ceilings measured in the same run: SGEMM {c['sgemm_gflops']:.1f} GFLOP/s, "
             f"copy {c['copy_gbs']:.1f} GB/s" + (f" ({c['copy']} copy)" if "copy" in c else "")
             + ". Ratio = peer time / fastconv time (> 1: fastconv faster); "
             "median of the timed calls, [p10–p90 of fastconv's rate]."
             + (" Beside: the median [range], over the rounds of measure_beside_copy, of fastconv's rate as a "
                "% of the copy timed just before it (those rows' spread pools all the rounds' calls)."
                if any("copy_beside" in r for r in data["rows"]) else ""), "",
             "| family | case | fastconv | spread | % ceiling | peers (rate, ratio) | first call |",
             "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        scale = 1 if r["unit"] == "images/s" else 1e9
        f = r["fastconv"]
        spread = f"{r['work'] / f['p90_s'] / scale:.3g}–{r['work'] / f['p10_s'] / scale:.3g}"
        peers = "; ".join(f"{k} {r['peer_rates'][k]:.3g} (×{r['ratios'][k]:.2f})" for k in r["peers"])
        pct = f"{r['percent_of_ceiling']:.0f}%" if "percent_of_ceiling" in r else ""
        if "copy_beside" in r:
            lo, hi = r["copy_beside"]["percent_range"]
            pct += f" (beside: {r['copy_beside']['percent']:.0f}% [{lo:.0f}–{hi:.0f}])"
        lines.append(f"| {r['family']} | {r['case']} | {r['fastconv_rate']:.3g} {r['unit']} | {spread} | {pct} | "
                     f"{peers} | {f['first_s'] * 1e3:.0f} ms |")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    peers = sorted({k for r in rows for k in r["ratios"]})
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
    y = np.arange(len(rows))
    height = 0.8 / max(1, len(peers))
    for i, peer in enumerate(peers):
        ax.barh(y + i * height, [r["ratios"].get(peer, np.nan) for r in rows], height, label=f"vs {peer}")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")  # ratios from 0.3x to 40x: equal factors, equal lengths
    ax.set_yticks(y + 0.4 - height / 2)
    ax.set_yticklabels([f"{r['family']}: {r['case'].split(' (')[0]}"[:60] for r in rows], fontsize=7)
    ax.set_xlabel("speed-up of fastconv (peer time / fastconv time; log scale, > 1: fastconv faster)")
    ax.set_title(data["machine"].get("gpu") or data["machine"]["cpu"], fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
