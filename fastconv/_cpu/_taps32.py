"""The stride-1 convolution's float32 register tiles in AVX-512: every kernel tap summed in
registers, bias and ReLU applied to the tile, the outputs stored once.

    y[o, q] = act(b[o] + sum over taps t in order (sum over c in order of W[t, o, c] xp[c, q + shift_t]))

q runs over the "wide" grid of the zero-padded sample xp (oh rows of wp columns, as in
conv._wide._forward_wide): the input value that output q needs from channel c under tap t lies at
q + shift_t in xp's row c, so consecutive outputs take consecutive floats of that row. Per
(tap, channel) a tile loads a few vectors and broadcasts a few scalars, then multiply-adds them into
16-28 zmm accumulators that stay in registers across all taps (gemm32 per tap loads and stores its
tile nine times for a 3x3 kernel) and go out once, finished. Three shapes of tile:

- taps_tile, positions in the lanes: 8 output channels x 32 consecutive wide-grid positions; the
  wide grid's columns ow..wp-1 are computed too (conv2: 2 of every 16) and dropped at the store.
  Each 16-lane half keeps the lanes of its `keep` bit mask, packed together by vcompressps (in
  registers: its memory form is slow on AMD cores) and written as one run at the half's compact
  index: the outputs in a half are consecutive in y because the wide grid only adds columns at
  the ends of rows. With every lane kept, the same code writes the wide grid itself.
- channels_tile, output channels in the lanes: 32 channels x 14 consecutive positions of one output
  row, so nothing is computed for the extra columns; each 16-channel half is transposed in
  registers before its stores. conv2 (64 channels, 14 x 14) in cache: 244-251 GFLOP/s against
  taps_tile's 221 (per useful output; 253 over its wide grid), one Zen 5 core (265 peak).
- row_tile, positions in the lanes along one output row: 16 channels x 16 positions, for layers
  with 1-3 input channels per group (conv1), whose 9 multiply-adds per output and input channel
  leave channels_tile's transposes a third of its work: each channel's positions are stored as they
  are, and each weight comes by an embedded broadcast in its vfmadd. conv1 (1 -> 32, 28 x 28, batch
  128) forward, two Zen 4 threads: 102-103 GFLOP/s by channels_tile, 121-123 by row_tile.

All three sum in the order of per-tap gemm32 products accumulated into one output (tap outer, channel
inner, one rounding per multiply-add; tests/test_cpu_taps32.py builds that reference), then add b
and apply the activation: the same bits as one another, whichever tile a layer gets, and for any
thread count.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._vecmath import as_i64, broadcast, lanes_below, masked_load, masked_store

__all__ = ["taps_tile", "channels_tile", "row_tile", "transpose16_block", "MR", "NR", "RR", "CR", "CW"]

MR, NR = 8, 32  # taps_tile: output channels, wide-grid positions (lanes)
RR = 16  # row_tile: output channels (16 positions of a row in the lanes)
CR, CW = 14, 32  # channels_tile: positions (broadcasts), output channels (lanes)
_F32 = ir.FloatType()
_V16 = ir.VectorType(_F32, 16)
_I64 = ir.IntType(64)
_MASK16 = ir.VectorType(ir.IntType(1), 16)


_ZERO = ir.Constant(_V16, [ir.Constant(_F32, 0.0)] * 16)


def _const(value):
    """A 64-bit IR integer constant (offsets, rows, lanes)."""
    return ir.Constant(_I64, value)


def _fma(builder):
    """llvm.fma.v16f32, declared in builder's module."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3), "llvm.fma.v16f32")


def _typed_as_tile(w, xp, y, bias, shifts, relu):
    """Whether a tile's arguments have the types its code is built for: float32 arrays, int64 shifts,
    a boolean relu."""
    return (all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (w, xp, y, bias))
            and isinstance(shifts, types.Array) and shifts.dtype == types.int64 and isinstance(relu, types.Boolean))


