"""Names of the activations that GEMM and convolution epilogues fuse, and their kernel codes
(csrc/kernels/common.h: enum Activation, in fastconv._kernel_abi)."""
from .._kernel_abi import ACTIVATIONS


def check_activation(activation):
    # A non-string (e.g. a list) is refused with the same message, not a TypeError from the dict lookup.
    if not (activation is None or isinstance(activation, str)) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu' or 'sigmoid', got {activation!r}")
    return activation
