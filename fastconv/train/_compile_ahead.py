"""Compiling ahead: on a cold Numba cache, a second process compiles the backward's kernels while
fit's own process compiles the forward's.

A first run on the cpu backend is mostly Numba compiling kernels, one after another, on one core
(the digits CNN: 82 of its 85 s, on two cores). fit's first forward (the targets' check) compiles
the forward's kernels; the backward's, the optimizer's and the validation's (a larger batch) come
after. When that forward starts a compile, fit starts this module as a script in a new process
(one at a time): it builds the same model from its config and runs forward and backward, on
zeros of the training batch's shape, through growing prefixes of it (up to each trainable layer,
then whole), so that it compiles the first layer's backward first, the order opposite to the
training step's; then a forward at the prediction batch. What it compiles lands in Numba's disk
cache, where fit's process finds it when it gets there; a kernel that both reach first is compiled
twice, no worse than before. The kernels are the same either way (same code, flags and CPU): the
results are bit for bit those of a run without it. `fastconv train digits_cnn` on an empty cache,
Zen 5 host, 2 cores, alternating: 84.3 and 81.5 s wall without, 58.2 and 55.1 s with; warm runs
(no compile, no helper) level.

Only on the cpu backend, for an nn.Sequential whose layers rebuild from config(); the helper's own
errors are ignored (it only warms a cache). FASTCONV_COMPILE_AHEAD=0 turns it off. Numba's cache
takes no lock: entries two processes save at once can cross (fastconv/_cpu/_numba_cache.py drops
a crossed one and compiles afresh) or go missing (compiled again by a later process).
"""
import atexit
import json
import os
import subprocess
import sys

import numpy as np

__all__ = ["helping"]

_helper = None  # the helper process last started (at most one at a time)


class helping:
    """Context manager around fit's first forward: the helper starts at the first compile of a
    fastconv kernel inside it, if any (none on a warm cache)."""

    def __init__(self, model, x, batch_size, predict_batch_size, predict_rows):
        self._spec = self._listener = None
        if os.environ.get("FASTCONV_COMPILE_AHEAD", "1") == "0":
            return
        from .. import backend, nn
        if backend.current().name != "cpu" or type(model) is not nn.Sequential:
            return
        try:
            config = model.config()
            if nn._unregistered_types(config):
                return
            json.dumps(config)
        except (NotImplementedError, TypeError, ValueError):
            return
        import numba
        self._spec = {"model": config, "sample": list(x.shape[1:]), "dtype": np.dtype(x.dtype).str,
                      "batch": int(min(batch_size, len(x))), "predict_batch": int(min(predict_batch_size, predict_rows)),
                      "frozen": [i for i, layer in enumerate(model) if layer.parameters() and not nn._trains(layer)],
                      "threads": numba.get_num_threads()}

    def __enter__(self):
        if self._spec is not None:
            from numba.core import event
            spec = self._spec

            class FirstCompile(event.Listener):
                def on_start(self, ev):
                    if ev.data["dispatcher"].py_func.__module__.startswith("fastconv."):
                        _start(spec)

                def on_end(self, ev):
                    pass

            self._listener = FirstCompile()
            event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        if self._listener is not None:
            from numba.core import event
            event.unregister("numba:compile", self._listener)
            self._listener = None
        return False


def _start(spec):
    """The helper process, unless one is still running (its spec as JSON on its stdin)."""
    global _helper
    if _helper is not None and _helper.poll() is None:
        return
    env = dict(os.environ, FASTCONV_BACKEND="cpu", NUMBA_NUM_THREADS=str(spec["threads"]), FASTCONV_COMPILE_AHEAD="0")
    try:
        _helper = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        _helper.stdin.write(json.dumps(spec).encode())
        _helper.stdin.close()
    except OSError:  # no process to spare, or it died at once: compile as before
        return
    atexit.register(_stop, _helper)


def _stop(helper):
    """At exit: a helper still compiling has nothing left to help."""
    if helper.poll() is None:
        helper.terminate()


def _compile(spec):
    """The helper's work: the model's prefixes forward and backward at the training batch, then a
    forward at the prediction batch, all on zeros."""
    from .. import nn
    model = nn.from_config(spec["model"])
    layers = list(model)
    for i in spec["frozen"]:
        layers[i].freeze()
    trains = [i for i, layer in enumerate(layers) if nn._trains(layer)]
    x = np.zeros((spec["batch"], *spec["sample"]), np.dtype(spec["dtype"]))
    model.train()
    for end in trains[1:] + [len(layers)]:  # cut before each trainable layer: never inside a fused pair
        prefix = nn.Sequential(*layers[:end])
        y = prefix(x)
        prefix.backward(np.zeros_like(y), input_grad=False)
    if spec["predict_batch"]:
        model.eval()
        model(np.zeros((spec["predict_batch"], *spec["sample"]), x.dtype))


if __name__ == "__main__":
    _compile(json.loads(sys.stdin.read()))
