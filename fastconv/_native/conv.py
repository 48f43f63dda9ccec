"""2-D convolution on the native backends: the implicit-GEMM kernels of csrc/kernels/conv.cuh.

Those compute every output as a sum of its products, so both of ops.conv.ALGORITHMS ("auto",
"direct") run them: `algorithm` is accepted and has nothing to choose between."""
from ..ops._activation import ACTIVATIONS

__all__ = ["conv2d_forward", "conv2d_backward"]


def _shape(x, w, stride, padding, dilation, groups):
    """The kernels' ConvShape tuple (see csrc/bindings/conv.cpp)."""
    n, c, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    oh = (h + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, c, h, wd, c_out, kh, kw, oh, ow, stride[0], stride[1], padding[0], padding[2], dilation[0],
            dilation[1], groups)


def conv2d_forward(be, x, w, b, stride, padding, dilation, groups, activation, algorithm):
    s = _shape(x, w, stride, padding, dilation, groups)
    y = be.empty((s[0], s[4], s[7], s[8]), x.dtype)
    be.kernel("conv2d_forward", x.dtype)(be.ptr(x), be.ptr(w), be.ptr(b), be.ptr(y), s, ACTIVATIONS[activation],
                                         be.stream())
    return y


def conv2d_backward(be, dy, x, w, stride, padding, dilation, groups, bias, input_grad, algorithm):
    s = _shape(x, w, stride, padding, dilation, groups)
    stream = be.stream()
    dx = None
    if input_grad:
        dx = be.empty(x.shape, x.dtype)
        be.kernel("conv2d_backward_data", x.dtype)(be.ptr(dy), be.ptr(w), be.ptr(dx), s, stream)
    # dw and db come from one kernel (db is an extra row of the weight GEMM). Its reduction over
    # N*OH*OW is split into slices when the dw tiles alone would leave the GPU idle; the kernel
    # library picks the count from the shape (csrc/kernels/conv.cuh), the same on every device.
    dw = be.empty(w.shape, w.dtype)
    db = be.empty((w.shape[0],), w.dtype) if bias else None
    slices = be.ext.conv2d_backward_weight_slices(s, bool(bias))
    rows = w.shape[1] * w.shape[2] * w.shape[3] + (1 if bias else 0)
    workspace = be.empty((slices, w.shape[0] * rows), w.dtype) if slices > 1 else None
    be.kernel("conv2d_backward_weight", x.dtype)(be.ptr(dy), be.ptr(x), be.ptr(dw), be.ptr(db), be.ptr(workspace),
                                                 slices, s, stream)
    return dx, dw, db
