"""The index range every op checks labels and pooling indices against (value_range: one kernel and
one transfer on the native backends), on every backend, against NumPy's min and max; and the
address the in-place ops' overlap check reads, for every kind of NumPy array."""
import numpy as np
import pytest

from fastconv.backend import load
from fastconv.ops._check import address, value_range
from helpers import misaligned, on

INT64 = np.iinfo(np.int64)


@pytest.mark.parametrize("n", [1, 2, 511, 512, 513, 1025, 65536, 65537, 100_003, (1 << 18) - 1, 1 << 18,
                               (1 << 20) + 1, 1024 * 16384 + 3])
def test_range_of_any_length(backend, n):
    # Lengths around the block's 512 threads and its tree, one a thread strides many times, around
    # the one-block limit of 65536 values (then slices of 16384 and a second launch), and past the
    # 1024-block cap (longer slices); on cpu, around the length from which tasks of 65536 values
    # run on the threads (check.PARALLEL_FROM = 2^18), a last task of one value among them.
    a = np.random.default_rng(n).integers(-(10**6), 10**6, n)
    assert value_range(on(backend, a), backend) == (int(a.min()), int(a.max()))


@pytest.mark.parametrize("where", [0, 511, 512, -1])
def test_extremes_anywhere(backend, where):
    a = np.zeros(1000, np.int64)
    a[where], a[(where + 7) % 1000] = INT64.min, INT64.max
    assert value_range(on(backend, a), backend) == (INT64.min, INT64.max)


def test_a_constant_array(backend):
    assert value_range(on(backend, np.full(777, -3, np.int64)), backend) == (-3, -3)


@pytest.mark.parametrize("n", [65537, 100_003, (1 << 18) + 1])
@pytest.mark.parametrize("where", ["first", "last"])
def test_extremes_in_any_slice(backend, n, where):
    # the extremes in the first or the last block's slice (cpu: task), and the rest between them
    a = np.random.default_rng(n).integers(-5, 5, n)
    at = slice(0, 2) if where == "first" else slice(n - 2, n)
    a[at] = [INT64.max, INT64.min]
    assert value_range(on(backend, a), backend) == (INT64.min, INT64.max)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("make", [
    lambda: np.arange(12.0).reshape(3, 4),                          # the buffer protocol's case
    lambda: np.arange(12.0).reshape(3, 4)[1:],                      # a view at an offset
    lambda: np.arange(12.0).reshape(3, 4)[:, 1:],                   # not contiguous
    lambda: np.arange(12.0).reshape(3, 4).T,                        # Fortran order
    lambda: _read_only(np.arange(5, dtype=np.float32)),
    lambda: np.zeros((0, 3)),                                       # empty
    lambda: np.float32(2.0) * np.ones((), np.float32),              # 0-d
    lambda: np.arange(6.0).view(np.recarray),                       # a subclass
    lambda: misaligned(load("cpu"), np.arange(7, dtype=np.float32)),
], ids=["c-order", "offset", "strided", "fortran", "read-only", "empty", "0-d", "subclass", "misaligned"])
def test_address_is_where_the_data_starts(make):
    a = make()
    assert address(a) == a.__array_interface__["data"][0]
