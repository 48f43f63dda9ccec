"""2-D convolution on every backend: forward (bias + fused activation) and the three gradients
against a float64 NumPy reference (direct sums over the kernel taps), finite differences in
float64, the shapes that break naive code, and the bad inputs conv2d must refuse."""
import numpy as np
import pytest

from fastconv import ops
from helpers import DTYPES, assert_gradient, assert_matches, needs_simd, numerical_gradient, on, to_numpy


# ---- float64 reference: one strided view of the padded input per kernel tap ----

def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pads(padding, kernel, dilation):
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = _pair(padding)
    return (ph, ph, pw, pw)


class Geometry:
    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups):
        self.n, self.c, self.h, self.w = x_shape
        self.c_out, _, self.kh, self.kw = w_shape
        self.stride, self.dil, self.groups = _pair(stride), _pair(dilation), groups
        self.pad = _pads(padding, (self.kh, self.kw), self.dil)
        pt, pb, pl, pr = self.pad
        self.oh = (self.h + pt + pb - self.dil[0] * (self.kh - 1) - 1) // self.stride[0] + 1
        self.ow = (self.w + pl + pr - self.dil[1] * (self.kw - 1) - 1) // self.stride[1] + 1

    def taps(self):
        """(group slices, i, j, the padded-input window of tap (i, j)) for every group and tap."""
        cg, cog = self.c // self.groups, self.c_out // self.groups
        for g in range(self.groups):
            for i in range(self.kh):
                for j in range(self.kw):
                    rows = slice(i * self.dil[0], i * self.dil[0] + (self.oh - 1) * self.stride[0] + 1, self.stride[0])
                    cols = slice(j * self.dil[1], j * self.dil[1] + (self.ow - 1) * self.stride[1] + 1, self.stride[1])
                    yield slice(g * cg, (g + 1) * cg), slice(g * cog, (g + 1) * cog), i, j, rows, cols

    def padded(self, x):
        pt, pb, pl, pr = self.pad
        return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))

    def forward(self, x, w, b=None):
        xp = self.padded(x)
        y = np.zeros((self.n, self.c_out, self.oh, self.ow), x.dtype)
        for cin, cout, i, j, rows, cols in self.taps():
            y[:, cout] += np.einsum("nchw,oc->nohw", xp[:, cin, rows, cols], w[cout, :, i, j])
        return y if b is None else y + b[None, :, None, None]

    def dx(self, dy, x, w):
        pt, _, pl, _ = self.pad
        dxp = np.zeros(self.padded(x).shape, x.dtype)
        for cin, cout, i, j, rows, cols in self.taps():
            dxp[:, cin, rows, cols] += np.einsum("nohw,oc->nchw", dy[:, cout], w[cout, :, i, j])
        return dxp[:, :, pt:pt + self.h, pl:pl + self.w]

    def dw(self, dy, x, w):
        xp = self.padded(x)
        dw = np.zeros(w.shape, x.dtype)
        for cin, cout, i, j, rows, cols in self.taps():
            dw[cout, :, i, j] = np.einsum("nohw,nchw->oc", dy[:, cout], xp[:, cin, rows, cols])
        return dw


def _sigmoid64(z):
    return 1 / (1 + np.exp(-z))


ACT = {None: lambda z: z, "relu": lambda z: np.maximum(z, 0), "sigmoid": _sigmoid64}

