"""2-D pooling on the native backends. `g` is a PoolGeometry (fastconv._kernel_abi) the ops validated."""

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"]


def _geometry_args(g):
    # The order of fc::PoolGeometry: planes, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw.
    return (g.n * g.c, g.h, g.w, g.out_h, g.out_w, *g.kernel, *g.stride, *g.padding)


def max_pool2d_forward(be, x, g):
    y = be.empty(g.out_shape, x.dtype)
    indices = be.empty(g.out_shape, be.xp.int64)
    be.kernel("max_pool2d_forward", x.dtype)(be.ptr(x), be.ptr(y), be.ptr(indices), *_geometry_args(g), be.stream())
    return y, indices


def max_pool2d_backward(be, dy, indices, g):
    dx = be.empty(g.in_shape, dy.dtype)
    # A plane that fits in shared memory is gathered by one block; else the bounds and envelopes
    # over all planes go through a workspace (see csrc/kernels/pool.cuh).
    workspace = None
    if not be.ext.max_pool2d_plane_fits(g.h, g.w, g.out_h, g.out_w, dy.itemsize):
        workspace = be.empty((2 * (g.out_h + g.out_w + g.h + g.w),), be.xp.int64)
    be.kernel("max_pool2d_backward", dy.dtype)(be.ptr(dy), be.ptr(indices), be.ptr(dx), be.ptr(workspace),
                                               g.n * g.c, g.h, g.w, g.out_h, g.out_w, be.stream())
    return dx


def avg_pool2d_forward(be, x, g):
    y = be.empty(g.out_shape, x.dtype)
    be.kernel("avg_pool2d_forward", x.dtype)(be.ptr(x), be.ptr(y), *_geometry_args(g), be.stream())
    return y


def avg_pool2d_backward(be, dy, g):
    dx = be.empty(g.in_shape, dy.dtype)
    be.kernel("avg_pool2d_backward", dy.dtype)(be.ptr(dy), be.ptr(dx), *_geometry_args(g), be.stream())
    return dx
