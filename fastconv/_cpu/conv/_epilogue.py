"""What follows a convolution's products while its output is in cache: the bias and activation
(_bias_activate), and a finished plane's sigmoid and max pooling (_finish_planes, _pool_plane)."""
from numba import njit

from .._activation import (RELU as _RELU, SIGMOID as _SIGMOID, SIGMOID16 as _SIGMOID16, ZERO as _ZERO,
                           relu as _relu, sigmoid as _sigmoid, sigmoid_in_place)
from .._pool32 import max_pool_2x2_plane
from ..pool import is_2x2_stride_2_jit, max_pool_plane


@njit(nogil=True, error_model="numpy", cache=True)
def _bias_activate(src, dst, rows, stride, width, bias, act):
    """dst[r * width + q] = act(src[r * stride + q] + bias) for r < rows, q < width: 1-D src and dst
    (dst may be src when stride == width); under _SIGMOID16 the bias first, then sigmoid16 over dst.
    The activation is chosen once, outside the loops, under error_model="numpy": with the choice
    inside the loop, or the default model's ZeroDivisionError check on sigmoid's division, the loop
    stayed scalar (conv1's epilogue, 32 x 784 values per sample, measured 30 us against 8 for its
    GEMM). In place, the loops read and write one array: through two views of the same memory LLVM's
    overlap check sent them to its scalar loop (the portable sigmoid 0.5 -> 6 ns a value)."""
    if rows == 1 and stride == width and src.ctypes.data == dst.ctypes.data:
        _activate_in_place(dst, width, bias, act)
    else:
        for r in range(rows):
            _activate(src[r * stride:r * stride + width], dst[r * width:(r + 1) * width], width, bias, act)
    if act == _SIGMOID16:
        sigmoid_in_place(dst, 0, rows * width)


@njit(nogil=True, error_model="numpy", cache=True)
def _activate(s, d, width, bias, act):
    """d[q] = act(s[q] + bias) for q < width (just the bias under _SIGMOID16): _bias_activate's loops,
    functions of their own (IR inlining of the sigmoid warned NumbaIRAssumptionWarning)."""
    if act == _RELU:
        for q in range(width):
            d[q] = _relu(s[q] + bias)
    elif act == _SIGMOID:
        for q in range(width):
            d[q] = _sigmoid(s[q] + bias)
    else:
        for q in range(width):
            d[q] = s[q] + bias


@njit(nogil=True, error_model="numpy", cache=True)
def _activate_in_place(d, width, bias, act):
    """_activate with s = d, through the one array."""
    if act == _RELU:
        for q in range(width):
            d[q] = _relu(d[q] + bias)
    elif act == _SIGMOID:
        for q in range(width):
            d[q] = _sigmoid(d[q] + bias)
    else:
        for q in range(width):
            d[q] = d[q] + bias


@njit(inline="always")
def _finish_planes(out, y_off, count, o0, plane_width, oh, ow, act, pool, n, pooled, indices):
    """The last step of a stride-1 forward for `count` output planes in `out` (channels o0, o0 + 1, ...):
    with no pooling (pool[0] == 0) the sigmoid, if act asks for it, of out[y_off : y_off + count*oh*ow]
    (bias and ReLU came with the tile); with one, each plane (oh rows of plane_width, the first ow of
    them outputs, from out[0]) gets its sigmoid and is pooled into pooled[n, o0 + o] / indices."""
    if pool[0] == 0:
        if act == _SIGMOID or act == _SIGMOID16:
            outputs = out[y_off:y_off + count * oh * ow]
            _bias_activate(outputs, outputs, 1, outputs.size, outputs.size, _ZERO, act)
        return
    plane = oh * plane_width
    for o in range(count):
        channel = out[o * plane:(o + 1) * plane]
        if act == _SIGMOID or act == _SIGMOID16:
            _bias_activate(channel, channel, 1, plane, plane, _ZERO, act)
        _pool_plane(channel, plane_width, oh, ow, pool, True, pooled[n, o0 + o], indices[n, o0 + o])


@njit(inline="always")
def _pool_plane(channel, plane_width, oh, ow, pool, vector, pooled, indices):
    """pooled, indices = the max pooling `pool` of a plane (oh rows of plane_width, the first ow of
    them outputs): a 2x2 / stride 2 one by _pool32's vector runs where `vector` (the same values
    and indices as max_pool_plane's; a wide conv1 sample, fused with its ReLU, 14 -> 6 ms on the
    AVX2 host), else by max_pool_plane."""
    if vector and is_2x2_stride_2_jit(pool):
        max_pool_2x2_plane(channel, plane_width, ow, pooled, indices)
    else:
        max_pool_plane(channel.reshape((oh, plane_width)), oh, ow, pooled, indices, pool[0], pool[1], pool[2], pool[3],
                       pool[4], pool[5])
