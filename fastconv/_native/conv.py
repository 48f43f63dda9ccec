"""2-D convolution on the native backends: the implicit-GEMM kernels of csrc/kernels/conv.cuh."""
from ..ops._activation import ACTIVATIONS

__all__ = ["conv2d_forward", "conv2d_backward"]

# The weight gradient's reduction over N*OH*OW is split into slices when the dw tile grid alone
# would leave the GPU idle (see conv.cuh); each slice keeps at least this many k values.
_MIN_K_PER_SLICE = 256
_TARGET_BLOCKS = 256
_MAX_SLICES = 256  # conv1 of the reference CNN (dw: 9 x 32 over K = 100352) wants them all
_TILE_M, _TILE_N = 128, 64  # conv_tile::BM, BN


def _blocks(n, per):
    return -(-n // per)


def _shape(x, w, stride, padding, dilation, groups):
    """The kernels' ConvShape tuple (see csrc/bindings/conv.cpp)."""
    n, c, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    oh = (h + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, c, h, wd, c_out, kh, kw, oh, ow, stride[0], stride[1], padding[0], padding[2], dilation[0],
            dilation[1], groups)


def conv2d_forward(be, x, w, b, stride, padding, dilation, groups, activation):
    s = _shape(x, w, stride, padding, dilation, groups)
    y = be.empty((s[0], s[4], s[7], s[8]), x.dtype)
    be.kernel("conv2d_forward", x.dtype)(be.ptr(x), be.ptr(w), be.ptr(b), be.ptr(y), s, ACTIVATIONS[activation],
                                         be.stream())
    return y


def _weight_slices(s):
    n, c, _, _, c_out, kh, kw, oh, ow = s[:9]
    groups = s[15]
    tiles = groups * _blocks(c // groups * kh * kw, _TILE_M) * _blocks(c_out // groups, _TILE_N)
    k = n * oh * ow
    return max(1, min(_MAX_SLICES, _blocks(_TARGET_BLOCKS, tiles), k // _MIN_K_PER_SLICE, 65535 // groups))


def conv2d_backward(be, dy, x, w, stride, padding, dilation, groups, bias, input_grad):
    s = _shape(x, w, stride, padding, dilation, groups)
    stream = be.stream()
    dx = None
    if input_grad:
        dx = be.empty(x.shape, x.dtype)
        be.kernel("conv2d_backward_data", x.dtype)(be.ptr(dy), be.ptr(w), be.ptr(dx), s, stream)
    dw = be.empty(w.shape, w.dtype)
    slices = _weight_slices(s)
    workspace = be.empty((slices,) + w.shape, w.dtype) if slices > 1 else None
    be.kernel("conv2d_backward_weight", x.dtype)(be.ptr(dy), be.ptr(x), be.ptr(dw), be.ptr(workspace), slices, s,
                                                 stream)
    db = None
    if bias:
        db = be.empty((w.shape[0],), w.dtype)
        be.kernel("conv2d_backward_bias", x.dtype)(be.ptr(dy), be.ptr(db), s, stream)
    return dx, dw, db