def _lane_tile_args(context, builder, signature, args):
    """channels_tile's and row_tile's arguments (one signature) in IR: (w, xp, shifts, y, bias) as
    arrays, the eleven offsets, strides and counts as 64-bit integers, and relu."""
    arrays = tuple(context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 5, 7, 9, 14))
    return arrays, tuple(as_i64(builder, args[i]) for i in (1, 2, 3, 4, 6, 8, 10, 11, 12, 13, 15)), args[16]


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
    if not _typed_as_tile(w, xp, y, bias, shifts, relu):
        return None

    def codegen(context, builder, signature, args):
        arrays = {i: context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 5, 7, 9, 13)}
        w_arr, xp_arr, shift_arr, y_arr, bias_arr = (arrays[i] for i in (0, 5, 7, 9, 13))
        w_off, w_rs, w_ts, cg, xp_rs, q0, y_off, ldy, rows, bias_off, keep_lo, keep_hi, dst_lo, dst_hi = (
            as_i64(builder, args[i]) for i in (1, 2, 3, 4, 6, 8, 10, 11, 12, 14, 16, 17, 18, 19))
        relu = args[15]
        fma = _fma(builder)
        compress = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16, _V16, _MASK16]),
                                                  "llvm.x86.avx512.mask.compress.v16f32")
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64]), "llvm.ctpop.i64")

        def at(array, offset):
            return builder.gep(array.data, [offset])

        # row r reads W's row min(r, rows - 1): the rows past `rows` repeat the last one, not stored
        last = builder.sub(rows, _const(1))
        row_of = [builder.select(builder.icmp_signed("<", _const(r), rows), _const(r), last) for r in range(MR)]
        w_rows = [builder.add(w_off, builder.mul(row_of[r], w_rs)) for r in range(MR)]
        accs = [[cgutils.alloca_once_value(builder, _ZERO) for _ in range(2)] for _ in range(MR)]
        with cgutils.for_range(builder, shift_arr.nitems) as tap_loop:
            tap = tap_loop.index
            b_start = builder.add(builder.load(at(shift_arr, tap)), q0)
            w_tap = builder.mul(tap, w_ts)
            with cgutils.for_range(builder, cg) as channel_loop:
                c = channel_loop.index
                b_at = builder.add(b_start, builder.mul(c, xp_rs))
                bv = [builder.load(builder.bitcast(at(xp_arr, builder.add(b_at, _const(16 * h))), _V16.as_pointer()),
                                   align=4) for h in range(2)]
                w_at = builder.add(w_tap, c)
                for r in range(MR):
                    av = broadcast(builder, builder.load(at(w_arr, builder.add(w_rows[r], w_at))))
                    for h in range(2):
                        builder.store(builder.call(fma, [av, bv[h], builder.load(accs[r][h])]), accs[r][h])

        keeps = [builder.bitcast(builder.trunc(k, ir.IntType(16)), _MASK16) for k in (keep_lo, keep_hi)]
        runs = [lanes_below(builder, builder.call(ctpop, [k])) for k in (keep_lo, keep_hi)]
        relu_lanes = broadcast(builder, relu)
        for r in range(MR):
            with builder.if_then(builder.icmp_signed("<", _const(r), rows)):
                b_value = builder.load(at(bias_arr, builder.add(bias_off, _const(r))))
                bv = broadcast(builder, b_value)
                row_start = builder.add(y_off, builder.mul(_const(r), ldy))
                for h, dst in enumerate((dst_lo, dst_hi)):
                    v = builder.fadd(builder.load(accs[r][h]), bv)
                    negative = builder.fcmp_ordered("<", v, _ZERO)
                    v = builder.select(builder.and_(negative, relu_lanes), _ZERO, v)
                    packed = builder.call(compress, [v, _ZERO, keeps[h]])
                    target = builder.bitcast(at(y_arr, builder.add(row_start, dst)), _V16.as_pointer())
                    masked_store(builder, packed, target, runs[h])
        return context.get_dummy_value()

    signature = types.void(w, w_off, w_rs, w_ts, cg, xp, xp_rs, shifts, q0, y, y_off, ldy, rows, bias, bias_off,
                           relu, keep_lo, keep_hi, dst_lo, dst_hi)
    return signature, codegen


