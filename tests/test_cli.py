"""The `fastconv` command: parsing, usage errors (exit code 2), failures (exit code 1), Ctrl-C (exit code 130),
info, bench."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastconv import checkpoint, cli, nn, optim, train
from helpers import strip_run_record


def run_cli(argv, capsys):
    """(exit code, stdout, stderr) of `fastconv ARGV`, whether it returns or exits."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_examples_are_found():
    assert {"neuron", "tumour_mlp", "digits_cnn", "regression", "search"} <= set(cli.known_examples())


def test_unknown_example_is_a_usage_error_listing_the_known_ones(capsys):
    code, _, err = run_cli(["train", "resnet50"], capsys)
    assert code == 2
    assert "unknown example 'resnet50'" in err
    for name in ("neuron", "tumour_mlp", "digits_cnn", "regression", "search"):
        assert name in err


def test_missing_examples_directory_is_explained(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCONV_EXAMPLES_DIR", str(tmp_path / "nowhere"))
    code, _, err = run_cli(["train", "neuron"], capsys)
    assert code == 2
    assert "no examples found" in err and "FASTCONV_EXAMPLES_DIR" in err


@pytest.mark.parametrize("option, value", [("--lr", "-0.1"), ("--lr", "0"), ("--lr", "fast"), ("--lr", "nan"),
                                           ("--epochs", "0"), ("--epochs", "2.5"), ("--batch-size", "-3"),
                                           ("--backend", "tpu"), ("--subset", "0"), ("--seed", "-1")])
def test_bad_option_values_are_usage_errors_naming_the_option(capsys, option, value):
    code, _, err = run_cli(["train", "neuron", option, value], capsys)
    assert code == 2
    assert option in err


def test_bad_search_lists_are_usage_errors(capsys):
    code, _, err = run_cli(["search", "--lrs", "0.1,-1"], capsys)
    assert code == 2 and "--lrs" in err
    code, _, err = run_cli(["search", "--seed", "-1"], capsys)
    assert code == 2 and "--seed" in err
    code, _, err = run_cli(["search", "--widths", ","], capsys)
    assert code == 2 and "--widths" in err
    # An empty item was dropped silently: "0.1,,0.2" searched 0.1 and 0.2.
    for option, value in (("--lrs", "0.1,,0.2"), ("--batch-sizes", "16,"), ("--widths", " ,8")):
        code, _, err = run_cli(["search", option, value], capsys)
        assert code == 2 and f"argument {option}: expected a comma-separated list without empty items, got " \
                             f"{value!r}" in err


def test_options_reach_the_example(monkeypatch, capsys, tmp_path):
    seen = {}
    example = cli.load_example("neuron")
    monkeypatch.setattr(example, "run", lambda **kwargs: seen.update(kwargs))
    code, _, _ = run_cli(["train", "neuron", "--epochs", "3", "--lr", "0.5", "--batch-size", "8", "--seed", "7",
                          "--out", str(tmp_path), "--subset", "20", "--quiet", "--backend", "cpu"], capsys)
    assert code == 0
    assert seen == {"out": str(tmp_path), "seed": 7, "progress": False, "epochs": 3, "lr": 0.5, "batch_size": 8,
                    "subset": 20}


@pytest.mark.parametrize("argv, wrote, says", [
    (["train", "neuron"], "last", "holds the checkpoints written so far (last)"),
    (["train", "neuron"], None, "no checkpoint was written in"),  # (it claimed best/ and last/)
    (["search"], "search.csv", "the settings that finished are in"),
    (["search"], None, "no setting had finished, so"),  # (it pointed at a search.csv that did not exist)
])
def test_ctrl_c_is_exit_code_130_saying_what_remains(monkeypatch, capsys, tmp_path, argv, wrote, says):
    # It was a KeyboardInterrupt traceback.
    def interrupted(**kwargs):
        if wrote == "last":
            (tmp_path / "last").mkdir()
        elif wrote:
            (tmp_path / wrote).write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.load_example(argv[-1]), "run", interrupted)
    code, _, err = run_cli([*argv, "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 130
    assert err.startswith(f"fastconv {argv[0]}: interrupted; ") and says in err and str(tmp_path) in err


@pytest.mark.parametrize("argv", [["train", "neuron"], ["search"]])
def test_fastconv_backend_environment_variable_is_the_default(monkeypatch, capsys, tmp_path, argv):
    # Without --backend the command runs where the library would: FASTCONV_BACKEND (README, "Backends"),
    # not "auto" (which picks cpu or cuda) over it. (--out: the default runs/NAME in the working
    # directory holds a run wherever the README's commands were tried, and is then refused.)
    import fastconv.backend as backend

    if not backend.availability("emu")[0]:
        pytest.skip("emu backend unavailable")
    monkeypatch.setenv("FASTCONV_BACKEND", "emu")
    monkeypatch.setattr(backend, "_global", {})  # the process default, resolved again from the environment
    seen = []
    example = cli.load_example("search" if argv[0] == "search" else argv[1])
    monkeypatch.setattr(example, "run", lambda **kwargs: seen.append(backend.get_backend()))
    argv = [*argv, "--out", str(tmp_path)]
    code, _, _ = run_cli(argv, capsys)
    assert code == 0 and seen == ["emu"]
    code, _, _ = run_cli([*argv, "--backend", "cpu"], capsys)  # an explicit --backend still wins
    assert code == 0 and seen == ["emu", "cpu"]


def test_subset_help_says_it_cuts_every_split(capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    assert "first N rows of each split" in " ".join(out.split())  # validation and test too, not only train


def test_no_command_is_a_usage_error(capsys):
    code, _, _ = run_cli([], capsys)
    assert code == 2


def test_info_reports_the_backends(capsys):
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0
    assert "backend:" in out and "cpu" in out


def test_info_reports_the_data_cache(capsys, tmp_path, monkeypatch):
    from fastconv import data

    monkeypatch.setenv("FASTCONV_DATA_CACHE", str(tmp_path))
    data.load_regression_pair()
    (tmp_path / ".digits-v1-scikit-learn-1.0.npz.0123abcd.tmp.npz").write_bytes(b"a write cut short")
    (tmp_path / "digits-scikit-learn-1.0.npz").write_bytes(b"an earlier format's file, never read")
    out = run_cli(["info"], capsys)[1]
    assert f"data cache: {tmp_path} (1 file;" in out
    monkeypatch.setenv("FASTCONV_DATA_CACHE", "")
    assert "data cache: off" in run_cli(["info"], capsys)[1]
    monkeypatch.setenv("FASTCONV_DATA_CACHE", str(tmp_path / "digits-scikit-learn-1.0.npz"))
    assert "(unusable: Not a directory;" in run_cli(["info"], capsys)[1]


def test_evaluate_says_when_it_compiles(capsys, monkeypatch):
    """fastconv evaluate on a cold Numba cache compiles the forward's kernels: it says so, as fit does."""
    import numba

    from fastconv import runs
    from fastconv.train._compile_notice import NOTICE

    def a_kernel_no_process_has(x):
        return x - 1

    a_kernel_no_process_has.__module__ = "fastconv._cpu.probe_of_evaluate"
    monkeypatch.setattr(runs, "checkpoint_example", lambda path: "regression")
    monkeypatch.setattr(runs, "evaluate_checkpoint", lambda example, path: numba.njit(a_kernel_no_process_has)(1))
    code, _, err = run_cli(["evaluate", "runs/regression/best"], capsys)
    assert code == 0 and err.count(NOTICE) == 1


def test_evaluate_of_a_missing_checkpoint_fails_clearly(capsys, tmp_path):
    code, _, err = run_cli(["evaluate", str(tmp_path / "missing")], capsys)
    assert code == 1
    assert "no checkpoint" in err


def test_evaluate_of_a_run_directory_names_its_checkpoints(capsys, tmp_path):
    checkpoint.save(tmp_path / "run" / "best", nn.Sequential(nn.Linear(2, 1)), epoch=0)
    code, _, err = run_cli(["evaluate", str(tmp_path / "run")], capsys)
    assert code == 1
    assert f"{tmp_path / 'run'} is a run directory, not a checkpoint: evaluate its best checkpoint, " \
           f"{tmp_path / 'run' / 'best'}" in " ".join(err.split())


def test_evaluate_of_a_corrupt_checkpoint_fails_clearly(capsys, tmp_path):
    (tmp_path / "checkpoint.json").write_text("{not json")
    code, _, err = run_cli(["evaluate", str(tmp_path)], capsys)
    assert code == 1
    assert "corrupt" in err


def test_evaluate_needs_a_checkpoint_written_by_train(capsys, tmp_path):
    checkpoint.save(tmp_path / "ckpt", nn.Sequential(nn.Linear(2, 1)), epoch=0)
    code, _, err = run_cli(["evaluate", str(tmp_path / "ckpt")], capsys)
    assert code == 1
    assert "does not record which example" in err


@pytest.mark.parametrize("extra", [[1, 2], {"run": {"example": "neuron"}}, {"run": {"example": "neuron", "data": []}},
                                   {"run": {"example": "neuron", "data": {"colour": "red"}}}])
def test_evaluate_of_an_odd_record_is_one_line(capsys, tmp_path, extra):
    # A list extra (save takes any JSON), a record without data, or with options load_data does not
    # take ended in a traceback (AttributeError, KeyError, TypeError).
    checkpoint.save(tmp_path / "ckpt", nn.Sequential(nn.Linear(1, 1)), epoch=0, extra=extra)
    code, _, err = run_cli(["evaluate", str(tmp_path / "ckpt")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "does not record which example and data" in err or "which example 'neuron' does not take" in err


def test_train_refuses_an_empty_out(capsys, tmp_path, monkeypatch):
    # --out "" (an unset variable) trained into runs/NAME, and with --overwrite replaced the run there.
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "neuron", "--epochs", "1", "--out", "", "--quiet"], capsys)
    assert code == 1 and "--out is an empty path" in err and not (tmp_path / "runs").exists()


def test_resume_refuses_another_examples_run_and_fewer_epochs_than_trained(capsys, tmp_path):
    # fit blamed the lr or the data for another example's run, and --epochs 1 on a run of 2 trained
    # nothing while run.json recorded epochs 1.
    out = str(tmp_path / "run")
    assert run_cli(["train", "neuron", "--epochs", "2", "--out", out, "--quiet"], capsys)[0] == 0
    kept = (tmp_path / "run" / "run.json").read_bytes()
    code, _, err = run_cli(["train", "regression", "--epochs", "3", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 1 and f"{out} holds a run of example 'neuron', not 'regression'" in err
    code, _, err = run_cli(["train", "neuron", "--epochs", "1", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 1 and "has trained 2 epochs, more than --epochs 1: --resume has nothing to train" in err
    assert (tmp_path / "run" / "run.json").read_bytes() == kept
    # An interrupted run has no run.json: last/'s own record says the example (the checks read run.json alone,
    # and let both through to fit); the epochs come from fit's state, with or without a record.
    (tmp_path / "run" / "run.json").unlink()
    code, _, err = run_cli(["train", "regression", "--epochs", "3", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 1 and f"{out} holds a run of example 'neuron', not 'regression'" in err
    strip_run_record(tmp_path / "run" / "last")
    code, _, err = run_cli(["train", "neuron", "--epochs", "1", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 1 and "has trained 2 epochs, more than --epochs 1: --resume has nothing to train" in err


def test_resume_says_when_there_is_nothing_to_continue_or_nothing_to_train(capsys, tmp_path, monkeypatch):
    # A mistyped --out started a new run, and a run that had stopped early or trained all its epochs was
    # "resumed" in 0.0 s, without a word. Neither is refused: a script may always pass --resume, and a run
    # killed after its training, before its report, is finished this way.
    out = str(tmp_path / "run")
    code, _, err = run_cli(["train", "neuron", "--epochs", "2", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 0 and f"--resume: {out} holds no run to continue (no last/): starting a new one" in err
    code, _, err = run_cli(["train", "neuron", "--epochs", "2", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 0 and f"--resume: the run in {out} has trained all 2 epochs: nothing more to train" in err
    code, _, err = run_cli(["train", "neuron", "--epochs", "3", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 0 and "--resume:" not in err
    stopped = {"extra": {"fit": {"state": {"epoch": 3}, "history": {"stopped_early": True}}}}
    monkeypatch.setattr(cli, "_resumed_record", lambda out: ({"example": "neuron"}, stopped))
    monkeypatch.setattr(cli.load_example("neuron"), "run", lambda *, resume=False, **kwargs: {})
    code, _, err = run_cli(["train", "neuron", "--epochs", "9", "--out", out, "--resume", "--quiet"], capsys)
    assert code == 0 and f"--resume: the run in {out} stopped early at epoch 3 (no improvement within its " \
                         "patience): nothing more to train" in err


def test_evaluate_of_a_record_naming_an_unknown_example(capsys, tmp_path):
    checkpoint.save(tmp_path / "ckpt", nn.Sequential(nn.Linear(2, 1)), epoch=0,
                    extra={"run": {"example": "gone", "data": {}}})
    code, _, err = run_cli(["evaluate", str(tmp_path / "ckpt")], capsys)
    assert code == 1
    assert "unknown example 'gone'" in err


def test_bench_without_a_suite_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "benchmarks_dir", lambda: tmp_path / "benchmarks")
    code, _, err = run_cli(["bench"], capsys)
    assert code == 1
    assert "no benchmark suite found" in err


def test_bench_runs_the_suite_with_its_arguments(capsys, monkeypatch, tmp_path):
    (tmp_path / "run.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    monkeypatch.setattr(cli, "benchmarks_dir", lambda: tmp_path)
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    code, _, _ = run_cli(["bench", "--only", "dense"], capsys)
    assert code == 0
    assert len(calls) == 1 and calls[0][1:] == [str(tmp_path / "run.py"), "--only", "dense"]
    json.dumps(calls)  # plain strings


@pytest.mark.skipif(not hasattr(BaseException, "add_note"), reason="exception notes: Python 3.11+")
def test_ctrl_c_in_training_passes_on_fits_note(monkeypatch, capsys, tmp_path):
    # fit's note (where it stopped, what last/ and best/ hold) was dropped with the traceback.
    def interrupted(**kwargs):
        exc = KeyboardInterrupt()
        exc.add_note("fit was interrupted in epoch 2, at step 6 of 20")
        raise exc

    monkeypatch.setattr(cli.load_example("neuron"), "run", interrupted)
    code, _, err = run_cli(["train", "neuron", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 130 and err.splitlines()[-1] == "  fit was interrupted in epoch 2, at step 6 of 20"


@pytest.mark.parametrize("argv", [["search"], ["train", "search"]])
def test_search_refuses_an_out_holding_a_trial_directory_and_keeps_it(capsys, tmp_path, argv):
    # train.search deleted OUT/trial before each setting, whoever had put it there. (`fastconv train search`
    # got train.search's refusal in its keywords: overwrite=True, out_dir.)
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial" / "mine.txt").write_text("a user's file")
    code, _, err = run_cli([*argv, "--out", str(tmp_path), "--quiet", "--epochs", "1"], capsys)
    assert code == 1 and "holds an earlier search (trial;" in err
    assert "--overwrite replaces it, or give another --out" in err and "=True" not in err and "out_dir" not in err
    assert (tmp_path / "trial" / "mine.txt").read_text() == "a user's file"


@pytest.mark.parametrize("name", ["last", "report.json", "run.json", "roc.png", "history.json"])
def test_search_refuses_an_out_holding_a_training_runs_files(capsys, tmp_path, name):
    # The search example writes report.json, run.json and roc.png beside train.search's files: a training
    # run's were replaced unasked (fastconv search checked only best/, the tables and trial/).
    (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("kept")
    code, _, err = run_cli(["search", "--out", str(tmp_path), "--quiet", "--epochs", "1"], capsys)
    assert code == 1 and f"holds an earlier run ({name}): --overwrite replaces it, or give another --out" in err
    assert sorted(os.listdir(tmp_path)) == [name]


def test_an_earlier_run_refused_for_an_example_that_cannot_resume_offers_no_resume(capsys, tmp_path):
    # `fastconv train search` into an earlier search's --out said "--resume continues it", and --resume then
    # said "example 'search' cannot resume".
    (tmp_path / "best").mkdir()
    code, _, err = run_cli(["train", "search", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 1 and f"{tmp_path} holds an earlier run (best): --overwrite replaces it, or give another --out" in err
    assert "--resume" not in err
    code, _, err = run_cli(["train", "search", "--out", str(tmp_path), "--quiet", "--resume"], capsys)
    assert code == 1 and "example 'search' cannot resume: it starts afresh each time (give --overwrite" in err


@pytest.mark.parametrize("name", ["report.json", "history.json", "loss.png", "fit.png", "run.json"])
def test_train_refuses_an_out_holding_a_file_it_would_replace(capsys, tmp_path, name):
    # Only best/ and last/ were looked for: a user's report.json, history.json or plots in --out were
    # replaced without a word.
    (tmp_path / name).write_text("a user's file")
    code, _, err = run_cli(["train", "regression", "--out", str(tmp_path), "--quiet", "--epochs", "1"], capsys)
    assert code == 1 and f"{tmp_path} holds an earlier run ({name}): --overwrite replaces it" in err
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_text() == "a user's file"
    code, _, _ = run_cli(["train", "regression", "--out", str(tmp_path), "--quiet", "--epochs", "1", "--overwrite"],
                         capsys)
    assert code == 0 and (tmp_path / "run.json").exists()


def test_resume_and_overwrite_together_are_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "neuron", "--out", str(tmp_path), "--resume", "--overwrite"])
    assert exit_.value.code == 2 and "not allowed with argument --resume" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["benchmarks/bench_first_call.py", "tools/fit_exp_polynomial.py",
                                    "tools/tumour_split_baselines.py"])
def test_scripts_the_docs_name_answer_help_without_running(script):
    """--help prints the usage and runs nothing (bench_first_call.py ran its minute of compiling, the
    exp fit its linear program)."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / script), "--help"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:") and "import + first call" not in proc.stdout
    assert "coefficients" not in proc.stdout


@pytest.mark.parametrize("name", cli.known_examples())
def test_an_example_scripts_help_is_its_own(name, capsys):
    """`python examples/NAME.py --help` showed `fastconv train`'s usage, with an EXAMPLE to give that
    the script gives itself (and then refused); search's script runs `fastconv search`."""
    with pytest.raises(SystemExit) as exit_:
        cli.load_example(name).main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith(f"usage: {name}.py ") and "EXAMPLE" not in out
    assert ("--lrs" in out) == (name == "search") and ("--resume" in out) == (name != "search")


def test_an_example_script_run_as_a_script_shows_its_usage():
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "examples/neuron.py"), "--help"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: neuron.py ") and "EXAMPLE" not in proc.stdout
    assert "runs/neuron" in proc.stdout  # --out's default


def test_tumour_baselines_help_says_what_it_prints():
    """Its description is the docstring's first paragraph, not the first line cut mid-sentence."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "tools/tumour_split_baselines.py"), "--help"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(root)))
    assert "validation and test AUC of each" in " ".join(proc.stdout.split())


@pytest.mark.parametrize("argv", [["info"], ["bench", "--help"]])
def test_a_closed_stdout_exits_quietly_with_status_1(argv, tmp_path):
    """`fastconv info | head -1` printed "fastconv info: error: [Errno 32] Broken pipe": Python's
    documentation's way for a reader that has gone is exit status 1 and not a word. (--help: argparse
    ignores a failed write and exits 0.)"""
    root = Path(__file__).resolve().parent.parent
    bench = tmp_path / "benchmarks"  # (for bench: a suite that prints its arguments)
    bench.mkdir()
    (bench / "run.py").write_text("import sys\nprint(sys.argv)\n")
    read, write = os.pipe()
    os.close(read)  # every write to stdout fails (EPIPE)
    try:
        proc = subprocess.run([sys.executable, "-c", f"import sys; from fastconv import cli; cli.benchmarks_dir = "
                               f"lambda: cli.Path({str(bench)!r}); sys.exit(cli.main({argv!r}))"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(root)))
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (1, "")


def test_every_option_of_every_command_says_what_it_does():
    """`fastconv COMMAND --help` explains each option (search's --seed and --quiet had no help)."""
    import argparse

    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subparsers.choices.items():
        for action in parser._actions:
            if action.option_strings and action.option_strings != ["-h", "--help"]:
                assert action.help, f"fastconv {name} {action.option_strings[0]} has no help"


# An example of a few steps whose patience grows with its epochs, as a user's own example's may: its run
# stops early at epoch 2 of 2 (lr 0: no evaluation improves on the first), and a --resume with more epochs
# has more patience.
TINY_EXAMPLE = """
import numpy as np
from fastconv import losses, nn, optim, train

NAME = "tiny"
DEFAULTS = {"epochs": 2, "batch_size": 10}


def run(out, epochs=None, lr=None, batch_size=None, seed=0, subset=None, verbose=True, progress=None, resume=False,
        overwrite=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 2, seed=0))
    epochs = epochs or DEFAULTS["epochs"]
    return train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.0), (x, y), (x, y),
                     epochs=epochs, batch_size=batch_size or 10, patience=1 if epochs <= 2 else 5,
                     checkpoint_dir=out, resume=resume, overwrite=overwrite, progress=False)
"""

KEYWORD_WORDING = ("=True", "fit(", "checkpoint_dir", "out_dir", "load_into", "this call")


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """`fastconv train tiny`'s argv, its --out in tmp_path/run."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "tiny.py").write_text(TINY_EXAMPLE)
    monkeypatch.setenv("FASTCONV_EXAMPLES_DIR", str(tmp_path / "examples"))
    monkeypatch.delitem(sys.modules, "fastconv_examples.tiny", raising=False)
    yield ["train", "tiny", "--out", str(tmp_path / "run"), "--quiet", "--backend", "cpu"]
    sys.modules.pop("fastconv_examples.tiny", None)


def test_fits_early_stopping_warning_names_the_flags_under_the_command(tiny, capsys):
    # It told a `fastconv train` user that resume=True trains no further, and to fit afresh in another
    # checkpoint_dir after checkpoint.load_into.
    assert run_cli(tiny, capsys)[0] == 0
    with pytest.warns(RuntimeWarning, match="stopped early") as warned:
        assert run_cli([*tiny, "--epochs", "5", "--resume"], capsys)[0] == 0
    message, = [str(w.message) for w in warned]
    assert "so --resume trains it no further, whatever patience (5) this command gives; --overwrite (or another " \
           "--out) trains a new run instead" in message
    assert not any(words in message for words in KEYWORD_WORDING)
    assert train._words._say("resume") == "resume=True"  # the library's words again after the command


def test_warnings_under_the_command_are_lines_of_its_own(tiny, capsys):
    # They printed as Python's default: ".../fastconv/train.py:457: RuntimeWarning: fit: the run ...", the
    # library's file and line, beside the command's own "fastconv train: error: ..." lines.
    assert run_cli(tiny, capsys)[0] == 0
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "fastconv.cli", *tiny, "--epochs", "5", "--resume"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "stopped early" in line]
    assert len(warned) == 1 and warned[0].startswith("fastconv train: warning: fit: the run in "), proc.stderr
    assert "RuntimeWarning" not in proc.stderr and not re.search(r"\.py:\d+: ", proc.stderr)


def test_fits_note_on_ctrl_c_names_the_flags_under_the_command(tiny, capsys, monkeypatch, tmp_path):
    # It said "fit(..., resume=True) continues from there" to a `fastconv train` user.
    real_step, steps = optim.SGD.step, []

    def dying_step(self):  # in epoch 2, after epoch 1's checkpoints (4 steps)
        if len(steps) == 6:
            raise KeyboardInterrupt
        steps.append(1)
        real_step(self)

    monkeypatch.setattr(optim.SGD, "step", dying_step)
    code, _, err = run_cli(tiny, capsys)
    assert code == 130
    assert f"{tmp_path / 'run' / 'last'} holds the run after step 4 (the same command with --resume continues " \
           "from there)" in err
    assert not any(words in err for words in KEYWORD_WORDING)


def test_fits_refusal_to_resume_names_the_flags_under_the_command(tiny, capsys):
    # fit's ResumeError said "start afresh with overwrite=True" (and "this call") above the command's own line.
    assert run_cli(tiny, capsys)[0] == 0
    code, _, err = run_cli([*tiny, "--batch-size", "8", "--resume"], capsys)
    assert code == 1
    assert "this command has batch_size 8 on 40; resume with the same ones (or start afresh with --overwrite)" in err
    assert not any(words in err for words in KEYWORD_WORDING)
    with pytest.raises(train.ResumeError, match=r"this call has batch_size 8 .* start afresh with overwrite=True\)$"):
        cli.load_example("tiny").run(out=tiny[3], batch_size=8, resume=True)  # the library's own words
