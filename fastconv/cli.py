"""The `fastconv` command (also `python -m fastconv`).

    fastconv train EXAMPLE [--epochs N --lr LR --batch-size B --backend NAME --seed S --out DIR --subset N --quiet
                            --resume --overwrite]
    fastconv evaluate CHECKPOINT [--backend NAME]
    fastconv search [--epochs N --lrs ... --widths ... --batch-sizes ... --backend NAME --seed S --out DIR --quiet
                     --overwrite]
    fastconv info
    fastconv bench [ARGS...]

The examples are the scripts in examples/ (beside the package in a source checkout; elsewhere set
FASTCONV_EXAMPLES_DIR). Each defines NAME, DEFAULTS, run(...), load_data(...) and evaluate(...)
(see fastconv.runs). `python examples/NAME.py ARGS` is `fastconv train NAME ARGS` (search's:
`fastconv search ARGS`) with the script's own usage (example_main).
Exit codes: 0 success, 1 a failure while running, 2 a usage error (unknown example, bad option),
130 interrupted (Ctrl-C: a line saying what was written so far, no traceback); 1 with no message
when the reader of stdout has gone (`fastconv info | head -1`).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import os
import subprocess
import sys
import warnings
from pathlib import Path

BACKENDS = ("auto", "cpu", "emu", "cuda")
BACKEND_HELP = "where the ops run (default: $FASTCONV_BACKEND if set, else auto)"


# ------------------------------------------------------------------------------------------
# the examples


def examples_dir() -> Path:
    """Where the example scripts live: $FASTCONV_EXAMPLES_DIR, else examples/ beside the package."""
    env = os.environ.get("FASTCONV_EXAMPLES_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "examples"


def known_examples() -> list[str]:
    folder = examples_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def load_example(name: str):
    """The example's module, imported from examples/NAME.py; ValueError naming the known ones."""
    known = known_examples()
    if name not in known:
        where = examples_dir()
        if not known:
            raise ValueError(f"no examples found in {where} (a source checkout has them in examples/; "
                             "elsewhere set FASTCONV_EXAMPLES_DIR)")
        raise ValueError(f"unknown example {name!r}; known examples: {', '.join(known)}")
    module_name = f"fastconv_examples.{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, examples_dir() / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


# ------------------------------------------------------------------------------------------
# option types: a bad value is an argparse error (exit code 2) that names the option


def _int_at_least(low, what):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value
    return parse


positive_int = _int_at_least(1, "positive")
non_negative_int = _int_at_least(0, "non-negative")


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _list_of(item_type):
    def parse(text):
        items = text.split(",")
        if not all(t.strip() for t in items):  # "0.1,,0.2" is a typo, not the list 0.1, 0.2
            raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty items, got {text!r}")
        return [item_type(t) for t in items]
    parse.__name__ = f"list of {item_type.__name__}"
    return parse


# ------------------------------------------------------------------------------------------
# commands


def _use_backend(name):
    """The backend block for --backend NAME; without --backend, the process default (FASTCONV_BACKEND,
    else auto), as for the library: use_backend("auto") would override FASTCONV_BACKEND."""
    import fastconv

    return contextlib.nullcontext() if name is None else fastconv.use_backend(name)


def _out(args) -> str:
    """The output directory of `train` and `search`."""
    if args.out is not None and not args.out:  # (--out "$UNSET" took runs/NAME: with --overwrite, replaced it)
        raise ValueError("--out is an empty path: give a directory (without --out: runs/NAME)")
    return args.out or os.path.join("runs", args.example if args.command == "train" else "search")


def _keep_earlier_run(out, holds, ways):
    """ValueError when `out` holds an earlier run's files (any of `holds`): a new run would replace
    its best model at the first evaluation, and its report, history and plots (or a user's own files of
    those names) at the end, and nothing a user saved may be lost by accident."""
    held = [name for name in holds if os.path.exists(os.path.join(out, name))]
    if held:
        raise ValueError(f"{out} holds an earlier run ({', '.join(held)}): {ways}, or give another --out")


