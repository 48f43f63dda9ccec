"""float32 GEMM in AVX-512 (or AVX2) for the convolution's per-sample products, on hosts that have it.

    C = op(A) @ op(B) + beta C,   each C[i, j] = sum over k in order of A[i, k] B[k, j]

The core is an 8 x 32 register tile (16 zmm accumulators): for each k, two 16-float loads of B's
row k, eight broadcasts of A's column k, sixteen fused multiply-adds; the tile is loaded (beta = 1)
or zeroed first and stored once at the end. B's rows are read in place (no packing) when B is not
transposed, which is how the convolution's shifted slices of the padded image come; a transposed B
is first packed into strips of NR (32) columns (pack_strip). A is read in place through its two
strides, transposed or not. Edges: a last strip of 16 or fewer columns by an 8 x 16 tile, columns
past the last whole 16 or 32 by masked loads and stores, rows past the last whole 8 through a
zero-padded 8-row copy of A and an 8 x 32 tile buffer.

Why: the dev hosts' OpenBLAS runs its AVX2 kernels (their environment pins
OPENBLAS_CORETYPE=Haswell; OpenBLAS would pick its AVX-512 "SkylakeX" kernels itself, which run a
large SGEMM about twice as fast there). Measured on the Zen 5 dev host, one thread: a 64 x 288 x
224 product (conv2's as one GEMM over copied tap rows) 204 GFLOP/s, ~90% of the core's FMA peak,
against OpenBLAS's 97.5; conv2's actual nine accumulating 64 x 32 x 224 tap products per sample
36.6 us (226 GFLOP/s). Users: the convolutions' backward (dW, and the wide kernel), the 1x1
layers' forward (_pointwise.py), the linear forward on the calling thread; gemm32_blocked
(below: blocked for the caches) the linear layers' other products and matmul; and gemm32_narrow
(below: one tile shape, quick to compile) the products of narrow linear layers.

Each C element's sum runs over k in the same order wherever it sits (tile, edge, thread), so the
results do not depend on the thread count.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._taps32 import transpose16_block
from ._vecmath import TARGET_AVX512, as_i64, broadcast, copy_rows16, lanes_below, masked_load, masked_store

__all__ = ["gemm32", "gemm32_blocked", "gemm32_in_blocks", "gemm32_narrow", "gemm32_runs", "pack_strip", "strips_shape",
           "MR", "NR"]

# The register tile, rows of A by columns of B: 8 x 32 in 16 of AVX-512's 32 zmm registers; 6 x 16
# with AVX2, 12 of its 16 ymm registers (a 16-float vector is two ymm halves there; 8 x 32 would
# need 32 accumulators), the shape of BLIS's and OpenBLAS's Haswell kernels.
MR, NR = (8, 32) if TARGET_AVX512 else (6, 16)
_V16 = ir.VectorType(ir.FloatType(), 16)
_I64 = ir.IntType(64)


def _tile_intrinsic(masked, halves, rows=MR, add_at_store=False):
    """tile(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, k, accumulate, ncols, run, a_run):
    c[c_off + r*ldc + j] (+)= sum_k a[a_off + r*a_rs + col(k)*a_cs] * b[b_off + k*ldb + j] for r < rows
    and j < 16 * halves (masked: j < ncols, the other columns neither read nor written), where A's
    columns come in runs of `run` every a_run: col(k) = (k // run) * a_run + k % run (run = k,
    a_run = 0: col(k) = k). k must be a multiple of run. With `accumulate` the multiply-adds
    continue from c's values (one chain); in a tile made with `add_at_store`, `accumulate` instead
    sums from zero and adds the sum to c's values as it stores them (a sum in blocks of k, each
    block's rounded once: _winograd32.products)."""
    def typer(typingctx, a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, k, accumulate, ncols, run, a_run):
        # Any float32 arrays: offsets count elements from each one's first (its data pointer), so a
        # 2-D array with strided rows is addressed through its row stride.
        if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (a, b, c)):
            return None

        def codegen(context, builder, signature, args):
            a_arr, b_arr, c_arr = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 4, 7))
            a_off, a_rs, a_cs, b_off, ldb, c_off, ldc, kk, ncols, run, a_run = (
                as_i64(builder, args[i]) for i in (1, 2, 3, 5, 6, 8, 9, 10, 12, 13, 14))
            accumulate = args[11]
            masks = [None] * halves
            if masked:  # each half's lanes below ncols, ncols - 16
                masks = [lanes_below(builder, builder.sub(ncols, ir.Constant(_I64, 16 * h))) for h in range(halves)]
            ptr_t = _V16.as_pointer()
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3), "llvm.fma.v16f32")
            zero = ir.Constant(_V16, [ir.Constant(ir.FloatType(), 0.0)] * 16)

            def vector_at(array, offset):
                return builder.bitcast(builder.gep(array.data, [offset]), ptr_t)

            def load(array, offset, h):
                if masks[h] is None:
                    return builder.load(vector_at(array, offset), align=4)
                return masked_load(builder, vector_at(array, offset), masks[h])

            def c_offset(r, h):
                row_start = builder.add(c_off, builder.mul(ir.Constant(_I64, r), ldc))
                return builder.add(row_start, ir.Constant(_I64, 16 * h))

            # Accumulators in allocas at the entry: LLVM promotes them to registers.
            accs = [[cgutils.alloca_once(builder, _V16) for _ in range(halves)] for _ in range(rows)]
            chained = ir.Constant(ir.IntType(1), 0) if add_at_store else accumulate
            with builder.if_else(chained) as (then, otherwise):
                with then:
                    for r in range(rows):
                        for h in range(halves):
                            builder.store(load(c_arr, c_offset(r, h), h), accs[r][h])
                with otherwise:
                    for r in range(rows):
                        for h in range(halves):
                            builder.store(zero, accs[r][h])
            with cgutils.for_range(builder, builder.sdiv(kk, run)) as runs:
                first = builder.mul(runs.index, run)  # B's row and A's column where this run starts
                a_first = builder.add(a_off, builder.mul(builder.mul(runs.index, a_run), a_cs))
                with cgutils.for_range(builder, run) as loop:
                    step = loop.index
                    row = builder.add(b_off, builder.mul(builder.add(first, step), ldb))
                    bv = [load(b_arr, builder.add(row, ir.Constant(_I64, 16 * h)), h) for h in range(halves)]
                    a_col = builder.add(a_first, builder.mul(step, a_cs))
                    for r in range(rows):
                        a_at = builder.add(a_col, builder.mul(ir.Constant(_I64, r), a_rs))
                        scalar = builder.load(builder.gep(a_arr.data, [a_at]))
                        av = broadcast(builder, scalar)
                        for h in range(halves):
                            builder.store(builder.call(fma, [av, bv[h], builder.load(accs[r][h])]), accs[r][h])
            def store_tile(added):
                for r in range(rows):
                    for h in range(halves):
                        value, target = builder.load(accs[r][h]), vector_at(c_arr, c_offset(r, h))
                        if added:
                            value = builder.fadd(load(c_arr, c_offset(r, h), h), value)
                        if masks[h] is None:
                            builder.store(value, target, align=4)
                        else:
                            masked_store(builder, value, target, masks[h])

            if add_at_store:
                with builder.if_else(accumulate) as (then, otherwise):
                    with then:
                        store_tile(True)
                    with otherwise:
                        store_tile(False)
            else:
                store_tile(False)
            return context.get_dummy_value()

        return types.void(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, k, accumulate, ncols, run, a_run), codegen

    return intrinsic(typer)


