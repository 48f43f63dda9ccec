"""exp(x) for x <= 0, log1p(e) for e in [0, 1] and a float max, in forms LLVM vectorizes; the same
exp and log1p as LLVM IR on 16 floats at once; the float32 sigmoid of 16 values at once in AVX-512
instructions (two AVX2 halves on hosts with AVX2 and FMA only); and the vector helpers (masked loads
and stores, broadcasts) the AVX-512 / AVX2 kernels of this package are written with.

Numba calls libm's scalar exp (PyPI's llvmlite has no SVML), which keeps sigmoid and softmax far
from memory bandwidth. Two float32 exps, both 2^k * p(r) with 2^k built from its exponent bits (an
LLVM bitcast), for x <= 0, which is what the callers need (exp(-|v|) in sigmoid, exp(z - max) in
softmax; _softmax32's rows also take x > 0 with the AVX-512 form, where it is as exact):
- exp_nonpositive, a Numba function (Cody-Waite reduction, the Cephes expf polynomial, about 2 ulp;
  0 below -87.3, where 2^k would leave the normal numbers) whose loops LLVM vectorizes: the
  portable loops' (_activation.sigmoid, loss.py's cross-entropy and BCE rows);
- _exp16_nonpositive_ir, 16 lanes in IR (an FMA reduction; with AVX-512 a table of 2^(j/16) and a
  degree-3 polynomial, at most 0.568 ulp; with AVX2 a degree-6 minimax polynomial, at most 0.891
  ulp; subnormal results within 0.762 and 0.858 of the smallest subnormal): sigmoid16 and the
  AVX-512 / AVX2 kernels (_softmax32, _bce32).
float64 inputs use np.exp (they are for gradient checks, not speed).
"""
import os

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload

_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_MIN_X = np.float32(-87.3)
_HALF = np.float32(0.5)
_ONE = np.float32(1)
_ZERO = np.float32(0)
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterprets the low 32 bits of an integer as a float32 (a register bitcast)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


def exp_nonpositive(x):
    """exp(x) for x <= 0 (NaN stays NaN); jit-only, see the overload below."""
    return np.exp(x)


@overload(exp_nonpositive, inline="always")
def _exp_nonpositive(x):
    if x != types.float32:
        return lambda x: np.exp(x)

    def impl(x):
        xc = x if x > _MIN_X else _MIN_X
        k = np.floor(xc * _LOG2E + _HALF)
        r = xc - k * _LN2_HI - k * _LN2_LO
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        p = p * r * r + r + _ONE
        scale = _float32_from_bits((np.int32(k) + 127) << 23)
        y = p * scale
        y = _ZERO if x < _MIN_X else y
        return x if x != x else y

    return impl


def log1p_unit(e):
    """log(1 + e) for 0 <= e <= 1 (NaN stays NaN); jit-only, see the overload below."""
    return np.log1p(e)


@overload(log1p_unit, inline="always")
def _log1p_unit(e):
    """float32: log1p(e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3], by its odd series to s^15
    (truncation below 1e-9 relative; exact as e -> 0, unlike log(1 + e)). Only a division and
    multiply-adds, so a loop of it vectorizes. float64 uses np.log1p."""
    if e != types.float32:
        return lambda e: np.log1p(e)

    def impl(e):
        s = e / (_TWO + e)
        z = s * s
        p = ((((((_C15 * z + _C13) * z + _C11) * z + _C9) * z + _C7) * z + _C5) * z + _C3) * z + _ONE
        return _TWO * s * p

    return impl


_TWO = np.float32(2)
_C3, _C5, _C7, _C9 = np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7), np.float32(1 / 9)
_C11, _C13, _C15 = np.float32(1 / 11), np.float32(1 / 13), np.float32(1 / 15)


