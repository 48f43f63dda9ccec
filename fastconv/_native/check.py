"""Range checks on the native backends: the min and max of an index array, read back in one transfer."""

__all__ = ["index_range"]


def index_range(be, a):
    """(min, max) of a non-empty, contiguous int64 array, as Python ints (one sync on a GPU).

    One kernel launch for a batch of labels; past one block's slice (csrc/kernels/check.cuh) the
    slices' ranges go to the tail of the same buffer and a second launch combines them."""
    blocks = be.ext.index_range_blocks(a.size)
    out = be.empty((2 + 2 * blocks if blocks > 1 else 2,), be.xp.int64)
    be.ext.index_range(be.ptr(a), a.size, be.ptr(out), be.ptr(out[2:] if blocks > 1 else None), be.stream())
    low, high = out[:2].tolist()
    return int(low), int(high)
