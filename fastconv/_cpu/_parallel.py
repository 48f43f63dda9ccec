"""How the cpu kernels share out their work: small work runs on the calling thread alone (run), and
parallel loops cut a range into near-equal blocks (block).

Numba's threads sleep soon after each parallel loop (see __init__.py), and waking
them costs tens of microseconds: a ReLU or an SGD step over a 320-element bias took 76 us on two
threads, 0.9 us on one (3 us with switching the count there and back). So kernels whose work is
below SERIAL_BELOW elements run with Numba's thread count at 1. Results are the same bits either
way: no kernel's arithmetic depends on the thread count (tests/test_determinism.py).
"""
import numba
from numba import njit

__all__ = ["SERIAL_BELOW", "run", "block"]

SERIAL_BELOW = 1 << 15


def run(kernel, work, *args):
    """kernel(*args), on the calling thread alone when work (elements, or an equivalent count of
    operations) is below SERIAL_BELOW."""
    if work >= SERIAL_BELOW:
        return kernel(*args)
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(saved)


@njit(inline="always")
def block(t, blocks, size):
    """(lo, hi): block t of `blocks` near-equal blocks of range(size)."""
    return t * size // blocks, (t + 1) * size // blocks
