"""Convolution, activation and max pooling as one op: y = max_pool2d(act(conv2d(x, w) + b)).

Forward: y[n, o, i] = max over window i of act(z[n, o]), z = conv2d(x, w) + b, with the window's
flat position kept in indices (as max_pool2d_forward).
Backward: the gradient dz at full size is the pooled gradient dy times act'(y) (relu: 0 where
y <= 0, else 1, NaN included, as torch; sigmoid: y (1 - y)), scatter-added to the indexed
positions; then conv2d_backward(dz, x, w).

Why an op of its own: in a small CNN the convolution's output is the largest array, and it is
only there to be pooled. Fused, each output plane is pooled while it is still in cache, so the
full-size z never touches memory, and the backward builds each sample's dz in cache (on the cpu
backend, for stride 1; except the 3x3 layers its Winograd backward takes, which build dz whole).
Backends without a fused kernel run the ops one after another, with the same results.
"""
from __future__ import annotations

from .. import backend as _backend
from .._kernel_abi import PoolGeometry
from ._activation import check_activation
from ._check import flag, shape_str, tensor
from .conv import _geometry as _conv_geometry
from .conv import _bias, _inputs, check_algorithm
from .pool import _geometry as _pool_geometry
from .pool import _indices

__all__ = ["conv2d_max_pool2d_forward", "conv2d_max_pool2d_backward"]

# The only ops a backend may lack (the ops then run the unfused ones); every other op in
# fastconv.ops.__all__ is a function of every backend's (tests/test_backend.py checks it).
OPTIONAL = ("conv2d_max_pool2d_forward", "conv2d_max_pool2d_backward")


def conv2d_max_pool2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None, *,
                              pool_kernel, pool_stride=None, pool_padding=0, algorithm="auto"):
    """max_pool2d_forward(conv2d_forward(x, w, b, stride, padding, dilation, groups, activation),
    pool_kernel, pool_stride, pool_padding), bit for bit: returns (y, indices), both
    (N, C_out, Ho, Wo); indices are positions in the convolution's (OH, OW) output planes. algorithm:
    as conv2d_forward's."""
    op = "conv2d_max_pool2d_forward"
    be = _backend.current()
    check_activation(activation)
    algorithm = check_algorithm(algorithm, op)
    x, w = _inputs(be, x, w)
    stride, pad, dilation, groups, (oh, ow) = _conv_geometry(x, w, stride, padding, dilation, groups, op)
    b = _bias(be, b, x, w, op)
    pool = _pool_geometry(op, (x.shape[0], w.shape[0], oh, ow), pool_kernel, pool_stride, pool_padding)
    fused = getattr(be, op, None)  # (OPTIONAL)
    if fused is not None:
        return fused(x, w, b, stride, pad, dilation, groups, activation, pool, algorithm)
    return be.max_pool2d_forward(be.conv2d_forward(x, w, b, stride, pad, dilation, groups, activation, algorithm),
                                 pool)


def conv2d_max_pool2d_backward(dy, y, indices, x, w, stride=1, padding=0, dilation=1, groups=1, activation=None,
                               bias=True, input_grad=True, *, check_indices=True, algorithm="auto"):
    """Gradients (dx, dw, db) of conv2d_max_pool2d_forward given dy = dL/dy (N, C_out, Ho, Wo), its
    output y and indices (y may be None when activation is None); db is None when bias=False, dx
    when input_grad=False. With relu or no activation the bits are those of the unfused backward
    (max_pool2d_backward, relu_backward, conv2d_backward). With sigmoid the derivative is applied
    to each pooled value before the scatter, so the result can differ from the unfused ops:
    overlapping windows round differently, and a NaN output that no window picks contributes 0
    (unfused: NaN). Ho, Wo cannot be checked against the pooling (its parameters are not passed):
    dy, y and indices must come from the forward. check_indices=False skips the indices' range check
    (a sync on a GPU), as in max_pool2d_backward. algorithm: as conv2d_backward's."""
    op = "conv2d_max_pool2d_backward"
    be = _backend.current()
    check_activation(activation)
    algorithm = check_algorithm(algorithm, op)
    bias, input_grad = flag(bias, "bias"), flag(input_grad, "input_grad")
    x, w = _inputs(be, x, w)
    stride, pad, dilation, groups, (oh, ow) = _conv_geometry(x, w, stride, padding, dilation, groups, op)
    dy = tensor(dy, "dy", be, ndim=4, dtype=x.dtype)
    if dy.shape[:2] != (x.shape[0], w.shape[0]) or min(dy.shape[2:]) < 1:
        raise ValueError(f"{op}: dy is {shape_str(dy.shape)} but x {shape_str(x.shape)} and w {shape_str(w.shape)} "
                         f"need ({x.shape[0]}, {w.shape[0]}, Ho, Wo) with Ho, Wo >= 1")
    indices = _indices(indices, be, dy, oh * ow, op, flag(check_indices, "check_indices"))
    if activation is not None:
        y = tensor(y, "y", be, ndim=4, dtype=x.dtype)
        if y.shape != dy.shape:
            raise ValueError(f"{op}: y is {shape_str(y.shape)} but dy is {shape_str(dy.shape)}; "
                             "they must have the same shape")
    else:
        y = None
    fused = getattr(be, op, None)  # (OPTIONAL)
    if fused is not None:
        return fused(dy, y, indices, x, w, stride, pad, dilation, groups, activation, bias, input_grad, algorithm)
    if activation is not None:  # dy and y are validated above: straight to the backend
        dy = be.relu_backward(dy, y) if activation == "relu" else be.sigmoid_backward(dy, y)
    dz = be.max_pool2d_backward(dy, indices, PoolGeometry(x.shape[0], w.shape[0], oh, ow, dy.shape[2], dy.shape[3]))
    return be.conv2d_backward(dz, x, w, stride, pad, dilation, groups, bias, input_grad, algorithm)
