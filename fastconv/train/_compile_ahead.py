"""Compiling ahead: on a cold Numba cache, a second process compiles the backward's kernels while
fit's own process compiles the forward's.

A first run on the cpu backend is mostly Numba compiling kernels, one after another, on one core
(the digits CNN: 82 of its 85 s, on two cores). fit's first forward (the targets' check) compiles
the forward's kernels; the backward's, the optimizer's and the validation's (a larger batch) come
after. When a layer's kernel starts compiling in that forward, fit starts a helper process (one at
a time): it builds the same model from its config and runs forward and backward, on zeros of the
training batch's shape, through growing prefixes of it (up to each trainable layer, then whole), so
that it compiles the first layer's backward first, the order opposite to the training step's; then
the whole model at the last, partial batch's rows (kernels are chosen by size), and forwards at the
validation's batches. What it compiles lands in Numba's disk cache, where fit's process finds it
when it gets there; a kernel that both reach first is compiled twice, no worse than before. The
kernels are the same either way (same code, flags and CPU): the results are bit for bit those of a
run without it. `fastconv train digits_cnn` on an empty cache, Zen 5 host, 2 cores, alternating:
99.5 and 87.1 s wall without, 66.5 and 66.5 s with (in a faster hour, with the first version, which
skipped the last batch's sizes: 84.3 and 81.5 against 58.2 and 55.1); warm runs (no compile, no
helper) level.

Only on the cpu backend, for an nn.Sequential of fastconv's own layers (the helper rebuilds it from
config()), and where a core is free: two or more usable, and a load average over the last minute at
least one below their count (on a busy machine two processes compiling the same kernels side by side took
longer than one). FASTCONV_COMPILE_AHEAD=0 turns it off, =force drops the free-core condition,
=verbose shows the helper's errors (otherwise ignored: it only warms a cache). Numba's cache takes no
lock: of the entries two processes save at once, one can go missing (compiled again by a later
process); they cannot cross (fastconv/_cpu/_numba_cache.py).
"""
import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading

import numpy as np

__all__ = ["helping"]

# Kernels fit compiles itself whatever the helper does: their compiles start none.
_NOT_LAYERS = ("fastconv._cpu.loss", "fastconv._cpu.check", "fastconv._cpu.optim")

_helper = None  # the helper process last started, and the process that started it
_helper_parent = None


@contextlib.contextmanager
def helping(model, x, batch_size, predict_batch_size, predict_rows):
    """Around fit's first forward: starts the helper at the first compile of a layer's kernel inside
    it (none on a warm cache), where it can help (_spec) and a core is free."""
    mode = os.environ.get("FASTCONV_COMPILE_AHEAD", "1")
    if mode == "0":
        yield
        return
    from numba.core import event

    class FirstLayerCompile(event.Listener):
        depth = 0  # nested compiles (a kernel's callees) are the outermost one's

        def on_start(self, ev):
            self.depth += 1
            if self.depth == 1:
                try:
                    module = ev.data["dispatcher"].py_func.__module__ or ""
                    if module.startswith("fastconv.") and not module.startswith(_NOT_LAYERS):
                        _start(lambda: _spec(model, x, batch_size, predict_batch_size, predict_rows), mode)
                except Exception:  # never fail the compile it watches
                    pass

        def on_end(self, ev):
            self.depth -= 1

    with event.install_listener("numba:compile", FirstLayerCompile()):
        yield


def _spec(model, x, batch_size, predict_batch_size, predict_rows):
    """The helper's instructions as a JSON-able dict, or None where it cannot help."""
    from .. import backend, checkpoint, nn
    if backend.current().name != "cpu" or type(model) is not nn.Sequential:
        return None
    if not all(type(m).__module__.startswith("fastconv.") for m in model.modules()):
        return None  # a layer of the user's: the helper could not rebuild it
    import numba
    rows = len(x)
    return {"model": model.config(), "sample": list(x.shape[1:]), "dtype": np.asarray(x[:1]).dtype.str,
            "batches": _sizes(batch_size, rows), "predict_batches": _sizes(predict_batch_size, predict_rows),
            "frozen": checkpoint.frozen_names(model),
            "threads": numba.get_num_threads()}


def _sizes(batch, rows):
    """The batch sizes a pass over `rows` in batches of `batch` meets: the full one, the last one."""
    return [n for n in dict.fromkeys((min(batch, rows), rows % batch)) if n]


def _spare_core():
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return cores >= 2 and load <= cores - 1


def _start(make_spec, mode):
    """The helper process, unless this process or its parent has one running."""
    global _helper, _helper_parent
    if _helper is not None and (_helper_parent != os.getpid() or _helper.poll() is None):
        return  # (in a forked child the parent's helper is not ours to poll: it warms the same cache)
    if mode != "force" and not _spare_core():
        return
    spec = make_spec()
    if spec is None:
        return
    import fastconv
    env = dict(os.environ, FASTCONV_BACKEND="cpu", NUMBA_NUM_THREADS=str(spec["threads"]), FASTCONV_COMPILE_AHEAD="0")
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))  # the same fastconv
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    _helper = subprocess.Popen(
        [sys.executable, "-c", "from fastconv.train._compile_ahead import main; main()"], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=None if mode == "verbose" else subprocess.DEVNULL, env=env)
    _helper_parent = os.getpid()
    # The spec on its stdin, and its exit collected (no zombie), off the compiling thread.
    threading.Thread(target=_helper.communicate, args=(json.dumps(spec).encode(),), daemon=True).start()


@atexit.register
def _stop():
    """At exit: a helper still compiling has nothing left to help."""
    if _helper is not None and _helper_parent == os.getpid() and _helper.poll() is None:
        _helper.terminate()


def main():
    """The helper: the spec from stdin, then the model's prefixes forward and backward at the first
    training batch size, the whole model at the others, forwards at the prediction batch sizes,
    all on zeros."""
    spec = json.loads(sys.stdin.read())
    from .. import checkpoint, nn
    with nn._no_init():  # (zeros: the values do not matter)
        model = nn.from_config(spec["model"])
    checkpoint._freeze(model, spec["frozen"], "compile-ahead's spec")  # as a checkpoint's model is rebuilt
    layers = list(model)
    trains = [i for i, layer in enumerate(layers) if nn._trains(layer)]
    dtype = np.dtype(spec["dtype"])
    model.train()
    for k, rows in enumerate(spec["batches"]):
        x = np.zeros((rows, *spec["sample"]), dtype)
        for end in (trains[1:] + [len(layers)]) if k == 0 else [len(layers)]:  # cuts never split a fused pair
            prefix = nn.Sequential(*layers[:end])
            y = prefix(x)
            prefix.backward(np.zeros_like(y), input_grad=False)
    model.eval()
    for rows in spec["predict_batches"]:
        model(np.zeros((rows, *spec["sample"]), dtype))