@intrinsic
def maxnum(typingctx, a, b):
    """LLVM's maxnum: the larger of two floats of one type, the other one when either is NaN. A
    loop of it, in a function with fastmath {"nnan", "nsz"}, vectorizes to a max reduction (the
    Python max() in such a loop stayed scalar: a row max of float32 at 8 GB/s, this at 32 GB/s)."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        value = context.get_value_type(signature.args[0])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(value, [value, value]),
                                            f"llvm.maxnum.f{signature.args[0].bitwidth}")
        return builder.call(fn, args)

    return a(a, b), codegen


# ---- exp and sigmoid of 16 float32 at once: AVX-512, or AVX2 in two halves ---------------------------

def _host_isa():
    """The widest vector instruction set the kernels may use: _target_isa(), or None (portable loops
    only) where FASTCONV_SIMD=0 (or the older FASTCONV_AVX512=0) says so."""
    if "0" in (os.environ.get("FASTCONV_SIMD", "").strip(), os.environ.get("FASTCONV_AVX512", "").strip()):
        return None
    return _target_isa()


def _target_isa():
    """What Numba compiles for: "avx512" (AVX-512F), "avx2" (AVX2 and FMA) or None; the host's
    (NUMBA_CPU_NAME unset or "host"), or NUMBA_CPU_FEATURES when set (it replaces the host's
    feature list; LLVM aborts the process compiling an instruction it does not enable). Set but
    empty, LLVM takes the CPU model's own features, which are not read here: None, the portable
    loops, the safe side. A named NUMBA_CPU_NAME gives None."""
    if config.CPU_NAME not in (None, "host"):
        return None
    if config.CPU_FEATURES is not None:
        enabled = set(config.CPU_FEATURES.replace(" ", "").split(","))
        has = {name: f"+{name}" in enabled for name in ("avx512f", "avx2", "fma")}
    else:
        host = llvm.get_host_cpu_features()
        has = {name: bool(host.get(name, False)) for name in ("avx512f", "avx2", "fma")}
    if has["avx512f"]:
        return "avx512"
    return "avx2" if has["avx2"] and has["fma"] else None


def features_without_avx512():
    """The host's LLVM feature list with every AVX-512 feature (and what builds on it) turned off:
    NUMBA_CPU_FEATURES for running the AVX2 kernels on an AVX-512 host. CI's AVX2 pass uses it, so
    both forms of the kernels are tested whichever kind of host CI lands on
    (`python -c "from fastconv._cpu._vecmath import features_without_avx512 as f; print(f())"`)."""
    on_avx512 = ("avx512", "amx-avx512", "avx10", "evex512")
    flags = llvm.get_host_cpu_features().flatten().split(",")
    return ",".join("-" + f[1:] if f[1:].startswith(on_avx512) else f for f in flags if f)


# Read at each call by the ops that have vector kernels (tests switch them off to run the portable
# loops). The kernels are written on <16 x float>: with AVX2, LLVM runs each in two ymm halves,
# and the few AVX-512-only instructions have AVX2 forms below. SIMD: the 16-lane kernels run;
# AVX512: also the register-tiled GEMM and convolution kernels, whose tiles fill 32 zmm registers.
ISA = _host_isa()
SIMD = ISA is not None
AVX512 = ISA == "avx512"
# What the kernels' code and tile shapes are built for: the compile target alone, never switched
# (Numba's on-disk cache keys compiled code by the CPU and its features, not by FASTCONV_SIMD or
# by a test's patch of the flags above, so code built from those could come back under the wrong
# flags).
TARGET_AVX512 = _target_isa() == "avx512"

_V16 = ir.VectorType(ir.FloatType(), 16)
_I16, _I32 = ir.IntType(16), ir.IntType(32)
# ln 2 split for the FMA reduction (own names: the jitted exp_nonpositive above reads _LN2_HI/_LO
# from this module's globals when it compiles, and float64 ones here turned its math into float64)
_LN2 = 0.6931471805599453
_FMA_LN2_HI = float(np.float32(_LN2))
_FMA_LN2_LO = float(np.float32(_LN2 - _FMA_LN2_HI))
# e^r ~ 1 + r + c2 r^2 + ... + c6 r^6 for |r| <= ln2 / 2: minimax in ulps of the float32 result
# over float32 coefficients (tools/fit_exp_polynomial.py), 0.037 ulp before the evaluation's
# roundings. It replaced the Taylor series to r^7 (0.087 ulp): one FMA fewer in 12 and more
# accurate; every float32 input in [-110, 0] checked, max 0.891 ulp against the Taylor's 0.937.
_EXP_POLYNOMIAL = [1.0, 1.0, 0.49999991059303284, 0.1666652113199234, 0.04166889935731888, 0.00836868491023779,
                   0.00137886602897197]

# The table form's (_exp16_table_ir): 2^(j/16) for j = 0..15 rounded to float32, and
# e^r - 1 ~ r + c2 r^2 + c3 r^3 for |r| <= ln2/32 (minimax in relative error over float32
# coefficients: tools/fit_exp_polynomial.py --table).
_EXP2_SIXTEENTHS = [float(np.float32(2.0 ** (j / 16))) for j in range(16)]
_EXP2_SIXTEENTHS_LO = [float(np.float32(2.0 ** (j / 16) - t)) for j, t in enumerate(_EXP2_SIXTEENTHS)]
_EXP_TABLE_POLYNOMIAL = [0.5000161528587341, 0.1666671633720398]
_SIXTEENTHS_MAGIC = 1.5 * 2.0 ** 19  # float32 spacing 1/16 in [2^19, 2^20)


_I64 = ir.IntType(64)


def _splat(value):
    return ir.Constant(_V16, [ir.Constant(ir.FloatType(), float(np.float32(value)))] * 16)


def _call(builder, name, *args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [a.type for a in args]), name)
    return builder.call(fn, list(args))


# IR helpers shared with _gemm32.py's and _taps32.py's tiles, _softmax32.py and _bce32.py.
def as_i64(builder, value):
    """An integer IR value widened to 64 bits (sign-extended)."""
    return builder.sext(value, _I64) if value.type.width < 64 else value


def broadcast(builder, scalar, lanes=16):
    """A <lanes x T> with every lane the IR scalar `scalar`."""
    vector = ir.VectorType(scalar.type, lanes)
    return builder.shuffle_vector(builder.insert_element(ir.Constant(vector, None), scalar, ir.Constant(_I32, 0)),
                                  ir.Constant(vector, None), ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def lanes_below(builder, count, lanes=16):
    """The <lanes x i1> mask of the lanes whose index is below the 64-bit IR integer `count`."""
    return builder.icmp_signed("<", ir.Constant(ir.VectorType(_I64, lanes), list(range(lanes))),
                               broadcast(builder, count, lanes))


def lane_sum(builder, v):
    """The 16 lanes of v added in a fixed tree (lanes 0-7 + 8-15, then halves again) to one float."""
    width = 16
    while width > 1:
        half = width // 2
        low, high = (builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, half), list(range(lo, lo + half))))
                     for lo in (0, half))
        v, width = builder.fadd(low, high), half
    return builder.extract_element(v, ir.Constant(_I32, 0))


def vector_at(builder, base, index):
    """The <16 x float>* at float pointer `base` plus IR integer `index`."""
    return builder.bitcast(builder.gep(base, [index]), _V16.as_pointer())


def vector_sum_loop(builder, count, vector_of, name):
    """The float sum of the <16 x float> vectors that vector_of(k, mask) emits for a 64-bit IR
    `count` (>= 0) of values: at k = 0, 16, ... for the whole vectors (mask None), in a loop, then
    once at k = count - count % 16 with `mask` its first count % 16 lanes (no lane when
    count % 16 == 0; the other lanes are not added). One vector accumulator, its lanes added by
    lane_sum: the order is fixed by count alone. vector_of emits the IR that computes (and may
    store) those values at the builder's position (it may add blocks: masked_store does without
    AVX-512); `name` names the loop's blocks."""
    whole = builder.and_(count, ir.Constant(_I64, -16))
    entry = builder.block
    loop, done = builder.append_basic_block(f"{name}_loop"), builder.append_basic_block(f"{name}_done")
    builder.cbranch(builder.icmp_signed(">", whole, ir.Constant(_I64, 0)), loop, done)

    builder.position_at_end(loop)
    k, acc = builder.phi(_I64), builder.phi(_V16)
    k_next, acc_next = builder.add(k, ir.Constant(_I64, 16)), builder.fadd(acc, vector_of(k, None))
    loop_end = builder.block  # (vector_of may have branched: the block the loop repeats from)
    k.add_incoming(ir.Constant(_I64, 0), entry)
    k.add_incoming(k_next, loop_end)
    acc.add_incoming(_splat(0.0), entry)
    acc.add_incoming(acc_next, loop_end)
    builder.cbranch(builder.icmp_signed("<", k_next, whole), loop, done)

    builder.position_at_end(done)
    total = builder.phi(_V16)
    total.add_incoming(_splat(0.0), entry)
    total.add_incoming(acc_next, loop_end)
    tail = lanes_below(builder, builder.sub(count, whole))
    return lane_sum(builder, builder.fadd(total, builder.select(tail, vector_of(whole, tail), _splat(0.0))))


