"""Losses on the CPU: one fused parallel Numba pass per cross-entropy row (shift, sum of exp, probs,
the row's loss), parallel chunked sums for BCE and MSE, then the mean in float64 in a fixed order
(the chunking depends on the input size only, not on the thread count, so results are
reproducible). Math: csrc/kernels/loss.cuh."""
import numpy as np
from numba import njit, prange

from ._bce32 import bce_sum
from ._memory import empty, empty_like
from ._parallel import run
from ._stream import SPAN, align_skip, should_stream, store_fence
from ._softmax32 import GUESSED_SUM_HIGH, LINE_SCRATCH, ROW_PREFETCH_AHEAD, SUM_CHUNK, flush_line, row_exp_sum, \
    row_exp_sum_guessed, store_row
from . import _vecmath
from ._vecmath import exp_nonpositive, log1p_unit, maxnum

__all__ = ["softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "softmax_cross_entropy_with_grad",
           "bce_with_logits_forward", "bce_with_logits_backward", "mse_forward", "mse_backward"]

_CHUNK = 4096        # elements per partial sum of the elementwise losses
_MAX_CHUNKS = 1024
_BCE_BLOCK = 64      # BCE terms per float64 partial sum within a chunk (see _chunk_loss_sum)


# Row reductions live in small functions with relaxed floating-point flags: LLVM vectorizes a sum
# only when it may reassociate it, and a max only when it may assume no NaN. NaN still propagates
# to the loss: a NaN logit makes its exp NaN, and the (reassociated) sum of a NaN is NaN; the max
# only shifts the row (softmax(z) = softmax(z - m) for any m), so whatever it makes of a NaN row
# cannot hide the NaN.
@njit(fastmath={"nnan", "nsz"}, cache=True)
def _row_max(row):
    m = row[0]
    for c in range(1, row.size):
        m = maxnum(m, row[c])
    return m


@njit(fastmath={"reassoc", "contract"}, cache=True)
def _row_sum(row):
    s = 0.0
    for c in range(row.size):
        s += row[c]
    return s


@njit(cache=True)
def _exp_shift(row, m, p):
    """p = exp(row - m), elementwise (no fast-math flags: the scalar and vector forms of this loop,
    which LLVM picks at run time by checking whether p overlaps row, give the same bits)."""
    for c in range(row.size):
        p[c] = exp_nonpositive(row[c] - m)


@njit(fastmath={"reassoc"}, cache=True)
def _chunked_sum(p):
    """sum(p) in float64: each chunk of SUM_CHUNK values summed in the row's dtype (float32
    vectors hold twice the lanes), the chunks' sums in float64 (one float32 sum over a row of 10^6
    classes lost ~40x the accuracy of NumPy's). A loop that only reads: a reduction in a loop that
    also writes got LLVM's runtime overlap check, whose scalar fallback sums in another order, and
    whether it was taken depended on where the allocator put the buffers (training runs differed
    by an ulp between processes)."""
    total = 0.0
    for start in range(0, p.size, SUM_CHUNK):
        chunk = p[start:start + SUM_CHUNK]
        s = np.float32(0.0)
        for c in range(chunk.size):
            s += chunk[c]
        total += s
    return total


@njit(fastmath={"reassoc", "contract"}, cache=True)
def _row_weighted_shift(row, m, weight, has_weight):
    """sum_c w_c * (z_c - m), the label-smoothing term's numerator."""
    s = 0.0
    if has_weight:
        for c in range(row.size):
            s += weight[c] * (row[c] - m)
    else:
        for c in range(row.size):
            s += row[c] - m
    return s


@njit(inline="always")
def _in_range(v, big):
    """v, or +-inf where it is past big (the row dtype's largest value): the native kernels compute
    a row's loss and its smoothing sum in the logits' dtype, as torch does, where these overflow;
    here they are computed in float64."""
    if abs(v) > big:
        return np.copysign(np.inf, v)
    return v


@njit(inline="always")
def _grad_constants(y, weight, has_weight, smoothing, share, label_weight_sum, class_weight_sum, consts, p_scale):
    """The row gradient's g_c = p_c * a - b (b * w_c when weighted and smoothed), less t at the
    label y: a and b into consts[0] and consts[1] (the row's dtype), t returned in float64."""
    true_part = (1.0 - smoothing) * (weight[y] if has_weight else 1.0)
    consts[0] = p_scale * (true_part + share * class_weight_sum) / label_weight_sum
    consts[1] = share / label_weight_sum
    return true_part / label_weight_sum


