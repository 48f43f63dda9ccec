"""Writing outputs larger than the last-level cache with non-temporal (streaming) stores.

With ordinary stores an elementwise op over arrays past the cache moves three streams through
memory: the input, the output's read-for-ownership (the core fetches each line before writing
it) and the output itself. Non-temporal stores write whole 64-byte lines around the caches and
skip the second stream. Measured on the 2-core dev machine (1 GiB float32, both threads): ReLU
into existing memory 25.9 GB/s with ordinary stores, 42 GB/s streamed, its backward 29.7 -> 43;
glibc's memcpy, which streams, 44-46 GB/s.

LLVM emits a vector non-temporal store only for an aligned vector, which a vectorized Numba loop
never is, so kernels compute a block of BLOCK values into a small buffer (in L1) with ordinary
vectorizable code, then writes it out in 64-byte lines by `_stream_line`; the values before the
first whole line and after the last whole block are written by ordinary stores. BLOCK = 128 was
the fastest of 64 to 65536 measured.

Only outputs larger than the last-level cache are streamed: a smaller one is probably read again
soon (the next layer, the backward pass), and streaming would send it to memory first.
"""
import glob
import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["align_skip", "should_stream", "stream_map1", "stream_map2", "store_fence", "prefetch",
           "prefetch_all", "prefetch_ir", "PREFETCH_AHEAD"]

LINE = 64           # bytes per cache line and per streaming store
BLOCK = 128         # values computed into the L1 buffer per streamed block
SPAN = 1 << 16      # values per parallel task: a multiple of every dtype's values per line


def _last_level_cache_bytes(cpu="/sys/devices/system/cpu/cpu0/cache"):
    """The largest cache's size from Linux's sysfs (e.g. "491520K"); 32 MiB where unknown."""
    sizes = []
    for entry in glob.glob(os.path.join(cpu, "index*", "size")):
        try:
            with open(entry) as f:
                text = f.read().strip()
            sizes.append(int(text[:-1]) << {"K": 10, "M": 20, "G": 30}[text[-1]] if text[-1] in "KMG" else int(text))
        except (OSError, ValueError, IndexError):
            pass
    return max(sizes, default=32 << 20)


_STREAM_FROM = _last_level_cache_bytes()


def should_stream(out):
    """Whether a kernel should stream `out`: larger than the last-level cache, C-contiguous, its
    elements aligned (so that some element starts each 64-byte line)."""
    return out.nbytes > _STREAM_FROM and out.flags.c_contiguous and out.ctypes.data % out.itemsize == 0


def align_skip(out):
    """How many elements from out's first one to the first that starts a 64-byte line."""
    return (-out.ctypes.data) % LINE // out.itemsize


@intrinsic
def _stream_line(typingctx, dst, i, src, j):
    """dst[i : i + 64 // itemsize] = src[j : ...] as one non-temporal 64-byte store (dst + i must
    start a cache line; src may be unaligned)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype
            and isinstance(dst.dtype, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        dst_array = context.make_array(signature.args[0])(context, builder, args[0])
        src_array = context.make_array(signature.args[2])(context, builder, args[2])
        element = context.get_value_type(signature.args[0].dtype)
        line = ir.VectorType(element, LINE // context.get_abi_sizeof(element))
        source = builder.bitcast(builder.gep(src_array.data, [args[3]]), line.as_pointer())
        value = builder.load(source, align=context.get_abi_sizeof(element))
        target = builder.bitcast(builder.gep(dst_array.data, [args[1]]), line.as_pointer())
        store = builder.store(value, target, align=LINE)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(dst, i, src, j), codegen


@intrinsic
def store_fence(typingctx):
    """Orders the streaming stores before everything after it (mfence on x86): a thread's
    non-temporal stores are otherwise not ordered with its later ordinary ones."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


# How far ahead of a compute-heavy streamed loop its input is prefetched: a loop that computes
# sigmoid at ~0.4 ns per value while it streams its output stalled on its input reads (1.1 ns per
# value at 2^28 float32, 0.45 in cache); prefetching 4 KB ahead brought it to 0.42 (38 GB/s, 2
# threads), 1 KB or 2 KB ahead 0.45, 8 KB 0.78. The hardware prefetcher keeps up by itself with
# ReLU's light loop.
PREFETCH_AHEAD = 1024  # values (float32: 4 KB)


