"""exp(x) for x <= 0, log1p(e) for e in [0, 1] and a float max, in forms LLVM vectorizes.

Numba calls libm's scalar exp (PyPI's llvmlite has no SVML), which keeps sigmoid and softmax far
from memory bandwidth. For float32 this computes exp as 2^k * p(r) (Cody-Waite reduction, the
Cephes expf polynomial, about 2 ulp), building 2^k from its exponent bits with an LLVM bitcast,
so a whole loop of it becomes SIMD code. Every caller needs only x <= 0 (exp(-|v|) in sigmoid,
exp(z - max) in softmax), which keeps 2^k a normal number; below -87.3 the result is 0.
float64 inputs use np.exp (they are for gradient checks, not speed).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
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