def _masked_intrinsic(pointer, operation):
    vector = pointer.type.pointee
    element = "f32" if isinstance(vector.element, ir.FloatType) else f"i{vector.element.width}"
    return vector, f"llvm.masked.{operation}.v{vector.count}{element}.p0v{vector.count}{element}"


def masked_load(builder, pointer, mask):
    """The vector at `pointer` (a <n x float or int>*), lanes outside `mask` not read (0)."""
    vector, name = _masked_intrinsic(pointer, "load")
    signature = ir.FunctionType(vector, [pointer.type, _I32, mask.type, vector])
    fn = cgutils.get_or_insert_function(builder.module, signature, name)
    zeros = ir.Constant(vector, [ir.Constant(vector.element, 0)] * vector.count)
    return builder.call(fn, [pointer, ir.Constant(_I32, 4), mask, zeros])


def masked_store(builder, value, pointer, mask):
    """Stores the lanes of `value` inside `mask` at `pointer`; the others are not written. Without
    AVX-512 a full mask takes a plain store: AVX2's vmaskmovps store is microcoded on AMD cores (a
    2x2 max-pooling backward built on it ran 2-3x slower than the scalar loop on a Zen 3 host)."""
    vector, name = _masked_intrinsic(pointer, "store")
    fn = cgutils.get_or_insert_function(builder.module,
                                        ir.FunctionType(ir.VoidType(), [vector, pointer.type, _I32, mask.type]), name)
    if TARGET_AVX512:
        builder.call(fn, [value, pointer, ir.Constant(_I32, 4), mask])
        return
    every_lane = ir.IntType(vector.count)
    full = builder.icmp_unsigned("==", builder.bitcast(mask, every_lane), ir.Constant(every_lane, -1))
    with builder.if_else(full, likely=True) as (whole, part):
        with whole:
            builder.store(value, pointer, align=4)
        with part:
            builder.call(fn, [value, pointer, ir.Constant(_I32, 4), mask])


