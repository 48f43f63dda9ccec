"""Range checks on the native backends: the min and max of an index array, read back in one transfer."""

__all__ = ["index_range"]

# The kernel is one block (csrc/kernels/check.cuh): it wins while the launches it saves dominate
# and loses once one SM's bandwidth does. Measured on an H200 (2026-11-26): 802816 pooling indices
# checked in 171 us with the kernel against 253 us with the array library's min, max and stack;
# 12.8M indices took ~2 ms in one block, ~50 GB/s (max_pool2d_backward 64x64x112x112: 142 GB/s;
# 610 GB/s in the first session's H200 run, with the array library's reductions over the whole GPU).
_ONE_BLOCK_LIMIT = 1 << 20


def index_range(be, a):
    """(min, max) of a non-empty, contiguous int64 array, as Python ints (one sync on a GPU)."""
    if a.size > _ONE_BLOCK_LIMIT:
        low, high = be.xp.stack((a.min(), a.max())).tolist()
        return int(low), int(high)
    out = be.empty((2,), be.xp.int64)
    be.ext.index_range(be.ptr(a), a.size, be.ptr(out), be.stream())
    low, high = out.tolist()
    return int(low), int(high)
