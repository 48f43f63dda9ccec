"""Max pooling with 2x2 windows at stride 2 (no padding) of float32 planes in AVX-512 or AVX2, and the
scatter of its gradient: eight windows per instruction sequence.

    y[ho, wo] = the first maximum of x[2ho, 2wo], x[2ho, 2wo + 1], x[2ho + 1, 2wo], x[2ho + 1, 2wo + 1]
    (in that order; a NaN wins), indices[ho, wo] = its h * W + w

Per run of eight windows: two 16-float loads (rows 2ho and 2ho + 1), their even and odd lanes split
apart by shuffles, then the same three compare-and-selects as pool.max_pool_plane's unrolled 2x2
case, on values and on int64 indices: the same values and indices, bit for bit (a maximum rounds
nothing). That loop stays scalar (its stride-2 reads): ~16 cycles per window on the Zen 5 host,
which made pooling conv2's output cost 12 of the fused forward's 45 us per sample.
"""
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._activation import RELU as _RELU, SIGMOID as _SIGMOID
from ._vecmath import as_i64, broadcast, lanes_below, masked_load, masked_store

__all__ = ["max_pool_2x2_plane", "unpool_2x2_run", "unpool_2x2_plane"]

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_V16 = ir.VectorType(_F32, 16)
_V8 = ir.VectorType(_F32, 8)
_I64x8 = ir.VectorType(_I64, 8)
_I32 = ir.IntType(32)


@intrinsic
def _max_pool_2x2_run(typingctx, x, x_off, x_ld, y, y_off, indices, i_off, count, first_index, width):
    """For k < count (<= 8): the window whose top-left value is x[x_off + 2k] (the row below at
    + x_ld) into y[y_off + k] and indices[i_off + k], its top-left index being first_index + 2k and
    the row below's + width. Lanes past count are neither read nor written."""
    if not (isinstance(x, types.Array) and x.dtype == types.float32 and isinstance(y, types.Array)
            and y.dtype == types.float32 and isinstance(indices, types.Array) and indices.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        xa, ya, ia = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 3, 5))
        x_off, x_ld, y_off, i_off, count, first_index, width = (
            as_i64(builder, args[k]) for k in (1, 2, 4, 6, 7, 8, 9))
        pairs = lanes_below(builder, builder.add(count, count))  # 16 lanes: 2 per window
        rows = []
        for r in range(2):
            at = builder.add(x_off, builder.mul(ir.Constant(_I64, r), x_ld))
            rows.append(masked_load(builder, builder.bitcast(builder.gep(xa.data, [at]), _V16.as_pointer()), pairs))
        even = ir.Constant(ir.VectorType(_I32, 8), list(range(0, 16, 2)))
        odd = ir.Constant(ir.VectorType(_I32, 8), list(range(1, 16, 2)))
        split = [builder.shuffle_vector(row, row, lanes) for row in rows for lanes in (even, odd)]
        start = builder.add(broadcast(builder, first_index, 8), ir.Constant(_I64x8, list(range(0, 16, 2))))
        width_v = broadcast(builder, width, 8)
        one = ir.Constant(_I64x8, [1] * 8)
        candidates = [start, builder.add(start, one), builder.add(start, width_v),
                      builder.add(builder.add(start, width_v), one)]
        best, index = split[0], candidates[0]
        for value, position in zip(split[1:], candidates[1:]):
            take = builder.or_(builder.fcmp_ordered(">", value, best), builder.fcmp_unordered("uno", value, value))
            best = builder.select(take, value, best)
            index = builder.select(take, position, index)
        windows = lanes_below(builder, count, 8)
        masked_store(builder, best, builder.bitcast(builder.gep(ya.data, [y_off]), _V8.as_pointer()), windows)
        masked_store(builder, index, builder.bitcast(builder.gep(ia.data, [i_off]), _I64x8.as_pointer()), windows)
        return context.get_dummy_value()

    return types.void(x, x_off, x_ld, y, y_off, indices, i_off, count, first_index, width), codegen


@njit(inline="always")
def max_pool_2x2_plane(x, x_ld, width, y, indices):
    """y, indices (Ho, Wo) = the 2x2 / stride 2 max pooling of a plane whose row h starts at
    x[h * x_ld] (1-D float32, C-contiguous; x_ld >= width, the columns past width never read),
    indices h * width + w; y and indices C-contiguous."""
    out_h, out_w = y.shape
    y_flat, i_flat = y.reshape(-1), indices.reshape(-1)
    for ho in range(out_h):
        for wo in range(0, out_w, 8):
            _max_pool_2x2_run(x, 2 * ho * x_ld + 2 * wo, x_ld, y_flat, ho * out_w + wo, i_flat, ho * out_w + wo,
                              min(8, out_w - wo), 2 * ho * width + 2 * wo, width)