def _check_resumed_lr(example, out, lr):
    """ValueError where --resume would train with another learning rate than this call's (--lr, else the
    example's default): fit continues with the optimizer's hyperparameters saved in OUT/last (and warns),
    while the header and run.json would name this call's lr, one that was never used."""
    last = os.path.join(out, "last")
    if "lr" not in getattr(example, "DEFAULTS", {}) or not os.path.isdir(last):
        return
    from . import checkpoint

    if not os.path.exists(os.path.join(last, checkpoint.INDEX)):
        return  # (nothing to resume: fit starts afresh, with this call's lr)
    info = checkpoint.read_info(last)
    saved = ((info.get("optimizer") or {}).get("hyperparameters") or {}).get("lr")
    given = example.DEFAULTS["lr"] if lr is None else lr
    if info.get("scheduler") is None and saved is not None and saved != given:  # (a scheduler's lr is its own)
        raise ValueError(f"{out} holds a run trained with lr {saved!r}; --resume continues it with that lr (the "
                         f"optimizer's state is saved in {last}), not this call's lr {given!r}"
                         + (" (the example's default)" if lr is None else "") + f": give --lr {saved!r}")


def _check_resumed_run(out, example, epochs):
    """ValueError where --resume would continue a run of another example (fit then blamed the lr, the
    batch size or the data) or one already trained past this call's epochs (it trained nothing, and
    run.json then named those epochs for the longer run)."""
    record, info = _resumed_record(out)
    if record is not None and record.get("example") != example.NAME:
        raise ValueError(f"{out} holds a run of example {record.get('example')!r}, not {example.NAME!r}: --resume "
                         "continues a run of the same example")
    try:
        state = info["extra"]["fit"]["state"]
    except (TypeError, KeyError):
        return  # (fit says what is wrong with it)
    epochs = example.DEFAULTS.get("epochs") if epochs is None else epochs
    if not (isinstance(state, dict) and isinstance(state.get("epoch"), int) and epochs is not None):
        return
    if state["epoch"] > epochs:
        raise ValueError(f"{out} holds a run that has trained {state['epoch']} epochs, more than --epochs {epochs}: "
                         f"--resume has nothing to train; give --epochs above {state['epoch']} to train it further")
    # Not refused: a run killed after its training, before its report, is finished this way.
    history = info["extra"]["fit"].get("history")
    # (a run with an example's record: fit warns itself where this call's patience differs, which a command
    # cannot make it; without a record, as a hand-made example's, fit's warning is the one word)
    if record is not None and isinstance(history, dict) and history.get("stopped_early") is True:
        print(f"--resume: the run in {out} stopped early at epoch {state['epoch']} (no improvement within its "
              "patience): nothing more to train; its best checkpoint is evaluated", file=sys.stderr)
    elif state["epoch"] == epochs:
        print(f"--resume: the run in {out} has trained all {epochs} epochs: nothing more to train (give --epochs "
              "above it to train further); its best checkpoint is evaluated", file=sys.stderr)


def _check_resumed_data(out, data):
    """ValueError where --resume is given another split (--seed, --subset) than the run in `out` was trained
    on, as its record says: fit would refuse it too (by the training rows' digest), but only after the
    data were loaded and the header printed."""
    record, _ = _resumed_record(out)
    if record is None or not isinstance(record.get("data"), dict):
        return
    saved = {k: record["data"][k] for k in data if k in record["data"]}  # (an example's own may record less)
    if saved != {k: data[k] for k in saved}:
        flags = " and ".join(f"--{k} {v}" if v is not None else f"no --{k}" for k, v in saved.items())
        raise ValueError(f"{out} holds a run trained on another split, with {flags}; --resume continues it on "
                         f"that split: give {flags}")


def _resumed_record(out):
    """(the run record, the checkpoint info) of OUT/last, the run --resume continues: the record from its
    JSON (every checkpoint of `fastconv train` holds it, an interrupted run's too), else from a run.json that
    describes it; None for what cannot be read (fit says what is wrong with it)."""
    from . import checkpoint, runs

    last = os.path.join(out, "last")
    if not os.path.exists(os.path.join(last, checkpoint.INDEX)):
        return None, None
    try:
        info = checkpoint.read_info(last)
    except (OSError, ValueError, checkpoint.CheckpointError):
        return None, None
    try:
        return runs._record(last), info
    except (OSError, ValueError, KeyError, TypeError, checkpoint.CheckpointError):
        return None, info