def _vmax(builder, a, b):
    """vmaxps of two <16 x float>: the larger lane, b's lane when either is NaN (one instruction;
    llvm.maxnum adds a compare and a blend to return the non-NaN one). Without AVX-512, the select
    that LLVM matches to vmaxps (its exact semantics: a > b is false when either is NaN)."""
    if not TARGET_AVX512:
        return builder.select(builder.fcmp_ordered(">", a, b), a, b)
    return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16, _I32]),
                                                       "llvm.x86.avx512.max.ps.512"), [a, b, ir.Constant(_I32, 4)])


_V16I = ir.VectorType(_I32, 16)


def _vscalef(builder, p, k):
    """vscalefps (AVX-512F): p * 2^floor(k) for <16 x float> p and k, rounded once (subnormal
    results too), in the current rounding mode, every lane."""
    all_lanes, current_rounding = ir.Constant(_I16, -1), ir.Constant(_I32, 4)
    return _call(builder, "llvm.x86.avx512.mask.scalef.ps.512", p, k, p, all_lanes, current_rounding)


def _scale_by_power_of_two(builder, p, k):
    """p * 2^k for a <16 x float> p in [0.5, 2] and integral k in [-160, 0], rounded once (subnormal
    results too): vscalefps with AVX-512. Otherwise two products: p * 2^(k + 64), exact (a normal
    result: k + 64 >= -96), then * 2^-64, which rounds once: the same bits as vscalefps. 2^(k + 64)
    comes from the bits of k + 1.5 * 2^23, whose low mantissa bits hold k: (bits + 191) << 23 is
    (k + 191) << 23, the biased exponent, as the magic number's own bits shift out (its low 9 are
    zero). A NaN k gives defined bits (fptosi of a NaN is LLVM poison); p is NaN then, and so is the
    product. k > 63 is outside this form's domain (k = 64 gives inf); the exp's clamp keeps k in
    [-159, 0]. 5 vector operations per half, against 10 for 2^(k - k//2) * 2^(k//2).
    The two products must stay two: a caller compiled with fastmath's reassoc could let LLVM fold
    them into p * (2^(k+64) * 2^-64), which rounds differently at k = -150. No caller has it."""
    if TARGET_AVX512:
        return _vscalef(builder, p, k)
    magic, bias = 12582912.0, 127 + 64
    bits = builder.bitcast(builder.fadd(k, _splat(magic)), _V16I)
    power = builder.bitcast(builder.shl(builder.add(bits, ir.Constant(_V16I, [bias] * 16)),
                                        ir.Constant(_V16I, [23] * 16)), _V16)
    return builder.fmul(builder.fmul(p, power), _splat(2.0 ** -64))


