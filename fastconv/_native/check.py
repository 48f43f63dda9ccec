"""Range checks on the native backends: the min and max of an index array, read back in one transfer."""

__all__ = ["index_range_start"]


def index_range_start(be, a):
    """Starts the (min, max) of a non-empty, contiguous int64 array on the device and returns a
    function that reads it back as Python ints (the one sync). In between, the caller may launch
    the kernels that use the indices: ours never read or write outside an array for an index out
    of range (they write NaN or skip it), so the check may finish after them and the device is not
    left idle while the host waits for the range.

    One kernel launch for a batch of labels; past one block's slice (csrc/kernels/check.cuh) the
    slices' ranges go to the tail of the same buffer and a second launch combines them."""
    blocks = be.ext.index_range_blocks(a.size)
    out = be.empty((2 + 2 * blocks if blocks > 1 else 2,), be.xp.int64)
    start = be.ptr(out)  # (the workspace by address, past the range: a slice costs the host more)
    be.ext.index_range(be.ptr(a), a.size, start, start + 16 if blocks > 1 else 0, be.stream())

    def result():
        low, high = (out[:2] if blocks > 1 else out).tolist()
        return int(low), int(high)
    return result

