"""The cpu backend's vector math (fastconv/_cpu/_vecmath.py). The portable float32 exp and log1p
stay float32 and vectorizable, within a few ulp of float64. The AVX-512 / AVX2 float32 sigmoid (sigmoid16
and the kernels of _cpu/dense.py built on it): its accuracy against float64 on ordinary and extreme inputs, the same
bits wherever a value sits (vector body, padded tail, streamed lines, any alignment), the guard
values either side untouched, and the op's choice of kernel. Skipped where the host has no
AVX-512F or AVX2 (the portable kernels are then the only ones, tested in test_dense.py)."""
import re

import numpy as np
import pytest
from numba.core import config

from fastconv import ops
from fastconv._cpu import _stream, _vecmath, dense

from numba import njit, types
from numba.extending import intrinsic

from fastconv._cpu._vecmath import exp_nonpositive, log1p_unit
from helpers import needs_simd

F32 = np.finfo(np.float32)


def _fit_tool():
    pytest.importorskip("scipy")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "fit_exp_polynomial.py"
    spec = importlib.util.spec_from_file_location("fit_exp_polynomial", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_the_exp_polynomial_is_the_fit_of_its_tool():
    """_EXP_POLYNOMIAL is what tools/fit_exp_polynomial.py computes (a minimax fit in ulps over float32
    coefficients), and its error before the evaluation's roundings is the 0.037 ulp its comment says
    (the Taylor series it replaced: 0.087)."""
    coefficients, error = _fit_tool().fit()
    assert coefficients == _vecmath._EXP_POLYNOMIAL
    assert error < 0.04


def test_the_exp_table_polynomial_is_the_fit_of_its_tool():
    """The table form's polynomial is the tool's fit (relative error 0.027 x 2^-24 before the
    roundings, the Taylor series' 0.17)."""
    coefficients, error = _fit_tool().fit_table()
    assert coefficients == _vecmath._EXP_TABLE_POLYNOMIAL
    assert error < 0.03


def test_the_exp_table_holds_two_to_the_sixteenths_and_their_rounding():
    for j, (hi, lo) in enumerate(zip(_vecmath._EXP2_SIXTEENTHS, _vecmath._EXP2_SIXTEENTHS_LO)):
        assert hi == np.float32(hi) and lo == np.float32(lo)
        assert lo != 0 or j == 0
        assert abs(hi + lo - 2.0 ** (j / 16)) < 2.0 ** -45


def _sigmoid64(x):
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


def _ulps(actual, reference64):
    """|actual - reference| in units of the float32 spacing at the reference (subnormals: the
    smallest spacing)."""
    spacing = np.maximum(np.spacing(np.abs(reference64).astype(np.float32)).astype(np.float64), F32.smallest_subnormal)
    return np.abs(actual.astype(np.float64) - reference64) / spacing



@intrinsic
def _scaled16(typingctx, p, k, out, at):
    """out[at : at + 16] = _scale_by_power_of_two(p[at : at + 16], k[at : at + 16])."""
    def codegen(context, builder, signature, args):
        def vector(n):
            data = context.make_array(signature.args[n])(context, builder, args[n]).data
            return builder.bitcast(builder.gep(data, [args[3]]), _vecmath._V16.as_pointer())

        result = _vecmath._scale_by_power_of_two(builder, builder.load(vector(0), align=4), builder.load(vector(1), align=4))
        builder.store(result, vector(2), align=4)
        return context.get_dummy_value()

    return types.void(p, k, out, at), codegen


@njit
def _scaled(p, k, out):
    for at in range(0, p.size, 16):
        _scaled16(p, k, out, at)


@needs_simd
def test_scale_by_a_power_of_two_rounds_once_as_ldexp():
    # every k the exp can produce, with mantissas across [0.5, 2] (and both ends): subnormal results
    # round once, to nearest even, as ldexp's exact result rounded to float32
    rng = np.random.default_rng(0)
    k = np.repeat(np.arange(-160, 1), 64).astype(np.float32)
    p = rng.uniform(0.5, 2.0, k.size).astype(np.float32)
    p[::64], p[1::64], p[2::64] = 0.5, 2.0, np.nextafter(np.float32(1), np.float32(2))
    out = np.empty_like(p)
    _scaled(p, k, out)
    np.testing.assert_array_equal(out, np.ldexp(p.astype(np.float64), k.astype(int)).astype(np.float32))
    p[:16], k[:16] = np.nan, np.nan  # a NaN input's lanes: p and k NaN, the result NaN
    _scaled(p, k, out)
    assert np.isnan(out[:16]).all()


@njit
def _softplus_term(x):
    return log1p_unit(exp_nonpositive(-abs(x)))


def test_portable_exp_and_log1p_compute_in_float32():
    # A float64 constant among their globals once made both float64, and log1p a scalar libm call
    # in every loop built on them (BCE ran at 0.7 GB/s); the results were still accurate.
    exp_only = njit(lambda v: exp_nonpositive(v))
    for fn in (exp_only, _softplus_term):
        fn(np.float32(-1.5))
        assert str(fn.nopython_signatures[0].return_type) == "float32"
    llvm_ir = next(iter(_softplus_term.inspect_llvm().values()))
    assert not re.search(r"call [^@]*@\"?(log1p|exp|log)f?\b", llvm_ir)


def test_portable_exp_and_log1p_are_within_a_few_ulps_of_float64():
    x = np.concatenate([-np.geomspace(1e-30, 87.0, 20001), [0.0, -87.2, -87.4, -100.0]]).astype(np.float32)
    got = njit(lambda a: np.array([exp_nonpositive(v) for v in a]))(x)
    ref = np.exp(x.astype(np.float64))
    assert got.dtype == np.float32
    assert _ulps(got[ref > F32.tiny], ref[ref > F32.tiny]).max() <= 3
    assert np.all(got[x < -87.3] == 0)
    e = np.linspace(0, 1, 20001, dtype=np.float32)
    got = njit(lambda a: np.array([log1p_unit(v) for v in a]))(e)
    assert got.dtype == np.float32
    assert _ulps(got, np.log1p(e.astype(np.float64))).max() <= 3

@needs_simd
def test_sigmoid16_is_within_4_ulps_of_float64_everywhere():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1 << 16) * s for s in (0.01, 1, 8, 40)]).astype(np.float32)
    x = np.concatenate([x, np.linspace(-104, 90, 1 << 16, dtype=np.float32)])  # the subnormal outputs too
    y = dense.sigmoid_forward(x)
    assert _ulps(y, _sigmoid64(x)).max() <= 4