@njit(cache=True)
def _grad_row(p, g, y, weight, has_weight, smoothing, share, label_weight_sum, class_weight_sum, consts, p_scale=1.0):
    """g = dloss/dz of one row from its probs p_scale * p: the backward's formula, in the row's
    dtype (float32 math for float32; consts is a scratch array of 2 in that dtype, the caller's, so
    that no row allocates). g must not be p (see _cross_entropy_rows)."""
    t = _grad_constants(y, weight, has_weight, smoothing, share, label_weight_sum, class_weight_sum, consts, p_scale)
    a, b = consts[0], consts[1]
    if has_weight and smoothing != 0.0:
        for c in range(p.size):
            g[c] = p[c] * a - b * weight[c]
    else:
        for c in range(p.size):
            g[c] = p[c] * a - b
    g[y] -= t


@njit(inline="always")
def _exp_sum_portable(row, m, e, ahead):
    """e = exp(row - m) and its sum in float64 (ahead: unused, see _softmax32.row_exp_sum)."""
    _exp_shift(row, m, e)
    return _chunked_sum(e)


@njit(inline="always")
def _write_row_portable(e, out, start, y, grad, inv_s, weight, has_weight, smoothing, share, label_weight_sum,
                        class_weight_sum, consts, stream, skip, line, task_start):
    """out[start : start + C] = the row's gradient from its exps e and 1 / sum (or with grad False,
    its probs e / sum); stream, skip, line and task_start: unused, see _write_row_simd."""
    row_out = out[start:start + e.size]
    if grad:
        _grad_row(e, row_out, y, weight, has_weight, smoothing, share, label_weight_sum, class_weight_sum, consts,
                  inv_s)
    else:
        _scaled(e, inv_s, row_out, consts)


@njit(inline="always")
def _write_row_simd(e, out, start, y, grad, inv_s, weight, has_weight, smoothing, share, label_weight_sum,
                      class_weight_sum, consts, stream, skip, line, task_start):
    """_write_row_portable by _softmax32.store_row (streamed when `stream`; line and task_start:
    store_row's): the same formula, the label's constant rounded to float32 before it is
    subtracted. A weighted, smoothed gradient (b * w_c per class) goes through _grad_row, never
    streamed (see _streamed_rows)."""
    if grad and has_weight and smoothing != 0.0:
        _write_row_portable(e, out, start, y, grad, inv_s, weight, has_weight, smoothing, share, label_weight_sum,
                            class_weight_sum, consts, stream, skip, line, task_start)
        return
    label = -1
    if grad:
        consts[2] = _grad_constants(y, weight, has_weight, smoothing, share, label_weight_sum, class_weight_sum,
                                    consts, inv_s)
        label = y
    else:
        consts[0], consts[1], consts[2] = inv_s, 0.0, 0.0
    store_row(e, e.size, consts[0], consts[1], label, consts[2], out, start, stream, skip, line, task_start)


# Values per parallel task of streamed cross-entropy rows. A streamed task's first and last lines,
# shared with the neighbouring tasks' rows, take ordinary stores (a read for ownership each): with
# tasks of SPAN values (65 rows of 1000 classes) they cost the fused op 4-5% at 1 GiB (scratch A/B
# on the Intel host: 35.3 -> 36.8 GB/s without them; the op's rows body, in one process, 3-4% faster
# with these tasks). A streamed output is past the last-level cache, so even these tasks are many:
# 256 per GiB.
STREAMED_SPAN = 16 * SPAN