# (x shape, w shape, stride, padding, dilation, groups)
CASES = {
    "kernel_larger_than_input": ((2, 3, 3, 4), (5, 3, 5, 6), 1, 2, 1, 1),
    "stride_larger_than_kernel": ((2, 2, 11, 9), (3, 2, 2, 2), (3, 4), 1, 1, 1),
    "dilation_2": ((1, 3, 9, 10), (4, 3, 3, 3), 1, 2, 2, 1),
    "1x1": ((3, 5, 6, 7), (4, 5, 1, 1), 1, 0, 1, 1),
    "1x1_groups": ((2, 4, 3, 5), (6, 2, 1, 1), 1, 0, 1, 2),
    "1x1_stride_2_padded": ((2, 4, 7, 7), (3, 4, 1, 1), 2, 1, 1, 1),
    "7x7_stride_2": ((1, 2, 13, 12), (3, 2, 7, 7), 2, 3, 1, 1),
    "rectangular": ((2, 3, 5, 11), (2, 3, 2, 5), (1, 2), (1, 0), (1, 2), 1),
    "depthwise": ((2, 4, 7, 6), (8, 1, 3, 3), 1, 1, 1, 4),
    # depthwise layers' own path on cpu (_depthwise.py): strided, dilated, rectangular and uneven padding,
    # one output channel a group, and enough rows a channel for dW's float32 sums to flush into float64
    "depthwise_strided_dilated": ((2, 6, 11, 10), (6, 1, 3, 2), (2, 3), (2, 1), (2, 1), 6),
    "depthwise_same_even_kernel": ((1, 5, 6, 7), (10, 1, 4, 2), 1, "same", 1, 5),
    "depthwise_many_rows": ((3, 2, 150, 40), (2, 1, 3, 3), 1, 1, 1, 2),
    "groups_2_of_4": ((2, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2),
    "batch_1_one_channel": ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1, 1),
    "odd_sizes": ((3, 3, 9, 7), (5, 3, 3, 3), 2, 1, 1, 1),
    "same_even_kernel": ((2, 3, 6, 7), (4, 3, 4, 2), 1, "same", 1, 1),
    "same_dilated_groups": ((1, 4, 5, 6), (2, 2, 3, 4), 1, "same", (2, 1), 2),
    "valid": ((2, 2, 6, 5), (3, 2, 3, 2), 1, "valid", 1, 1),
    # past one 128 x 64 x 8 tile in every GEMM dimension of all three GEMMs
    "multi_tile": ((2, 66, 9, 8), (67, 66, 3, 3), 1, 1, 1, 1),
    "multi_tile_groups": ((2, 130, 9, 8), (132, 65, 2, 2), 1, 1, 1, 2),
    # N*OH*OW long enough that the weight gradient is split into slices
    "split_weight_reduction": ((2, 3, 17, 17), (4, 3, 3, 3), 1, 1, 1, 1),
    "split_weight_reduction_groups": ((3, 4, 16, 15), (6, 2, 3, 2), 1, (1, 0), 1, 2),
    # stride 1 with >= 8 channels per group: the CPU backend's shifted-GEMM path (no im2col), with
    # dilation, uneven ("same", even kernel) and asymmetric padding, and groups
    "shifted_same_even_kernel": ((2, 9, 6, 7), (4, 9, 4, 2), 1, "same", 1, 1),
    "shifted_dilated_groups": ((1, 16, 8, 7), (6, 8, 3, 3), 1, 2, 2, 2),
    "shifted_rectangular_padding": ((2, 8, 5, 9), (3, 8, 3, 2), 1, (2, 0), (1, 2), 1),
    # strides with >= 8 channels per group: the CPU backend's products over the input's phases (no
    # im2col): an odd padded height, stride 3 with dilation and groups (taps landing in some phases
    # only), 1x1 (one phase used), a kernel smaller than the stride (phases no tap reads)
    "phases_3x3_stride_2": ((2, 8, 9, 8), (5, 8, 3, 3), 2, 1, 1, 1),
    "phases_stride_3_dilated_groups": ((1, 16, 11, 10), (6, 8, 3, 2), (3, 2), (2, 1), (2, 3), 2),
    "phases_1x1_stride_2": ((2, 9, 7, 6), (4, 9, 1, 1), 2, 0, 1, 1),
    "phases_kernel_smaller_than_stride": ((1, 8, 10, 9), (3, 8, 2, 2), 3, 0, 1, 1),
    # ... past the AVX-512 tiles' edges: 40 output channels (32 + 8), 15 outputs a row (14 + 1), a
    # 16-wide phase grid of 256 positions (8 strips of 32)
    "phases_tile_edges": ((2, 8, 31, 30), (40, 8, 3, 3), 2, 1, 1, 1),
    # strided with 1 and 3 input channels and 16 or more outputs: _taps32's row tile with AVX-512
    "strided_one_channel_many_outputs": ((2, 1, 13, 12), (17, 1, 3, 3), 2, 1, 1, 1),
    "strided_three_channels_5x5": ((1, 3, 20, 21), (16, 3, 5, 5), 2, 2, 1, 1),
    # the GPU kernels' tile boundaries (csrc/kernels/conv.cuh): 32 output channels and 132 pixels (the
    # 128 x 32 tile, past one row tile; dw 28 x 32 with db in the 32 x 32 tile), 33 channels (the
    # 128 x 64 tile; dw 33 x 33 in the 64 x 64 tile), dw 32 rows + db = 33 (64 x 64) or 32 without db
    # (32 x 32), and K = N*OH*OW long enough for more slices than a warp has lanes
    "tile_cols_32": ((1, 3, 11, 12), (32, 3, 3, 3), 1, 1, 1, 1),
    "tile_cols_33": ((1, 33, 5, 5), (33, 33, 1, 1), 1, 0, 1, 1),
    "tile_wgrad_rows_32": ((2, 32, 4, 4), (8, 32, 1, 1), 1, 0, 1, 1),
    "wgrad_many_slices": ((2, 1, 64, 66), (4, 1, 3, 3), 1, 1, 1, 1),
}


