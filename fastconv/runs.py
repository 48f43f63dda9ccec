"""What `fastconv train EXAMPLE --out DIR` leaves in DIR, and the steps every example shares.

    DIR/best/          the best checkpoint (fastconv.checkpoint; written by train.fit whenever the
                       validation metric improved). Its JSON's "extra" also records the run (run_record):
                       {"run": {"example": name, "data": loader arguments, "split_sha256": ..., "options": ...}}
    DIR/last/          the checkpoint after the last epoch (optimizer state included: resume), with the
                       same record (so an interrupted run's checkpoints say what they are too)
    DIR/run.json       the same run record, plus backend, wall time, the files written and the
                       SHA-256 of the weights of best/ and last/ (the checkpoints it describes)
    DIR/history.json   train.History.to_dict(): one record per validation (losses, metric, lr)
    DIR/report.json    the test report (fastconv.evaluate) of the best checkpoint
    DIR/*.png          loss curves; ROC with the operating points (binary); confusion matrix (digits)

The .json files are strict JSON (evaluate.json_text): a number that is not finite (a diverged
evaluation's loss, the AUC of a class absent from the test set) is null, as jq and JavaScript need.

`fastconv evaluate DIR/best` reloads the checkpoint, finds the example and its data in the
record, and prints the same report from the same code path (evaluate_checkpoint), so its numbers
equal those printed at the end of training.

An example module provides NAME, DEFAULTS, run(out, epochs=None, lr=None, batch_size=None, seed=0,
subset=None, verbose=True, progress=None, resume=False, overwrite=False) (what `fastconv train NAME`
calls: it trains with train.fit(..., checkpoint_dir=out, resume=resume, overwrite=overwrite,
checkpoint_extra={RECORD_KEY: run_record(...)}), which refuses an out holding an earlier run unless one
of them is given, and ends with finish(); before
training it checks that the data (a --subset) holds what its report needs (check_subset); an
example whose run takes no resume cannot be resumed, and `--resume` says so), load_data(seed=0,
subset=None) -> data.Dataset, evaluate(model, dataset) -> report dict, and optionally plots(out,
model, dataset, report) -> {name: path} and summary(report) -> a line of text printed after the
report.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import backend as _backend
from . import checkpoint as _checkpoint
from .evaluate import format_report, history_dict, json_text, jsonable
from .plots import plot_history

__all__ = ["settings", "run_record", "data_fingerprint", "take_subset", "check_subset", "describe", "finish",
           "tag_checkpoint", "evaluate_saved", "evaluate_checkpoint", "checkpoint_example", "save_json",
           "weights_sha256", "earlier_run_files", "remove_left_over"]

RECORD_KEY = "run"
# What `fastconv train` writes in --out, for any example: a directory holding one of them is an earlier
# run's (or holds a file of the user's that the run would replace), refused without --resume/--overwrite.
RUN_FILES = ("best", "last", "history.json", "report.json", "run.json", "loss.png", "roc.png", "confusion.png",
             "fit.png", "search.csv", "search.json")


def data_fingerprint(dataset) -> str:
    """SHA-256 of what tells one split of an example's data from another: every part's labels, in order (as
    int64 or float64 values, whatever their dtype on this host), and every array's shape. A checkpoint's
    record keeps it, so that a checkpoint is never evaluated on another split than it was trained on (a
    release that changed the split or the bundled data: the test part could hold its training rows). Not
    the inputs' values: standardized, their last bits may differ between hosts (NumPy's sums), and a split
    moves the labels with its rows."""
    digest = hashlib.sha256()
    for part in ("train", "val", "test"):
        x, y = getattr(dataset, f"x_{part}"), np.asarray(getattr(dataset, f"y_{part}"))
        digest.update(repr((part, tuple(np.shape(x)), y.shape, y.dtype.kind)).encode())
        if y.dtype.kind in "biu":
            digest.update(y.astype("<i8").tobytes())
        elif y.dtype.kind == "f":
            digest.update(y.astype("<f8").tobytes())
        else:  # (strings, objects)
            digest.update(repr(y.tolist()).encode())
    return digest.hexdigest()


def run_record(name, dataset, data, options, **more) -> dict:
    """What a run is: {"example": name, "data": the arguments of its load_data, "split_sha256":
    data_fingerprint(dataset), "options": its training settings, **more}, where dataset is what
    load_data(**data) gave (evaluate_saved loads it again and compares). Examples give it to train.fit as
    checkpoint_extra={RECORD_KEY: record}, so that every checkpoint of the run holds it (an interrupted
    run's too), and to finish."""
    return {"example": name, "data": dict(data), "split_sha256": data_fingerprint(dataset), "options": options,
            **more}


def earlier_run_files(out) -> dict:
    """{name: its identity and modification time} of the RUN_FILES that `out` holds (an earlier run's)."""
    held = {}
    for name in RUN_FILES:
        try:
            st = os.lstat(os.path.join(out, name))
        except OSError:
            continue
        held[name] = (st.st_dev, st.st_ino, st.st_mtime_ns)
    return held


def remove_left_over(out, earlier, files) -> list:
    """After a run that replaced the one in `out` (--overwrite): removes what that run left (`earlier`, from
    earlier_run_files before the new run) and the new run did not write again, e.g. another example's
    fit.png, a search's table beside a training run, a training run's last/ beside a search's best/: they
    would be taken for the new run's. An entry goes only if the new run's `files` (the paths it returns)
    do not name it, however spelled, and it is the same file, unchanged since, and a directory only if it
    is a checkpoint. Returns the names removed."""
    written = set()
    for path in files:
        for rel in (os.path.relpath(path, out), os.path.relpath(os.path.realpath(path), os.path.realpath(out))):
            parts = Path(rel).parts
            if parts and parts[0] not in (".", ".."):
                written.add(parts[0])
    removed = []
    for name, identity in earlier.items():
        path = os.path.join(out, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if name in written or (st.st_dev, st.st_ino, st.st_mtime_ns) != identity:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            if not os.path.exists(os.path.join(path, _checkpoint.INDEX)):
                continue  # (not a checkpoint: not ours to remove)
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(name)
    return removed


def take_subset(dataset, n):
    """The first n rows of each split (quick checks); the dataset itself when n is None."""
    if n is None:
        return dataset
    return replace(dataset, **{f"{part}_{split}": getattr(dataset, f"{part}_{split}")[:n]
                               for part in ("x", "y") for split in ("train", "val", "test")})


def check_subset(subset, check, *labels):
    """check(*labels) (what the example's report needs of the data, e.g. evaluate.check_binary_labels),
    run before training: a --subset too small for the report is refused before anything is written, not
    after training has left best/, last/ and history.json without run.json and report.json."""
    try:
        check(*labels)
    except ValueError as exc:
        if subset is None:
            raise
        raise ValueError(f"--subset {subset} keeps too few rows for the test report: {exc}; give a larger "
                         "--subset") from None


def settings(defaults, **given) -> dict:
    """The example's defaults, overridden by the settings given (those not None)."""
    return {**defaults, **{k: v for k, v in given.items() if v is not None}}


def count_parameters(model) -> int:
    return int(sum(int(np.prod(p.shape)) for p in model.parameters()))


def describe(name, dataset, model, *, seed, options) -> str:
    """The header a run prints: what is trained on what, where."""
    sizes = f"{len(dataset.x_train)} train / {len(dataset.x_val)} val / {len(dataset.x_test)} test"
    settings = ", ".join(f"{k} {v}" for k, v in options.items())
    return (f"fastconv train {name}: backend {_backend.get_backend()}, seed {seed}, {settings}\n"
            f"data:  {dataset.description.split(':')[0]}: {sizes}\n"
            f"model: {count_parameters(model):,} parameters: " + " -> ".join(_layer_names(model)))


_DEFAULT_ARGS = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1, "bias": True,
                 "dtype": "float32"}


def _layer_names(model):
    """Short layer descriptions, e.g. "Conv2d(1, 16, [3, 3], padding=[1, 1])"."""
    names = []
    for layer in (list(model) if hasattr(model, "__iter__") else [model]):
        cfg = layer.config()
        kind = cfg.pop("type")
        positional = [cfg.pop(k) for k in ("in_features", "out_features", "in_channels", "out_channels",
                                           "kernel_size") if k in cfg]
        if kind.endswith("Pool2d") and positional and cfg.get("stride") == positional[-1]:
            cfg.pop("stride")  # the default: stride = kernel_size
        keyword = [f"{k}={v}" for k, v in cfg.items() if _DEFAULT_ARGS.get(k, object()) != v]
        names.append(f"{kind}({', '.join([str(v) for v in positional] + keyword)})")
    return names


def save_json(obj, path) -> str:
    """Writes obj as strict JSON (evaluate.json_text: NaN and inf as null), whole or not at all."""
    path = Path(path)
    _checkpoint._write_atomically(str(path.parent), path.name, json_text(obj).encode())
    return str(path)


def tag_checkpoint(directory, record):
    """Re-saves the checkpoint with the run record in its JSON's extra (weights unchanged), unless it
    holds that record already (train.fit's checkpoint_extra put it there; search's best gets its best
    settings here)."""
    record = _checkpoint._json_normal(jsonable(record), "run record")
    extra = _checkpoint.read_info(directory).get("extra")
    if isinstance(extra, dict) and extra.get(RECORD_KEY) == record:
        return
    model, info = _checkpoint.load(directory)
    extra = dict(info.get("extra") or {})
    extra[RECORD_KEY] = record
    _checkpoint.save(directory, model, epoch=info["epoch"], metric=info["metric"], extra=extra)


def _written_by(best, history) -> bool:
    """Whether the checkpoint `best` holds this run's best evaluation (train.fit records its history in
    the checkpoint, up to the evaluation it was saved for), not one left from an earlier run."""
    if not (best / _checkpoint.INDEX).exists():
        return False
    extra = _checkpoint.read_info(best).get("extra")
    fit = extra.get("fit") if isinstance(extra, dict) else None
    saved = fit.get("history") if isinstance(fit, dict) else None
    if not (isinstance(saved, dict) and saved.get("records")):
        return False
    key = ("step", "time")  # the time since fit started tells runs apart
    return [saved["records"][-1].get(k) for k in key] == [history.best[k] for k in key]


def finish(example, out, history, *, record, started, verbose=True) -> dict:
    """After train.fit(..., checkpoint_dir=out): tags out/best with the run record, evaluates it on
    the test split, writes history.json, report.json, run.json and the plots, prints the report.

    record: run_record(...), the one fit's checkpoint_extra gave best/ (a record without "split_sha256",
    {"example": name, "data": load_data arguments, "options": training settings}, is taken too).
    Returns {"report", "history", "files", "checkpoint", "train_seconds"}.
    """
    out = Path(out)
    train_seconds = time.perf_counter() - started
    best = out / "best"
    if history.best_index is None:
        raise RuntimeError(f"training wrote no best checkpoint in {best} (no validation improved; "
                           "were they all NaN, training diverged?)")
    if not _written_by(best, history):  # never tag or evaluate a checkpoint of another run as this one's
        raise RuntimeError(f"training wrote no best checkpoint in {best}: the one there is not this run's "
                           "(left from an earlier run, or fit's checkpoint_dir is not the output directory)")
    tag_checkpoint(best, record)
    files = {"checkpoint": str(best)}
    history.to_json(out / "history.json")
    files["history"] = str(out / "history.json")
    files["loss_plot"] = plot_history(history_dict(history), out / "loss.png", title=example.NAME,
                                      best_epoch=history.best_epoch)

    report, model, dataset = evaluate_saved(example, best)
    if hasattr(example, "plots"):
        files.update(example.plots(out, model, dataset, report))
    files["report"] = save_json(report, out / "report.json")
    if (out / "last" / _checkpoint.INDEX).exists():
        files["last_checkpoint"] = str(out / "last")
    files["run"] = str(out / "run.json")
    save_json({**record, "backend": _backend.get_backend(), "train_seconds": train_seconds,
               "best_epoch": history.best_epoch, "best_val_metric": history.best_metric,
               "val_metric": history.metric, "epochs_run": history.records[-1]["epoch"] if len(history) else 0,
               "stopped_early": history.stopped_early, "files": files, "weights_sha256": weights_sha256(out)},
              out / "run.json")
    if verbose:
        print(f"trained in {train_seconds:.1f} s; best epoch {history.best_epoch} "
              f"(validation {history.metric} {history.best_metric:.4f}), {len(history)} evaluations"
              + (", stopped early" if history.stopped_early else ""))
        print(format_report(report))
        if hasattr(example, "summary"):
            print(example.summary(report))
        print(f"wrote {out}/: " + ", ".join(sorted(os.path.relpath(p, out) for p in files.values())))
    return {"report": report, "history": history, "files": files, "checkpoint": str(best),
            "train_seconds": train_seconds}


def _record(path) -> dict:
    """The run record of a checkpoint: its JSON's extra, else run.json in the run directory."""
    directory = Path(path)
    if directory.name == _checkpoint.INDEX:
        directory = directory.parent
    if not (directory / _checkpoint.INDEX).exists() and (directory / "best" / _checkpoint.INDEX).exists():
        raise _checkpoint.CheckpointError(
            f"{directory} is a run directory, not a checkpoint: evaluate its best checkpoint, {directory / 'best'} "
            f"(or the last one, {directory / 'last'})")
    info = _checkpoint.read_info(directory)
    extra = info.get("extra") or {}
    record = extra.get(RECORD_KEY) if isinstance(extra, dict) else None  # (save takes any JSON extra)
    run_json = directory.parent / "run.json"
    if record is None and run_json.exists():
        try:
            record = json.loads(run_json.read_text())
        except ValueError as exc:
            raise _checkpoint.CheckpointError(f"{run_json} is not JSON ({exc})") from None
        if isinstance(record, dict) and not _describes(record, info):
            raise _checkpoint.CheckpointError(
                f"{directory} does not record which example and data it was trained on, and {run_json} describes "
                "other weights (an earlier run's): the run that wrote this checkpoint did not finish (interrupted?)")
    if not (isinstance(record, dict) and isinstance(record.get("example"), str)
            and isinstance(record.get("data"), dict)):
        raise _checkpoint.CheckpointError(
            f"{directory} does not record which example and data it was trained on; `fastconv evaluate` "
            "reads checkpoints written by `fastconv train` (DIR/best)")
    return record


def weights_sha256(out, names=("best", "last")) -> dict:
    """{name: the SHA-256 of its weights} for the checkpoints out/name that exist: what a run.json
    records, so that _describes can tell its own checkpoints from another run's."""
    out = Path(out)
    return {name: _checkpoint.read_info(out / name)["weights"]["sha256"] for name in names
            if (out / name / _checkpoint.INDEX).exists()}


def _describes(run, info) -> bool:
    """Whether a run.json was written for the checkpoint `info` (by its weights' SHA-256). A run that
    was interrupted leaves its untagged best/ and last/ beside an earlier run's run.json, whose example
    and data (another seed's split, say) would be taken for theirs. (A run.json from before it recorded
    the weights is taken at its word.)"""
    saved = run.get("weights_sha256") if isinstance(run, dict) else None
    return not isinstance(saved, dict) or info["weights"]["sha256"] in saved.values()


def checkpoint_example(path) -> str:
    """The name of the example a checkpoint was trained by."""
    return _record(path)["example"]


def evaluate_saved(example, path):
    """(report, model, dataset) of a checkpoint tagged with its run record."""
    record = _record(path)
    if record["example"] != example.NAME:
        raise ValueError(f"{path} was trained by example {record['example']!r}, not {example.NAME!r}")
    model, info = _checkpoint.load(path)
    taken = inspect.signature(example.load_data).parameters
    unknown = sorted(set(record["data"]) - set(taken))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in taken.values()):  # (a run record edited by hand)
        raise _checkpoint.CheckpointError(f"{path}'s run record gives the data options {unknown}, which example "
                                          f"{example.NAME!r} does not take (it takes {list(taken)})")
    dataset = example.load_data(**record["data"])
    saved = record.get("split_sha256")  # (a record from before it was kept: taken at its word)
    # (Under this name since it hashes the labels' values: the records of c3807dc..28fb15f hashed their
    # dtypes' bytes under "data_sha256", and are taken at their word too.)
    if saved is not None and saved != data_fingerprint(dataset):
        arguments = ", ".join(f"{k}={v!r}" for k, v in record["data"].items())
        raise _checkpoint.CheckpointError(
            f"{path} was trained on another split than example {example.NAME!r}'s load_data({arguments}) gives now "
            f"(its labels or sizes differ; fastconv {info.get('fastconv_version', '?')} saved it): a report on these "
            "data could count its training rows as test rows (did the split or the data change, or does load_data "
            "not give the same split every time?)")
    return example.evaluate(model, dataset), model, dataset


def evaluate_checkpoint(example, path, verbose=True) -> dict:
    """The test report of a saved checkpoint (same code as at the end of training)."""
    report, _, _ = evaluate_saved(example, path)
    if verbose:
        print(f"fastconv evaluate {path}: example {example.NAME}, backend {_backend.get_backend()}")
        print(format_report(report))
        if hasattr(example, "summary"):
            print(example.summary(report))
    return report