def _exp16_nonpositive_ir(builder, a):
    """exp(a) of a <16 x float> of values <= 0 (AVX-512F, or AVX2); a NaN lane stays NaN: the
    table form with AVX-512, the polynomial form otherwise (each below)."""
    if TARGET_AVX512:
        return _exp16_table_ir(builder, a)
    return _exp16_polynomial_ir(builder, a)


def _exp16_polynomial_ir(builder, a):
    """exp(a) of a <16 x float> of values <= 0 (AVX-512F, or AVX2); a NaN lane stays NaN.

    exp(a) = 2^k e^r with k = round(a log2 e), r = a - k ln 2 (Cody-Waite, two fused
    multiply-adds), e^r by the degree-6 polynomial _EXP_POLYNOMIAL, and 2^k applied by _scale_by_power_of_two
    (exact, and subnormal results come out right); a is first clamped at -110, where exp rounds to 0 anyway.
    The clamp is vmaxps itself, not llvm.maxnum: vmaxps returns its second operand when either is
    NaN, so a NaN runs through to the result, where maxnum would have made it -110 and every
    caller would have spent a compare and a blend putting it back (2 of 17 vector operations per
    16 values in the softmax's exp pass, ~9% of its time on a Zen 4 core)."""
    a = _vmax(builder, _splat(-110.0), a)
    k = _call(builder, "llvm.nearbyint.v16f32", builder.fmul(a, _splat(1.4426950408889634)))
    r = _call(builder, "llvm.fma.v16f32", k, _splat(-_FMA_LN2_HI), a)
    r = _call(builder, "llvm.fma.v16f32", k, _splat(-_FMA_LN2_LO), r)
    p = _splat(_EXP_POLYNOMIAL[-1])
    for c in reversed(_EXP_POLYNOMIAL[:-1]):
        p = _call(builder, "llvm.fma.v16f32", p, r, _splat(c))
    return _scale_by_power_of_two(builder, p, k)


def _exp16_table_ir(builder, a):
    """exp(a) of a <16 x float> of values <= 0 (AVX-512F); a NaN lane stays NaN.

    exp(a) = 2^n 2^(j/16) e^r, with n + j/16 = q, a log2 e rounded to a multiple of 1/16, and
    r = a - q ln 2 (|r| <= ln2/32; Cody-Waite as in the polynomial form). q comes from one fused
    multiply-add, y = a log2 e + 1.5 * 2^19, whose float32 spacing is 1/16: y's low 4 mantissa bits
    are j, vpermps's index into _EXP2_SIXTEENTHS (2^(j/16) in a register), and y - 1.5 * 2^19 = q
    exactly. e^r = 1 + s(r) with the degree-3 s of _EXP_TABLE_POLYNOMIAL; 2^(j/16) e^r =
    T + (T s + T_lo), T the table's float32 value and T_lo (_EXP2_SIXTEENTHS_LO, a second vpermps)
    what T's rounding left out; then 2^n by vscalefps with q itself (it scales by 2^floor(q) = 2^n;
    a subnormal result is p, already float32, rounded once more). Clamped at -110 as the
    polynomial form is.

    Every float32 input in [-110, 0] (tools/fit_exp_polynomial.py --check): at most 0.568 ulp
    (subnormal results within 0.762 of the smallest subnormal), 1.5 per mille of results not
    correctly rounded (the polynomial form: 0.891 ulp, 4.7 per mille;
    PyTorch's float32 exp on this host 0.565, NumPy's 2.44). Without T_lo (T + T s in one fused
    multiply-add) it was 0.988 ulp and 7-13% faster. Against the polynomial form on a Zen 4 core,
    cycles per 16 values: the exp alone in a loop 9.0 against 10.0, sigmoid16 14.8 against 15.9;
    the cross-entropy's row loop the same within noise."""
    a = _vmax(builder, _splat(-110.0), a)
    y = _call(builder, "llvm.fma.v16f32", a, _splat(1.4426950408889634), _splat(_SIXTEENTHS_MAGIC))
    q = builder.fsub(y, _splat(_SIXTEENTHS_MAGIC))
    r = _call(builder, "llvm.fma.v16f32", q, _splat(-_FMA_LN2_HI), a)
    r = _call(builder, "llvm.fma.v16f32", q, _splat(-_FMA_LN2_LO), r)
    j = builder.bitcast(y, _V16I)

    def table(values):
        vector = ir.Constant(_V16, [ir.Constant(ir.FloatType(), v) for v in values])
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16I]),
                                            "llvm.x86.avx512.permvar.sf.512")
        return builder.call(fn, [vector, j])

    c2, c3 = _EXP_TABLE_POLYNOMIAL
    s = _call(builder, "llvm.fma.v16f32", builder.fmul(r, r),
              _call(builder, "llvm.fma.v16f32", _splat(c3), r, _splat(c2)), r)
    t = table(_EXP2_SIXTEENTHS)
    p = builder.fadd(t, _call(builder, "llvm.fma.v16f32", t, s, table(_EXP2_SIXTEENTHS_LO)))
    return _vscalef(builder, p, q)