def _case(name, seed):
    x_shape, w_shape, stride, padding, dilation, groups = CASES[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    w = rng.standard_normal(w_shape) / np.sqrt(fan_in)
    b = rng.standard_normal(w_shape[0])
    hyper = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, w, b, hyper, Geometry(x_shape, w_shape, stride, padding, dilation, groups)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_forward(backend, name, dtype):
    x, w, b, hyper, geo = _case(name, 1)
    y = ops.conv2d_forward(*on(backend, x.astype(dtype), w.astype(dtype), b.astype(dtype)), **hyper)
    assert_matches(y, geo.forward, [x, w, b], dtype)
    y = ops.conv2d_forward(*on(backend, x.astype(dtype), w.astype(dtype)), **hyper)
    assert_matches(y, geo.forward, [x, w], dtype, what="without bias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("name", ["odd_sizes", "groups_2_of_4", "multi_tile"])
def test_forward_fused_activation(backend, name, activation, dtype):
    x, w, b, hyper, geo = _case(name, 2)
    y = ops.conv2d_forward(*on(backend, x.astype(dtype), w.astype(dtype), b.astype(dtype)), activation=activation,
                           **hyper)
    assert_matches(y, lambda x, w, b: ACT[activation](geo.forward(x, w, b)), [x, w, b], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_backward(backend, name, dtype):
    x, w, _, hyper, geo = _case(name, 3)
    dy = np.random.default_rng(4).standard_normal((geo.n, geo.c_out, geo.oh, geo.ow))
    args = [dy, x, w]
    dx, dw, db = ops.conv2d_backward(*on(backend, *(a.astype(dtype) for a in args)), **hyper)
    assert all(to_numpy(g).flags.c_contiguous for g in (dx, dw, db))  # as the parameters they update
    assert_matches(dx, geo.dx, args, dtype, what="dx")
    assert_matches(dw, geo.dw, args, dtype, what="dw")
    assert_matches(db, lambda dy, x, w: dy.sum(axis=(0, 2, 3)), args, dtype, what="db")
    dx2, dw2, db2 = ops.conv2d_backward(*on(backend, *(a.astype(dtype) for a in args)), bias=False, **hyper)
    assert db2 is None
    assert_matches(dw2, geo.dw, args, dtype, what="dw (bias=False)")


@pytest.mark.parametrize("name", list(CASES))
def test_backward_without_input_grad(backend, name):
    # input_grad=False (a first layer): no dx, and dw / db bit for bit those of the full backward
    x, w, _, hyper, geo = _case(name, 3)
    dy = np.random.default_rng(4).standard_normal((geo.n, geo.c_out, geo.oh, geo.ow)).astype(np.float32)
    args = on(backend, dy, x.astype(np.float32), w.astype(np.float32))
    _, dw, db = ops.conv2d_backward(*args, **hyper)
    dx_skipped, dw_skipped, db_skipped = ops.conv2d_backward(*args, input_grad=False, **hyper)
    assert dx_skipped is None
    np.testing.assert_array_equal(to_numpy(dw_skipped), to_numpy(dw))
    np.testing.assert_array_equal(to_numpy(db_skipped), to_numpy(db))


@pytest.mark.parametrize("name", ["same_even_kernel", "groups_2_of_4", "stride_larger_than_kernel", "dilation_2"])
def test_gradients_by_finite_differences(backend, name):
    x_shape, w_shape, stride, padding, dilation, groups = CASES[name]
    # shrink the batch and the image: every element costs two forward passes
    x_shape = (1, x_shape[1], min(x_shape[2], 6), min(x_shape[3], 6))
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    hyper = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    geo = Geometry(x_shape, w_shape, stride, padding, dilation, groups)
    dy = rng.standard_normal((geo.n, geo.c_out, geo.oh, geo.ow))

    def forward(x, w, b):
        return to_numpy(ops.conv2d_forward(*on(backend, x, w, b), **hyper))

    grads = ops.conv2d_backward(*on(backend, dy, x, w), **hyper)
    for i, name in enumerate(["dx", "dw", "db"]):
        assert_gradient(grads[i], numerical_gradient(forward, [x, w, b], i, dy), name)


@pytest.mark.parametrize("name", ["multi_tile_groups", "stride_larger_than_kernel", "same_dilated_groups",
                                  "tile_cols_32", "wgrad_many_slices"])
def test_64_bit_index_kernels(native_backend, name):
    # The kernels with 64-bit indices (chosen for tensors past 2^30 elements) on small shapes: with the
    # 32-bit limit lowered to 0. Same tiles and summation order as the 32-bit kernels: same bits.
    x, w, b, hyper, geo = _case(name, 7)
    dy = np.random.default_rng(8).standard_normal((geo.n, geo.c_out, geo.oh, geo.ow))
    x, w, b, dy = (a.astype(np.float32) for a in (x, w, b, dy))

    def run():
        y = ops.conv2d_forward(*on(native_backend, x, w, b), activation="relu", **hyper)
        return [to_numpy(a) for a in (y, *ops.conv2d_backward(*on(native_backend, dy, x, w), **hyper))]

    narrow = run()
    native_backend.ext.conv_set_index32_limit(0)
    try:
        wide = run()
    finally:
        native_backend.ext.conv_set_index32_limit(1 << 30)
    assert_matches(wide[0], lambda x, w, b: ACT["relu"](geo.forward(x, w, b)), [x, w, b], np.float32)
    assert_matches(wide[1], geo.dx, [dy, x, w], np.float32, what="dx")
    assert_matches(wide[2], geo.dw, [dy, x, w], np.float32, what="dw")
    for what, a, b in zip(["y", "dx", "dw", "db"], narrow, wide):
        np.testing.assert_array_equal(a, b, err_msg=what)


class _RecordedConv:
    """A backend's extension whose convolution launchers only record each launch's ConvShape tuple."""

    def __init__(self, ext):
        self._ext, self.launches = ext, []

    def _recorder(kind, position):
        def record(self, *args):
            self.launches.append((kind, args[position]))
        return record

    conv2d_forward_f32 = _recorder("forward", 4)
    conv2d_backward_data_f32 = _recorder("data", 3)
    conv2d_backward_weight_f32 = _recorder("weight", 6)
    del _recorder

    def __getattr__(self, name):
        return getattr(self._ext, name)


@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((1, 2 * 65535 + 3, 1, 1), (2 * 65535 + 3, 1, 1, 1), 2 * 65535 + 3),  # depthwise: groups past grid z
    ((1, 1, 1, 1), (65535 * 64 + 5, 1, 1, 1), 1),                        # output channels past grid y
    ((1, 65535 * 64 + 5, 1, 1), (1, 65535 * 64 + 5, 1, 1), 1),            # input channels (dx) past grid y
])
def test_convolution_wider_than_the_grid_runs_in_blocks(native_backend, monkeypatch, x_shape, w_shape, groups):
    """The implicit GEMM's grid holds at most 65535 groups (z) and 65535 blocks of 64 channels per
    group (y): past that the forward, data and weight gradients raised '... groups * splits too large
    for the grid' / 'too many output columns for the grid' on emu and cuda (the cpu backend computes
    them). They run as several launches over blocks of groups or channels, each within the grid."""
    recorded = _RecordedConv(native_backend.ext)
    monkeypatch.setattr(native_backend, "ext", recorded)
    x, w = on(native_backend, np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32))
    y = ops.conv2d_forward(x, w, groups=groups)
    ops.conv2d_backward(y, x, w, groups=groups)
    covered = {"forward": 0, "data": 0, "weight": 0}
    for kind, s in recorded.launches:
        columns = (s[1] if kind == "data" else s[4]) // s[15]
        assert s[15] <= 65535 and columns <= 65535 * 64, (kind, s)
        covered[kind] += s[1] if kind == "data" else s[4]
    assert covered == {"forward": w_shape[0], "data": x_shape[1], "weight": w_shape[0]}


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", [
    ((2, 10, 6, 5), (10, 2, 3, 3), 2, 1, 1, 5),     # blocks of 2 groups (2, 2, 1)
    ((2, 8, 5, 6), (14, 4, 2, 3), 1, (1, 2), 2, 2),  # blocks of one group's 3 channels (3, 3, 1 out; 3, 1 in)
])
def test_convolution_blocks_results(native_backend, monkeypatch, x_shape, w_shape, stride, padding, dilation, groups):
    # The blocks' results, with small grid limits: every channel once, bias and activation on each.
    from fastconv._native import conv as native_conv
    monkeypatch.setattr(native_conv, "CONV_MAX_GROUPS", 2)
    monkeypatch.setattr(native_conv, "CONV_MAX_COLUMNS", 3)
    rng = np.random.default_rng(21)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    hyper = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    geo = Geometry(x_shape, w_shape, stride, padding, dilation, groups)
    dy = rng.standard_normal((geo.n, geo.c_out, geo.oh, geo.ow))
    for dtype in DTYPES:
        y = ops.conv2d_forward(*on(native_backend, *(a.astype(dtype) for a in (x, w, b))), activation="relu", **hyper)
        assert_matches(y, lambda x, w, b: ACT["relu"](geo.forward(x, w, b)), [x, w, b], dtype)
        dx, dw, db = ops.conv2d_backward(*on(native_backend, *(a.astype(dtype) for a in (dy, x, w))), **hyper)
        assert_matches(dx, geo.dx, [dy, x, w], dtype, what="dx")
        assert_matches(dw, geo.dw, [dy, x, w], dtype, what="dw")
        assert_matches(db, lambda dy: dy.sum(axis=(0, 2, 3)), [dy], dtype, what="db")