def _train(args) -> int:
    example = load_example(args.example)
    out = _out(args)
    resumable = "resume" in inspect.signature(example.run).parameters
    from .checkpoint import INDEX
    from .runs import RUN_FILES, earlier_run_files

    if args.resume and not resumable:
        raise ValueError(f"example {args.example!r} cannot resume: it starts afresh each time (give --overwrite or "
                         "another --out)")
    can_resume = resumable and os.path.exists(os.path.join(out, "last", INDEX))
    if not (args.overwrite or (args.resume and can_resume)):  # (--resume without a last/ would start afresh)
        ways = "--resume continues it, --overwrite replaces it" if can_resume else "--overwrite replaces it"
        _keep_earlier_run(out, RUN_FILES, ways)
    if args.resume and not can_resume:
        # (a mistyped --out trained from scratch without a word; a run that always passes --resume still starts)
        print(f"--resume: {out} holds no run to continue (no last/): starting a new one", file=sys.stderr)
    options = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "subset") if getattr(args, k) is not None}
    if args.overwrite and "overwrite" in inspect.signature(example.run).parameters:  # (fit refuses such an out too)
        options["overwrite"] = True
    with _resume_refusals_name_the_flags(args.resume, out), _flags_in_messages():
        if args.resume:
            options["resume"] = True
            _check_resumed_run(out, example, args.epochs)
            _check_resumed_data(out, {"seed": args.seed, "subset": args.subset})
            _check_resumed_lr(example, out, args.lr)
        earlier = earlier_run_files(out) if args.overwrite else {}
        with _use_backend(args.backend):
            result = example.run(out=out, seed=args.seed, progress=not args.quiet, **options)
    _remove_left_over(out, earlier, result)
    return 0


def _remove_left_over(out, earlier, result):
    """--overwrite: what the replaced run left in `out` and this one did not write again goes (said)."""
    from .runs import remove_left_over

    files = result.get("files") if isinstance(result, dict) else None
    if earlier and isinstance(files, dict):
        removed = remove_left_over(out, earlier, [str(p) for p in files.values()])
        if removed:
            print(f"removed what the replaced run left in {out}/: {', '.join(removed)}")


def _flags_in_messages():
    """fit's and search's messages (errors, warnings, the note on Ctrl-C) inside name this command's flags
    (--resume, --overwrite, --out), not the keywords the examples pass them on as."""
    from .train._words import _command_line_words

    return _command_line_words()


@contextlib.contextmanager
def _resume_refusals_name_the_flags(resume, out):
    """With --resume, fit's refusal to continue the run in `out` gets a line naming the command line's ways
    out (its message says why, and may not say what to do: a last/ that cannot be loaded)."""
    from .checkpoint import CheckpointError
    from .train import ResumeError

    try:
        yield
    except (ResumeError, CheckpointError) as exc:
        if not resume:
            raise
        raise ValueError(f"{exc}\n  --resume cannot continue the run in {out}: --overwrite starts afresh "
                         "(replacing it), or give another --out") from exc


def _evaluate(args) -> int:
    from . import runs
    from .train._compile_notice import CompileNotice

    path = Path(args.checkpoint)
    with _use_backend(args.backend), CompileNotice(True):  # (a cold cache: the forward's kernels compile)
        name = runs.checkpoint_example(path)
        runs.evaluate_checkpoint(load_example(name), path)
    return 0


def _search(args) -> int:
    from .runs import RUN_FILES, earlier_run_files
    from .train._search import _keep_earlier_search

    example = load_example("search")
    out = _out(args)
    grid = {k: getattr(args, k) for k in ("lrs", "widths", "batch_sizes") if getattr(args, k) is not None}
    with _flags_in_messages():
        if not args.overwrite:  # now: train.search refuses it only after loading the data and printing the header
            # An earlier search's out is refused as such; any other run's files too (the search example writes
            # report.json, run.json and roc.png beside train.search's best/ and tables: a training run's were
            # replaced unasked, or refused as "an earlier search")
            if any(os.path.exists(os.path.join(out, name)) for name in ("search.csv", "search.json", "trial")):
                _keep_earlier_search(out)
            _keep_earlier_run(out, RUN_FILES, "--overwrite replaces it")
        earlier = earlier_run_files(out) if args.overwrite else {}
        with _use_backend(args.backend):
            result = example.run(out=out, seed=args.seed, epochs=args.epochs, progress=not args.quiet,
                                 overwrite=args.overwrite, **grid)
    _remove_left_over(out, earlier, result)
    return 0


