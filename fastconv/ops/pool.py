"""2-D max and average pooling, forward and backward, on NCHW arrays (torch.nn.functional semantics:
ceil_mode=False, dilation 1, count_include_pad=True for the average)."""
from __future__ import annotations

import numbers
import numpy as np

from .. import backend as _backend
from .._kernel_abi import MAX_EXTENT, MAX_WINDOW_AREA, PoolGeometry
from ._check import flag, for_kernels, on_backend, shape_str, tensor, value_range

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"]


def _is_int(v) -> bool:
    # A plain int first: the abstract-base-class check is slow, and every pooling call asks ~10 times.
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)))


def _pair(value, name: str, low: int) -> tuple:
    """An int or a pair of ints, each >= low, as a pair."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < low:
        raise ValueError(f"{name} must be >= {low} in both dimensions, got {value!r}")
    return pair


def _input_shape(shape, name: str, op: str) -> tuple:
    """(N, C, H, W) with C, H, W >= 1 (N may be 0), as PyTorch accepts."""
    if len(shape) != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {shape_str(shape)} ({len(shape)}-D)")
    n, c, h, w = (int(s) for s in shape)
    if n < 0 or min(c, h, w) < 1:
        raise ValueError(f"{op}: {name} {shape_str(shape)} must have C, H, W >= 1 (and N >= 0)")
    return n, c, h, w


def _x_shape(x_shape, op: str) -> tuple:
    if not isinstance(x_shape, (tuple, list)) or not all(_is_int(s) for s in x_shape):
        raise TypeError(f"{op}: x_shape must be a tuple of 4 ints (N, C, H, W), got {x_shape!r}")
    return _input_shape(x_shape, "x_shape", op)


def _geometry(op: str, in_shape, kernel_size, stride, padding) -> PoolGeometry:
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{op}: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)} "
                         f"(at most {(kh // 2, kw // 2)})")
    n, c, h, w = in_shape
    if max(h + 2 * ph, w + 2 * pw) > MAX_EXTENT or kh * kw > MAX_WINDOW_AREA:  # (an average's int64 divisor kh * kw
        # overflowed: inf for a 2**32 window; emu's arguments past 2**63 were refused without a name)
        raise ValueError(f"{op}: the padded input {h + 2 * ph} x {w + 2 * pw} (input {shape_str(in_shape)}, padding "
                         f"{(ph, pw)}) must be at most 2**40 along each axis and the window {kh} x {kw} at most 2**62 "
                         "elements, which the kernels' int64 index arithmetic holds")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"{op}: kernel_size {(kh, kw)} is larger than the padded input {(h + 2 * ph, w + 2 * pw)} "
                         f"(input {shape_str(in_shape)}, padding {(ph, pw)}): the output would be empty")
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    # A stride past the last window gives one output along its axis, as the least such stride does: that
    # one goes on, as the convolution's (past 2**63 the kernels' int64 refused it, with no argument named).
    sh, sw = min(sh, h + 2 * ph - kh + 1), min(sw, w + 2 * pw - kw + 1)
    return PoolGeometry(n, c, h, w, out_h, out_w, (kh, kw), (sh, sw), (ph, pw))


def _pool_input(x, op, kernel_size, stride, padding):
    be = _backend.current()
    x = tensor(x, "x", be, ndim=4)
    g = _geometry(op, _input_shape(x.shape, "x", op), kernel_size, stride, padding)
    return be, x, g


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max pooling of x (N, C, H, W): returns (y, indices), both (N, C, Ho, Wo).

    kernel_size, stride, padding: int or (h, w) pair; stride None means kernel_size; padding at most
    kernel_size // 2 and never wins (implicit -inf). indices (int64) hold h * W + w of each maximum
    within its input plane, as torch's return_indices. Ties go to the first maximum in row-major
    window order; a NaN in the window wins (torch's rule).
    """
    be, x, g = _pool_input(x, "max_pool2d_forward", kernel_size, stride, padding)
    return be.max_pool2d_forward(x, g)


def _indices(indices, be, dy, plane_size: int, op: str, check_range: bool):
    """indices: an int64 array of dy's shape, every value in [0, plane_size) (checked here, before any
    kernel, unless check_range is False: the range check reads the min and max back to the host, a
    sync on a GPU, which the layers skip for the indices their own forward made)."""
    if indices is None:
        raise TypeError("indices is required, got None")
    a = on_backend(indices, "indices", be)
    if a.dtype != np.int64:
        got = (f"{a.dtype.str} in non-native byte order (convert it with indices.astype(np.int64))"
               if a.dtype.newbyteorder("=") == np.int64 else str(a.dtype))
        raise TypeError(f"{op}: indices must be int64 (as max_pool2d_forward returns), got {got}")
    if a.shape != dy.shape:
        raise ValueError(f"{op}: indices is {shape_str(a.shape)} but dy is {shape_str(dy.shape)}; "
                         "they must have the same shape")
    a = for_kernels(a, be)
    if check_range and a.size:
        lo, hi = value_range(a, be)
        if lo < 0 or hi >= plane_size:
            raise ValueError(f"{op}: indices must lie in [0, H * W) = [0, {plane_size}), "
                             f"got values in [{lo}, {hi}]")
    return a


def max_pool2d_backward(dy, indices, x_shape, *, check_indices=True):
    """dx (x_shape) = scatter-add of dy (N, C, Ho, Wo) to the flat plane positions in indices.

    Several outputs may name the same input (overlapping windows); their gradients add up, in output
    order, deterministically on every backend.
    check_indices=False skips the check that every index lies in [0, H * W) (on a GPU it costs a
    device-to-host read and so a sync): only for indices straight from max_pool2d_forward. The
    kernels never write out of bounds; an out-of-range index then adds its dy nowhere.
    """
    be = _backend.current()
    op = "max_pool2d_backward"
    n, c, h, w = _x_shape(x_shape, op)
    dy = tensor(dy, "dy", be, ndim=4)
    if dy.shape[:2] != (n, c) or min(dy.shape[2:]) < 1:
        raise ValueError(f"{op}: dy is {shape_str(dy.shape)} but x_shape is {shape_str(x_shape)}: dy must be "
                         f"({n}, {c}, Ho, Wo) with Ho, Wo >= 1")
    indices = _indices(indices, be, dy, h * w, op, flag(check_indices, "check_indices"))
    g = PoolGeometry(n, c, h, w, int(dy.shape[2]), int(dy.shape[3]))
    return be.max_pool2d_backward(dy, indices, g)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Average pooling of x (N, C, H, W) -> (N, C, Ho, Wo); padded positions count as zeros in the
    kernel_size[0] * kernel_size[1] divisor (count_include_pad=True, ceil_mode=False)."""
    be, x, g = _pool_input(x, "avg_pool2d_forward", kernel_size, stride, padding)
    return be.avg_pool2d_forward(x, g)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    """dx (x_shape): each input gets dy / (kh * kw) from every window that covers it."""
    be = _backend.current()
    op = "avg_pool2d_backward"
    g = _geometry(op, _x_shape(x_shape, op), kernel_size, stride, padding)
    dy = tensor(dy, "dy", be, ndim=4)
    if tuple(dy.shape) != g.out_shape:
        raise ValueError(f"{op}: dy is {shape_str(dy.shape)} but pooling x_shape {shape_str(g.in_shape)} with "
                         f"kernel {g.kernel}, stride {g.stride}, padding {g.padding} gives {shape_str(g.out_shape)}")
    return be.avg_pool2d_backward(dy, g)
