"""A float32 softmax row in AVX-512 (or AVX2) pieces, for the cross-entropy rows of loss.py.

A row's softmax p = e / s, with e = exp(z - m) and s = sum e (m: the row's shift, its label's logit
or its max, loss.GUESS_BLOCK), and its cross-entropy gradient g = p * a - b, less t at the label (a, b,
t: the loss's constants, _grad_row's formula), are computed from a buffer of e that stays in L1.
Two passes over memory remain: reading z, writing g (or p). On a 1 GiB batch of 1000-class rows
the fused op ran at 20 GB/s with vectorized Numba loops (43% of the copy ceiling) because its
compute and its memory traffic took turns: the row's max pass waited on memory, then the exp pass
computed with the memory idle, then the stores stalled the next row. Here:

- `row_exp_sum` computes e and its sum in one loop (the separate sum pass was ~10% of a row's
  compute) and prefetches the input `ahead` values on, one line per 16 values: the rows to come
  arrive while this one computes (prototype A/B: streamed 27.5, streamed and so prefetched 36.0
  GB/s; a prefetch of the whole next row in one burst before its loop gained little);
- `store_row` writes g or p through streaming stores for an output past the last-level cache (the
  line is not read first: 2 memory streams, not 3; see _stream.py), ordinary ones otherwise. A
  1000-class row (4000 bytes) does not fill whole lines: it shares one with each neighbour. Those
  lines are assembled in L1 from the two rows' values and streamed whole; only a task's first and
  last lines take ordinary stores. Written by ordinary masked stores at each row's ends instead,
  every row fetched a line from memory in the middle of its stream (a read for ownership), and the
  row's later stores waited behind it: the fused op at 1 GiB ran at 27.6 GB/s on the Intel Xeon
  host, 32.3 assembled (copy 48.5; a scratch kernel that skipped those lines: 38-39).

The sum is the chunks' float32 sums (at most SUM_CHUNK values each, 16 lanes added in a fixed
tree) added in float64: the order is fixed by the row length alone. Both need AVX-512F, or AVX2 with FMA.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._stream import LINE, _stream_line, prefetch_ir
from ._vecmath import _V16I, _exp16_nonpositive_ir, as_i64, broadcast, lanes_below, masked_load, masked_store, \
    vector_at, vector_sum_loop

__all__ = ["SUM_CHUNK", "ROW_PREFETCH_AHEAD", "GUESSED_SUM_HIGH", "LINE_SCRATCH", "row_exp_sum",
           "row_exp_sum_guessed", "store_row", "flush_line"]

SUM_CHUNK = 512            # values per float32 partial sum, here, in loss._chunked_sum and in _bce32
ROW_PREFETCH_AHEAD = 2048  # values (8 KB, two 1000-class rows): 1024 and 4096 measured within noise

_I32 = ir.IntType(32)
_LANES = LINE // 4
LINE_SCRATCH = 2 * _LANES  # store_row's line: a masked vector store at any of its 16 lanes stays inside


# With AVX-512, loss.py shifts a row by its label's logit when the row's sum of exps s is at most
# GUESSED_SUM_HIGH, so x - m may be > 0: the table exp is as exact there (0.57 ulp). Its rounding
# trick fails far past exp's overflow (x - m = 66735172 gave 0, others -inf), so the guessed rows'
# loop (row_exp_sum_guessed) first takes x - m past 89 to 89 (exp: inf, failing the guess), by
# vpminsd on the bits: a positive float orders as its int32 bits, a negative one's are negative,
# and a NaN becomes 89 or stays NaN, either way failing the guess. (The AVX2 form's 2^k holds for
# x - m < 43.7 only; the AVX2 rows shift by the max: the guess measured level against the max pass.)
GUESSED_SUM_HIGH = 2.0 ** 23
_OVERFLOW_BITS = int(np.float32(89.0).view(np.int32))


def _exp_shifted(builder, x, m, guessed):
    """exp(x - m) of a <16 x float>: x - m <= 0 or NaN (a NaN lane stays NaN), or with `guessed`
    any x - m as above."""
    a = builder.fsub(x, broadcast(builder, m))
    if guessed:
        bits = builder.bitcast(a, _V16I)
        limit = ir.Constant(_V16I, [_OVERFLOW_BITS] * 16)
        a = builder.bitcast(builder.select(builder.icmp_signed("<", bits, limit), bits, limit), a.type)
    return _exp16_nonpositive_ir(builder, a)


def _exp_shift_sum_intrinsic(guessed):
    def typer(typingctx, src, m, dst, count, ahead):
        if not (all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32 and a.layout == "C"
                    for a in (src, dst)) and m == types.float32
                and all(isinstance(x, types.Integer) for x in (count, ahead))):
            return None

        def codegen(context, builder, signature, args):
            source, target = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 2))
            loop = _exp_shift_sum_function(builder.module, guessed)
            return builder.call(loop, [source.data, args[1], target.data, as_i64(builder, args[3]),
                                       as_i64(builder, args[4])])

        return types.float64(src, m, dst, count, ahead), codegen

    return intrinsic(typer)


# dst[:count] = exp(src[:count] - m) for 1-D C-contiguous float32 arrays; returns their sum in
# float64: the float32 sums of SUM_CHUNK values at a time (vector_sum_loop's, the last count % 16
# values of a chunk by masked loads and stores) added in order. Each whole vector also prefetches
# src[k + ahead] (any address: a prefetch never faults). `_guessed`: x - m past 89 taken as 89.
_exp_shift_sum = _exp_shift_sum_intrinsic(False)
_exp_shift_sum_guessed = _exp_shift_sum_intrinsic(True)


def _exp_shift_sum_function(module, guessed):
    """The loop of _exp_shift_sum as a function of its own in `module` (defined once per module),
    never inlined: its caller's other live values (a row kernel keeps the store constants of
    store_row, the loss's scalars, ...) then cannot push the exp's constants out of registers.
    Inlined into the fused cross-entropy kernel, its loop reloaded 7 of them from memory on every
    vector (broadcast operands). A/B of the fused op on 1 GiB of 1000-class rows, old and new in
    alternating processes: 30.1, 33.3, 34.6 against 34.3, 36.4, 37.0 GB/s; the bits are the same.
    A row's chunks loop inside it: one call a row, not one a chunk."""
    name = "fastconv_exp_shift_sum_guessed" if guessed else "fastconv_exp_shift_sum"
    try:
        return module.get_global(name)
    except KeyError:
        pass
    f32, f64, pointer = ir.FloatType(), ir.DoubleType(), ir.FloatType().as_pointer()
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(f64, [pointer, f32, pointer, i64, i64]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    fn.attributes.add("nounwind")
    src0, m, dst0, count, ahead = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    entry = builder.block
    chunks, done = fn.append_basic_block("chunks"), fn.append_basic_block("done")
    zero = ir.Constant(f64, 0.0)
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(i64, 0)), chunks, done)

    builder.position_at_end(chunks)
    start, total = builder.phi(i64), builder.phi(f64)
    left = builder.sub(count, start)
    size = builder.select(builder.icmp_signed("<", left, ir.Constant(i64, SUM_CHUNK)), left,
                          ir.Constant(i64, SUM_CHUNK))
    src, dst = builder.gep(src0, [start]), builder.gep(dst0, [start])

    def exps(k, mask):
        z_at, e_at = vector_at(builder, src, k), vector_at(builder, dst, k)
        if mask is None:
            e = _exp_shifted(builder, builder.load(z_at, align=4), m, guessed)
            builder.store(e, e_at, align=4)
            prefetch_ir(builder, builder.gep(src, [builder.add(k, ahead)]))
        else:
            e = _exp_shifted(builder, masked_load(builder, z_at, mask), m, guessed)
            masked_store(builder, e, e_at, mask)
        return e

    total_next = builder.fadd(total, builder.fpext(vector_sum_loop(builder, size, exps, "exp_sum"), f64))
    start_next = builder.add(start, ir.Constant(i64, SUM_CHUNK))
    chunk_end = builder.block  # (vector_sum_loop added blocks: the one the chunk loop repeats from)
    start.add_incoming(ir.Constant(i64, 0), entry)
    start.add_incoming(start_next, chunk_end)
    total.add_incoming(zero, entry)
    total.add_incoming(total_next, chunk_end)
    builder.cbranch(builder.icmp_signed("<", start_next, count), chunks, done)

    builder.position_at_end(done)
    result = builder.phi(f64)
    result.add_incoming(zero, entry)
    result.add_incoming(total_next, chunk_end)
    builder.ret(result)
    return fn