def _info(args) -> int:
    from . import info

    info()
    return 0


def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks"


def _bench(args) -> int:
    folder = benchmarks_dir()
    scripts = [folder / "run.py"] if (folder / "run.py").exists() else sorted(
        p for p in folder.glob("*.py") if not p.stem.startswith("_")) if folder.is_dir() else []
    if not scripts:
        print(f"fastconv bench: no benchmark suite found in {folder} (it ships with the source checkout "
              "of fastconv, not with an installed package); nothing was run", file=sys.stderr)
        return 1
    status = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        status = subprocess.call([sys.executable, str(script), *args.bench_args]) or status
    return status


# ------------------------------------------------------------------------------------------


def _train_options(parser, example="EXAMPLE"):
    """The options of `fastconv train EXAMPLE` (and of an example's script)."""
    parser.add_argument("--epochs", type=positive_int, help="epochs (default: the example's)")
    parser.add_argument("--lr", type=positive_float, help="learning rate (default: the example's)")
    parser.add_argument("--batch-size", type=positive_int, help="batch size (default: the example's)")
    parser.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP)
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the split, the initialization and the batches")
    parser.add_argument("--out", metavar="DIR", help=f"output directory (default: runs/{example})")
    parser.add_argument("--subset", type=positive_int,
                        help="use only the first N rows of each split: train, validation and test (quick checks)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    earlier_run = parser.add_mutually_exclusive_group()  # (what to do with a run --out holds)
    earlier_run.add_argument("--resume", action="store_true",
                             help="continue the run in --out from its last checkpoint (same seed, subset, batch "
                                  "size and lr; a larger --epochs trains on)")
    earlier_run.add_argument("--overwrite", action="store_true",
                             help="replace the run --out holds (without it, or --resume, such an --out is refused)")
    parser.set_defaults(command="train", run=_train)


def _search_options(parser):
    """The options of `fastconv search` (and of examples/search.py)."""
    parser.add_argument("--epochs", type=positive_int, help="epochs per setting (default: the search example's)")
    parser.add_argument("--lrs", type=_list_of(positive_float), metavar="LR,LR,...",
                        help="learning rates (default: the search example's)")
    parser.add_argument("--widths", type=_list_of(positive_int), metavar="W,W,...",
                        help="hidden widths (default: the search example's)")
    parser.add_argument("--batch-sizes", type=_list_of(positive_int), metavar="B,B,...",
                        help="batch sizes (default: the search example's)")
    parser.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP)
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the split, the initializations and the batches")
    parser.add_argument("--out", metavar="DIR", help="output directory (default: runs/search)")
    parser.add_argument("--quiet", action="store_true",
                        help="no line per setting as it finishes (the table and the report still print)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the search --out holds (without it such an --out is refused)")
    parser.set_defaults(command="search", run=_search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv: kernels, training and evaluation")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    known = ", ".join(known_examples()) or "none found"
    train = commands.add_parser("train", help=f"train an example ({known})",
                                description=f"Train one of the examples: {known}. Writes to --out the best "
                                            "checkpoint (best/), the last (last/, for --resume), history.json, "
                                            "report.json, run.json and PNG plots (search: the table instead of "
                                            "the history and no last/, as `fastconv search`).")
    train.add_argument("example", metavar="EXAMPLE", help=f"one of: {known}")
    _train_options(train)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved checkpoint on its example's test data")
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by `fastconv train`")
    evaluate.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP)
    evaluate.set_defaults(run=_evaluate)

    _search_options(commands.add_parser(
        "search", help="hyperparameter search on the two-layer tumour network",
        description="Grid search over learning rate x hidden width x batch size for the two-layer tumour network "
                    "(examples/search.py), ranked on validation loss; only the best model is evaluated on the test "
                    "data. Writes best/, search.csv, search.json, report.json, roc.png and run.json to --out."))

    commands.add_parser("info", help="version, extension modules, backend and device").set_defaults(run=_info)

    bench = commands.add_parser("bench", help="run the benchmark suite in benchmarks/ (source checkout)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="ARGS",
                       help="passed on to benchmarks/run.py (e.g. --device cuda --only dense,conv)")
    bench.set_defaults(run=_bench)
    return parser