@intrinsic
def row_tile(typingctx, w, w_off, w_ts, w_cs, cg, xp, xp_rs, shifts, base, y, y_off, ldy, count, rows, bias, bias_off,
             relu):
    """The same sums on RR output channels x 16 consecutive positions of one output row, for layers
    with few input channels: for r < RR and p < 16,
        v = sum_t sum_c w[w_off + t*w_ts + c*w_cs + r] * xp[c*xp_rs + shifts[t] + base + p]
        v = v + bias[bias_off + r];  v = max(v, 0) if relu (NaN kept)
    stored for p < count and r < rows at y[y_off + r*ldy + p] (w and bias as channels_tile's: the
    channels consecutive, zero-padded). Per (tap, channel): one 16-float load of xp and RR
    multiply-adds, each taking its weight by an embedded broadcast from one base address (LLVM folds
    the load into the vfmadd: no broadcast instruction, no register); then each channel's 16
    positions go out as they are: no wide-grid columns (taps_tile) and no transposes
    (channels_tile: 64 shuffles per 16 channels, against only 9 multiply-adds per output when C_in
    is 1). Positions p >= count read xp where the row would continue (xp needs 15 readable floats
    past its last tap's) and are not stored."""
    if not _typed_as_tile(w, xp, y, bias, shifts, relu):
        return None

    def codegen(context, builder, signature, args):
        arrays, offsets, relu = _lane_tile_args(context, builder, signature, args)
        w_arr, xp_arr, shift_arr, y_arr, bias_arr = arrays
        w_off, w_ts, w_cs, cg, xp_rs, base, y_off, ldy, count, rows, bias_off = offsets
        fma = _fma(builder)

        def at(array, offset):
            return builder.gep(array.data, [offset])

        accs = [cgutils.alloca_once_value(builder, _ZERO) for _ in range(RR)]
        with cgutils.for_range(builder, shift_arr.nitems) as tap_loop:
            tap = tap_loop.index
            x_start = builder.add(builder.load(at(shift_arr, tap)), base)
            w_tap = builder.add(w_off, builder.mul(tap, w_ts))
            with cgutils.for_range(builder, cg) as channel_loop:
                c = channel_loop.index
                xv = builder.load(builder.bitcast(at(xp_arr, builder.add(x_start, builder.mul(c, xp_rs))),
                                                  _V16.as_pointer()), align=4)
                w_at = at(w_arr, builder.add(w_tap, builder.mul(c, w_cs)))
                for r in range(RR):
                    wv = broadcast(builder, builder.load(builder.gep(w_at, [_const(r)])))
                    builder.store(builder.call(fma, [wv, xv, builder.load(accs[r])]), accs[r])

        run = lanes_below(builder, count)
        relu_lanes = broadcast(builder, relu)
        for r in range(RR):
            with builder.if_then(builder.icmp_signed("<", _const(r), rows)):
                v = builder.fadd(builder.load(accs[r]), broadcast(builder, builder.load(at(bias_arr, builder.add(
                    bias_off, _const(r))))))
                v = builder.select(builder.and_(builder.fcmp_ordered("<", v, _ZERO), relu_lanes), _ZERO, v)
                target = builder.bitcast(at(y_arr, builder.add(y_off, builder.mul(_const(r), ldy))), _V16.as_pointer())
                masked_store(builder, v, target, run)
        return context.get_dummy_value()

    signature = types.void(w, w_off, w_ts, w_cs, cg, xp, xp_rs, shifts, base, y, y_off, ldy, count, rows, bias,
                           bias_off, relu)
    return signature, codegen


def _transpose16(builder, rows):
    """The 16 x 16 transpose of 16 <16 x float>: four stages of two-source shuffles, each swapping
    the off-diagonal b x b blocks of every 2b x 2b block (b = 8, 4, 2, 1)."""
    for b in (8, 4, 2, 1):
        low = ir.Constant(ir.VectorType(ir.IntType(32), 16), [l if not l & b else 16 + l - b for l in range(16)])
        high = ir.Constant(ir.VectorType(ir.IntType(32), 16), [l + b if not l & b else 16 + l for l in range(16)])
        new = list(rows)
        for i in range(16):
            if not i & b:
                new[i] = builder.shuffle_vector(rows[i], rows[i + b], low)
                new[i + b] = builder.shuffle_vector(rows[i], rows[i + b], high)
        rows = new
    return rows