@needs_simd
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


@needs_simd
@pytest.mark.parametrize("n", SIZES)
def test_every_value_gets_the_same_bits_wherever_it_sits(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10).astype(np.float32)
    # each value alone (the padded path) gives the reference bits
    alone = np.array([dense.sigmoid_forward(x[i:i + 1])[0] for i in range(min(n, 40))], np.float32)
    for skip in (0, 1, 7, 15):
        for kernel, streamed in [(dense._sigmoid_forward_simd, False), (dense._sigmoid_forward_simd_streamed, True)]:
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


@needs_simd
def test_the_op_takes_the_avx512_kernels_for_float32_only(monkeypatch):
    used = []
    for name in ("_sigmoid_forward_simd", "_sigmoid_forward_simd_streamed", "_sigmoid_forward"):
        real = getattr(dense, name)
        monkeypatch.setattr(dense, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    x = np.random.default_rng(1).standard_normal((30, 50)).astype(np.float32)
    y = ops.sigmoid_forward(x)
    ops.sigmoid_forward(x.astype(np.float64))
    monkeypatch.setattr(_stream, "_STREAM_FROM", 0)
    np.testing.assert_array_equal(ops.sigmoid_forward(x), y)
    assert used == ["_sigmoid_forward_simd", "_sigmoid_forward", "_sigmoid_forward_simd_streamed"]
    monkeypatch.setattr(_vecmath, "SIMD", False)  # the portable kernel: within a few ulps of the same
    portable = ops.sigmoid_forward(x)
    assert used[-1] == "_sigmoid_forward"
    assert _ulps(portable, _sigmoid64(x)).max() <= 4


def test_the_vector_kernels_are_used_only_when_the_host_and_the_settings_allow(monkeypatch):
    monkeypatch.setenv("FASTCONV_SIMD", "0")
    assert _vecmath._host_isa() is None
    monkeypatch.delenv("FASTCONV_SIMD")
    monkeypatch.setenv("FASTCONV_AVX512", "0")  # the older name, kept
    assert _vecmath._host_isa() is None
    monkeypatch.delenv("FASTCONV_AVX512")
    monkeypatch.setattr(config, "CPU_NAME", "generic")  # Numba compiling for another CPU than this one
    assert _vecmath._host_isa() is None
    monkeypatch.setattr(config, "CPU_NAME", None)
    monkeypatch.setattr(config, "CPU_FEATURES", None)  # (CI's AVX2 pass sets NUMBA_CPU_FEATURES)
    monkeypatch.setattr(_vecmath.llvm, "get_host_cpu_features", lambda: {"avx512f": False, "avx2": True})
    assert _vecmath._host_isa() is None  # AVX2 without FMA
    monkeypatch.setattr(_vecmath.llvm, "get_host_cpu_features", lambda: {"avx2": True, "fma": True})
    assert _vecmath._host_isa() == "avx2"
    monkeypatch.setattr(_vecmath.llvm, "get_host_cpu_features", lambda: {"avx512f": True, "avx2": True, "fma": True})
    assert _vecmath._host_isa() == "avx512"
    # NUMBA_CPU_FEATURES replaces the host's list: LLVM would abort compiling what it does not enable
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
    assert _vecmath._host_isa() == "avx2"
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,-fma")
    assert _vecmath._host_isa() is None
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,+avx512f,+avx512bw")
    assert _vecmath._host_isa() == "avx512"
    monkeypatch.setattr(config, "CPU_FEATURES", "")  # set but empty: features not known here
    assert _vecmath._host_isa() is None


def test_features_without_avx512_turn_off_only_avx512(monkeypatch):
    class Host:  # llvmlite's FeatureMap, as far as features_without_avx512 reads it
        def flatten(self):
            return ("+64bit,+amx-avx512,+avx,+avx10.1-512,+avx2,+avx512bw,+avx512f,-avx512fp16,+avx512vl,+evex512,+fma,"
                    "+sse4.2,-xop")

    monkeypatch.setattr(_vecmath.llvm, "get_host_cpu_features", Host)
    features = _vecmath.features_without_avx512()
    assert features == ("+64bit,-amx-avx512,+avx,-avx10.1-512,+avx2,-avx512bw,-avx512f,-avx512fp16,-avx512vl,-evex512,"
                        "+fma,+sse4.2,-xop")
    monkeypatch.setattr(config, "CPU_NAME", None)
    monkeypatch.setattr(config, "CPU_FEATURES", features)
    assert _vecmath._target_isa() == "avx2"


def test_features_without_avx512_on_this_host():
    features = _vecmath.features_without_avx512().split(",")
    assert not [f for f in features if f.startswith(("+avx512", "+avx10", "+evex512", "+amx-avx512"))]
    host = _vecmath.llvm.get_host_cpu_features()
    for name in ("avx2", "fma", "sse4.2"):
        assert (f"+{name}" in features) == bool(host.get(name, False))


# ---- the cross-entropy rows (their AVX-512 pieces: test_cpu_softmax32.py) ------------------------

@needs_simd
def test_cross_entropy_takes_the_avx512_rows_for_float32_only(monkeypatch):
    from fastconv._cpu import loss
    used = []
    for name in ("_cross_entropy_rows", "_cross_entropy_rows_simd", "_cross_entropy_grad",
                 "_cross_entropy_grad_simd"):
        real = getattr(loss, name)
        monkeypatch.setattr(loss, name, lambda *a, real=real, name=name: used.append(name) or real(*a))
    rng = np.random.default_rng(2)
    z, y = (rng.standard_normal((37, 53)) * 5).astype(np.float32), rng.integers(0, 53, 37)
    p64 = np.exp(z.astype(np.float64) - z.max(axis=1, keepdims=True))
    p64 /= p64.sum(axis=1, keepdims=True)

    def both():
        return ops.softmax_cross_entropy_with_grad(z, y), ops.softmax_cross_entropy_backward(p64.astype(z.dtype), y)

    (loss_avx, grad_avx), back_avx = both()
    (loss64, grad64), back64 = ops.softmax_cross_entropy_with_grad(z.astype(np.float64), y), \
        ops.softmax_cross_entropy_backward(p64, y)
    monkeypatch.setattr(_vecmath, "SIMD", False)
    (loss_portable, grad_portable), back_portable = both()
    assert used == ["_cross_entropy_rows_simd", "_cross_entropy_grad_simd", "_cross_entropy_rows",
                    "_cross_entropy_grad", "_cross_entropy_rows", "_cross_entropy_grad"]
    for got in (grad_avx, grad_portable):
        np.testing.assert_allclose(got, grad64, rtol=2e-6, atol=1e-9)
    for got in (back_avx, back_portable):
        np.testing.assert_allclose(got, back64, rtol=2e-6, atol=1e-9)
    for got in (loss_avx, loss_portable):
        np.testing.assert_allclose(float(got), float(loss64), rtol=2e-6)
