"""Arrays to host NumPy: the one place that knows how a device array is copied off its GPU."""
import numpy as np

__all__ = ["refuse_masked", "to_numpy"]


def to_numpy(a):
    """A host NumPy array: a CuPy array (anything with __cuda_array_interface__ and .get()) is
    copied off the device; anything else goes through np.asarray. Objects that merely have a
    .get method (a dict, a pandas Series) are not mistaken for device arrays."""
    if not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__") and callable(getattr(a, "get", None)):
        a = a.get()
    return np.asarray(a)


def refuse_masked(a, name):
    """TypeError for a numpy.ma.MaskedArray, named `name`: np.asarray would drop its mask, and the values
    under it (fill values, "missing" data) would be used as data."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray; fastconv does not apply masks: pass "
                        f"{name}.filled(value) or {name}.compressed(), or np.asarray({name}) to use every value")