def test_weight_slices(native_backend):
    # The weight gradient's split-K slice count: 1 for a short reduction, many for the reference
    # CNN's conv1 (dw 9 x 32 over K = 128*28*28). (It is a function of the shape alone, the same on
    # every device; one backend in one process cannot show that.)
    slices = native_backend.ext.conv2d_backward_weight_slices
    conv1 = (128, 1, 28, 28, 32, 3, 3, 28, 28, 1, 1, 1, 1, 1, 1, 1)
    assert slices(conv1, True) > 32
    assert slices((1, 3, 5, 5, 4, 3, 3, 5, 5, 1, 1, 1, 1, 1, 1, 1), True) == 1


def test_non_contiguous_inputs(backend):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 8, 14))[:, :, :, ::2]  # stepped view
    w = np.asfortranarray(rng.standard_normal((4, 3, 3, 3)))
    geo = Geometry(x.shape, w.shape, 1, 1, 1, 1)
    assert_matches(ops.conv2d_forward(*on(backend, x, w), padding=1), geo.forward, [x, w], np.float64)


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, padding, groups", [
    ((1, 1, 3, 3), (1, 1, 1, 2), 0, 1), ((2, 3, 5, 6), (4, 3, 3, 3), 1, 1),
    ((1, 3, 3, 3), (3, 1, 1, 2), 0, 3), ((2, 3, 5, 6), (6, 1, 3, 3), 1, 3)])  # (depthwise: _depthwise.py on cpu)