@njit(inline="always")
def row_exp_sum(row, m, e, ahead):
    """e[:row.size] = exp(row - m) and returns its sum in float64 (the chunks' float32 sums, in
    order); prefetches the input `ahead` values past each vector."""
    return _exp_shift_sum(row, m, e, row.size, ahead)


@njit(inline="always")
def row_exp_sum_guessed(row, m, e, ahead):
    """row_exp_sum for a shift m that may be below the row's max (GUESSED_SUM_HIGH): the same bits
    where row - m <= 89, inf past it (a NaN lane: NaN or inf)."""
    return _exp_shift_sum_guessed(row, m, e, row.size, ahead)


def _store16_intrinsic(mode, labelled):
    def typer(typingctx, e, k, a, b, label_lane, t, dst, j, count):
        arrays, indices = (e, dst), (k, label_lane, j, count)
        if not (all(isinstance(x, types.Array) and x.ndim == 1 and x.dtype == types.float32 and x.layout == "C"
                    for x in arrays) and a == b == t == types.float32
                and all(isinstance(x, types.Integer) for x in indices)):
            return None

        def codegen(context, builder, signature, args):
            source, target = (context.make_array(signature.args[n])(context, builder, args[n]) for n in (0, 6))
            src = vector_at(builder, source.data, as_i64(builder, args[1]))
            out = vector_at(builder, target.data, as_i64(builder, args[7]))
            part = lanes_below(builder, as_i64(builder, args[8])) if mode == "part" else None
            x = masked_load(builder, src, part) if part is not None else builder.load(src, align=4)
            # mul, then sub: two roundings, as _grad_row (no fused multiply-add)
            g = builder.fsub(builder.fmul(x, broadcast(builder, args[2])), broadcast(builder, args[3]))
            if labelled:
                at_label = builder.icmp_signed("==", ir.Constant(ir.VectorType(_I32, 16), list(range(16))),
                                               broadcast(builder, builder.trunc(as_i64(builder, args[4]), _I32)))
                g = builder.select(at_label, builder.fsub(g, broadcast(builder, args[5])), g)
            if part is not None:
                masked_store(builder, g, out, part)
            else:
                store = builder.store(g, out, align=LINE if mode == "streamed" else 4)
                if mode == "streamed":
                    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
            return context.get_dummy_value()

        return types.void(e, k, a, b, label_lane, t, dst, j, count), codegen

    return intrinsic(typer)


