"""The float32 binary cross-entropy with logits summed 16 values at once in AVX-512 (or AVX2), for loss.py.

Each value's term is torch's formula, as loss._bce_term computes it:

    term(x, t) = (1 - t) x + w softplus(-x),   w = 1 + (pw - 1) t,
    softplus(-x) = log1p(exp(-|x|)) + max(-x, 0)   (no overflow for any x)

with one pos_weight pw for every value (none: pw = 1). exp by _exp16_nonpositive_ir, log1p by
_log1p_unit16_ir; a NaN in x or t makes the sum NaN. A chunk of up to SUM_CHUNK values is summed in
one float32 vector, its lanes added in a fixed tree, and the chunks in float64 (the order is fixed
by the input's length alone). Unlike _softmax32's sums of values <= 1, terms grow with |x|: a
chunk's float32 sum can overflow where the float64 total would not (logits past ~1e36), so the
caller redoes a block whose sum is not finite (loss._bce_sum_simd).

Why: the portable loop, with a float64 accumulator, vectorized only 8 wide: 0.87 ns a value on a
Zen 4 core, 17 GB/s at best on two threads against a 42 GB/s copy. This runs at 0.58 ns a value on
one core; on 2^27 values, two threads, 20.2-20.9 GB/s where the portable loop ran at 12.0-13.3 in
the same runs. Still compute-bound: ~37 vector operations per 16 values.
"""
from numba import njit, types
from numba.extending import intrinsic

from ._softmax32 import SUM_CHUNK
from ._vecmath import _call, _exp16_nonpositive_ir, _log1p_unit16_ir, _splat, _vmax, as_i64, broadcast, \
    masked_load, vector_at, vector_sum_loop

__all__ = ["bce_sum"]

_ZEROS = _splat(0.0)


def _bce16_ir(builder, x, t, pw):
    """The 16 terms of x and t (<16 x float>), pw the pos_weight broadcast: w and the sum of the
    two parts by fused multiply-adds."""
    one = _splat(1.0)
    e = _exp16_nonpositive_ir(builder, builder.fneg(_call(builder, "llvm.fabs.v16f32", x)))
    # max(-x, 0) by vmaxps itself, one instruction (llvm.maxnum adds a NaN fix-up); with -x second,
    # a NaN x gives NaN here too (e carries it anyway)
    softplus = builder.fadd(_log1p_unit16_ir(builder, e), _vmax(builder, _ZEROS, builder.fneg(x)))
    w = _call(builder, "llvm.fma.v16f32", builder.fsub(pw, one), t, one)
    return _call(builder, "llvm.fma.v16f32", w, softplus, builder.fmul(builder.fsub(one, t), x))


@intrinsic
def _bce_sum16(typingctx, x, t, i, count, pw):
    """The float32 sum of the terms of x[i : i + count] and t[i : i + count] (1-D C-contiguous
    float32 arrays, pos_weight pw), by vector_sum_loop: the last count % 16 values by masked
    loads."""
    arrays = (x, t)
    if not (all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32 and a.layout == "C"
                for a in arrays) and pw == types.float32
            and all(isinstance(v, types.Integer) for v in (i, count))):
        return None

    def codegen(context, builder, signature, args):
        x0, t0 = (builder.gep(context.make_array(signature.args[k])(context, builder, args[k]).data,
                              [as_i64(builder, args[2])]) for k in (0, 1))
        pw = broadcast(builder, args[4])

        def terms(k, mask):
            def load(base):
                at = vector_at(builder, base, k)
                return builder.load(at, align=4) if mask is None else masked_load(builder, at, mask)
            return _bce16_ir(builder, load(x0), load(t0), pw)

        return vector_sum_loop(builder, as_i64(builder, args[3]), terms, "bce_sum")

    return types.float32(x, t, i, count, pw), codegen


@njit(inline="always")
def bce_sum(x, t, start, stop, pw):
    """The sum of the BCE-with-logits terms of x[start:stop] and t[start:stop] (1-D C-contiguous
    float32 arrays) with pos_weight pw (float32), in float64: the float32 sums of chunks of
    SUM_CHUNK values from start, added in order."""
    s = 0.0
    for k in range(start, stop, SUM_CHUNK):
        s += _bce_sum16(x, t, k, min(SUM_CHUNK, stop - k), pw)
    return s