def test_weight_gradient_of_inputs_with_inf_and_nan(backend, x_shape, w_shape, padding, groups, dtype, input_grad):
    # inf and NaN in x's last column: dW is inf or NaN exactly where a direct sum has them. The cpu
    # backend's stride-1 backward over the padded rows (float64; float32 with dx of < 8 channels a
    # group, or on AVX2 hosts; depthwise layers' sums per lane) also multiplied them by the zero
    # gradient of the rows' discarded columns: NaN in the taps that never read that column (the 1x2
    # kernel's first: 6, not NaN).
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    x[0, 0, 0, -1], x[-1, -1, -1, -1] = np.inf, np.nan
    geo = Geometry(x_shape, w_shape, 1, padding, 1, groups)
    dy = np.ones((geo.n, geo.c_out, geo.oh, geo.ow))
    _, dw, _ = ops.conv2d_backward(*on(backend, *(a.astype(dtype) for a in (dy, x, w))), padding=padding,
                                   groups=groups, input_grad=input_grad)
    with np.errstate(invalid="ignore"):
        expected = geo.dw(dy, x, w)
    dw = to_numpy(dw).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(dw[finite], expected[finite], rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((2, 1, 5, 5), (2, 1, 3, 3), 1, 1), ((2, 9, 6, 6), (4, 9, 3, 3), 1, 1), ((2, 16, 6, 6), (16, 16, 3, 3), 1, 1),
    ((2, 3, 7, 7), (2, 3, 5, 5), 1, 2), ((2, 9, 8, 8), (4, 9, 3, 3), 2, 1), ((2, 4, 6, 6), (3, 4, 4, 4), 2, 1),
    ((2, 4, 5, 5), (3, 4, 1, 1), 2, 1)])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_output_gradient_at_the_border(backend, x_shape, w_shape, stride, padding, dtype, value):
    # dy non-finite at an output whose window overlaps the padding (the corner; an edge): dx is
    # non-finite exactly where a direct sum over the real taps has it; dW is NaN also at the taps
    # that read the padding there (its zeros times dy: the padded reference's, as torch's im2col
    # kernels give; docs/reliability.md). The same on every path of the cpu backend (im2col,
    # shifted GEMMs, register tiles, Winograd, 1x1) and on the native kernels.
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    geo = Geometry(x_shape, w_shape, stride, padding, 1, 1)
    dy = rng.standard_normal((geo.n, geo.c_out, geo.oh, geo.ow))
    dy[0, 1, 0, 0], dy[1, 0, 0, geo.ow // 2] = value, -value
    dx, dw, _ = ops.conv2d_backward(*on(backend, *(a.astype(dtype) for a in (dy, x, w))), stride=stride,
                                    padding=padding)
    with np.errstate(invalid="ignore"):
        expected = {"dx": geo.dx(dy, x, w), "dw": geo.dw(dy, x, w)}
    for name, got in (("dx", dx), ("dw", dw)):
        got = to_numpy(got).astype(np.float64)
        for kind in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(kind(got), kind(expected[name]), err_msg=f"{name} {kind.__name__}")
        finite = np.isfinite(expected[name])
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(got[finite], expected[name][finite], rtol=tol, atol=tol, err_msg=name)


class TestBadInput:
    @staticmethod
    def arrays(backend, x_shape=(2, 4, 5, 5), w_shape=(6, 4, 3, 3), dtype=np.float32):
        return on(backend, np.ones(x_shape, dtype), np.ones(w_shape, dtype))

    def test_x_not_4d(self, backend):
        x, w = on(backend, np.ones((4, 5, 5), np.float32), np.ones((6, 4, 3, 3), np.float32))
        with pytest.raises(ValueError, match=r"x must be 4-D, got shape \(4, 5, 5\)"):
            ops.conv2d_forward(x, w)
        with pytest.raises(ValueError, match=r"w must be 4-D"):
            ops.conv2d_forward(*on(backend, np.ones((1, 4, 5, 5), np.float32), np.ones((6, 4, 3), np.float32)))

    def test_channel_mismatch(self, backend):
        x, w = self.arrays(backend, w_shape=(6, 3, 3, 3))
        with pytest.raises(ValueError, match=r"x is \(2, 4, 5, 5\) with C_in=4, but w is \(6, 3, 3, 3\)"):
            ops.conv2d_forward(x, w)

    def test_groups_must_divide(self, backend):
        x, w = self.arrays(backend, w_shape=(6, 2, 3, 3))
        with pytest.raises(ValueError, match=r"groups=3 must divide both C_in=4 .* and C_out=6"):
            ops.conv2d_forward(x, w, groups=3)
        x, w = self.arrays(backend, w_shape=(5, 2, 3, 3))
        with pytest.raises(ValueError, match=r"groups=2 must divide .*C_out=5"):
            ops.conv2d_forward(x, w, groups=2)
        with pytest.raises(ValueError, match=r"groups must be >= 1, got 0"):
            ops.conv2d_forward(x, w, groups=0)

    def test_no_output(self, backend):
        x, w = self.arrays(backend, w_shape=(6, 4, 7, 3))
        with pytest.raises(ValueError, match=r"no output: x is \(2, 4, 5, 5\), w is \(6, 4, 7, 3\).*-1 x 3"):
            ops.conv2d_forward(x, w)
        x, w = self.arrays(backend, w_shape=(6, 4, 3, 3))
        with pytest.raises(ValueError, match=r"no output"):
            ops.conv2d_forward(x, w, dilation=3)

    @pytest.mark.parametrize("kwargs,error,message", [
        (dict(padding=-1), ValueError, r"padding must be >= 0, got -1"),
        (dict(padding=(1, -2)), ValueError, r"padding must be >= 0"),
        (dict(stride=0), ValueError, r"stride must be >= 1, got 0"),
        (dict(stride=(1, -1)), ValueError, r"stride must be >= 1"),
        (dict(dilation=0), ValueError, r"dilation must be >= 1, got 0"),
        (dict(dilation=-2), ValueError, r"dilation must be >= 1"),
        (dict(padding="same", stride=2), ValueError, r"padding='same' needs stride 1, got stride \(2, 2\)"),
        (dict(padding="full"), ValueError, r"padding must be an int, a pair of ints, 'same' or 'valid', got 'full'"),
        (dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1.5"),
        (dict(stride=(1, 2, 3)), ValueError, r"stride must be an int or a pair of ints"),
        (dict(groups=True), TypeError, r"groups must be an int"),
    ])
    def test_hyperparameters(self, backend, kwargs, error, message):
        x, w = self.arrays(backend)
        with pytest.raises(error, match=message):
            ops.conv2d_forward(x, w, **kwargs)
        dy = on(backend, np.ones((2, 6, 3, 3), np.float32))
        with pytest.raises(error, match=message):
            ops.conv2d_backward(dy, x, w, **kwargs)

    def test_mixed_dtypes(self, backend):
        x, w = on(backend, np.ones((2, 4, 5, 5), np.float32), np.ones((6, 4, 3, 3), np.float64))
        with pytest.raises(TypeError, match=r"w is float64 but the other inputs are float32"):
            ops.conv2d_forward(x, w)
        x, w = self.arrays(backend)
        with pytest.raises(TypeError, match=r"b is float64 but the other inputs are float32"):
            ops.conv2d_forward(x, w, on(backend, np.ones(6, np.float64)))
        with pytest.raises(TypeError, match=r"dy is float64"):
            ops.conv2d_backward(on(backend, np.ones((2, 6, 3, 3), np.float64)), x, w)
        with pytest.raises(TypeError, match=r"x must be float32 or float64, got integer"):
            ops.conv2d_forward(on(backend, np.ones((2, 4, 5, 5), np.int32)), w)

    def test_bias_shape(self, backend):
        x, w = self.arrays(backend)
        with pytest.raises(ValueError, match=r"b is \(5,\) but w is \(6, 4, 3, 3\): b must be \(6,\)"):
            ops.conv2d_forward(x, w, on(backend, np.ones(5, np.float32)))
        with pytest.raises(ValueError, match=r"b must be 1-D"):
            ops.conv2d_forward(x, w, on(backend, np.ones((6, 1), np.float32)))

    def test_dy_shape(self, backend):
        x, w = self.arrays(backend)
        with pytest.raises(ValueError, match=r"dy is \(2, 6, 5, 5\) but the convolution of x \(2, 4, 5, 5\) with "
                                             r"w \(6, 4, 3, 3\) gives \(2, 6, 3, 3\)"):
            ops.conv2d_backward(on(backend, np.ones((2, 6, 5, 5), np.float32)), x, w)
        with pytest.raises(ValueError, match=r"dy must be 4-D"):
            ops.conv2d_backward(on(backend, np.ones((2, 6, 9), np.float32)), x, w)

    def test_unknown_activation_and_bias_flag(self, backend):
        x, w = self.arrays(backend)
        with pytest.raises(ValueError, match=r"activation must be None, 'relu' or 'sigmoid', got 'tanh'"):
            ops.conv2d_forward(x, w, activation="tanh")
        with pytest.raises(TypeError, match=r"bias must be True or False"):
            ops.conv2d_backward(on(backend, np.ones((2, 6, 3, 3), np.float32)), x, w, bias=1)


def _is_depthwise(name):
    x_shape, w_shape, *_, groups = CASES[name]
    return groups > 1 and w_shape[1] == 1 and x_shape[1] == groups


@needs_simd
@pytest.mark.parametrize("name", [name for name in CASES if CASES[name][2] != 1 and not _is_depthwise(name)])
def test_cpu_strided_layers_by_phases(monkeypatch, name):
    # float32 strided layers go over the input's phases: with AVX-512 all of them by _taps32's
    # register tiles (_forward_by_taps), else those with >= 8 channels a group by gemm32 products
    # (_forward_by_phases), the rest by im2col; test_forward checks their values. The phases' sums
    # run tap by tap, channels in order: the same bits by either kernel and any tile, on one thread,
    # and with a fused activation those of the activation after the layer
    import numba
    from fastconv._cpu import _vecmath, conv
    from fastconv._cpu.conv import _taps
    calls = []
    for fn in ("_forward_by_phases", "_forward_by_taps", "_forward_by_im2col"):
        kernel = getattr(conv, fn)
        monkeypatch.setattr(conv, fn, lambda *a, kernel=kernel, fn=fn: (calls.append(fn), kernel(*a))[1])
    x, w, b, hyper, _ = _case(name, 3)
    x, w, b = (a.astype(np.float32) for a in (x, w, b))
    y = ops.conv2d_forward(x, w, b, **hyper)
    by_phases = w.shape[1] >= 8
    assert calls == ["_forward_by_taps" if _vecmath.AVX512 else
                     "_forward_by_phases" if by_phases else "_forward_by_im2col"]
    if _vecmath.AVX512:
        choose = _taps._forward_tile
        for tile in (_taps._TAPS_TILE, _taps._CHANNELS_TILE, _taps._ROW_TILE):
            monkeypatch.setattr(_taps, "_forward_tile", lambda *a, tile=tile: tile)
            np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, **hyper), y)
        monkeypatch.setattr(_taps, "_forward_tile", choose)
        if by_phases:
            monkeypatch.setattr(conv, "_uses_tiles", lambda x: False)  # the gemm32 products, as on AVX2 hosts
            np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, **hyper), y)
            assert calls[-1] == "_forward_by_phases"
        monkeypatch.undo()
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, **hyper), y)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, activation="relu", **hyper), ops.relu_forward(y))
    np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, activation="sigmoid", **hyper), ops.sigmoid_forward(y))


