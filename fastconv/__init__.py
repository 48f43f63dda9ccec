"""fastconv: a small deep-learning engine. Hand-written CUDA kernels with their backward passes,
a CUDA emulator that runs the same kernels on the CPU for testing, and a Numba CPU backend.

    import fastconv
    fastconv.get_backend()            # "cuda" with a GPU, else "cpu"
    y = fastconv.ops.linear_forward(x, w, b, activation="relu")
"""
__version__ = "0.1.0"

from . import ops
from .backend import empty_cache, get_backend, set_backend, use_backend
from ._info import info

__all__ = ["__version__", "ops", "get_backend", "set_backend", "use_backend", "empty_cache", "info"]

# The layers and the loop, imported on first use (fastconv.nn.Linear after a plain `import fastconv`):
# importing them up front would cost every user of the ops alone their imports (tqdm, the checkpoint's).
_SUBMODULES = ("nn", "losses", "optim", "train", "metrics", "data", "checkpoint", "evaluate")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
