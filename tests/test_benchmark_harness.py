"""The benchmark harness's bookkeeping (benchmarks/harness.py): the rounds beside the copy and how a
row reports them. The timings themselves are the benchmarks' business, not the tests'."""
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402


class FakeCopy:
    """A stand-in for CopyReference: `bytes` of traffic per call, each call sleeping `seconds`."""

    def __init__(self, nbytes, seconds):
        self.bytes, self.seconds = nbytes, seconds

    def __call__(self):
        time.sleep(self.seconds)


def test_measure_beside_copy_alternates_the_copy_and_the_case(monkeypatch):
    monkeypatch.setattr(harness, "quiesce", lambda: None)
    order = []
    copy = FakeCopy(2e6, 0.001)
    timed_copy = lambda: order.append("copy") or copy()  # noqa: E731
    timed_copy.bytes = copy.bytes

    def case():  # its very first call (a compilation, say) is slow
        time.sleep(0.03 if "case" not in order else 0.002)
        order.append("case")

    timing, rounds = harness.measure_beside_copy(case, timed_copy, repeats=3)
    assert len(rounds) == harness.BESIDE_ROUNDS
    # each round: the copy's calls, then the case's (first, warm-up, timed), never interleaved within
    runs = [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]
    assert runs == ["copy", "case"] * harness.BESIDE_ROUNDS
    # the Timing pools every round's timed calls (at least `repeats` each; not the first calls or warm-up)
    assert 3 * harness.BESIDE_ROUNDS <= timing.repeats <= order.count("case") - 4 * harness.BESIDE_ROUNDS
    assert 0.0015 < timing.median_s < 0.02 and timing.p90_s < 0.02
    assert timing.first_s >= 0.03  # the first round's first call, not a later round's
    for case_s, copy_gbs in rounds:
        assert 0.0015 < case_s < 0.05
        assert 2e6 / 0.05 / 1e9 < copy_gbs < 2e6 / 0.0009 / 1e9


def test_a_row_reports_its_rounds_as_percentages_of_the_copy_beside_it():
    t = harness.Timing(first_s=1.0, median_s=0.5, p10_s=0.4, p90_s=0.6, repeats=10)
    # 10 GB of work: 20 GB/s at 0.5 s; against copies of 40, 25 and 20 GB/s: 50%, 80%, 100%
    row = harness.Row("losses", "case", "GB/s", 10e9, t, {}, ceiling=50.0, beside=[(0.5, 40.0), (0.5, 25.0), (0.4, 25.0)])
    assert row.percents_beside() == pytest.approx([50.0, 80.0, 100.0])
    d = row.as_dict()
    assert d["percent_of_ceiling"] == pytest.approx(40.0)
    assert d["copy_beside"]["percent"] == pytest.approx(80.0)
    assert d["copy_beside"]["percent_range"] == pytest.approx([50.0, 100.0])
    assert "80.0% of the copy beside it, [50-100]" in row.line()
    table = harness.markdown({"machine": {"cpu": "a CPU", "date": "2026-12-06", "fastconv": "0", "numpy": "0",
                                          "numba": "0", "threads": 2},
                              "ceilings": {"sgemm_gflops": 1.0, "copy_gbs": 50.0}, "rows": [d]})
    assert "| 40% (beside: 80% [50–100]) |" in table
    assert "Beside:" in table


def test_a_row_without_rounds_reports_the_ceiling_alone():
    t = harness.Timing(first_s=1.0, median_s=0.5, p10_s=0.4, p90_s=0.6, repeats=10)
    d = harness.Row("pool", "case", "GB/s", 10e9, t, {}, ceiling=50.0).as_dict()
    assert "copy_beside" not in d
    table = harness.markdown({"machine": {"cpu": "a CPU", "date": "2026-12-06", "fastconv": "0", "numpy": "0",
                                          "numba": "0", "threads": 2},
                              "ceilings": {"sgemm_gflops": 1.0, "copy_gbs": 50.0}, "rows": [d]})
    assert "| 40% |" in table and "Beside:" not in table


@pytest.mark.parametrize("name", sorted(harness.COPY_CANDIDATES["cpu"]))
def test_every_ceiling_copy_copies_every_value_wherever_the_arrays_start(name):
    """A candidate that wrote too little would run faster and become the ceiling: each one copies
    arrays that start off a 64-byte line, of sizes around the streamed copy's lines, blocks and
    tasks (_stream.py: 16 values a line, BLOCK 128, SPAN 65536)."""
    copy = harness.COPY_CANDIDATES["cpu"][name]()
    buffers = np.empty(2 * (70000 + 32), np.float32).reshape(2, -1)
    for offset in (0, 1, 7, 15):
        for n in (0, 5, 16, 127, 129, 1000, 65536 + 31, 70000):
            src, dst = buffers[0, offset:offset + n], buffers[1, offset:offset + n]
            src[:] = np.arange(1, n + 1, dtype=np.float32)
            dst[:] = 0
            copy(src, dst)
            np.testing.assert_array_equal(dst, src, err_msg=f"{name}: {n} values from offset {offset}")
    square = np.arange(64.0, dtype=np.float32).reshape(8, 8)
    out = np.zeros_like(square)
    copy(square, out)
    np.testing.assert_array_equal(out, square)


@pytest.mark.parametrize("name", ["ordinary", "streamed"])
def test_the_threaded_copies_refuse_arrays_they_would_copy_wrongly(name):
    copy = harness.COPY_CANDIDATES["cpu"][name]()
    a = np.zeros((4, 6), np.float32)
    for src, dst in ((a, a.T), (a, np.zeros((4, 5), np.float32)), (a, np.zeros((4, 6), np.float64))):
        with pytest.raises(ValueError, match="aligned C-contiguous"):
            copy(src, dst)