@pytest.mark.parametrize("h, w, pt, pl, sh, sw", [(5, 8, 1, 1, 2, 2), (6, 9, 1, 1, 2, 2), (4, 7, 0, 0, 2, 2),
                                                 (5, 11, 2, 2, 2, 2), (3, 6, 0, 1, 1, 2), (7, 5, 1, 2, 3, 2),
                                                 (7, 10, 2, 1, 3, 3), (4, 1, 1, 1, 2, 2)])
@pytest.mark.parametrize("read", ["all", "even columns", "odd columns"])
def test_cpu_split_phases_against_slicing(h, w, pt, pl, sh, sw, read):
    # the phases of a padded sample, by slicing: phase (r, q) = padded[r::sh, q::sw]; xq holds the
    # phases some tap reads (slots >= 0) and is left as it was (NaN here) elsewhere. Stride 2 along
    # the width splits both column phases in one pass (_deinterleave): odd and even widths and
    # paddings, and with one of the two phases unread
    from fastconv._cpu.conv._phases import _split_phases
    rng = np.random.default_rng(h * 100 + w)
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    hq, wq = -(-(h + pt + 1) // sh), -(-(w + pl + 1) // sw)  # one row and column of padding after
    padded = np.zeros((2, 3, hq * sh, wq * sw), np.float32)
    padded[:, :, pt:pt + h, pl:pl + w] = x
    phases = [(r, q) for r in range(sh) for q in range(sw)
              if read == "all" or q % 2 == (0 if read == "even columns" else 1)]
    slots = np.full(sh * sw, -1, np.int64)
    for slot, (r, q) in enumerate(phases):
        slots[r * sw + q] = slot
    xq = np.full((len(phases), 2, hq * wq + 5), np.nan, np.float32)  # channels 1 and 2 of the sample's 3
    for slot in range(len(phases)):
        xq[slot, :, :hq * wq] = 0
    _split_phases(x, 1, 1, 2, pt, pl, sh, sw, wq, slots, xq)
    for slot, (r, q) in enumerate(phases):
        np.testing.assert_array_equal(xq[slot, :, :hq * wq].reshape(2, hq, wq), padded[1, 1:, r::sh, q::sw])
        assert np.isnan(xq[slot, :, hq * wq:]).all()


@needs_simd
@pytest.mark.parametrize("x_shape, c_out", [((3, 17, 7, 7), 33), ((2, 40, 6, 5), 130), ((5, 16, 1, 3), 8),
                                            ((2, 24, 4, 4), 18)])
def test_cpu_pointwise_forward_by_the_batch_columns(monkeypatch, x_shape, c_out):
    # 1x1, stride 1, no padding, groups 1, at most 64 positions not a whole number of gemm32 strips:
    # one product over the batch's columns (test_forward checks the "1x1" cases' values on every
    # backend); the same bits on one thread, with a fused activation those of the ops one by one, and
    # fused with a max pooling, the two ops
    import numba
    from fastconv._cpu import _gemm32, conv
    calls, pointwise = [], conv._forward_by_pointwise
    monkeypatch.setattr(conv, "_forward_by_pointwise", lambda *a: (calls.append(1), pointwise(*a))[1])
    rng = np.random.default_rng(sum(x_shape))
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, (c_out, x_shape[1], 1, 1), (c_out,)))
    geo = Geometry(x_shape, w.shape, 1, 0, 1, 1)
    y = ops.conv2d_forward(x, w, b)
    assert calls == ([1] if geo.oh * geo.ow % _gemm32.NR else [])
    assert_matches(y, geo.forward, [x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)], np.float32)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(ops.conv2d_forward(x, w, b), y)
    finally:
        numba.set_num_threads(threads)
    for activation, op in (("relu", ops.relu_forward), ("sigmoid", ops.sigmoid_forward)):
        np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, activation=activation), op(y))
    if min(y.shape[2:]) >= 2:
        pooled, indices = ops.conv2d_max_pool2d_forward(x, w, b, activation="relu", pool_kernel=2)
        want, want_indices = ops.max_pool2d_forward(ops.relu_forward(y), 2)
        np.testing.assert_array_equal(pooled, want)
        np.testing.assert_array_equal(indices, want_indices)