def _log1p_unit16_ir(builder, e):
    """log(1 + e) of a <16 x float> of values in [0, 1] (a NaN lane stays NaN): log1p_unit's math,
    2 atanh(s) with s = e / (2 + e), by the odd series to s^15, in vector instructions. The
    division is vdivps: vrcp14ps and a Newton step (as in _sigmoid16_ir) measured 9% slower here."""
    s = builder.fdiv(e, builder.fadd(e, _splat(2.0)))
    z = builder.fmul(s, s)
    p = _splat(_C15)
    for c in (_C13, _C11, _C9, _C7, _C5, _C3, _ONE):
        p = _call(builder, "llvm.fma.v16f32", p, z, _splat(c))
    return builder.fmul(builder.fadd(s, s), p)


def _sigmoid16_ir(builder, x):
    """sigmoid(x) of a <16 x float>, in the instructions of the math below (AVX-512F, or AVX2).

    e = exp(-|x|) by _exp16_nonpositive_ir, then y = n / (1 + e) by one vdivps, n = e for x < 0 and
    1 otherwise; a NaN runs through all of it and stays NaN. Within 2.4 ulp of float64's sigmoid:
    every 5th float32 in [-104, 0], 2.40 at worst (near x = -3.44), 1.2 million of 224 million over 1
    ulp; in [0, 20] 1.50, with AVX-512 and AVX2 alike. The division replaced 1 / (1 + e) by vrcp14ps
    and a Newton step (AVX2: a division), then e times that for x < 0: one rounding fewer (2.82 ulp
    at worst before, near x = -2.7, 7.6 million over 1 ulp; AVX2 2.75) and, with AVX-512, three
    operations fewer on the FP pipes, which the divider's throughput (a vector every few cycles)
    does not undo in this loop. Zen 4, one thread, 16384 values in cache, alternating processes, ns
    a value: AVX-512 0.328-0.346 -> 0.320-0.334, AVX2 0.538-0.553 -> 0.475-0.481."""
    e = _exp16_nonpositive_ir(builder, builder.fneg(_call(builder, "llvm.fabs.v16f32", x)))
    numerator = builder.select(builder.fcmp_ordered("<", x, _splat(0.0)), e, _splat(1.0))
    return builder.fdiv(numerator, builder.fadd(e, _splat(1.0)))


def _sigmoid16_intrinsic(nontemporal):
    def typer(typingctx, src, i, dst, j):
        if not _float32_vectors(src, dst):
            return None

        def codegen(context, builder, signature, args):
            source = context.make_array(signature.args[0])(context, builder, args[0])
            target = context.make_array(signature.args[2])(context, builder, args[2])
            x = builder.load(vector_at(builder, source.data, args[1]), align=4)
            store = builder.store(_sigmoid16_ir(builder, x), vector_at(builder, target.data, args[3]),
                                  align=64 if nontemporal else 4)
            if nontemporal:
                store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
            return context.get_dummy_value()

        return types.void(src, i, dst, j), codegen

    return intrinsic(typer)