# dst[j : j + 16] = e[k : k + 16] * a - b, less t in lane label_lane (`_labelled` only: the
# vectors of a row whose classes include its label, one, or two where a streamed row's partial
# head line and its first whole vector overlap; the others skip the compare, select and subtraction,
# ~3 of the ~25 vector operations a row spends per 16 classes); `_streamed` with a non-temporal
# store (dst + j must start a 64-byte line), `_part` for the first `count` lanes only.
_store16 = _store16_intrinsic("plain", False)
_store16_streamed = _store16_intrinsic("streamed", False)
_store16_part = _store16_intrinsic("part", False)
_store16_labelled = _store16_intrinsic("plain", True)
_store16_streamed_labelled = _store16_intrinsic("streamed", True)
_store16_part_labelled = _store16_intrinsic("part", True)


@njit(inline="always")
def store_row(e, classes, a, b, label, t, out, start, stream, skip, line, task_start):
    """out[start : start + classes] = e[:classes] * a - b, less t at class `label` (-1: none), for a
    1-D C-contiguous float32 `out`. With `stream` (skip = _stream.align_skip(out)) the row is one of
    a task's consecutive rows, from flat index task_start on: its whole 64-byte lines go out by
    streaming stores, and its values in a line it shares with the rows before or after it go to
    `line` (the task's scratch of LINE_SCRATCH float32), the line being assembled, which goes out
    when a row completes it. The caller ends its task with flush_line, then _stream.store_fence()."""
    k = 0
    if stream:
        lane = (start - skip) % _LANES  # where the row starts in its line
        k = min(classes, (_LANES - lane) % _LANES)
        if k > 0:
            _store_vector(e, 0, a, b, label, t, line, lane, k, False)
            if lane + k == _LANES:
                _put_line(line, out, start - lane, task_start)
    while k + 16 <= classes:
        _store_vector(e, k, a, b, label, t, out, start + k, 16, stream)
        k += 16
    if k < classes:
        if stream:
            _store_vector(e, k, a, b, label, t, line, 0, classes - k, False)
        else:
            _store_vector(e, k, a, b, label, t, out, start + k, classes - k, False)


@njit(inline="always")
def flush_line(line, out, end, task_start, skip):
    """Writes what store_row left in `line` of a task's rows that end at flat index `end`: the
    values of a last line that no row completed."""
    lane = (end - skip) % _LANES
    if lane > 0:
        base = end - lane
        _put_lanes(line, out, base, max(0, task_start - base), lane)


@njit(inline="always")
def _put_line(line, out, base, task_start):
    """out's line from flat index `base` = line[:16], by one streaming store; a task's first line
    (which began before task_start, in another task's rows) by ordinary stores of this task's values."""
    if base >= task_start:
        _stream_line(out, base, line, 0)
    else:
        _put_lanes(line, out, base, task_start - base, _LANES)


@njit(inline="always")
def _put_lanes(line, out, base, lo, hi):
    """out[base + lo : base + hi] = line[lo:hi], by ordinary stores."""
    for c in range(lo, hi):
        out[base + c] = line[c]


@njit(inline="always")
def _store_vector(e, k, a, b, label, t, out, at, count, streamed):
    """out[at : at + count] from the vector of classes k .. k + 15 (count < 16: its first count
    lanes, by a masked store; else whole, streamed or not), by the labelled form only when the
    label is among those classes."""
    lane = label - k
    if count < 16:
        if 0 <= lane < 16:
            _store16_part_labelled(e, k, a, b, lane, t, out, at, count)
        else:
            _store16_part(e, k, a, b, -1, t, out, at, count)
    elif streamed:
        if 0 <= lane < 16:
            _store16_streamed_labelled(e, k, a, b, lane, t, out, at, 16)
        else:
            _store16_streamed(e, k, a, b, -1, t, out, at, 16)
    elif 0 <= lane < 16:
        _store16_labelled(e, k, a, b, lane, t, out, at, 16)
    else:
        _store16(e, k, a, b, -1, t, out, at, 16)