@needs_simd
@pytest.mark.parametrize("x_shape, c_out", [((3, 17, 7, 7), 33), ((2, 40, 8, 8), 16), ((5, 16, 1, 5), 20),
                                            ((2, 24, 5, 13), 18), ((4096, 16, 8, 8), 16)])
def test_cpu_pointwise_backward_by_the_linear_layer(monkeypatch, x_shape, c_out):
    # 1x1, stride 1, no padding, groups 1, at most 64 positions: linear_backward on the channels-last
    # batch, channels off the 16 lanes; 5 x 13 = 65 positions stay on the tiles; 4096 x 64 rows in
    # chunks (one float32 product over them all missed db's and nearly dW's tolerance)
    from fastconv._cpu import conv
    calls, pointwise = [], conv._backward_pointwise
    monkeypatch.setattr(conv, "_backward_pointwise", lambda *a: (calls.append(a[1].shape), pointwise(*a))[1])
    geo = Geometry(x_shape, (c_out, x_shape[1], 1, 1), 1, 0, 1, 1)
    rng = np.random.default_rng(sum(x_shape))
    args = [rng.standard_normal((geo.n, c_out, geo.oh, geo.ow)), rng.standard_normal(x_shape),
            rng.standard_normal((c_out, x_shape[1], 1, 1))]
    args32 = [a.astype(np.float32) for a in args]
    dx, dw, db = ops.conv2d_backward(*args32)
    assert calls == ([] if geo.oh * geo.ow > 64 else [x_shape])
    assert_matches(dx, geo.dx, args, np.float32, what="dx")
    assert_matches(dw, geo.dw, args, np.float32, what="dw")
    assert_matches(db, lambda dy, x, w: dy.sum(axis=(0, 2, 3)), args, np.float32, what="db")
    none, dw2, no_db = ops.conv2d_backward(*args32, bias=False, input_grad=False)
    assert none is None and no_db is None
    np.testing.assert_array_equal(dw2, dw)


@pytest.mark.parametrize("shape", [(2, 1, 640, 640, 2), (2048, 1, 16, 16, 4), (3, 8, 300, 300, 8), (2, 16, 640, 640, 16),
                                   (128, 256, 14, 14, 256)],
                         ids=["large_image", "many_samples", "many_channels", "winograd", "winograd_planes"])
@pytest.mark.parametrize("input_grad", [True, False])
def test_cpu_weight_and_bias_gradients_stay_accurate_over_many_positions(shape, input_grad):
    """dW and db sum over N * OH * OW output positions. The cpu kernels accumulated a task's share in
    one float32 chain (gemm32 with beta 1, sample after sample): with all-positive terms (an image's
    pixels, a mean loss's gradient) 3.9e-5, 2.6e-6, 1.1e-5, 8.1e-6 and 6.4e-6 off float64 on these
    shapes (OpenBLAS, which blocks K, ~5e-7). Now in blocks added in float64: <= 8e-7. (The register
    tiles without dx or with >= 8 channels, the wide kernel otherwise and on AVX2 hosts, Winograd's
    dU by parts and by planes (256 channels: its dU of 4 MiB).)"""
    n, c, h, w, c_out = shape
    if input_grad and c_out >= 256:
        pytest.skip("dW only: the same kernel")
    rng = np.random.default_rng(n + c + h)
    x = rng.random((n, c, h, w), dtype=np.float32)
    weight = rng.standard_normal((c_out, c, 3, 3)).astype(np.float32)
    dy = rng.random((n, c_out, h, w), dtype=np.float32) / np.float32(n * h * w)
    _, dw, db = ops.conv2d_backward(dy, x, weight, padding=1, input_grad=input_grad)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = dy.transpose(1, 0, 2, 3).reshape(c_out, -1).astype(np.float64)
    ref_dw = np.empty((c_out, c, 3, 3))
    for i in range(3):
        for j in range(3):
            ref_dw[:, :, i, j] = rows @ padded[:, :, i:i + h, j:j + w].transpose(1, 0, 2, 3).reshape(c, -1).T
    ref_db = rows.sum(axis=1)
    assert np.abs(dw - ref_dw).max() <= 2e-6 * np.abs(ref_dw).max()
    assert np.abs(db - ref_db).max() <= 2e-6 * np.abs(ref_db).max()


@pytest.mark.parametrize("shape", [(2, 1, 1280, 1280, 2), (8192, 1, 16, 16, 4), (3, 8, 600, 600, 8),
                                   (16, 64, 100, 100, 160)],
                         ids=["large_image", "many_samples", "many_channels", "output_channels_in_blocks"])
