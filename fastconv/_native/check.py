"""Range checks on the native backends: the min and max of an index array, read back in one transfer."""

__all__ = ["index_range"]


def index_range(be, a):
    """(min, max) of a non-empty, contiguous int64 array, as Python ints (one sync on a GPU)."""
    out = be.empty((2,), be.xp.int64)
    be.ext.index_range(be.ptr(a), a.size, be.ptr(out), be.stream())
    low, high = out.tolist()
    return int(low), int(high)
