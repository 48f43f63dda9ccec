"""Range checks on the cpu backend: the min and max of an index array."""

__all__ = ["index_range", "index_range_start"]


def index_range(a):
    """(min, max) of a non-empty int64 array, as Python ints."""
    return int(a.min()), int(a.max())


def index_range_start(a):
    """index_range, computed now (the cpu kernels must not see an index out of range: they do not
    check), behind the native backends' interface: a function that returns it."""
    low_high = index_range(a)
    return lambda: low_high
