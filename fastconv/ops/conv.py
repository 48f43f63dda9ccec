"""2-D convolution (PyTorch's conv2d: cross-correlation, NCHW), forward with fused bias + activation,
and backward."""
from __future__ import annotations

import numbers

import numpy as np

from .. import backend as _backend
from .._kernel_abi import MAX_EXTENT, conv_output_size
from ._activation import check_activation
from ._check import flag, shape_str, tensor

__all__ = ["conv2d_forward", "conv2d_backward"]

# How a backend may compute a convolution. "auto": as it finds fastest (the cpu backend takes
# Winograd's F(4x4, 3x3) or F(2x2, 3x3) for 3x3 stride-1 float32 layers of >= 16 channels on AVX-512
# and AVX2 hosts; every output then carries an error that scales with its window's largest input and
# weights, not with the products it adds, see README). "direct": every output a sum of its products, on every
# backend (the emu and cuda kernels only have those).
ALGORITHMS = ("auto", "direct")


def _int(value, name):
    if type(value) is int:  # the common case, without the slow abstract-base-class check
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(value)


def _pair(value, name, low):
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (_int(value[0], name), _int(value[1], name))
    else:
        pair = (_int(value, name),) * 2
    if min(pair) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return pair


def _padding(padding, kernel, stride, dilation):
    """(top, bottom, left, right) for an int, a pair, "valid" or "same" (PyTorch: the odd extra one
    goes to the bottom / right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
            (tot_h, tot_w) = (dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1))
            return (tot_h // 2, tot_h - tot_h // 2, tot_w // 2, tot_w - tot_w // 2)
        raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    ph, pw = _pair(padding, "padding", 0)
    return (ph, ph, pw, pw)


def _geometry(x, w, stride, padding, dilation, groups, op):
    """Checks x against w and the hyperparameters; returns (stride, padding4, dilation, groups, (OH, OW))."""
    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    groups = _int(groups, "groups")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    n, c, h, wd = x.shape
    c_out, c_per_group, kh, kw = w.shape
    if min(c, h, wd) < 1:
        # As torch: only the batch may be empty (an empty image with padding would be all padding).
        raise ValueError(f"{op}: x is {shape_str(x.shape)} (N, C_in, H, W): C_in, H and W must be >= 1 "
                         "(only N may be 0)")
    if c_out < 1 or c_per_group < 1 or kh < 1 or kw < 1:
        raise ValueError(f"{op}: w is {shape_str(w.shape)} (C_out, C_in/groups, kh, kw): every dimension must be >= 1")
    if c % groups or c_out % groups:
        raise ValueError(f"{op}: groups={groups} must divide both C_in={c} (x {shape_str(x.shape)}) and "
                         f"C_out={c_out} (w {shape_str(w.shape)})")
    if c != c_per_group * groups:
        raise ValueError(f"{op}: x is {shape_str(x.shape)} with C_in={c}, but w is {shape_str(w.shape)}: "
                         f"w.shape[1] * groups = {c_per_group} * {groups} = {c_per_group * groups} != C_in")
    pad = _padding(padding, (kh, kw), stride, dilation)
    padded = (h + pad[0] + pad[1], wd + pad[2] + pad[3])
    extent = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    if max(padded + extent) > MAX_EXTENT:  # (emu's int64 arithmetic took padding 2**61 and gave wrong numbers)
        raise ValueError(f"{op}: the padded input {padded[0]} x {padded[1]} (x {shape_str(x.shape)}, padding "
                         f"(top, bottom, left, right) {pad}) and the dilated kernel {extent[0]} x {extent[1]} "
                         f"(dilation {dilation}) must be at most 2**40 along each axis, which the kernels' int64 "
                         "index arithmetic holds")
    oh = conv_output_size(h, kh, stride[0], pad[0], pad[1], dilation[0])
    ow = conv_output_size(wd, kw, stride[1], pad[2], pad[3], dilation[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"{op}: no output: x is {shape_str(x.shape)}, w is {shape_str(w.shape)} with padding "
                         f"(top, bottom, left, right) {pad}, dilation {dilation}, stride {stride}: the output "
                         f"would be {oh} x {ow}")
    # A stride past the last window gives one output along its axis, as the least such stride does: that
    # one goes on. (The cpu's strided kernel kept a buffer slot per phase, stride^2 of them: 763 MB for a
    # stride of 10^4 on a 4 x 4 image; past 2^63 the native kernels' int64 refused it.)
    stride = (min(stride[0], h + pad[0] + pad[1] - dilation[0] * (kh - 1)),
              min(stride[1], wd + pad[2] + pad[3] - dilation[1] * (kw - 1)))
    return stride, pad, dilation, groups, (oh, ow)


def check_algorithm(algorithm, op):
    """algorithm, if it is one of ALGORITHMS; else a ValueError naming them."""
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"{op}: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, got {algorithm!r}")
    return algorithm


def _inputs(be, x, w):
    x = tensor(x, "x", be, ndim=4)
    w = tensor(w, "w", be, ndim=4, dtype=x.dtype)
    return x, w


def _bias(be, b, x, w, op):
    if b is None:
        return None
    b = tensor(b, "b", be, ndim=1, dtype=x.dtype)
    if b.shape[0] != w.shape[0]:
        raise ValueError(f"{op}: b is {shape_str(b.shape)} but w is {shape_str(w.shape)}: b must be ({w.shape[0]},)")
    return b


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None, algorithm="auto"):
    """act(conv2d(x, w) + b), as torch.nn.functional.conv2d followed by the activation.

    x (N, C_in, H, W); w (C_out, C_in/groups, kh, kw); b (C_out,) or None; stride, padding,
    dilation an int or a pair; padding also "same" (stride 1 only) or "valid"; activation None,
    "relu" or "sigmoid", fused into the kernel's epilogue; algorithm "auto" or "direct" (ALGORITHMS).
    Returns y (N, C_out, OH, OW).
    """
    be = _backend.current()
    check_activation(activation)
    algorithm = check_algorithm(algorithm, "conv2d")
    x, w = _inputs(be, x, w)
    stride, pad, dilation, groups, _ = _geometry(x, w, stride, padding, dilation, groups, "conv2d")
    b = _bias(be, b, x, w, "conv2d")
    return be.conv2d_forward(x, w, b, stride, pad, dilation, groups, activation, algorithm)


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1, bias=True, input_grad=True,
                    algorithm="auto"):
    """Gradients of z = conv2d(x, w) + b given dy = dL/dz: returns (dx, dw, db); db is None when
    bias=False, dx is None (and not computed) when input_grad=False, e.g. for a network's first layer. When the forward fused an activation, pass dy through relu_backward /
    sigmoid_backward first. The hyperparameters must be the forward's; algorithm as in
    conv2d_forward (it may differ from the forward's).

    NaN and inf propagate as in a direct sum over the real taps for dx (a NaN or inf in dy reaches
    the dx entries those outputs' windows cover, and no others) and for a NaN or inf in x (the dW
    entries whose tap reads it). dW, like the forward, multiplies the zero padding too, as im2col
    does (torch's native kernels): a NaN or inf in dy at an output whose window overlaps the
    padding is also NaN at the taps that read the padding there (0 * NaN, 0 * inf), where a direct sum over
    the real taps leaves them finite. The same places on every backend and algorithm (Winograd's
    non-finite results are recomputed by the direct kernels); docs/reliability.md has the details
    and the one known difference (a NaN or inf weight's dx on the native kernels)."""
    be = _backend.current()
    bias, input_grad = flag(bias, "bias"), flag(input_grad, "input_grad")
    algorithm = check_algorithm(algorithm, "conv2d_backward")
    x, w = _inputs(be, x, w)
    stride, pad, dilation, groups, (oh, ow) = _geometry(x, w, stride, padding, dilation, groups, "conv2d_backward")
    dy = tensor(dy, "dy", be, ndim=4, dtype=x.dtype)
    expected = (x.shape[0], w.shape[0], oh, ow)
    if dy.shape != expected:
        raise ValueError(f"conv2d_backward: dy is {shape_str(dy.shape)} but the convolution of x "
                         f"{shape_str(x.shape)} with w {shape_str(w.shape)} gives {shape_str(expected)}")
    return be.conv2d_backward(dy, x, w, stride, pad, dilation, groups, bias, input_grad, algorithm)