@njit(inline="always")
def _rows_per_task(classes, stream):
    """Rows per parallel task: SPAN values' worth, STREAMED_SPAN's when the rows are streamed."""
    return max(1, (STREAMED_SPAN if stream else SPAN) // max(1, classes))


@njit(inline="always")
def _streamed_rows(stream, grad, has_weight, smoothing):
    """Whether write_row streams the rows: as asked, but a weighted, smoothed gradient goes through
    _grad_row's ordinary stores, which leave store_row's line (and so flush_line) unused."""
    return stream and not (grad and has_weight and smoothing != 0.0)


# The shift. softmax(z) = softmax(z - m) for any m that keeps the exps finite and 1 / s a normal
# float32 (s = sum exp(z - m)). The AVX-512 rows first try m = z_y, the label's logit (one load),
# instead of the max (a pass over the row):
# - where z_y is the max (a confident, right row), every bit is the max shift's;
# - otherwise the loss is at least log 2, and log s keeps its relative accuracy.
# The guess holds when 1/2 <= s <= GUESSED_SUM_HIGH = 2^23. That bound is for accuracy: z_c - m is
# rounded to float32, and a class above the label has z_c - z_y <= log s < 16, so its probability
# errs by at most 2^-21 relative from that (probabilities above 0.01 measured within 1.15e-6 of
# float64, 4.4e-7 with the max shift). A row that misses (a logit ~16 past its label's, inf, NaN) is
# redone from its max, and so is the rest of its block of rows (i // GUESS_BLOCK; tasks hold whole
# blocks): a batch of such rows pays one extra pass in GUESS_BLOCK. Blocks, not "the rows after a
# miss": a row's shift must not depend on how the rows are split into tasks, which differs between
# the forward and the fused op where only one of them streams, and their losses must be the same
# bits. AVX2 keeps the max (the guess measured level there). The measurements and the two reviews
# behind each choice: benchmarks/HISTORY.md, twenty-seventh session (1 GiB of 1000-class rows,
# fused, 2 threads: 38.8-40.1 -> 43.8-44.7 GB/s).
GUESS_BLOCK = 16


@njit(inline="always")
def _guess_block(classes):
    """Rows a block (above): GUESS_BLOCK, or 1 for rows of more than SPAN / GUESS_BLOCK values, whose
    tasks (SPAN values' worth) would otherwise grow to GUESS_BLOCK rows and leave threads idle on a
    small batch of long rows (16 rows of 50,000 classes: one task). By the row length alone, so the
    same for every split."""
    return GUESS_BLOCK if classes <= SPAN // GUESS_BLOCK else 1


@njit(inline="always")
def _shift_and_exp_sum(exp_sum, guessed_exp_sum, row, y, e, guess):
    """(m, s, missed): the row's shift m, e = exp(row - m) and s = sum e in float64. With `guess`, m
    is row[y] if that shift holds (see above), else max(row) and `missed` is True."""
    if guess:
        m = row[y]
        s = guessed_exp_sum(row, m, e, ROW_PREFETCH_AHEAD)
        if 0.5 <= s <= GUESSED_SUM_HIGH:
            return m, s, False
    m = _row_max(row)
    return m, exp_sum(row, m, e, ROW_PREFETCH_AHEAD), guess


@njit(inline="always")
def _cross_entropy_rows_body(exp_sum, guessed_exp_sum, write_row, z, labels, weight, has_weight, smoothing, probs,
                             row_loss, row_weight, grad, label_weight_sum, class_weight_sum, stream, skip,
                             guess_shift):
    """Each row's loss, and probs = softmax(z); with grad, `probs` receives dloss/dz instead (the
    fused forward + backward: the row is still in cache, so the gradient costs no memory pass).
    The row's exps go to a buffer of the task's own (the gradient computed in place, p into p,
    failed LLVM's runtime overlap check and ran scalar), then out by write_row.
    exp_sum(row, m, e, ahead) computes e = exp(row - m) and returns its sum, guessed_exp_sum the
    same for a guessed shift (guess_shift: see GUESS_BLOCK); write_row writes the row's gradient or
    probs into the flat output (streamed when `stream`, skip = _stream.align_skip of it)."""
    n, classes = z.shape
    out = probs.reshape(-1)
    share = smoothing / classes
    big = np.finfo(z.dtype).max
    w_total = 0.0
    if smoothing != 0.0:
        w_total = _in_range(_row_sum(weight), big) if has_weight else float(classes)
    stream = _streamed_rows(stream, grad, has_weight, smoothing)
    block = _guess_block(classes)
    rows_per_task = -(-_rows_per_task(classes, stream) // block) * block  # whole blocks
    for t in prange((n + rows_per_task - 1) // rows_per_task):
        exps = np.empty(classes, probs.dtype)
        consts = np.empty(3, probs.dtype)
        line = np.empty(LINE_SCRATCH, probs.dtype)
        first, end = t * rows_per_task, min(n, (t + 1) * rows_per_task)
        block_missed = False
        for i in range(first, end):
            row = z[i]
            y = labels[i]
            if i % block == 0:
                block_missed = False
            m, s, missed = _shift_and_exp_sum(exp_sum, guessed_exp_sum, row, y, exps, guess_shift and not block_missed)
            block_missed = block_missed or missed
            write_row(exps, out, i * classes, y, grad, 1.0 / s, weight, has_weight, smoothing, share, label_weight_sum,
                      class_weight_sum, consts, stream, skip, line, first * classes)
            log_s = np.log(s)
            wy = weight[y] if has_weight else 1.0
            r = (1.0 - smoothing) * wy * (log_s - (np.float64(row[y]) - m))
            if smoothing != 0.0:  # (sum_c w_c (-log p_c): nonnegative terms, past big iff the dtype's sum is)
                r += share * _in_range(w_total * log_s - _row_weighted_shift(row, m, weight, has_weight), big)
            row_loss[i] = _in_range(r, big)  # (both terms >= 0: past big iff one of them or their sum is)
            row_weight[i] = wy
        if stream:
            flush_line(line, out, end * classes, first * classes, skip)
            store_fence()


@njit(parallel=True, cache=True)
def _cross_entropy_rows(z, labels, weight, has_weight, smoothing, probs, row_loss, row_weight, grad,
                        label_weight_sum, class_weight_sum):
    _cross_entropy_rows_body(_exp_sum_portable, _exp_sum_portable, _write_row_portable, z, labels, weight, has_weight,
                             smoothing, probs, row_loss, row_weight, grad, label_weight_sum, class_weight_sum, False,
                             0, False)


# Compiled only when called, i.e. on AVX-512 or AVX2 hosts (elsewhere LLVM could not emit it). Outputs
# past the last-level cache are streamed (1 GiB of 1000-class rows, fused, two threads, A/B of
# the op: 20.0 GB/s before _softmax32, 32.7 after, copy 49.1; see 1fcb512 for the other runs; the
# lines that rows share, assembled whole by store_row: 27.6 -> 32.3 on the Intel host).
@njit(parallel=True, cache=True)
def _cross_entropy_rows_simd(z, labels, weight, has_weight, smoothing, probs, row_loss, row_weight, grad,
                               label_weight_sum, class_weight_sum, stream, skip):
    _cross_entropy_rows_body(row_exp_sum, row_exp_sum_guessed, _write_row_simd, z, labels, weight, has_weight,
                             smoothing, probs, row_loss, row_weight, grad, label_weight_sum, class_weight_sum, stream,
                             skip, _vecmath.TARGET_AVX512)


@njit(cache=True)
def _scaled(p, scale, out, k):
    """out = p * scale, in p's dtype (float32 rows stay float32 math; k: the caller's scratch)."""
    k[0] = scale
    for c in range(p.size):
        out[c] = p[c] * k[0]


@njit(inline="always")
def _cross_entropy_grad_body(write_row, probs, labels, weight, has_weight, smoothing, label_weight_sum,
                             class_weight_sum, out, stream, skip):
    """Each row's gradient from its probs, by write_row (see _cross_entropy_rows_body)."""
    n, classes = probs.shape
    flat = out.reshape(-1)
    share = smoothing / classes
    stream = _streamed_rows(stream, True, has_weight, smoothing)
    rows_per_task = _rows_per_task(classes, stream)
    for t in prange((n + rows_per_task - 1) // rows_per_task):
        consts = np.empty(3, probs.dtype)
        line = np.empty(LINE_SCRATCH, probs.dtype)
        first, end = t * rows_per_task, min(n, (t + 1) * rows_per_task)
        for i in range(first, end):
            write_row(probs[i], flat, i * classes, labels[i], True, 1.0, weight, has_weight, smoothing, share,
                      label_weight_sum, class_weight_sum, consts, stream, skip, line, first * classes)
        if stream:
            flush_line(line, flat, end * classes, first * classes, skip)
            store_fence()


@njit(parallel=True, cache=True)
def _cross_entropy_grad(probs, labels, weight, has_weight, smoothing, label_weight_sum, class_weight_sum, out):
    _cross_entropy_grad_body(_write_row_portable, probs, labels, weight, has_weight, smoothing, label_weight_sum,
                             class_weight_sum, out, False, 0)


@njit(parallel=True, cache=True)
def _cross_entropy_grad_simd(probs, labels, weight, has_weight, smoothing, label_weight_sum, class_weight_sum, out,
                               stream, skip):
    _cross_entropy_grad_body(_write_row_simd, probs, labels, weight, has_weight, smoothing, label_weight_sum,
                             class_weight_sum, out, stream, skip)


# The elementwise losses compute in the inputs' dtype (constants made in it: a float64 literal
# would turn float32 math into float64) with error_model="numpy" (the default's ZeroDivisionError
# check on log1p_unit's and sigmoid's divisions kept the loops scalar: BCE at 0.7 GB/s).
# (Plain njit functions, not inline="always": Numba's IR inlining of exp_nonpositive through them
# warned NumbaIRAssumptionWarning; LLVM inlines them anyway.)
@njit(error_model="numpy", cache=True)
def _softplus_neg(x, zero):
    """softplus(-x) = log(1 + exp(-x)), without overflow."""
    return log1p_unit(exp_nonpositive(-abs(x))) + (-x if x < zero else zero)


@njit(error_model="numpy", cache=True)
def _bce_term(x, t, pw, zero, one):
    """(1 - t) x + (1 + (pw - 1) t) softplus(-x): the BCE with logits of one value, pw its
    pos_weight (torch's formula)."""
    return (one - t) * x + (one + (pw - one) * t) * _softplus_neg(x, zero)


@njit(fastmath={"reassoc", "contract"}, error_model="numpy", cache=True)
def _chunk_loss_sum(a, b, pos_weight, has_pos_weight, classes, squared, start, stop):
    """One chunk's sum of squared differences or BCE terms, in float64; reassociation allowed so
    that the loop vectorizes (the order is still fixed by the code, the same on every call). The
    loops index slices from 0 (see _stream.py on Numba's wraparound). The BCE loop stays scalar
    (a call per term), so its terms are summed _BCE_BLOCK at a time, the partial sums then added:
    one running float64 sum over a chunk of 4096 terms erred up to ~50 ulps of the mean, past the
    float64 tolerance of the tests (blocks of 512: 12; of 64: 4, as the vectorized MSE sum)."""
    consts = np.zeros(2, a.dtype)
    consts[1] = 1
    zero, one = consts[0], consts[1]
    acc = 0.0
    if squared:
        x, t = a[start:stop], b[start:stop]
        for i in range(x.size):
            d = x[i] - t[i]
            acc += d * d
        return acc
    for k in range(start, stop, _BCE_BLOCK):
        x, t = a[k:min(stop, k + _BCE_BLOCK)], b[k:min(stop, k + _BCE_BLOCK)]
        part = 0.0
        if has_pos_weight:
            for i in range(x.size):
                part += _bce_term(x[i], t[i], pos_weight[(k + i) % classes], zero, one)
        else:
            for i in range(x.size):
                part += _bce_term(x[i], t[i], one, zero, one)
        acc += part
    return acc


@njit(inline="always")
def _blocks_sum(block_sum, a, b, pos_weight, has_pos_weight, classes, squared, chunks):
    """The sum of block_sum(a, b, pos_weight, has_pos_weight, classes, squared, lo, hi) over
    `chunks` near-equal blocks [lo, hi) of a's values, computed in parallel and added in order."""
    n = a.size
    partials = np.zeros(chunks)
    for k in prange(chunks):
        partials[k] = block_sum(a, b, pos_weight, has_pos_weight, classes, squared, k * n // chunks,
                                (k + 1) * n // chunks)
    total = 0.0
    for k in range(chunks):
        total += partials[k]
    return total


@njit(parallel=True, cache=True)
def _elementwise_loss_sum(a, b, pos_weight, has_pos_weight, classes, squared, chunks):
    return _blocks_sum(_chunk_loss_sum, a, b, pos_weight, has_pos_weight, classes, squared, chunks)


@njit(inline="always")
def _bce_block_sum_simd(a, b, pos_weight, has_pos_weight, classes, squared, start, stop):
    """_chunk_loss_sum's BCE sum by _bce32.bce_sum, for at most one pos_weight (classes 1): a block
    whose float32 chunk sums overflowed (logits past ~1e36; or a NaN or infinite term, which stays
    so) is redone by _chunk_loss_sum's float64 sum."""
    s = bce_sum(a, b, start, stop, pos_weight[0] if has_pos_weight else np.float32(1))
    if not np.isfinite(s):
        s = _chunk_loss_sum(a, b, pos_weight, has_pos_weight, classes, squared, start, stop)
    return s


# Compiled only when called, i.e. on AVX-512 or AVX2 hosts, for float32 with no pos_weight or one (a (N, 1)
# output's): _elementwise_loss_sum's blocks, each by _bce_block_sum_simd.
@njit(parallel=True, cache=True)
def _bce_sum_simd(x, t, pos_weight, has_pos_weight, chunks):
    return _blocks_sum(_bce_block_sum_simd, x, t, pos_weight, has_pos_weight, 1, False, chunks)


@njit(error_model="numpy", cache=True)
def _bce_grad_value(x, t, pw, n, zero, one):
    """d/dx of _bce_term over the mean's n: ((1 - t) sigmoid(x) - pw t sigmoid(-x)) / n (a division,
    as the native kernels do, not a multiplication by 1/n: the same rounding). Each term is exact for
    a hard target; the equal (1 - t) - (1 + (pw - 1) t) sigmoid(-x) gave 0 for t = 0 and x below ~-17
    in float32, where the gradient is e^x / n."""
    e = exp_nonpositive(-abs(x))
    big, small = one / (one + e), e / (one + e)  # sigmoid(|x|), sigmoid(-|x|), without overflow
    sig, sig_neg = (big, small) if x >= zero else (small, big)
    return ((one - t) * sig - pw * t * sig_neg) / n


@njit(parallel=True, error_model="numpy", cache=True)
def _bce_grad(x, t, pos_weight, has_pos_weight, classes, out):
    n = x.size
    consts = np.zeros(3, x.dtype)
    consts[1], consts[2] = 1, n
    zero, one, count = consts[0], consts[1], consts[2]
    if has_pos_weight:
        for i in prange(n):
            out[i] = _bce_grad_value(x[i], t[i], pos_weight[i % classes], count, zero, one)
    else:
        for i in prange(n):
            out[i] = _bce_grad_value(x[i], t[i], one, count, zero, one)


@njit(parallel=True, error_model="numpy", cache=True)
def _mse_grad(p, t, out):
    n = p.size
    for i in prange(n):
        out[i] = 2 * (p[i] - t[i]) / n


def _optional(array, dtype):
    return (array, True) if array is not None else (np.empty(0, dtype), False)


def _scalar(value, dtype):
    return np.asarray(value, dtype=dtype)


def _weight_sums(w, has_weight, labels, n, classes):
    """(sum_i w[y_i], sum_c w_c): the gradient's normalizer and the smoothing term's total."""
    if has_weight:
        return _ordered_sum(w[labels].astype(np.float64)), _ordered_sum(w.astype(np.float64))
    return float(n), float(classes)


def _mean(total, count):
    """total / count in float64 as the native kernels divide: a count of 0 (every label's class
    weight 0) gives 0/0 = NaN, or +-inf (label smoothing's term is not 0), not ZeroDivisionError."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.float64(total) / np.float64(count)


def _grad_no_label_weight(probs, labels, w, smoothing, class_weight_sum, out):
    """out = the gradient when sum_i w[y_i] is 0 (out may be probs), by the native kernels' formula
    and rounding: [p ((1 - e) w[y] + (e/C) S) - (e/C) w_c - (1 - e) w[y] onehot] * (1 / 0), in the
    probs' dtype: NaN (0 * inf) without smoothing, +-inf (NaN where the bracket is 0) with it. (The
    Numba kernels fold 1 / W into their constants, which for W = 0 gives other NaN and inf.)"""
    dtype = probs.dtype.type
    share = dtype(smoothing) / dtype(probs.shape[1])
    true_part = (dtype(1) - dtype(smoothing)) * w[labels]
    with np.errstate(invalid="ignore", over="ignore"):
        np.multiply(probs, (true_part + share * dtype(class_weight_sum))[:, None], out=out)
        out -= share * w
        out[np.arange(out.shape[0]), labels] -= true_part
        out *= dtype(np.inf)
    return out


def _cross_entropy(logits, labels, weight, smoothing, grad):
    n, classes = logits.shape
    out = empty_like(logits)
    # from the cache, as `out` (see _memory: new ones fault in their pages on every call): at 1 GiB of
    # 1000-class rows these are 2 MiB each, and the fused op ran 4% faster (A/B in one process)
    row_loss, row_weight = empty(n, np.float64), empty(n, np.float64)
    w, has_weight = _optional(weight, logits.dtype)
    label_weight_sum, class_weight_sum = _weight_sums(w, has_weight, labels, n, classes) if grad else (1.0, 1.0)
    no_label_weight = grad and label_weight_sum == 0.0  # the kernels write the probs; the gradient after
    if no_label_weight:
        grad, label_weight_sum = False, 1.0
    if logits.dtype == np.float32 and _vecmath.SIMD:
        stream = should_stream(out)
        run(_cross_entropy_rows_simd, out.size, logits, labels, w, has_weight, smoothing, out, row_loss, row_weight,
            grad, label_weight_sum, class_weight_sum, stream, align_skip(out) if stream else 0)
    else:
        run(_cross_entropy_rows, out.size, logits, labels, w, has_weight, smoothing, out, row_loss, row_weight, grad,
            label_weight_sum, class_weight_sum)
    total_weight = _ordered_sum(row_weight) if has_weight else float(n)
    if no_label_weight:
        _grad_no_label_weight(out, labels, w, smoothing, class_weight_sum, out)
    return _scalar(_mean(_ordered_sum(row_loss), total_weight), logits.dtype), out


def softmax_cross_entropy_forward(logits, labels, weight, smoothing):
    return _cross_entropy(logits, labels, weight, smoothing, grad=False)


def softmax_cross_entropy_with_grad(logits, labels, weight, smoothing):
    return _cross_entropy(logits, labels, weight, smoothing, grad=True)


def softmax_cross_entropy_backward(probs, labels, weight, smoothing):
    n, classes = probs.shape
    w, has_weight = _optional(weight, probs.dtype)
    label_weight_sum, class_weight_sum = _weight_sums(w, has_weight, labels, n, classes)
    out = empty_like(probs)
    if label_weight_sum == 0.0:
        return _grad_no_label_weight(probs, labels, w, smoothing, class_weight_sum, out)
    if probs.dtype == np.float32 and _vecmath.SIMD:
        stream = should_stream(out)
        run(_cross_entropy_grad_simd, out.size, probs, labels, w, has_weight, smoothing, label_weight_sum,
            class_weight_sum, out, stream, align_skip(out) if stream else 0)
    else:
        run(_cross_entropy_grad, out.size, probs, labels, w, has_weight, smoothing, label_weight_sum,
            class_weight_sum, out)
    return out


def _ordered_sum(values):
    return float(np.add.reduce(values, dtype=np.float64))  # NumPy's pairwise sum: fixed order


def _chunks(n):
    return max(1, min(_MAX_CHUNKS, n // _CHUNK))


def _last_dim(x):
    return x.shape[-1] if x.ndim else 1


def bce_with_logits_forward(logits, targets, pos_weight):
    pw, has_pw = _optional(pos_weight, logits.dtype)
    x, t = logits.reshape(-1), targets.reshape(-1)
    if logits.dtype == np.float32 and _vecmath.SIMD and (not has_pw or pw.size == 1):
        total = run(_bce_sum_simd, x.size, x, t, pw, has_pw, _chunks(x.size))
    else:
        total = run(_elementwise_loss_sum, x.size, x, t, pw, has_pw, _last_dim(logits), False, _chunks(x.size))
    return _scalar(total / x.size, logits.dtype)


def bce_with_logits_backward(logits, targets, pos_weight):
    pw, has_pw = _optional(pos_weight, logits.dtype)
    out = empty_like(logits)
    run(_bce_grad, out.size, logits.reshape(-1), targets.reshape(-1), pw, has_pw, _last_dim(logits), out.reshape(-1))
    return out


def mse_forward(pred, target):
    p, t = pred.reshape(-1), target.reshape(-1)
    total = run(_elementwise_loss_sum, p.size, p, t, np.empty(0, pred.dtype), False, 1, True, _chunks(p.size))
    return _scalar(total / p.size, pred.dtype)


def mse_backward(pred, target):
    out = empty_like(pred)
    run(_mse_grad, out.size, pred.reshape(-1), target.reshape(-1), out.reshape(-1))
    return out
