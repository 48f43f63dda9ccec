"""Depthwise convolutions (stride 1, groups > 1 with one input channel a group: MobileNet's 3x3
layers, with any channel multiplier C_out / C_in), float32 and float64, any padding and dilation:
each output plane is its own small sum of shifted input planes, so they go plane by plane, not by
the per-sample GEMMs of the other paths (which filled one of 16 lanes a product here: 0.1-0.3x torch).

With K = C_out / C_in output channels a group (o's input channel g = o // K), x padded by p:
    forward  y[n, o, r, q]  = b[o] + sum_{a, c} w[o, 0, a, c] xp[n, g, r + a*dh, q + c*dw]
    dx       dxp[n, g, i, j] = sum_{o in g, a, c} w[o, 0, a, c] dy[n, o, i - a*dh, j - c*dw]  (dy 0 off its grid)
    dW       dw[o, 0, a, c] = sum_{n, r, q} dy[n, o, r, q] xp[n, g, r + a*dh, q + c*dw]
    db       db[o]          = sum_{n, r, q} dy[n, o, r, q]
All on the "wide" grid of _wide.py: an output row as wide as a padded input row (the last (KW-1)*dw
columns of each discarded), so that tap (a, c) is the constant shift a*dh*Wp + c*dw of a flat plane.
The forward and dx keep 16 outputs in a vector register over all their taps (_taps16; dx gathers
dy, placed on the wide grid in a zeroed buffer); dW keeps a float32 sum per tap and lane (no loop
reduces), flushed into float64 every _SAMPLES_A_FLUSH samples, its valid lanes summed at the end.

Threads: the forward and dx over (sample, input channel) planes, dW and db over output channels
(each summing the samples in order), in contiguous blocks with scratch of their own: every value is
computed by one thread in a fixed order, the same bits on any thread count. Measured against the
GEMM paths and torch: benchmarks/HISTORY.md (thirty-eighth session).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .._activation import (RELU as _RELU, SIGMOID as _SIGMOID, SIGMOID16 as _SIGMOID16, ZERO as _ZERO,
                           relu as _relu, sigmoid as _sigmoid, sigmoid_in_place)
from .._memory import empty
from .. import _vecmath
from .._vecmath import as_i64, broadcast, copy_rows16
from ._shared import _sum_of, _threads

_SAMPLES_A_FLUSH = 64  # (each lane of dW's float32 sums adds one term a sample: chains of <= 64 terms)
_BLOCK_LANES = 4096  # dW's output rows a block (its sums per tap and lane: 12 bytes each, a thread's, per tap)

# The kernels index flat arrays by offsets: a view a plane (x[i, g], y[i, o]) costs reference counts
# on the array's one shared header, which the threads took turns at: 400 ns a 7x7 plane, 8x its sums.


def _is_float_array(*arrays):
    return all(isinstance(a, types.Array) and a.dtype in (types.float32, types.float64) for a in arrays)


def _vector_at(context, builder, signature, args, k, offset):
    """(the <16 x T>* at args[k]'s data + args[offset], T) for a 1-D array argument."""
    array = context.make_array(signature.args[k])(context, builder, args[k])
    element = context.get_data_type(signature.args[k].dtype)
    pointer = builder.gep(array.data, [as_i64(builder, args[offset])])
    return builder.bitcast(pointer, ir.VectorType(element, 16).as_pointer()), element


@intrinsic
def _madd16_pairs(typingctx, acc, j, a, i, b, k):
    """acc[j : j+16] += a[i : i+16] * b[k : k+16] (1-D arrays of one float dtype; 16 lanes, unaligned)."""
    if not (_is_float_array(acc, a, b) and acc.dtype == a.dtype == b.dtype):
        return None

    def codegen(context, builder, signature, args):
        target, element = _vector_at(context, builder, signature, args, 0, 1)
        first, _ = _vector_at(context, builder, signature, args, 2, 3)
        second, _ = _vector_at(context, builder, signature, args, 4, 5)
        align = element.get_abi_size(context.target_data)
        product = builder.fmul(builder.load(first, align=align), builder.load(second, align=align))
        builder.store(builder.fadd(builder.load(target, align=align), product), target, align=align)
        return context.get_dummy_value()

    return types.void(acc, j, a, i, b, k), codegen


@intrinsic
def _taps16(typingctx, out, j, src, i, offsets, weights, w0, taps, accumulate, bias):
    """out[j : j+16] = (out[j : j+16] if accumulate else bias) + sum over k < taps, in order, of
    weights[w0 + k] * src[i + offsets[k] : ... + 16]: one output vector over all taps in a register
    (a pass over the plane a tap had streamed 112x112 planes through L2 nine times)."""
    if not (_is_float_array(out, src, weights) and out.dtype == src.dtype == weights.dtype
            and isinstance(offsets, types.Array) and offsets.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        target, element = _vector_at(context, builder, signature, args, 0, 1)
        vector = ir.VectorType(element, 16)
        align = element.get_abi_size(context.target_data)
        source = context.make_array(signature.args[2])(context, builder, args[2])
        shifts = context.make_array(signature.args[4])(context, builder, args[4])
        taps_w = context.make_array(signature.args[5])(context, builder, args[5])
        base = builder.gep(source.data, [as_i64(builder, args[3])])
        w0, count = as_i64(builder, args[6]), as_i64(builder, args[7])
        start = context.cast(builder, args[9], signature.args[9], signature.args[0].dtype)
        first = builder.select(args[8], builder.load(target, align=align), broadcast(builder, start))
        entry = builder.block
        loop, done = builder.append_basic_block("taps16_loop"), builder.append_basic_block("taps16_done")
        builder.branch(loop)
        builder.position_at_end(loop)
        k, acc = builder.phi(ir.IntType(64)), builder.phi(vector)
        shift = builder.load(builder.gep(shifts.data, [k]))
        weight = builder.load(builder.gep(taps_w.data, [builder.add(w0, k)]))
        run = builder.bitcast(builder.gep(base, [shift]), vector.as_pointer())
        total = builder.fadd(acc, builder.fmul(broadcast(builder, weight), builder.load(run, align=align)))
        k_next = builder.add(k, ir.Constant(ir.IntType(64), 1))
        k.add_incoming(ir.Constant(ir.IntType(64), 0), entry)
        k.add_incoming(k_next, loop)
        acc.add_incoming(first, entry)
        acc.add_incoming(total, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, count), loop, done)
        builder.position_at_end(done)
        builder.store(total, target, align=align)
        return context.get_dummy_value()

    return types.void(out, j, src, i, offsets, weights, w0, taps, accumulate, bias), codegen


def _copy_rows(dst, d0, d_ld, src, s0, s_ld, rows, width, relu):
    """dst[d0 + r*d_ld + q] = src[s0 + r*s_ld + q] (relu: negative as 0) for r < rows, q < width."""


@overload(_copy_rows)
def _copy_rows_impl(dst, d0, d_ld, src, s0, s_ld, rows, width, relu):
    # TARGET_AVX512, not AVX512: what Numba's on-disk cache is keyed by (FASTCONV_SIMD or a test's patch is not)
    if dst.dtype == src.dtype == types.float32 and _vecmath.TARGET_AVX512:  # (AVX2's partial masks: slow on AMD)
        def by_vectors(dst, d0, d_ld, src, s0, s_ld, rows, width, relu):
            copy_rows16(src, s0, s_ld, dst, d0, d_ld, rows, width, relu)  # (masked: a 7-wide row one pair)
        return by_vectors

    def by_values(dst, d0, d_ld, src, s0, s_ld, rows, width, relu):
        for r in range(rows):
            for q in range(width):
                v = src[s0 + r * s_ld + q]
                dst[d0 + r * d_ld + q] = _relu(v) if relu else v
    return by_values


def _is_depthwise(x, w, stride, groups):
    """Stride 1, groups of one input channel each (groups = C_in > 1), whatever the channel multiplier.
    (Strided ones stay on the other paths: these loops over their rows ran 2-3x slower there.)"""
    return stride == (1, 1) and groups > 1 and w.shape[1] == 1 and x.shape[1] == groups


@njit(inline="always")
def _zero(a):
    """a = 0 (not a[:] = 0: a view, and a reference count on the threads' shared scratch)."""
    for q in range(a.size):
        a[q] = 0


@njit(inline="always")
def _pad_into(x, base, h, wd, xp, wp, top, left):
    """The plane x[base : base + h*wd] (rows of wd) into xp at (top, left): its border (and tail) stay
    as they are, zero from _zero once per thread (every plane has the same interior)."""
    _copy_rows(xp, top * wp + left, wp, x, base, wd, h, wd, False)


@njit(inline="always")
def _epilogue(acc, stride, y, base, oh, ow, act):
    """y[base + r*ow + q] = act(acc[r*stride + q]) (the bias is in acc already), the activation chosen
    outside the loops; under SIGMOID16 sigmoid16 over the plane, as _epilogue._bias_activate. Inlined
    (a call a plane cost 100 ns, twice a 7x7 plane's products), but for the portable sigmoid's loop."""
    if act == _SIGMOID:
        _sigmoid_rows(acc, stride, y, base, oh, ow)
    else:
        _copy_rows(y, base, ow, acc, 0, stride, oh, ow, act == _RELU)
        if act == _SIGMOID16:
            sigmoid_in_place(y, base, base + oh * ow)


@njit(nogil=True, error_model="numpy", cache=True)
def _sigmoid_rows(acc, stride, y, base, oh, ow):
    """_epilogue's portable sigmoid (float64, or hosts without the vector code). Not inline="always":
    Numba's IR inlining of the sigmoid warned NumbaIRAssumptionWarning."""
    for r in range(oh):
        for q in range(ow):
            y[base + r * ow + q] = _sigmoid(acc[r * stride + q])


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _forward_depthwise(x, shape, w, shifts, b, has_bias, padding, oh, ow, act, y, xps, outs):
    """y (flat N, C_out, OH, OW) = act(the depthwise convolution of x (flat N, C, H, W: shape) with w
    (C_out, KH*KW) + b); shifts[k]: tap k's offset on the wide grid; xps (threads, Hp*Wp + tail) and
    outs (threads, _run(OH, Wp)): scratch. Each output vector sums its taps in a register (_taps16)."""
    n, c, h, wd = shape
    c_out, taps = w.shape
    per = c_out // c
    wp = wd + padding[2] + padding[3]
    run = _run(oh, wp)
    weights = w.reshape(c_out * taps)
    tasks, threads = n * c, xps.shape[0]
    for t in prange(threads):
        xp, acc = xps[t], outs[t]
        _zero(xp)
        for task in range(t * tasks // threads, (t + 1) * tasks // threads):
            i, g = task // c, task % c
            _pad_into(x, task * h * wd, h, wd, xp, wp, padding[0], padding[2])
            for o in range(g * per, (g + 1) * per):
                bias = b[o] if has_bias else _ZERO
                for q in range(0, run, 16):
                    _taps16(acc, q, xp, q, shifts, weights, o * taps, taps, False, bias)
                _epilogue(acc, wp, y, (i * c_out + o) * oh * ow, oh, ow, act)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _input_grad_depthwise(dy, w, back, margin, padding, oh, ow, dx, shape, dxps, dybs):
    """dx (flat N, C, H, W: shape) of the depthwise convolution, from dy (flat N, C_out, OH, OW), as the
    forward's gather: dxp[p] = sum_k w[o, k] dyw[p - shift_k], dy on the wide grid `margin` values into a
    zeroed buffer (back[k] = margin - shift_k >= 0); its other columns are 0, so they add nothing."""
    n, c, h, wd = shape
    c_out, taps = w.shape
    per = c_out // c
    wp = wd + padding[2] + padding[3]
    hp = h + padding[0] + padding[1]
    run = _run(hp, wp)
    weights = w.reshape(c_out * taps)
    tasks, threads = n * c, dxps.shape[0]
    for t in prange(threads):
        dxp, dyb = dxps[t], dybs[t]
        _zero(dyb)  # (once: each plane below writes only its valid values)
        for task in range(t * tasks // threads, (t + 1) * tasks // threads):
            i, g = task // c, task % c
            for o in range(g * per, (g + 1) * per):
                base = (i * c_out + o) * oh * ow
                _copy_rows(dyb, margin, wp, dy, base, ow, oh, ow, False)
                for p in range(0, run, 16):
                    _taps16(dxp, p, dyb, p, back, weights, o * taps, taps, o > g * per, _ZERO)
            _copy_rows(dx, task * h * wd, wd, dxp, padding[0] * wp + padding[2], wp, h, wd, False)


@njit(parallel=True, nogil=True, error_model="numpy", cache=True)
def _weight_grad_depthwise(dy, x, shape, shifts, padding, kh, kw, oh, ow, block_rows, dw_out, db, xps, dyws, parts,
                           totals):
    """dw_out (C_out, KH*KW) and db (C_out,) in float64, from dy (flat N, C_out, OH, OW) and x (flat N, C,
    H, W: shape); xps, dyws, parts (float32 sums per tap and lane) and totals (their float64 sums):
    scratch. On the wide grid, in blocks of block_rows output rows (the scratch a block's, whatever the
    image's size): a lane a position, the taps' sums kept per lane (no loop reduces) over the samples,
    then a block's valid lanes added into dw_out in order."""
    n, c, h, wd = shape
    c_out = dw_out.shape[0]
    taps = kh * kw
    per = c_out // c
    wp = wd + padding[2] + padding[3]
    halo = shifts[taps - 1] // wp  # (the padded rows a block's taps read below its own: (KH-1)*dh)
    threads = xps.shape[0]
    for t in prange(threads):
        xp, dyw, part, total = xps[t], dyws[t], parts[t], totals[t]
        for o in range(t * c_out // threads, (t + 1) * c_out // threads):
            g = o // per
            for k in range(taps):
                dw_out[o, k] = 0.0
            bias_total = 0.0
            for r0 in range(0, oh, block_rows):
                rows = min(block_rows, oh - r0)
                lanes = _run(rows, wp)
                for q in range(taps * lanes):
                    part[q] = 0
                    total[q] = 0
                _zero(dyw)  # (its other columns stay 0: each sample writes only its valid values)
                counted = 0
                for i in range(n):
                    # x's rows r0 .. r0 + rows + halo of the padded plane (zeros where they are padding)
                    _zero(xp)
                    first, last = max(r0, padding[0]), min(r0 + rows + halo, padding[0] + h)
                    if last > first:
                        _copy_rows(xp, (first - r0) * wp + padding[2], wp, x,
                                   ((i * c + g) * h + first - padding[0]) * wd, wd, last - first, wd, False)
                    base = (i * c_out + o) * oh * ow
                    _copy_rows(dyw, 0, wp, dy, base + r0 * ow, ow, rows, ow, False)
                    for k in range(taps):
                        for q in range(0, lanes, 16):
                            _madd16_pairs(part, k * lanes + q, dyw, q, xp, shifts[k] + q)
                    counted += 1
                    if counted == _SAMPLES_A_FLUSH:
                        _flush(part, total, taps * lanes)
                        counted = 0
                    if r0 == 0:
                        bias_total += _sum_of(dy, base, base + oh * ow)
                for k in range(taps):  # (the wide grid's other columns held 0 * x: NaN where x is inf, not added)
                    s = 0.0
                    for r in range(rows):
                        for q in range(r * wp, r * wp + ow):
                            s += total[k * lanes + q] + part[k * lanes + q]
                    dw_out[o, k] += s
            db[o] = bias_total


@njit(inline="always")
def _flush(part, total, count):
    """total[:count] += part[:count]; part[:count] = 0 (float32 sums into their float64 totals)."""
    for q in range(count):
        total[q] += part[q]
        part[q] = 0


@njit(inline="always")
def _run(oh, wp):
    """The wide grid's values rounded up to whole 16-lane vectors."""
    return (oh * wp + 15) // 16 * 16


def _geometry(x, w, padding, dilation):
    """(the padded width, each tap's offset on the wide grid, the largest)."""
    wp = x.shape[3] + padding[2] + padding[3]
    kh, kw = w.shape[2:]
    shifts = np.array([a * dilation[0] * wp + c * dilation[1] for a in range(kh) for c in range(kw)], np.int64)
    return wp, shifts, int(shifts[-1])


def _scratch(threads, size, dtype):
    """(threads, size) rows, each a whole number of 64-byte lines and one more apart: the threads write
    their own rows all the time, and rows sharing a cache line made two threads slower than one."""
    line = 64 // np.dtype(dtype).itemsize
    return empty((threads, (size + line - 1) // line * line + line), dtype)


def _forward_by_depthwise(x, w, b, padding, dilation, oh, ow, act, y):
    n, c, h, _ = x.shape
    wp, shifts, last = _geometry(x, w, padding, dilation)
    padded = (h + padding[0] + padding[1]) * wp
    threads = _threads(n * c)
    _forward_depthwise(x.reshape(-1), x.shape, np.ascontiguousarray(w).reshape(w.shape[0], -1), shifts,
                       b if b is not None else np.empty(0, x.dtype), b is not None, padding, oh, ow, act,
                       y.reshape(-1), _scratch(threads, max(padded, last + _run(oh, wp)) + 16, x.dtype),
                       _scratch(threads, _run(oh, wp), x.dtype))


def _backward_by_depthwise(dy, x, w, padding, dilation, bias, input_grad):
    """(dx or None, dW, db or None) of a depthwise convolution (x C-contiguous)."""
    n, c, h, _ = x.shape
    c_out, _, kh, kw = w.shape
    oh, ow = dy.shape[2:]
    dy = np.ascontiguousarray(dy).reshape(-1)
    wp, shifts, last = _geometry(x, w, padding, dilation)
    dx = None
    if input_grad:
        dx = empty(x.shape, x.dtype)
        threads = _threads(n * c)
        hp_run = _run(h + padding[0] + padding[1], wp)
        _input_grad_depthwise(dy, np.ascontiguousarray(w).reshape(c_out, -1), last - shifts, last, padding, oh, ow,
                              dx.reshape(-1), x.shape, _scratch(threads, hp_run, x.dtype),
                              _scratch(threads, last + hp_run + 16, x.dtype))
    threads = _threads(c_out)
    block_rows = max(1, min(oh, _BLOCK_LANES // wp))
    lanes = _run(block_rows, wp)
    dw, db = np.empty((c_out, kh * kw)), np.empty(c_out)
    _weight_grad_depthwise(dy, x.reshape(-1), x.shape, shifts, padding, kh, kw, oh, ow, block_rows, dw, db,
                           _scratch(threads, last + lanes + 16, x.dtype), _scratch(threads, lanes, x.dtype),
                           _scratch(threads, kh * kw * lanes, x.dtype), _scratch(threads, kh * kw * lanes, np.float64))
    return dx, dw.astype(x.dtype).reshape(w.shape), db.astype(x.dtype) if bias else None
