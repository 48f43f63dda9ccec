"""Range checks on the cpu backend: the min and max of an index array."""

__all__ = ["index_range_start"]


def index_range_start(a):
    """The (min, max) of a non-empty int64 array as Python ints, computed now (the cpu kernels must
    not see an index out of range: they do not check), behind the native backends' interface: a
    function that returns it."""
    low_high = int(a.min()), int(a.max())
    return lambda: low_high