def test_cpu_strided_weight_and_bias_gradients_stay_accurate_over_many_positions(shape):
    """The same for stride 2 (im2col's products: with AVX-512 gemm32_blocked's over at most 4096
    positions and 128 output channels at a time; else OpenBLAS's; each added into the part's dW in
    float32): <= 7.5e-7 off float64."""
    n, c, h, w, c_out = shape
    rng = np.random.default_rng(n + c + h)
    x = rng.random((n, c, h, w), dtype=np.float32)
    weight = rng.standard_normal((c_out, c, 3, 3)).astype(np.float32)
    oh, ow = h // 2, w // 2
    dy = rng.random((n, c_out, oh, ow), dtype=np.float32) / np.float32(n * oh * ow)
    _, dw, db = ops.conv2d_backward(dy, x, weight, stride=2, padding=1)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows = dy.transpose(1, 0, 2, 3).reshape(c_out, -1).astype(np.float64)
    ref_dw = np.empty((c_out, c, 3, 3))
    for i in range(3):
        for j in range(3):
            taps = padded[:, :, i:i + 2 * oh:2, j:j + 2 * ow:2]
            ref_dw[:, :, i, j] = rows @ taps.transpose(1, 0, 2, 3).reshape(c, -1).T
    ref_db = rows.sum(axis=1)
    assert np.abs(dw - ref_dw).max() <= 2e-6 * np.abs(ref_dw).max()
    assert np.abs(db - ref_db).max() <= 2e-6 * np.abs(ref_db).max()


@pytest.mark.parametrize("stride", [(10**4, 1), (1, 10**4), 10**6, 2**70])
def test_a_stride_past_the_last_window_is_the_least_such_stride(backend, stride):
    # One output along that axis either way; the cpu's strided kernel kept stride^2 phase slots (763 MB,
    # 2.7 s for 10^4 on a 4 x 4 image; 10^6 would need terabytes) and the native kernels refused 2^70.
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((4, 3, 3, 2))
    pair = stride if isinstance(stride, tuple) else (stride, stride)
    # padded 7 x 6, kernel 3 x 2: stride 1 gives 5 x 5; any stride >= 5 one position (5: the least such)
    least = tuple(1 if s == 1 else 5 for s in pair)
    dy_shape = (2, 4) + tuple(5 if s == 1 else 1 for s in pair)
    dy = rng.standard_normal(dy_shape)
    for dtype in (np.float32, np.float64):
        dy_, x_, w_ = on(backend, *(a.astype(dtype) for a in (dy, x, w)))
        y = ops.conv2d_forward(x_, w_, stride=stride, padding=1)
        assert y.shape == dy_shape
        np.testing.assert_array_equal(to_numpy(y), to_numpy(ops.conv2d_forward(x_, w_, stride=least, padding=1)))
        grads = ops.conv2d_backward(dy_, x_, w_, stride=stride, padding=1)
        expected = ops.conv2d_backward(dy_, x_, w_, stride=least, padding=1)
        for got, want in zip(grads, expected):
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


@pytest.mark.parametrize("padding, dilation", [((2 ** 61, 0), 1), ((0, 0), (1, 2 ** 62))])
def test_a_padded_input_or_dilated_kernel_past_2_to_the_40_is_refused(backend, padding, dilation):
    # emu's int64 index arithmetic took padding 2**61 (stride 2**61) and gave [12, 12, 12] for [0, 12, 0];
    # the cpu raised NumPy's "Maximum allowed dimension exceeded", naming no argument.
    x = on(backend, np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5))
    w = on(backend, np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"must be at most 2\*\*40 along each axis"):
        ops.conv2d_forward(x, w, padding=padding, dilation=dilation, stride=(2 ** 61, 4))
    with pytest.raises(ValueError, match=r"must be at most 2\*\*40 along each axis"):
        ops.conv2d_backward(on(backend, np.ones((1, 1, 3, 1), np.float32)), x, w, padding=padding, dilation=dilation,
                            stride=(2 ** 61, 4))


@pytest.mark.parametrize("name", [name for name in CASES if _is_depthwise(name) and CASES[name][2] == 1])
def test_cpu_depthwise_layers_by_their_own_kernels(monkeypatch, name):
    # One input channel a group went by per-sample GEMMs that filled one of 16 lanes a product (0.1-0.3x
    # torch): stride-1 ones go plane by plane (_depthwise.py). test_forward / test_backward check the
    # values (strided ones too, on the other paths); here the path, the same bits on 1 and 2 threads,
    # float32 and float64, and the fused op's bits those of the two ops one after the other.
    import numba
    from fastconv._cpu import conv
    calls = []
    for fn in ("_forward_by_depthwise", "_backward_by_depthwise"):
        kernel = getattr(conv, fn)
        monkeypatch.setattr(conv, fn, lambda *a, kernel=kernel, fn=fn: (calls.append(fn), kernel(*a))[1])
    for dtype in (np.float32, np.float64):
        x, w, b, hyper, geo = _case(name, 5)
        x, w, b = (a.astype(dtype) for a in (x, w, b))
        dy = np.random.default_rng(6).standard_normal((geo.n, geo.c_out, geo.oh, geo.ow)).astype(dtype)
        results, threads = [], numba.get_num_threads()
        try:
            for count in (1, threads):
                numba.set_num_threads(count)
                results.append([ops.conv2d_forward(x, w, b, activation="relu", **hyper),
                                *ops.conv2d_backward(dy, x, w, bias=True, **hyper)])
        finally:
            numba.set_num_threads(threads)
        for one, two in zip(*results):
            np.testing.assert_array_equal(one, two)
        assert calls[-2:] == ["_forward_by_depthwise", "_backward_by_depthwise"]
        y = ops.conv2d_forward(x, w, b, **hyper)
        np.testing.assert_array_equal(results[0][0], ops.relu_forward(y))
        np.testing.assert_array_equal(ops.conv2d_forward(x, w, b, activation="sigmoid", **hyper),
                                      ops.sigmoid_forward(y))
    if min(geo.oh, geo.ow) >= 2:
        pooled, _ = ops.conv2d_max_pool2d_forward(x, w, b, activation="relu", pool_kernel=2, **hyper)
        y = ops.conv2d_forward(x, w, b, activation="relu", **hyper)
        np.testing.assert_array_equal(pooled, ops.max_pool2d_forward(y, 2)[0])
