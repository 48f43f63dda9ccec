"""fit's note on stderr when it compiles kernels (fastconv/train/_compile_notice.py): once, at the first
compile of one of fastconv's kernels, and only with a progress bar."""
import numba
import numpy as np
import pytest

from fastconv import losses, nn, optim, train
from fastconv.train import _compile_notice


def fresh_kernel(module):
    """A kernel no process has compiled, as if defined in `module`."""
    def add_one(x):
        return x + 1

    add_one.__module__ = module
    return numba.njit(add_one)


def test_the_first_compile_of_a_fastconv_kernel_is_noted_once(capsys):
    with _compile_notice.CompileNotice(True):
        fresh_kernel("someone_elses.module")(1)
        assert capsys.readouterr().err == ""
        fresh_kernel("fastconv._cpu.some_kernel")(1)
        fresh_kernel("fastconv._cpu.another")(1.0)
    assert capsys.readouterr().err.count(_compile_notice.NOTICE) == 1


def test_no_note_without_a_progress_bar_or_outside_fit(capsys):
    with _compile_notice.CompileNotice(False):
        fresh_kernel("fastconv._cpu.some_kernel")(1)
    fresh_kernel("fastconv._cpu.some_kernel")(2)
    assert capsys.readouterr().err == ""


def test_a_fit_that_compiles_nothing_says_nothing(capsys):
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    y = np.arange(16) % 2

    def run(progress):
        model = nn.Sequential(nn.Linear(3, 2, seed=0))
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), (x, y),
                  epochs=1, batch_size=4, progress=progress)

    run(False)  # compiles what this process has not (or loads it from the cache)
    capsys.readouterr()
    run(True)
    assert _compile_notice.NOTICE not in capsys.readouterr().err
    fresh_kernel("fastconv._cpu.after_fit")(1)  # fit's listener is gone with it
    with pytest.raises(ValueError, match="metric='auc' needs validation labels of at least two classes"):
        model = nn.Sequential(nn.Linear(3, 2, seed=0))
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), (x, y * 0),
                  epochs=1, batch_size=4, metric="auc")
    fresh_kernel("fastconv._cpu.after_a_refused_fit")(1)  # and with one that raised
    assert capsys.readouterr().err == ""


class CompilesInTraining(nn.Module):
    """An identity layer whose forward number `at` (3: a training step's, after fit's first forward on
    a row; 1: that first forward) compiles a kernel of fastconv's no process has, as a cold cache's
    would; with `raises`, its fifth forward raises."""

    def __init__(self, module, raises=False, at=3):
        super().__init__()
        self.module, self.raises, self.at, self.calls = module, raises, at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            fresh_kernel(self.module)(1)
        if self.raises and self.calls == 5:
            raise RuntimeError("a step that fails")
        return x

    def backward(self, dy):
        return dy


def _fit_with(layer, progress=True):
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    y = np.arange(16) % 2
    model = nn.Sequential(nn.Linear(3, 2, seed=0), layer)
    return train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), None,
                     epochs=2, batch_size=4, progress=progress)


def test_fit_notes_a_compile_in_its_first_forward_or_its_training_loop(capsys):
    _fit_with(CompilesInTraining("fastconv._cpu.probe_in_training"))
    assert capsys.readouterr().err.count(_compile_notice.NOTICE) == 1
    _fit_with(CompilesInTraining("fastconv._cpu.probe_in_the_first_forward", at=1))
    assert capsys.readouterr().err.count(_compile_notice.NOTICE) == 1
    _fit_with(CompilesInTraining("fastconv._cpu.probe_without_a_bar"), progress=False)
    assert _compile_notice.NOTICE not in capsys.readouterr().err


def test_fit_that_raises_in_its_loop_leaves_no_listener(capsys):
    layer = CompilesInTraining("someone_elses.probe", raises=True)  # (compiles, but not one of fastconv's)
    with pytest.raises(RuntimeError, match="a step that fails"):
        _fit_with(layer)
    assert layer.calls == 5
    fresh_kernel("fastconv._cpu.after_a_failed_step")(1)
    assert _compile_notice.NOTICE not in capsys.readouterr().err
