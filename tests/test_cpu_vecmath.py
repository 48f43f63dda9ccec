"""The cpu backend's AVX-512 float32 sigmoid (fastconv/_cpu/_vecmath.sigmoid16 and the kernels of
_cpu/dense.py built on it): its accuracy against float64 on ordinary and extreme inputs, the same
bits wherever a value sits (vector body, padded tail, streamed lines, any alignment), the guard
values either side untouched, and the op's choice of kernel. Skipped where the host has no
AVX-512F (the portable kernels are then the only ones, tested in test_dense.py)."""
import numpy as np
import pytest
from numba.core import config

from fastconv import ops
from fastconv._cpu import _stream, _vecmath, dense

avx512 = pytest.mark.skipif(not _vecmath.AVX512, reason="the host has no AVX-512F (or FASTCONV_AVX512=0)")
F32 = np.finfo(np.float32)


def _sigmoid64(x):
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


def _ulps(actual, reference64):
    """|actual - reference| in units of the float32 spacing at the reference (subnormals: the
    smallest spacing)."""
    spacing = np.maximum(np.spacing(np.abs(reference64).astype(np.float32)).astype(np.float64), F32.smallest_subnormal)
    return np.abs(actual.astype(np.float64) - reference64) / spacing


@avx512
def test_sigmoid16_is_within_4_ulps_of_float64_everywhere():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1 << 16) * s for s in (0.01, 1, 8, 40)]).astype(np.float32)
    x = np.concatenate([x, np.linspace(-104, 90, 1 << 16, dtype=np.float32)])  # the subnormal outputs too
    y = dense.sigmoid_forward(x)
    assert _ulps(y, _sigmoid64(x)).max() <= 4


@avx512
def test_sigmoid16_extremes():
    x = np.array([0, -0.0, 1e-30, -1e-30, 16.6, 17, 88, -87, -88, -100, -103, -104, -110, -1e30, 1e30,
                  np.inf, -np.inf, F32.max, -F32.max, np.nan], np.float32)
    y = dense.sigmoid_forward(x)
    ref = _sigmoid64(x[:-1])
    assert _ulps(y[:-1], ref).max() <= 4
    assert np.isnan(y[-1])
    assert y[np.isposinf(x)] == 1 and y[np.isneginf(x)] == 0 and y[x == -1e30] == 0 and y[x == 1e30] == 1
    assert y[x == -88][0] > 0  # subnormal, not flushed to zero


SIZES = [0, 1, 15, 16, 17, 31, 33, 300, _stream.SPAN - 1, _stream.SPAN + 17, 3 * _stream.SPAN + 200]


def _offset_view(n, skip):
    """n float32 values whose element `skip` starts a 64-byte line, with 16 guard values either side."""
    raw = np.full(n + 64, 7, np.float32)
    start = ((-raw.ctypes.data) % 64 // 4 - skip) % 16 + 16
    out = raw[start:start + n]
    assert n == 0 or _stream.align_skip(out) == skip
    return raw, out


@avx512
@pytest.mark.parametrize("n", SIZES)
def test_every_value_gets_the_same_bits_wherever_it_sits(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10).astype(np.float32)
    # each value alone (the padded path) gives the reference bits
    alone = np.array([dense.sigmoid_forward(x[i:i + 1])[0] for i in range(min(n, 40))], np.float32)
    for skip in (0, 1, 7, 15):
        for kernel, streamed in [(dense._sigmoid_forward_avx512, False), (dense._sigmoid_forward_avx512_streamed, True)]:
            raw, out = _offset_view(n, skip)
            kernel(x, out, _stream.align_skip(out)) if streamed else kernel(x, out)
            np.testing.assert_array_equal(out[:len(alone)], alone)
            assert _ulps(out, _sigmoid64(x)).max(initial=0) <= 4
            start = out.ctypes.data - raw.ctypes.data
            assert (raw[:start // 4] == 7).all() and (raw[start // 4 + n:] == 7).all()
            if streamed:
                streamed_out = out.copy()
            else:
                plain_out = out.copy()
        np.testing.assert_array_equal(streamed_out, plain_out)


@avx512
def test_the_op_takes_the_avx512_kernels_for_float32_only(monkeypatch):
    used = []
    for name in ("_sigmoid_forward_avx512", "_sigmoid_forward_avx512_streamed", "_sigmoid_forward"):
        real = getattr(dense, name)
        monkeypatch.setattr(dense, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    x = np.random.default_rng(1).standard_normal((30, 50)).astype(np.float32)
    y = ops.sigmoid_forward(x)
    ops.sigmoid_forward(x.astype(np.float64))
    monkeypatch.setattr(_stream, "_STREAM_FROM", 0)
    np.testing.assert_array_equal(ops.sigmoid_forward(x), y)
    assert used == ["_sigmoid_forward_avx512", "_sigmoid_forward", "_sigmoid_forward_avx512_streamed"]
    monkeypatch.setattr(_vecmath, "AVX512", False)  # the portable kernel: within a few ulps of the same
    portable = ops.sigmoid_forward(x)
    assert used[-1] == "_sigmoid_forward"
    assert _ulps(portable, _sigmoid64(x)).max() <= 4


def test_avx512_is_used_only_when_the_host_and_the_settings_allow(monkeypatch):
    monkeypatch.setenv("FASTCONV_AVX512", "0")
    assert not _vecmath._host_has_avx512()
    monkeypatch.delenv("FASTCONV_AVX512")
    monkeypatch.setattr(config, "CPU_NAME", "generic")  # Numba compiling for another CPU than this one
    assert not _vecmath._host_has_avx512()
    monkeypatch.setattr(config, "CPU_NAME", None)
    monkeypatch.setattr(_vecmath.llvm, "get_host_cpu_features", lambda: {"avx512f": False})
    assert not _vecmath._host_has_avx512()
    monkeypatch.setattr(_vecmath.llvm, "get_host_cpu_features", lambda: {"avx512f": True})
    assert _vecmath._host_has_avx512()
