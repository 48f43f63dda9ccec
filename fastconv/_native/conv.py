"""2-D convolution on the native backends: the implicit-GEMM kernels of csrc/kernels/conv.cuh.

Those compute every output as a sum of its products, so both of ops.conv.ALGORITHMS ("auto",
"direct") run them: `algorithm` is accepted and has nothing to choose between."""
from .._kernel_abi import ACTIVATIONS, conv_output_size

__all__ = ["conv2d_forward", "conv2d_backward"]

# The implicit GEMM's grid (csrc/kernels/conv.cuh, run_implicit_gemm): blockIdx.z is the group (times
# the weight gradient's K slices), at most 65535; blockIdx.y a block of at most 64 GEMM columns (output
# channels per group for the forward and weight gradient, input channels per group for the data
# gradient), at most 65535 of them. A convolution of more groups (a depthwise layer of 65536+
# channels) or more channels per group runs as several, each over a block of groups, or over a block
# of one group's channels; their inputs are copied to contiguous arrays where a block's channels are
# not, and their outputs copied into place.
CONV_MAX_GROUPS = 65535
CONV_MAX_COLUMNS = 65535 * 64


def _shape(x_shape, w_shape, stride, padding, dilation, groups):
    """The kernels' ConvShape tuple (see csrc/bindings/conv.cpp)."""
    n, c, h, wd = x_shape
    c_out, _, kh, kw = w_shape
    oh = conv_output_size(h, kh, stride[0], padding[0], padding[1], dilation[0])
    ow = conv_output_size(wd, kw, stride[1], padding[2], padding[3], dilation[1])
    return (n, c, h, wd, c_out, kh, kw, oh, ow, stride[0], stride[1], padding[0], padding[2], dilation[0],
            dilation[1], groups)


def _blocks(groups, columns):
    """(g0, g1, c0, c1): groups g0 .. g1 - 1 with their GEMM columns c0 .. c1 - 1 (of `columns` per
    group), each block within the grid; one block (0, groups, 0, columns) when the whole fits."""
    if columns <= CONV_MAX_COLUMNS:
        for g0 in range(0, groups, CONV_MAX_GROUPS):
            yield g0, min(groups, g0 + CONV_MAX_GROUPS), 0, columns
    else:
        for g in range(groups):
            for c0 in range(0, columns, CONV_MAX_COLUMNS):
                yield g, g + 1, c0, min(columns, c0 + CONV_MAX_COLUMNS)


def _channels(be, a, lo, hi):
    """a[:, lo:hi] (channels of an NCHW array), C-contiguous: a itself when that is all of it."""
    if (lo, hi) == (0, a.shape[1]):
        return a
    return be.xp.ascontiguousarray(a[:, lo:hi])


def conv2d_forward(be, x, w, b, stride, padding, dilation, groups, activation, algorithm):
    s = _shape(x.shape, w.shape, stride, padding, dilation, groups)
    y = be.empty((s[0], s[4], s[7], s[8]), x.dtype)
    cg, cog = s[1] // groups, s[4] // groups
    for g0, g1, c0, c1 in _blocks(groups, cog):
        lo, hi = g0 * cog + c0, (g1 - 1) * cog + c1  # this block's output channels
        xs = _channels(be, x, g0 * cg, g1 * cg)
        ws, bs = w[lo:hi], (None if b is None else b[lo:hi])
        ys = y if (lo, hi) == (0, s[4]) else be.empty((s[0], hi - lo, s[7], s[8]), x.dtype)
        be.kernel("conv2d_forward", x.dtype)(be.ptr(xs), be.ptr(ws), be.ptr(bs), be.ptr(ys),
                                             _shape(xs.shape, ws.shape, stride, padding, dilation, g1 - g0),
                                             ACTIVATIONS[activation], be.stream())
        if ys is not y:
            y[:, lo:hi] = ys
    return y


def conv2d_backward(be, dy, x, w, stride, padding, dilation, groups, bias, input_grad, algorithm):
    stream = be.stream()
    cg, cog = x.shape[1] // groups, w.shape[0] // groups
    dx = None
    if input_grad:
        dx = be.empty(x.shape, x.dtype)
        for g0, g1, c0, c1 in _blocks(groups, cg):  # the data gradient's columns: input channels
            lo, hi = g0 * cg + c0, (g1 - 1) * cg + c1
            dys = _channels(be, dy, g0 * cog, g1 * cog)
            ws = w[g0 * cog:g1 * cog]
            if (c0, c1) != (0, cg):
                ws = be.xp.ascontiguousarray(ws[:, c0:c1])
            dxs = dx if (lo, hi) == (0, x.shape[1]) else be.empty((x.shape[0], hi - lo) + x.shape[2:], x.dtype)
            be.kernel("conv2d_backward_data", x.dtype)(
                be.ptr(dys), be.ptr(ws), be.ptr(dxs), _shape(dxs.shape, ws.shape, stride, padding, dilation, g1 - g0),
                stream)
            if dxs is not dx:
                dx[:, lo:hi] = dxs
    # dw and db come from one kernel (db is an extra row of the weight GEMM). Its reduction over
    # N*OH*OW is split into slices when the dw tiles alone would leave the GPU idle; the kernel
    # library picks the count from the shape (csrc/kernels/conv.cuh), the same on every device.
    dw = be.empty(w.shape, w.dtype)
    db = be.empty((w.shape[0],), w.dtype) if bias else None
    rows = w.shape[1] * w.shape[2] * w.shape[3] + (1 if bias else 0)
    for g0, g1, c0, c1 in _blocks(groups, cog):  # the weight gradient's columns: output channels
        lo, hi = g0 * cog + c0, (g1 - 1) * cog + c1
        xs, dys = _channels(be, x, g0 * cg, g1 * cg), _channels(be, dy, lo, hi)
        dws, dbs = dw[lo:hi], (None if db is None else db[lo:hi])  # contiguous: written in place
        s = _shape(xs.shape, dws.shape, stride, padding, dilation, g1 - g0)
        slices = be.ext.conv2d_backward_weight_slices(s, bool(bias))
        workspace = be.empty((slices, (hi - lo) * rows), w.dtype) if slices > 1 else None
        be.kernel("conv2d_backward_weight", x.dtype)(be.ptr(dys), be.ptr(xs), be.ptr(dws), be.ptr(dbs),
                                                     be.ptr(workspace), slices, s, stream)
    return dx, dw, db
