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
