"""fit's compile-ahead helper (fastconv/train/_compile_ahead.py): on a cold Numba cache a second
process compiles the backward's and the validation's kernels while fit compiles the forward's.
conftest.py turns it off for the rest of the suite (FASTCONV_COMPILE_AHEAD=0)."""
import json
import os
import subprocess
import sys

import numba
import numpy as np

import fastconv.backend
from fastconv import nn, use_backend
from fastconv.train import _compile_ahead

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = "nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))"

# fit on a small MLP, then: the final weights' digest, the fastconv kernels this process compiled
# (not loaded from the cache), and whether it started a helper.
FIT = f"""
import hashlib, numpy as np
from numba.core import event
compiled = set()
class Compiled(event.Listener):
    def on_start(self, ev):
        d = ev.data["dispatcher"]
        if d.py_func.__module__.startswith("fastconv."):
            compiled.add(d.py_func.__module__ + "." + d.py_func.__qualname__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Compiled())
from fastconv import losses, nn, optim, train, use_backend
from fastconv.train import _compile_ahead
rng = np.random.default_rng(0)
x, y = rng.standard_normal((96, 6)).astype(np.float32), rng.integers(0, 3, 96)  # 70 to train: a last batch of 6
with use_backend("cpu"):
    nn.manual_seed(0)
    model = {MODEL}
    model[0].freeze()
    train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
              train=(x[:70], y[:70]), val=(x[70:], y[70:]), epochs=2, batch_size=16, progress=False)
print(hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in model.state_dict().values())).hexdigest())
print(sorted(compiled))
print(_compile_ahead._helper is not None)
"""

HELPER = ["-c", "from fastconv.train._compile_ahead import main; main()"]


def _python(args, cache, ahead, stdin=None):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=ROOT, FASTCONV_COMPILE_AHEAD=ahead,
               FASTCONV_BACKEND="cpu")
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def _model():
    nn.manual_seed(0)
    return eval(MODEL)


def test_the_helper_compiles_all_that_training_and_validation_need_but_the_loss_and_optimizer(tmp_path):
    """The helper alone on a cold cache, then fit on it: fit compiles only the loss's and the
    optimizer's kernels (and the label check's); every layer's forward and backward, at the training
    batches (16 rows, and the last 6) and the validation's, came from the helper (its prefixes keep the
    fused pairs, the frozen first layer's backward without dx, the Dropout in training mode)."""
    with use_backend("cpu"):
        model = _model()
        model[0].freeze()
        spec = _compile_ahead._spec(model, np.zeros((70, 6), np.float32), 16, 256, 26)
    assert spec["batches"] == [16, 6] and spec["predict_batches"] == [26] and spec["frozen"] == ["0.weight", "0.bias"]
    _python(HELPER, tmp_path, "0", stdin=json.dumps(spec))
    _, compiled, started = _python(["-c", FIT], tmp_path, "0")
    left = [name for name in eval(compiled) if not name.startswith(("fastconv._cpu.loss.", "fastconv._cpu.optim.",
                                                                    "fastconv._cpu.check."))]
    assert left == [] and started == "False", compiled


def test_fit_with_the_helper_trains_bit_for_bit_as_without(tmp_path):
    """On a cold cache fit starts the helper (at its first compile) and trains as it would alone."""
    digest, compiled, started = _python(["-c", FIT], tmp_path, "force")  # (force: even on a busy machine)
    assert started == "True" and compiled != "[]"
    digest_alone, _, started_alone = _python(["-c", FIT], tmp_path / "alone", "0")
    assert digest == digest_alone and started_alone == "False"


def test_the_helper_is_for_fastconv_sequentials_on_cpu():
    """_spec: None for a bare layer, a Sequential holding a layer of the user's (the helper could not
    rebuild it), and on another backend than cpu."""
    x = np.zeros((10, 6), np.float32)

    class Custom(nn.Module):
        def forward(self, x):
            return x

    with use_backend("cpu"):
        model = _model()
        assert _compile_ahead._spec(model, x, 16, 256, 4) == {
            "model": model.config(), "sample": [6], "dtype": "<f4", "batches": [10], "predict_batches": [4],
            "frozen": [], "threads": numba.get_num_threads()}
        assert _compile_ahead._spec(model[0], x, 16, 256, 4) is None
        assert _compile_ahead._spec(nn.Sequential(nn.Linear(6, 2), Custom()), x, 16, 256, 4) is None
    if fastconv.backend.availability("emu")[0]:
        with use_backend("emu"):
            assert _compile_ahead._spec(model, x, 16, 256, 4) is None


def _compile_in(module):
    """A fresh Numba compile of a function that says it is from `module`."""
    def f(v):
        return v + 1
    f.__module__ = module
    assert numba.njit(f)(1) == 2


def test_a_layer_kernel_s_compile_starts_the_helper_once_and_nothing_else_does(monkeypatch):
    """Inside helping: a compile of a kernel from a layer's module calls _start (the nested compiles of
    its callees do not); the loss's, the optimizer's and other libraries' do not; with
    FASTCONV_COMPILE_AHEAD=0 nothing does; and an error in _start never fails the compile."""
    calls = []
    monkeypatch.setattr(_compile_ahead, "_start", lambda make_spec, mode: calls.append(mode))
    monkeypatch.setenv("FASTCONV_COMPILE_AHEAD", "1")
    with _compile_ahead.helping(_model(), np.zeros((4, 6), np.float32), 2, 4, 4):
        for module in ("fastconv._cpu.loss", "fastconv._cpu.optim", "somewhere.else"):
            _compile_in(module)
        assert calls == []
        _compile_in("fastconv._cpu.dense")
        assert calls == ["1"]
    _compile_in("fastconv._cpu.dense")  # after it: no listener left
    assert calls == ["1"]
    monkeypatch.setenv("FASTCONV_COMPILE_AHEAD", "0")
    with _compile_ahead.helping(_model(), np.zeros((4, 6), np.float32), 2, 4, 4):
        _compile_in("fastconv._cpu.dense")
    assert calls == ["1"]

    def broken(make_spec, mode):
        raise RuntimeError("no")
    monkeypatch.setattr(_compile_ahead, "_start", broken)
    monkeypatch.setenv("FASTCONV_COMPILE_AHEAD", "1")
    with _compile_ahead.helping(_model(), np.zeros((4, 6), np.float32), 2, 4, 4):
        _compile_in("fastconv._cpu.dense")