_tile = _tile_intrinsic(False, NR // 16)
_tile_masked = _tile_intrinsic(True, NR // 16)
# 8 x 16 tiles for a last strip of at most 16 columns (a 10-class output layer): the 8 x 32 tile
# there spent over two thirds of its multiply-adds on masked-off lanes. 128x128->10 with bias and
# ReLU on the calling thread, Zen 4 host: 16 -> 28 GFLOP/s (NumPy 21), the same bits.
_tile16 = _tile_intrinsic(False, 1)
_tile16_masked = _tile_intrinsic(True, 1)


@njit(inline="always")
def _stride(a):
    return a.strides[0] // a.itemsize


@njit(inline="always")
def _a_steps(a, trans_a):
    """The steps (in elements) between op(a)'s rows and between its columns."""
    lda = _stride(a)
    return (1, lda) if trans_a else (lda, 1)


@njit(inline="always")
def gemm32(a, b, c, beta, trans_a, trans_b):
    """c = op(a) @ op(b) + beta * c for 2-D float32 arrays whose last dimension is contiguous (any
    row stride), as _blas.gemm; op transposes when trans_* is True. c must not overlap a or b.

    Compiled once for every caller: the arrays go on as views of layout "A" (a[::1, ::1]) and the
    flags as plain bools. Called with C-contiguous, transposed or sliced arrays and with constant
    flags, the kernel had been compiled for each combination of layouts and flag values: nine
    times (2.4-2.6 s each) in the first run of `fastconv train digits_cnn` on an empty Numba cache."""
    _gemm32_any(a[::1, ::1], b[::1, ::1], c[::1, ::1], float(beta), bool(trans_a), bool(trans_b))


@njit(nogil=True, cache=True)
def _gemm32_any(a, b, c, beta, trans_a, trans_b):
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if not _scaled_by_beta(c, beta, k):
        return
    a_rs, a_cs = _a_steps(a, trans_a)
    if trans_b:
        strips = np.empty(strips_shape(n, k), np.float32)
        for strip in range(strips.shape[0]):
            pack_strip(b, strip, strips)
        _products(a, trans_a, a_rs, a_cs, strips, NR, k * NR, c, _stride(c), m, n, k, beta != 0.0, k, 0)
    else:
        _products(a, trans_a, a_rs, a_cs, b, _stride(b), 0, c, _stride(c), m, n, k, beta != 0.0, k, 0)


# B = b^T (b of shape (n, k), as a linear layer's weight in x @ w.T) is packed for the tiles as
# strips: strips[s] is the (k, NR) block of B's columns NR s .. NR s + NR - 1, 16 x 16 blocks through the
# registers (a scalar copy: 1 ns a value). The tiles then read B's rows as vectors, each strip's
# rows one after another (the panel as one (k, n) matrix instead, 128x3136->128 on one thread with
# 64 rows: 75 -> 107 GFLOP/s on the Zen 4 host). gemm32 packs all of B per call, gemm32_blocked
# block by block of K.
@njit(inline="always")
def strips_shape(n, k):
    return (n + NR - 1) // NR, k, NR


@njit(nogil=True, cache=True)
def pack_strip(b, strip, strips):
    """strips[strip] = the transposed rows b[NR strip : NR strip + NR] (those that exist), their
    first strips.shape[1] columns."""
    n, k = b.shape[0], strips.shape[1]
    ldb, at = _stride(b), strip * k * NR
    for j0 in range(strip * NR, min(n, strip * NR + NR), 16):
        for k0 in range(0, k, 16):
            transpose16_block(b, j0 * ldb + k0, ldb, min(16, n - j0), min(16, k - k0), strips,
                              at + k0 * NR + j0 - strip * NR, NR)


# A product with a long K whose B is read in place (a linear layer's dW = dy^T x over a large batch,
# dx = dy @ w over many output features) went at a third of the tiles' speed: every row tile of A read
# its strip of B over all of K (512 KB for K = 4096), so B came from L3 once per 8 rows of C, through
# rows at a stride of 4 KB (a 1024- or 2048-wide B puts a strip's rows in the same few L1 sets).
# gemm32_blocked is gemm32 blocked for the caches: K in
# blocks of KC, each block of B copied into strips (KC x NR: 32 KB, L1), and A in panels of MC rows
# (MC x KC: 192 KB, L2). C carries each value's float32 sum from block to block (a tile loads it back
# into its accumulators): one chain over K in order, gemm32's very bits, wherever the value sits. With
# few rows of C (or one block and under 128 rows) B's blocks are read in place, a copy serving too few
# tiles to pay for itself; a transposed B (trans_b: a layer's weight w in x @ w^T) is always packed,
# by pack_strip. Zen 5 host, one thread, GFLOP/s in place -> blocked: dW of 4096 rows,
# 1024 x 128 60 -> 192; dx 2048 x 2048 -> 256 columns 39 -> 93 (linear_backward: dense.py).
KC, MC = 256, 24 * MR
_PACKED_FROM_ROWS = 16 * MR


@njit(nogil=True, cache=True)
def gemm32_blocked(a, b, c, trans_a, trans_b):
    """c = op(a) @ op(b) for 2-D float32 arrays whose last dimension is contiguous (any row stride), by
    blocks of KC of K (B's block packed into strips: copied, or transposed from a layer's weight
    when trans_b) and panels of MC rows of C. c must not overlap a or b."""
    m, n = c.shape
    k = b.shape[1] if trans_b else b.shape[0]
    if not _scaled_by_beta(c, 0.0, k):
        return
    if not trans_b and (m < 4 * MR or (k <= KC and m < _PACKED_FROM_ROWS)):  # B in place (see above)
        for k0 in range(0, k, KC):
            k1 = min(k, k0 + KC)
            block = a[k0:k1] if trans_a else a[:, k0:k1]
            a_rs, a_cs = _a_steps(block, trans_a)
            _products(block, trans_a, a_rs, a_cs, b[k0:k1], _stride(b), 0, c, _stride(c), m, n, k1 - k0, k0 > 0,
                      k1 - k0, 0)
        return
    n_strips = strips_shape(n, 1)[0]
    buffer = np.empty(n_strips * min(k, KC) * NR, np.float32)
    for k0 in range(0, k, KC):
        k1 = min(k, k0 + KC)
        strips = buffer[:n_strips * (k1 - k0) * NR].reshape(n_strips, k1 - k0, NR)
        for strip in range(n_strips):
            if trans_b:
                pack_strip(b[:, k0:k1], strip, strips)
            else:
                j0 = strip * NR
                copy_rows16(b[k0:], j0, _stride(b), strips[strip], 0, NR, k1 - k0, min(NR, n - j0))
        for i0 in range(0, m, MC):
            i1 = min(m, i0 + MC)
            panel = a[k0:k1, i0:i1] if trans_a else a[i0:i1, k0:k1]
            a_rs, a_cs = _a_steps(panel, trans_a)
            _products(panel, trans_a, a_rs, a_cs, strips, NR, (k1 - k0) * NR, c[i0:i1], _stride(c), i1 - i0, n,
                      k1 - k0, k0 > 0, k1 - k0, 0)


@njit(inline="always")
def gemm32_in_blocks(a, b, c, beta, trans_a, trans_b):
    """gemm32_blocked with gemm32's arguments (beta 0 only), for the kernels that take a GEMM as an
    argument: the linear layers' threaded products and their backward (dense.py), the strided
    convolutions' backward (conv/_im2col.py). The arrays go on as views of layout "A" and the flags
    as plain bools, as gemm32's do: one compiled gemm32_blocked for every caller."""
    if beta != 0.0:
        raise ValueError("gemm32_in_blocks: beta 0 only")
    gemm32_blocked(a[::1, ::1], b[::1, ::1], c[::1, ::1], bool(trans_a), bool(trans_b))


# A narrow linear layer (a few inputs and outputs: the course's one neuron, its small networks) needs
# none of gemm32's larger tiles or packing, yet compiling gemm32 into its kernels took 2.7-3.1 s of
# each first call's ~5-7 s (Zen 5 host, empty cache). gemm32_narrow computes every value as the same
# chain by the MR x 16 masked tile alone (a transposed B copied once as it stands: a narrow B is
# small), so it gives gemm32's bits and compiles in about a second; on narrow products it runs as
# fast (its tiles are the ones gemm32 runs for 16 columns or fewer).
@njit(inline="always")
def gemm32_narrow(a, b, c, beta, trans_a, trans_b):
    """gemm32's c = op(a) @ op(b), gemm32's bits (beta 0 only), by one tile shape: for the narrow
    linear layers' kernels (dense.py). Arrays and flags go on as gemm32's do (compiled once)."""
    if beta != 0.0:
        raise ValueError("gemm32_narrow: beta 0 only")
    _gemm32_narrow_any(a[::1, ::1], b[::1, ::1], c[::1, ::1], bool(trans_a), bool(trans_b))


@njit(nogil=True, cache=True)
def _gemm32_narrow_any(a, b, c, trans_a, trans_b):
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if not _scaled_by_beta(c, 0.0, k):
        return
    if trans_b:  # B = b^T, copied into rows of B
        b_rows = np.empty((k, n), np.float32)
        for j in range(n):
            for kk in range(k):
                b_rows[kk, j] = b[j, kk]
        b = b_rows[::1, ::1]
    a_rs, a_cs = _a_steps(a, trans_a)
    ldb, ldc = _stride(b), _stride(c)
    m_whole = m // MR * MR
    for j0 in range(0, n, 16):
        cols = min(16, n - j0)
        for i0 in range(0, m_whole, MR):
            _tile16_masked(a, i0 * a_rs, a_rs, a_cs, b, j0, ldb, c, i0 * ldc + j0, ldc, k, False, cols, k, 0)
    if m_whole < m:  # the last rows as gemm32's: A's zero-padded to MR, C's through a tile buffer
        rows = m - m_whole
        a_rows = _last_rows_padded(a, trans_a, m_whole, rows, k, k, 0)
        tile = np.empty((MR, 16), np.float32)
        for j0 in range(0, n, 16):
            cols = min(16, n - j0)
            _tile16_masked(a_rows, 0, k, 1, b, j0, ldb, tile, 0, 16, k, False, cols, k, 0)
            _store_tile_rows(tile, c, m_whole, rows, j0, cols)


@njit(nogil=True, cache=True)
def gemm32_runs(a, b, c, beta, run, a_run):
    """c = A @ b + beta * c where A's columns are a's in runs: the K = b.shape[0] columns
    a[:, r * a_run : r * a_run + run] for r = 0, 1, ... (K a multiple of run). For a product over
    a convolution's wide grid that skips its extra columns: A the padded image's rows, read in
    place, run the output's width, a_run the padded width, b the output gradient's compact rows."""
    m, n = c.shape
    k = b.shape[0]
    if run <= 0 or k % run != 0 or a_run < run:
        raise ValueError("gemm32_runs: K (b's rows) must be a whole number of runs, and a run no longer than a_run")
    if not _scaled_by_beta(c, beta, k):
        return
    _products(a, False, _stride(a), 1, b, _stride(b), 0, c, _stride(c), m, n, k, beta != 0.0, run, a_run)


@njit(inline="always")
def _scaled_by_beta(c, beta, k):
    """c *= beta (c = 0 with no products to add): whether products remain to be added."""
    if c.shape[0] == 0 or c.shape[1] == 0:
        return False
    if beta != 0.0 and beta != 1.0:
        c *= np.float32(beta)
    if k == 0:
        if beta == 0.0:
            c[:] = 0
        return False
    return True


@njit(inline="always")
def _products(a, trans_a, a_rs, a_cs, b, ldb, b_strip, c, ldc, m, n, k, accumulate, run, a_run):
    """The tiles of gemm32, with B's rows at stride ldb and A's columns in runs (see _tile); b_strip
    0 for B in place, else the elements between packed strips (_b_columns_at)."""
    m_whole = m // MR * MR
    for j0 in range(0, n, NR):
        cols = min(NR, n - j0)
        b_at = _b_columns_at(j0, b_strip)
        for i0 in range(0, m_whole, MR):
            _tile_of_width(cols, a, i0 * a_rs, a_rs, a_cs, b, b_at, ldb, c, i0 * ldc + j0, ldc, k, accumulate, run,
                           a_run)
    if m_whole < m:  # the last rows: A's rows zero-padded to MR (and its runs made one), C's through a tile buffer
        rows = m - m_whole
        a_rows = _last_rows_padded(a, trans_a, m_whole, rows, k, run, a_run)
        tile = np.zeros((MR, NR), np.float32)
        for j0 in range(0, n, NR):
            cols = min(NR, n - j0)
            if accumulate:
                for r in range(rows):
                    for j in range(cols):
                        tile[r, j] = c[m_whole + r, j0 + j]
            _tile_of_width(cols, a_rows, 0, k, 1, b, _b_columns_at(j0, b_strip), ldb, tile, 0, NR, k, accumulate, k, 0)
            _store_tile_rows(tile, c, m_whole, rows, j0, cols)


@njit(inline="always")
def _last_rows_padded(a, trans_a, row0, rows, k, run, a_run):
    """op(A)'s rows row0 .. row0 + rows - 1 (A's columns in runs, see _tile) as the first rows of an
    MR x k buffer, zeros below: a tile reads MR rows of A, and the last rows of C are fewer."""
    a_rows = np.zeros((MR, k), np.float32)
    for r in range(rows):
        for kk in range(k):
            col = kk // run * a_run + kk % run
            a_rows[r, kk] = a[col, row0 + r] if trans_a else a[row0 + r, col]
    return a_rows


@njit(inline="always")
def _store_tile_rows(tile, c, row0, rows, j0, cols):
    """C's last rows from the tile buffer they were computed in."""
    for r in range(rows):
        for j in range(cols):
            c[row0 + r, j0 + j] = tile[r, j]


@njit(inline="always")
def _b_columns_at(j0, b_strip):
    """Where B's columns j0 .. j0 + 31 start: b[j0] in place (b_strip 0), b[j0 // 32 * b_strip]
    packed."""
    return j0 if b_strip == 0 else j0 // NR * b_strip


@njit(inline="always")
def _tile_of_width(cols, a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, k, accumulate, run, a_run):
    """The tile for `cols` <= 32 columns: 8 x 32, or 8 x 16 for 16 or fewer; masked past cols."""
    if cols == NR:
        _tile(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, k, accumulate, cols, run, a_run)
    elif cols > 16:
        _tile_masked(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, k, accumulate, cols, run, a_run)
    elif cols == 16:
        _tile16(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, k, accumulate, cols, run, a_run)
    else:
        _tile16_masked(a, a_off, a_rs, a_cs, b, b_off, ldb, c, c_off, ldc, k, accumulate, cols, run, a_run)
