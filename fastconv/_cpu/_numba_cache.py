"""Numba's on-disk cache, checked: a kernel loaded from it runs only for the signature it was
compiled for.

Numba's index file of a function maps each signature's key to a data file named by its order
(kernel-NN.py311.1.nbc, .2.nbc, ...). Two processes that compile different signatures of one kernel
at the same moment (two trainings started together on a fresh install, pytest-xdist's workers) can
both pick the same data file for their own key, and the index can end up pointing one signature at
the other's machine code (Numba takes no lock there: numba/numba#10128 reports the like for its
gufuncs' two files). From then on every process would load that code for it:
a call fails to unbox its arguments (a TypeError, at every call, until the cache is deleted), or,
for array layouts that unbox alike, runs the wrong code on them. Numba loads a cached
entry without comparing its signature with the one asked for; here a loaded entry whose signature
differs is dropped, and the kernel is compiled afresh (and saved over the bad entry). Only the
arguments are compared: an entry crossed between two CPUs' keys (one cache shared by different
machines, and the same race) would still load.

check_signatures(modules) applies this to the kernels (Numba dispatchers with cache=True) defined
in those modules; the cpu backend calls it for its own modules before any kernel runs.
"""
from numba.core import sigutils
from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher

__all__ = ["check_signatures"]


class _SignatureCheckedCache(FunctionCache):
    def _load_overload(self, sig, target_context):
        compiled = super()._load_overload(sig, target_context)
        if compiled is not None:
            args, _ = sigutils.normalize_signature(sig)
            if tuple(compiled.signature.args) != tuple(args):
                return None  # another signature's code: compile this one afresh
        return compiled


def check_signatures(modules):
    """Each cached kernel defined in `modules` gets the checked cache (idempotent)."""
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, Dispatcher) and type(getattr(value, "_cache", None)) is FunctionCache:
                value._cache.__class__ = _SignatureCheckedCache