@intrinsic
def unpool_2x2_run(typingctx, dy, y, indices, at, count, act, first_index, out_w, dst, dst_off, dst_ld):
    """The gradient of eight 2x2 / stride 2 max-pooling windows scattered into their two rows: for
    k < count (<= 8), d = act'(dy[at + k]) (relu: 0 if y <= 0 else d, NaN y passing d; sigmoid:
    d y (1 - y), y the pooled output at the same place; otherwise d) goes to the window position
    that indices[at + k] names, 0 to its other three, as 0 + value (the portable scatter's += into zeros, so -0 comes
    out +0); window k's top-left is first_index + 2k in the convolution output (width out_w) and
    dst[dst_off + 2k] in the destination (row below: + dst_ld). Returns whether every index named
    a position of its own window: if not, what was stored is not the scatter, and the caller must
    redo the plane the portable way (indices come from the caller and are not trusted)."""
    if not (all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (dy, y, dst))
            and isinstance(indices, types.Array) and indices.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        dya, ya, ia, da = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 1, 2, 8))
        at, count, act, first_index, out_w, dst_off, dst_ld = (
            as_i64(builder, args[k]) for k in (3, 4, 5, 6, 7, 9, 10))
        windows = lanes_below(builder, count, 8)
        zero8 = ir.Constant(_V8, [ir.Constant(_F32, 0.0)] * 8)

        def load8(array, vector):
            return masked_load(builder, builder.bitcast(builder.gep(array.data, [at]), vector.as_pointer()), windows)

        d, yv, index = load8(dya, _V8), load8(ya, _V8), load8(ia, _I64x8)
        relu = builder.select(builder.fcmp_ordered("<=", yv, zero8), zero8, d)  # as dense._relu_grad
        sigmoid = builder.fmul(builder.fmul(d, yv), builder.fsub(ir.Constant(_V8, [ir.Constant(_F32, 1.0)] * 8), yv))
        is_act = [broadcast(builder, builder.icmp_signed("==", act, ir.Constant(_I64, code)), 8)
                  for code in (_RELU, _SIGMOID)]
        d = builder.select(is_act[0], relu, builder.select(is_act[1], sigmoid, d))
        start = builder.add(broadcast(builder, first_index, 8), ir.Constant(_I64x8, list(range(0, 16, 2))))
        width = broadcast(builder, out_w, 8)
        one = ir.Constant(_I64x8, [1] * 8)
        slots = [start, builder.add(start, one), builder.add(start, width), builder.add(builder.add(start, width), one)]
        hits = [builder.and_(builder.icmp_signed("==", index, slot), windows) for slot in slots]
        found = builder.or_(builder.or_(hits[0], hits[1]), builder.or_(hits[2], hits[3]))
        every = builder.or_(found, builder.not_(windows))
        ok = builder.icmp_unsigned("==", builder.bitcast(every, ir.IntType(8)), ir.Constant(ir.IntType(8), 0xFF))
        values = [builder.select(hit, d, zero8) for hit in hits]
        interleave = ir.Constant(ir.VectorType(_I32, 16), [v for k in range(8) for v in (k, 8 + k)])
        zero16 = ir.Constant(_V16, [ir.Constant(_F32, 0.0)] * 16)
        pairs = lanes_below(builder, builder.add(count, count))
        for r in range(2):
            row = builder.fadd(zero16, builder.shuffle_vector(values[2 * r], values[2 * r + 1], interleave))
            target = builder.add(dst_off, builder.mul(ir.Constant(_I64, r), dst_ld))
            masked_store(builder, row, builder.bitcast(builder.gep(da.data, [target]), _V16.as_pointer()), pairs)
        return ok

    return types.boolean(dy, y, indices, at, count, act, first_index, out_w, dst, dst_off, dst_ld), codegen


@njit(inline="always")
def unpool_2x2_plane(dy, y, act, indices, n, channel, pooled_w, oh, ow, wp, dst, at):
    """The gradient of a 2x2 / stride 2 max pooling scattered into one channel's plane by
    unpool_2x2_run (for conv._wide._gather_output_grad and pool.max_pool2d_backward): dy[n, channel] is the
    pooled gradient, flat, pooled_w to a row (y[n, channel] the pooled output, read only for an
    activation), indices[n, channel] the pooling's. The plane (dst[at:], oh rows of ow outputs, wp
    apart; columns from ow on are left as they are) is written whole, taking every index to name a
    position of its own window (as a 2x2 / stride 2 pooling's do). False where an index is not so:
    the plane must then be done the portable way."""
    plane = dst[at:at + oh * wp]
    pooled = dy.shape[2]
    if pooled_w == 0 or pooled == 0 or 2 * (pooled // pooled_w) > oh or 2 * pooled_w > ow:
        plane[:] = 0
        return pooled == 0
    if 2 * (pooled // pooled_w) < oh or 2 * pooled_w < ow:  # (otherwise the runs write every output)
        plane[:] = 0
    d_row, i_row = dy[n, channel], indices[n, channel]
    y_row = y[n, channel] if act != 0 else d_row
    for ho in range(pooled // pooled_w):
        for wo in range(0, pooled_w, 8):
            if not unpool_2x2_run(d_row, y_row, i_row, ho * pooled_w + wo, min(8, pooled_w - wo), act,
                                  2 * ho * ow + 2 * wo, ow, dst, at + 2 * ho * wp + 2 * wo, wp):
                return False
    return True