def example_parser(name) -> argparse.ArgumentParser:
    """The parser of `python examples/NAME.py`: `fastconv train NAME`'s options (search: `fastconv
    search`'s) under the script's own name, the example already given."""
    command = "fastconv search" if name == "search" else f"fastconv train {name}"
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=f"The {name} example: the same as `{command}`.")
    if name == "search":
        _search_options(parser)
    else:
        _train_options(parser, name)
        parser.set_defaults(example=name)
    return parser


def _what_remains(args) -> str:
    """What an interrupted command leaves, for its message."""
    if args.command == "train":
        out = _out(args)
        written = [name for name in ("best", "last") if os.path.isdir(os.path.join(out, name))]
        if not written:
            return f"; no checkpoint was written in {out} yet"
        return (f"; {out} holds the checkpoints written so far ({', '.join(written)}), not a finished run (no "
                "report)" + ("; the same command with --resume continues it" if "last" in written else ""))
    if args.command == "search":
        out = _out(args)
        if not os.path.exists(os.path.join(out, "search.csv")):  # (written after each setting's training)
            return f"; no setting had finished, so {out} holds no table and no best model"
        return f"; the settings that finished are in {out}/search.csv, the best of their models in {out}/best"
    return ""


def main(argv=None) -> int:
    return _unless_stdout_closes(_main, argv)


def _main(argv) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the suite (its --help too)
        return _run(argparse.Namespace(command="bench", bench_args=argv[1:], run=_bench), "fastconv bench")
    args = parser.parse_args(argv)
    if args.command == "train" and args.example not in known_examples():
        try:
            load_example(args.example)
        except ValueError as exc:
            parser.error(str(exc))  # exit code 2
    return _run(args, f"fastconv {args.command}")


def example_main(name, argv=None) -> int:
    """What `python examples/NAME.py ARGS` runs: `fastconv train NAME ARGS` (search: `fastconv search
    ARGS`), its --help and usage errors under the script's name."""
    return _unless_stdout_closes(lambda argv: _run(example_parser(name).parse_args(argv), f"{name}.py"), argv)


def _unless_stdout_closes(command, argv) -> int:
    """command(argv)'s exit code, or 1, with no message, when the reader of stdout has gone (`fastconv
    info | head -1`): Python's documentation's way (the signal module's "Note on SIGPIPE"), stdout
    pointed at devnull so that the flush at exit does not fail again. A run stops there; whatever it
    saved is whole (every file is written to a temp file and renamed)."""
    try:
        try:
            return command(argv)
        finally:  # (a SystemExit's too, argparse's --help): here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(args, prog) -> int:
    """The command's exit code: a failure is one line on stderr (1), Ctrl-C what remains (130)."""
    try:
        with _warnings_as_lines(prog):
            return args.run(args)
    except BrokenPipeError:  # (an OSError) stdout closed: _unless_stdout_closes
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        if os.environ.get("FASTCONV_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C: what is on disk, not a traceback
        if os.environ.get("FASTCONV_DEBUG"):
            raise
        print(f"{prog}: interrupted{_what_remains(args)}", file=sys.stderr)
        for note in getattr(exc, "__notes__", []):  # fit's: where it stopped, what last/ and best/ hold
            print(f"  {note}", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _warnings_as_lines(prog):
    """Inside, a warning that Python prints shows as `prog: warning: message`, as the command's errors do,
    not as the library's file, line and category. (Its formatting only: filters, and recording by
    warnings.catch_warnings(record=True) as pytest does, are as they were.)"""
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"{prog}: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