def _float32_vectors(src, dst):
    return (isinstance(src, types.Array) and isinstance(dst, types.Array) and src.ndim == dst.ndim == 1
            and src.dtype == dst.dtype == types.float32 and src.layout == dst.layout == "C")


sigmoid16 = _sigmoid16_intrinsic(False)
sigmoid16.__doc__ = "dst[j : j + 16] = sigmoid(src[i : i + 16]) for 1-D C-contiguous float32 arrays (AVX-512F or AVX2)."
sigmoid16_streamed = _sigmoid16_intrinsic(True)
sigmoid16_streamed.__doc__ = "sigmoid16 with a non-temporal 64-byte store: dst + j must start a cache line."


@intrinsic
def sigmoid16_masked(typingctx, src, i, dst, j, count):
    """dst[j : j + count] = sigmoid(src[i : i + count]) for 0 <= count <= 16 (a larger count does 16,
    a negative one nothing): sigmoid16 on a masked load (the other lanes 0, never read) and a masked
    store, so every value gets sigmoid16's bits (each lane is computed on its own) wherever it sits,
    without a padded buffer."""
    if not _float32_vectors(src, dst):
        return None

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        target = context.make_array(signature.args[2])(context, builder, args[2])
        mask = lanes_below(builder, as_i64(builder, args[4]))
        x = masked_load(builder, vector_at(builder, source.data, as_i64(builder, args[1])), mask)
        masked_store(builder, _sigmoid16_ir(builder, x), vector_at(builder, target.data, as_i64(builder, args[3])),
                     mask)
        return context.get_dummy_value()

    return types.void(src, i, dst, j, count), codegen


@njit(inline="always")
def sigmoid16_part(src, dst, lo, hi):
    """dst[lo:hi] = sigmoid(src[lo:hi]) for fewer than 16 values (sigmoid16_masked)."""
    if hi > lo:
        sigmoid16_masked(src, lo, dst, lo, hi - lo)


@njit(inline="always")
def sigmoid16_span(src, dst, lo, hi):
    """dst[lo:hi] = sigmoid(src[lo:hi]) by sigmoid16, 16 values at a time, the rest masked (dst may
    be src)."""
    whole = lo + (hi - lo) // 16 * 16
    for b in range(lo, whole, 16):
        sigmoid16(src, b, dst, b)
    sigmoid16_part(src, dst, whole, hi)


@intrinsic
def copy16(typingctx, src, i, dst, j, count, relu):
    """dst[j : j + count] = src[i : i + count] for count <= 16 float32 values (1-D C-contiguous
    arrays), with relu negative values as 0 (NaN stays NaN, as _activation.relu): one masked load and
    one masked store, so a short row (a 14-wide image's) costs one instruction pair, where a loop ran
    8 values vectorized and the rest one by one. AVX-512F (on AVX2 a partial mask is vmaskmovps, slow
    on AMD cores: the AVX2 convolutions do not use it)."""
    if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (src, dst)):
        return None

    def codegen(context, builder, signature, args):
        source, target = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 2))
        mask = lanes_below(builder, as_i64(builder, args[4]))
        at = [builder.bitcast(builder.gep(array.data, [as_i64(builder, args[k])]), _V16.as_pointer())
              for array, k in ((source, 1), (target, 3))]
        value = masked_load(builder, at[0], mask)
        clipped = builder.select(builder.fcmp_ordered("<", value, _splat(0.0)), _splat(0.0), value)
        masked_store(builder, builder.select(args[5], clipped, value), at[1], mask)
        return context.get_dummy_value()

    return types.void(src, i, dst, j, count, relu), codegen


@njit(inline="always")
def copy_rows16(src, s_off, s_ld, dst, d_off, d_ld, rows, width, relu=False):
    """dst[d_off + r * d_ld : ... + width] = src[s_off + r * s_ld : ... + width] for r < rows (1-D
    float32 arrays), with relu negative values as 0: each row in runs of up to 16 by copy16 (the
    convolutions' padding, their copies between compact planes and the wide grid, and the depthwise
    layers' outputs)."""
    for r in range(rows):
        for j0 in range(0, width, 16):
            copy16(src, s_off + r * s_ld + j0, dst, d_off + r * d_ld + j0, min(16, width - j0), relu)
