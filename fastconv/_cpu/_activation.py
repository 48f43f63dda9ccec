"""The activations the cpu kernels apply elementwise and in their fused epilogues, shared by the
dense and convolution kernels: ReLU, sigmoid and their gradients on one value (Numba, inlined), the
epilogue codes (ACTIVATIONS', plus SIGMOID16 for the float32 sigmoid by _vecmath.sigmoid16) and the
in-place sigmoid of an epilogue. Math: csrc/kernels/common.cuh (the fused activations)."""
import numpy as np
from numba import njit, types
from numba.extending import overload

from .._kernel_abi import ACTIVATIONS
from . import _vecmath
from ._vecmath import exp_nonpositive, sigmoid16_span

RELU, SIGMOID = ACTIVATIONS["relu"], ACTIVATIONS["sigmoid"]
# The cpu epilogues' own code for a sigmoid by _vecmath.sigmoid16 (float32 where _vecmath.SIMD):
# what sigmoid_forward computes there, so that a fused layer's outputs are the standalone op's bits.
SIGMOID16 = max(ACTIVATIONS.values()) + 1


def epilogue_activation(activation, dtype):
    """The forward epilogue's code for `activation` (None, "relu" or "sigmoid") on arrays of `dtype`:
    ACTIVATIONS', but SIGMOID16 for a float32 sigmoid where sigmoid_forward runs sigmoid16. Read at
    each call, as sigmoid_forward reads _vecmath.SIMD."""
    if activation == "sigmoid" and dtype == np.float32 and _vecmath.SIMD:
        return SIGMOID16
    return ACTIVATIONS[activation]


# Constants are float32 so that float32 math stays float32 (an int literal would promote it to
# float64, halving the vector width); with float64 inputs they promote exactly.
ONE = np.float32(1)
ZERO = np.float32(0)


@njit(inline="always")
def sigmoid(v):
    e = exp_nonpositive(-abs(v))  # never overflows; vectorizes
    r = ONE / (ONE + e)           # one division for either sign
    return r if v >= ZERO else e * r


def sigmoid_in_place(a, lo, hi):
    """a[lo:hi] = sigmoid(a[lo:hi]) for an epilogue under SIGMOID16: sigmoid16's bits for 1-D
    C-contiguous float32 (another float32 layout does not compile); other dtypes, which never get
    SIGMOID16 but are compiled with the branch, take sigmoid. Not inline="always": Numba's IR
    inlining of sigmoid through it into _epilogue (float64) warned NumbaIRAssumptionWarning; LLVM
    inlines it anyway."""


@overload(sigmoid_in_place)
def _sigmoid_in_place(a, lo, hi):
    if a.dtype == types.float32:
        if a.ndim == 1 and a.layout == "C":
            return lambda a, lo, hi: sigmoid16_span(a, a, lo, hi)
        return None

    def impl(a, lo, hi):
        for i in range(lo, hi):
            a[i] = sigmoid(a[i])
    return impl


@njit(inline="always")
def relu(v):
    return ZERO if v < ZERO else v


@njit(inline="always")
def relu_grad(dy, x):
    # 0 only where x <= 0: a NaN x passes dy on, as torch's threshold_backward (where(x <= 0, 0, dy))
    return ZERO if x <= ZERO else dy


@njit(inline="always")
def sigmoid_grad(dy, y):
    return dy * y * (ONE - y)
