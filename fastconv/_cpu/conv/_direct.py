"""The stride-1 forward's direct sums, for the layers Winograd does not take and the samples it
hands back: AVX-512's register tiles (_taps.py), else the wide kernels (_wide.py)."""
from ._shared import _uses_tiles
from ._taps import _forward_by_taps
from ._wide import _forward_by_wide


def _forward_direct(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices):
    """The stride-1 forward's direct sums into y, or pooled and indices: by _forward_taps_avx512
    where the host has AVX-512, else the wide kernels (with gemm32 for float32 on AVX2 hosts)."""
    if _uses_tiles(x):
        _forward_by_taps(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices)
        return
    _forward_by_wide(x, w, b, padding, dilation, groups, oh, ow, act, window, y, pooled, indices)