@intrinsic
def channels_tile(typingctx, w, w_off, w_ts, w_cs, cg, xp, xp_rs, shifts, base, y, y_off, ldy, count, channels,
                  bias, bias_off, relu):
    """The same sums with the output channels in the lanes: for p < 14 positions and l < 32 channels,
        v = sum_t sum_c w[w_off + t*w_ts + c*w_cs + l] * xp[c*xp_rs + shifts[t] + base + p]
        v = v + bias[bias_off + l];  v = max(v, 0) if relu (NaN kept)
    stored for p < count and l < channels at y[y_off + l*ldy + p]. Per (tap, channel): two 16-float
    loads of w's 32 channels, fourteen broadcasts of consecutive xp values, 28 multiply-adds. The
    positions are consecutive in xp and in y, so a tile lies within one output row. Before the
    stores, each 16-channel half is transposed in registers (64 shuffles) so that a channel's
    positions go out as one run.
    w and bias hold 32 readable values from each offset used (zero-padded past the channels);
    positions p >= count read xp where the tile's count would continue and are not stored."""
    if not _typed_as_tile(w, xp, y, bias, shifts, relu):
        return None

    def codegen(context, builder, signature, args):
        arrays, offsets, relu = _lane_tile_args(context, builder, signature, args)
        w_arr, xp_arr, shift_arr, y_arr, bias_arr = arrays
        w_off, w_ts, w_cs, cg, xp_rs, base, y_off, ldy, count, channels, bias_off = offsets
        fma = _fma(builder)

        def vector_at(array, offset):
            return builder.bitcast(builder.gep(array.data, [offset]), _V16.as_pointer())

        accs = [[cgutils.alloca_once_value(builder, _ZERO) for _ in range(2)] for _ in range(CR)]
        with cgutils.for_range(builder, shift_arr.nitems) as tap_loop:
            tap = tap_loop.index
            x_start = builder.add(builder.load(builder.gep(shift_arr.data, [tap])), base)
            w_start = builder.add(w_off, builder.mul(tap, w_ts))
            with cgutils.for_range(builder, cg) as channel_loop:
                c = channel_loop.index
                w_at = builder.add(w_start, builder.mul(c, w_cs))
                wv = [builder.load(vector_at(w_arr, builder.add(w_at, _const(16 * h))), align=4) for h in range(2)]
                x_at = builder.add(x_start, builder.mul(c, xp_rs))
                for p in range(CR):
                    xv = broadcast(builder, builder.load(builder.gep(xp_arr.data, [builder.add(x_at, _const(p))])))
                    for h in range(2):
                        builder.store(builder.call(fma, [xv, wv[h], builder.load(accs[p][h])]), accs[p][h])

        run = lanes_below(builder, count)
        relu_lanes = broadcast(builder, relu)
        for h in range(2):
            bv = builder.load(vector_at(bias_arr, builder.add(bias_off, _const(16 * h))), align=4)
            rows = []
            for p in range(CR):
                v = builder.fadd(builder.load(accs[p][h]), bv)
                v = builder.select(builder.and_(builder.fcmp_ordered("<", v, _ZERO), relu_lanes), _ZERO, v)
                rows.append(v)
            for lane, row in enumerate(_transpose16(builder, rows + [_ZERO, _ZERO])):
                with builder.if_then(builder.icmp_signed("<", _const(16 * h + lane), channels)):
                    at = builder.add(y_off, builder.mul(_const(16 * h + lane), ldy))
                    masked_store(builder, row, vector_at(y_arr, at), run)
        return context.get_dummy_value()

    signature = types.void(w, w_off, w_ts, w_cs, cg, xp, xp_rs, shifts, base, y, y_off, ldy, count, channels, bias,
                           bias_off, relu)
    return signature, codegen


@intrinsic
def transpose16_block(typingctx, src, s_off, s_ld, rows, cols, dst, d_off, d_ld):
    """dst[d_off + j*d_ld + r] = src[s_off + r*s_ld + j] for r < rows, j < cols (both <= 16): one
    16 x 16 block through the registers (masked loads of each row, _transpose16, masked stores).
    float32 arrays, addressed from their first element."""
    if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (src, dst)):
        return None

    def codegen(context, builder, signature, args):
        source, target = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 5))
        s_off, s_ld, rows, cols, d_off, d_ld = (as_i64(builder, args[k]) for k in (1, 2, 3, 4, 6, 7))
        lanes_in_row, lanes_in_column = lanes_below(builder, cols), lanes_below(builder, rows)
        loaded = []
        for r in range(16):
            at = builder.add(s_off, builder.mul(ir.Constant(_I64, r), s_ld))
            pointer = builder.bitcast(builder.gep(source.data, [at]), _V16.as_pointer())
            inside = builder.icmp_signed("<", ir.Constant(_I64, r), rows)
            row_mask = builder.select(inside, lanes_in_row, ir.Constant(_MASK16, [0] * 16))
            loaded.append(masked_load(builder, pointer, row_mask))
        for j, column in enumerate(_transpose16(builder, loaded)):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, j), cols)):
                at = builder.add(d_off, builder.mul(ir.Constant(_I64, j), d_ld))
                masked_store(builder, column, builder.bitcast(builder.gep(target.data, [at]), _V16.as_pointer()),
                               lanes_in_column)
        return context.get_dummy_value()

    return types.void(src, s_off, s_ld, rows, cols, dst, d_off, d_ld), codegen
