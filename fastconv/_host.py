"""Arrays to host NumPy: the one place that knows how a device array is copied off its GPU."""
import numpy as np

__all__ = ["to_numpy"]


def to_numpy(a):
    """A host NumPy array: a CuPy array (anything with __cuda_array_interface__ and .get()) is
    copied off the device; anything else goes through np.asarray. Objects that merely have a
    .get method (a dict, a pandas Series) are not mistaken for device arrays."""
    if not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__") and callable(getattr(a, "get", None)):
        a = a.get()
    return np.asarray(a)
