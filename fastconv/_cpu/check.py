"""Range checks on the cpu backend: the min and max of an index array."""

__all__ = ["index_range"]


def index_range(a):
    """(min, max) of a non-empty int64 array, as Python ints."""
    return int(a.min()), int(a.max())
