"""What the ops hand the backends besides arrays: the fused activations' kernel codes, a validated
pooling's geometry, the convolution's output size, and the longest axes the kernels take. It sits
below both: the ops (which validate) and every backend (which runs) import it, and it imports nothing
of fastconv, so data still flows one way, ops -> backend -> kernel."""
from __future__ import annotations

from typing import NamedTuple

# csrc/kernels/common.h: enum Activation
ACTIVATIONS = {None: 0, "relu": 1, "sigmoid": 2}

# The longest padded input or (dilated) kernel along an axis the ops hand the kernels: their int64 index
# arithmetic holds products of such lengths and the strides clamped to them (and a pooling window's area,
# at most MAX_WINDOW_AREA); far past any image that fits in memory.
MAX_EXTENT = 2 ** 40
MAX_WINDOW_AREA = 2 ** 62


class PoolGeometry(NamedTuple):
    """A validated pooling: input (n, c, h, w) -> output (n, c, out_h, out_w)."""
    n: int
    c: int
    h: int
    w: int
    out_h: int
    out_w: int
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)

    @property
    def out_shape(self):
        return (self.n, self.c, self.out_h, self.out_w)

    @property
    def in_shape(self):
        return (self.n, self.c, self.h, self.w)


def conv_output_size(size, kernel, stride, pad_before, pad_after, dilation):
    """The output length of a convolution along one axis (PyTorch's formula; < 1: no output)."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1