def prefetch_ir(builder, address):
    """IR for prefetcht0 of the line holding `address` (any pointer): a hint with no effect on
    results, and no fault for any address."""
    address = builder.bitcast(address, ir.IntType(8).as_pointer())
    i32 = ir.IntType(32)
    read, keep_in_all_levels, data_cache = ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]),
                                        "llvm.prefetch.p0i8")
    builder.call(fn, [address, read, keep_in_all_levels, data_cache])


@intrinsic
def prefetch(typingctx, src, i):
    """A hint to bring the line holding src[i] into the caches (x86 prefetcht0): no effect on
    results, and no fault for any address."""
    if not isinstance(src, types.Array):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        prefetch_ir(builder, builder.gep(array.data, [args[1]]))
        return context.get_dummy_value()

    return types.void(src, i), codegen


@njit(inline="always")
def prefetch_all(a):
    """prefetch for every 64-byte line of the 1-D C-contiguous float32 array a."""
    for i in range(0, a.size, 16):
        prefetch(a, i)


@njit(inline="always")
def _span(n, s, skip):
    """Task s's range [lo, hi) of n values and where its whole blocks start: every task but the
    first starts a cache line; the first writes the `skip` values before its first line plainly."""
    lo = 0 if s == 0 else min(n, s * SPAN + skip)
    hi = min(n, (s + 1) * SPAN + skip)
    return lo, hi, min(skip, hi) if s == 0 else lo


@njit(inline="always")
def _stream_block(y, b, buf):
    for k in range(0, BLOCK, LINE // y.itemsize):
        _stream_line(y, b + k, buf, k)


# The block loops index slices from 0: with an index LLVM cannot prove non-negative, Numba's
# wraparound for negative indices made the vectorized loop gather (a streamed ReLU backward ran
# slower than the plain one). A kernel whose fn divides needs error_model="numpy": the default's
# ZeroDivisionError check keeps these serial loops from vectorizing.
@njit(inline="always")
def stream_map1(fn, x, y, skip):
    """y[i] = fn(x[i]) for 1-D arrays, in parallel, y streamed (skip = align_skip(y)). A kernel
    holds this loop alone: with a plain prange loop beside it in the same function (a `stream`
    flag choosing between them) the streamed loop ran at half speed (22 vs 42 GB/s for ReLU)."""
    n = y.size
    for s in prange((n + SPAN - 1) // SPAN):
        lo, hi, start = _span(n, s, skip)
        whole = start + (hi - start) // BLOCK * BLOCK
        buf = np.empty(BLOCK, y.dtype)
        for i in range(lo, start):
            y[i] = fn(x[i])
        for b in range(start, whole, BLOCK):
            xs = x[b:b + BLOCK]
            for k in range(BLOCK):
                buf[k] = fn(xs[k])
            _stream_block(y, b, buf)
        for i in range(whole, hi):
            y[i] = fn(x[i])
        store_fence()


@njit(inline="always")
def stream_map2(fn, a, c, y, skip):
    """y[i] = fn(a[i], c[i]) for 1-D arrays, in parallel, y streamed (see stream_map1). Each block of
    a is first copied into the L1 buffer: read straight from memory, ReLU backward's `0 if x <= 0
    else dy` became a masked load of dy (vmovups {k}{z}), which on the Zen 5 host held the loop to
    29-31 GB/s; with the copy, 46-49 (copy ceiling 48, counted as read + write)."""
    n = y.size
    for s in prange((n + SPAN - 1) // SPAN):
        lo, hi, start = _span(n, s, skip)
        whole = start + (hi - start) // BLOCK * BLOCK
        buf = np.empty(BLOCK, y.dtype)
        for i in range(lo, start):
            y[i] = fn(a[i], c[i])
        for b in range(start, whole, BLOCK):
            a_block, c_block = a[b:b + BLOCK], c[b:b + BLOCK]
            for k in range(BLOCK):
                buf[k] = a_block[k]
            for k in range(BLOCK):
                buf[k] = fn(buf[k], c_block[k])
            _stream_block(y, b, buf)
        for i in range(whole, hi):
            y[i] = fn(a[i], c[i])
        store_fence()
