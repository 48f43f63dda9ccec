"""The stride-1 convolution's float32 register tile in AVX-512: every kernel tap summed in
registers, bias and ReLU applied to the tile, the outputs stored compact.

    y[o, q] = act(b[o] + sum over taps t in order (sum over c in order of W[t, o, c] xp[c, q + shift_t]))

q runs over the "wide" grid of the zero-padded sample xp (oh rows of wp columns, as in
conv._forward_wide): the input value that output q needs from channel c under tap t lies at
q + shift_t in xp's row c, so 32 consecutive outputs take 32 consecutive floats of that row. One
tile is 8 output channels x 32 positions in 16 zmm accumulators; per (tap, channel): two 16-float
loads of xp, eight broadcasts of W, sixteen fused multiply-adds -- gemm32's inner loop with K =
taps x channels, but the accumulators stay in registers across the taps (gemm32 per tap loads and
stores its tile nine times for a 3x3 kernel) and the result goes out once, finished.

Stores: the wide grid's columns ow..wp-1 are not outputs. Each 16-lane half of a row keeps the
lanes of its `keep` bit mask, packed together by vcompressps (in registers: its memory form is
slow on AMD cores) and written as one run at the half's compact index: the outputs in a half are
consecutive in y because the wide grid only adds columns at the ends of rows. With every lane of
a run kept, the same code writes the wide grid itself (the fused max pooling reads it so).

The sums run in the order of conv._forward_wide's per-tap products (tap outer, channel inner, one
rounding per multiply-add), then b is added and the activation applied: the same bits as that
kernel with gemm32, and so for any thread count.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._vecmath import as_i64, broadcast16, lanes_below, masked_store16

__all__ = ["taps_tile", "MR", "NR"]

MR, NR = 8, 32  # the tile: output channels, wide-grid positions
_F32 = ir.FloatType()
_V16 = ir.VectorType(_F32, 16)
_I64 = ir.IntType(64)
_MASK16 = ir.VectorType(ir.IntType(1), 16)


@intrinsic
def taps_tile(typingctx, w, w_off, w_rs, w_ts, cg, xp, xp_rs, shifts, q0, y, y_off, ldy, rows, bias, bias_off,
              relu, keep_lo, keep_hi, dst_lo, dst_hi):
    """One tile: for r < rows (<= 8) and the 32 positions q0 + j,
        v = sum_t sum_c w[w_off + t*w_ts + r*w_rs + c] * xp[c*xp_rs + shifts[t] + q0 + j]
        v = v + bias[bias_off + r];  v = max(v, 0) if relu (NaN kept)
    then for each half h (j < 16, j >= 16): the lanes in keep_h stored, packed, at
    y[y_off + r*ldy + dst_h ...]. Arrays are float32 (shifts int64) and addressed from their first
    element; xp must hold 31 readable floats past its last row's last tap (their lanes are dropped);
    bias holds a value for every stored row (zeros for a convolution without one). Rows r >= rows
    compute row rows - 1 again and are not stored."""
    f32_arrays = (w, xp, y, bias)
    if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in f32_arrays):
        return None
    if not (isinstance(shifts, types.Array) and shifts.dtype == types.int64 and isinstance(relu, types.Boolean)):
        return None

    def codegen(context, builder, signature, args):
        arrays = {i: context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 5, 7, 9, 13)}
        w_arr, xp_arr, shift_arr, y_arr, bias_arr = (arrays[i] for i in (0, 5, 7, 9, 13))
        w_off, w_rs, w_ts, cg, xp_rs, q0, y_off, ldy, rows, bias_off, keep_lo, keep_hi, dst_lo, dst_hi = (
            as_i64(builder, args[i]) for i in (1, 2, 3, 4, 6, 8, 10, 11, 12, 14, 16, 17, 18, 19))
        relu = args[15]
        const = lambda v: ir.Constant(_I64, v)  # noqa: E731
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3), "llvm.fma.v16f32")
        compress = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16, _MASK16]),
                                                  "llvm.x86.avx512.mask.compress.v16f32")
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64]), "llvm.ctpop.i64")
        zero = ir.Constant(_V16, [ir.Constant(_F32, 0.0)] * 16)

        def at(array, offset):
            return builder.gep(array.data, [offset])

        # row r reads W's row min(r, rows - 1): the rows past `rows` repeat the last one, not stored
        last = builder.sub(rows, const(1))
        row_of = [builder.select(builder.icmp_signed("<", const(r), rows), const(r), last) for r in range(MR)]
        w_rows = [builder.add(w_off, builder.mul(row_of[r], w_rs)) for r in range(MR)]
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(MR)]
        with cgutils.for_range(builder, shift_arr.nitems) as tap_loop:
            tap = tap_loop.index
            b_start = builder.add(builder.load(at(shift_arr, tap)), q0)
            w_tap = builder.mul(tap, w_ts)
            with cgutils.for_range(builder, cg) as channel_loop:
                c = channel_loop.index
                b_at = builder.add(b_start, builder.mul(c, xp_rs))
                bv = [builder.load(builder.bitcast(at(xp_arr, builder.add(b_at, const(16 * h))), _V16.as_pointer()),
                                   align=4) for h in range(2)]
                w_at = builder.add(w_tap, c)
                for r in range(MR):
                    av = broadcast16(builder, builder.load(at(w_arr, builder.add(w_rows[r], w_at))))
                    for h in range(2):
                        builder.store(builder.call(fma, [av, bv[h], builder.load(accs[r][h])]), accs[r][h])

        keeps = [builder.bitcast(builder.trunc(k, ir.IntType(16)), _MASK16) for k in (keep_lo, keep_hi)]
        runs = [lanes_below(builder, builder.call(ctpop, [k])) for k in (keep_lo, keep_hi)]
        relu_lanes = broadcast16(builder, relu)
        for r in range(MR):
            with builder.if_then(builder.icmp_signed("<", const(r), rows)):
                b_value = builder.load(at(bias_arr, builder.add(bias_off, const(r))))
                bv = broadcast16(builder, b_value)
                row_start = builder.add(y_off, builder.mul(const(r), ldy))
                for h, dst in enumerate((dst_lo, dst_hi)):
                    v = builder.fadd(builder.load(accs[r][h]), bv)
                    negative = builder.fcmp_ordered("<", v, zero)
                    v = builder.select(builder.and_(negative, relu_lanes), zero, v)
                    packed = builder.call(compress, [v, zero, keeps[h]])
                    target = builder.bitcast(at(y_arr, builder.add(row_start, dst)), _V16.as_pointer())
                    masked_store16(builder, packed, target, runs[h])
        return context.get_dummy_value()

    signature = types.void(w, w_off, w_rs, w_ts, cg, xp, xp_rs, shifts, q0, y, y_off, ldy, rows, bias, bias_off,
                           relu, keep_lo, keep_hi, dst_lo, dst_hi)
    return signature, codegen
