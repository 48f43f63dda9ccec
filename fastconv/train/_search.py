"""search: hyperparameter search, one fit per setting."""
import contextlib
import csv
import io
import itertools
import json
import math
import os
import shutil
import signal
import threading
import time

import numpy as np

from .. import backend as _backend
from .. import checkpoint as _checkpoint
from ..ops import _check
from .. import nn as _nn
from ._data import _digest, _positive_int, _xy_pair
from ._evaluation import _metric
from ._fit import fit
from ._words import _say


def _check_rebuildable(model):
    """search keeps each setting's best model by rebuilding it (checkpoint.load: nn.from_config), which
    needs every layer type in the model's config registered (nn.register): refused before a trial
    trains, not after it."""
    unknown = _nn._unregistered_types(model.config())
    if unknown:
        raise ValueError(f"search: keeps each setting's best model by rebuilding it from its config "
                         f"(checkpoint.load), which needs every layer type registered: {', '.join(unknown)} "
                         "is not (decorate its class with fastconv.nn.register)")


def _search_interrupted(finished, settings, out_dir):
    """What an interrupted search says: which setting it stopped in and what out_dir keeps (finished:
    the settings whose training had returned; the last of them may have been saving)."""
    where = (f"in setting {finished + 1} of {len(settings)} ({settings[finished]})" if finished < len(settings)
             else f"after its last setting's training ({finished} of {finished})")
    kept = (f"{os.fspath(out_dir)}/search.csv and search.json rank the settings that finished" if finished
            else "no setting had finished")
    return (f"search was interrupted {where}; {kept}; the interrupted setting's run is not kept "
            f"({os.fspath(out_dir)}/trial is removed), and a search does not resume: run the settings that are "
            "left as a search of their own")


class SearchResult:
    """table: one row per trial, best first (rank, trial: the setting's number 1 .. n in the order tried, as
    the lines printed say; settings, best_metric, best_val_loss (the validation loss at that evaluation,
    which orders equal metrics), best_epoch, epochs_run, time_s);
    best: the best row; best_checkpoint: the directory of its saved model."""

    def __init__(self, table, metric, mode, best_checkpoint):
        self.table, self.metric, self.mode, self.best_checkpoint = table, metric, mode, best_checkpoint

    @property
    def best(self):
        return self.table[0] if self.table else None

    @property
    def best_settings(self):
        return None if self.best is None else self.best["settings"]

    def __repr__(self):
        return f"SearchResult({len(self.table)} trials, best {self.metric}={self.best and self.best['best_metric']})"


def _settings(space, method, n_trials, seed):
    if not isinstance(space, dict) or not space:
        raise ValueError("space must be a non-empty dict: setting name -> list of values (or, for random "
                         "search, a callable(rng) -> value)")
    keys = list(space)
    space = {k: _values(v) for k, v in space.items()}
    if method == "grid":
        for k in keys:
            if callable(space[k]) or not isinstance(space[k], (list, tuple)) or not space[k]:
                raise ValueError(f"grid search: space[{k!r}] must be a non-empty list of values (or tuple, or 1-D "
                                 f"NumPy array), got {_described(space[k])}")
        grid = [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
        return [_plain(one) for one in (grid if n_trials is None else grid[:n_trials])]
    if method == "random":
        if n_trials is None:
            raise ValueError("random search needs n_trials")
        rng = _check.generator(seed)
        out = []
        for _ in range(n_trials):
            one = {}
            for k in keys:
                choice = space[k]
                if callable(choice):
                    one[k] = choice(rng)
                else:
                    if not isinstance(choice, (list, tuple)) or not choice:
                        raise ValueError(f"random search: space[{k!r}] must be a non-empty list (or tuple, or 1-D "
                                         f"NumPy array) or a callable(rng), got {_described(choice)}")
                    one[k] = choice[int(rng.integers(len(choice)))]
            out.append(_plain(one))
        return out
    raise ValueError(f"method must be 'grid' or 'random', got {method!r}")


def _values(choices):
    """A 1-D NumPy array of choices (np.logspace(-4, -1, 4), say) as a list; anything else as it is."""
    return list(choices) if isinstance(choices, np.ndarray) and choices.ndim == 1 and choices.size else choices


def _described(choices):
    if isinstance(choices, np.ndarray):
        return f"a {choices.ndim}-D array of shape {choices.shape}"
    if isinstance(choices, (list, tuple)) and not choices:
        return f"an empty {type(choices).__name__}"
    return f"{type(choices).__name__} {choices!r}"[:120]


def _plain(setting):
    """NumPy scalars (from np.arange, say) as Python numbers, and a clear error for values that cannot
    be saved: settings go into search.json and the best checkpoint's JSON."""
    setting = {k: v.item() if isinstance(v, np.generic) else v for k, v in setting.items()}
    for k, v in setting.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"search: setting {k!r} = {v!r} ({type(v).__name__}) is not a JSON value (a finite "
                             "number, string, bool, None or a list/dict of them); settings are saved as JSON") from None
    return setting


def _order(row, mode):
    """A row's sort key, best first: its best metric, then, between equal ones (a validation AUC of 1 on a
    small set is reached by many settings), the validation loss at that evaluation; then the trial order
    (sorted is stable). A trial that never improved (best_metric None) goes last."""
    metric, loss = row["best_metric"], row["best_val_loss"]
    if metric is None or math.isnan(metric):
        return (1, 0.0, 0.0)
    return (0, metric if mode == "min" else -metric, math.inf if loss is None else loss)


def _ranked(rows, mode):
    """The rows best first (_order), each given its rank."""
    ranked = sorted(rows, key=lambda r: _order(r, mode))
    for rank, r in enumerate(ranked, 1):
        r["rank"] = rank
    return ranked


def _finite_or_none(value):
    return value if value is not None and math.isfinite(value) else None


@contextlib.contextmanager
def _interrupts_deferred():
    """Ctrl-C (SIGINT) inside the block is raised when the block is done, on the main thread (where
    Python handles signals; elsewhere nothing changes). For a search's bookkeeping after a trial: an
    interrupt between copying the trial's model to best/ and rewriting the table left best/ holding
    a trial the table did not list."""
    previous = signal.getsignal(signal.SIGINT)  # (None: a handler not set from Python, which cannot be restored)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, received[0])
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def _write_table(out_dir, rows, keys):
    """search.json and search.csv, each through a temp file and a rename: an interrupt leaves the
    previous table whole."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["rank", "trial", *keys, "best_metric", "best_val_loss", "best_epoch", "epochs_run", "time_s"])
    for r in rows:
        writer.writerow([r["rank"], r["trial"], *(r["settings"][k] for k in keys), r["best_metric"],
                         r["best_val_loss"], r["best_epoch"], r["epochs_run"], round(r["time_s"], 3)])
    # (strict JSON, which jq and JavaScript read: settings are finite, and a trial that never improved,
    # a diverged one too, has best_metric None: fit's best is finite; best_val_loss likewise)
    _checkpoint._write_atomically(out_dir, "search.json", json.dumps(rows, indent=1, allow_nan=False).encode())
    _checkpoint._write_atomically(out_dir, "search.csv", text.getvalue().encode())


# What search writes in out_dir: the best model, the table, and trial/, where each setting trains (deleted
# as search goes).
_SEARCH_FILES = ("best", "search.csv", "search.json", "trial")


def _keep_earlier_search(out_dir):
    """ValueError when out_dir holds any of _SEARCH_FILES (an earlier search's, or the user's): search would
    replace them, and delete a trial/ it did not create, and nothing a user saved may be lost unasked."""
    held = [name for name in _SEARCH_FILES if os.path.exists(os.path.join(out_dir, name))]
    if held:
        raise ValueError(f"search: {_say('out_dir')} {os.fspath(out_dir)!r} holds an earlier search "
                         f"({', '.join(held)}; search writes best/, search.csv and search.json there and trains each "
                         f"setting in trial/, which it deletes): {_say('overwrite')} replaces it, or give another "
                         f"{_say('out_dir')}")


def _remove(path):
    """Deletes the file or directory tree at path, if any."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _best_extra(checkpoint_extra):
    """fit's checkpoint_extra (given to every trial) as best/ holds it too, beside the best setting and trial."""
    if not isinstance(checkpoint_extra, dict):
        return {}  # (None; fit refuses what is not a dict, at the first trial)
    taken = sorted({"settings", "trial"} & set(checkpoint_extra))
    if taken:
        raise ValueError(f"search: checkpoint_extra must not have the keys {taken}: search records the best "
                         "setting there in best/")
    return checkpoint_extra


def _own_arguments(options, what):
    """search's own arguments to fit, refused among fit's options (a TypeError from fit's call, "got
    multiple values for keyword argument", would not say why)."""
    for own in ("checkpoint_dir", "resume", "metric", "mode"):
        if own in options:
            why = ("search's own metric and mode rank the trials: give them to search" if own in ("metric", "mode")
                   else "each trial trains in out_dir/trial, afresh, and the best model is kept in out_dir/best")
            raise ValueError(f"search: {own} is not {what}: {why}")


def search(build, space, train, val, *, method="grid", n_trials=None, seed=0, out_dir, metric="loss", mode=None,
           overwrite=False, progress=False, verbose=True, **fit_kwargs):
    """Hyperparameter search: runs fit() once per setting and ranks the settings on the best validation
    metric each reached; equal ones (many settings reach a validation AUC of 1 on a small set) by the
    validation loss at that evaluation, then in the order tried.

    build(settings) -> (model, loss_fn, optimizer) or (model, loss_fn, optimizer, fit_overrides):
        makes a fresh model and optimizer for one setting (a dict: name -> value).
    space: name -> list of values (a tuple or 1-D NumPy array too: np.logspace(-4, -1, 4)); for
        method="random" a value may also be a callable(rng) -> value
        (e.g. lambda rng: 10 ** rng.uniform(-4, -1)). Grid search tries every combination (the first
        n_trials of them when given); random search draws n_trials settings with `seed`.
    Settings named "epochs" or "batch_size" are passed to fit(); so are fit_kwargs (epochs,
    batch_size, patience, ...) and the overrides build returns.

    Writes out_dir/search.csv and out_dir/search.json (best first; rewritten after every trial, so an
    interrupted search leaves the trials it finished) and out_dir/best, the checkpoint of the best model
    (each trial's best evaluation; its extra: fit's checkpoint_extra, "settings" and "trial"). Each trial
    trains in out_dir/trial, removed on the way out (an interrupt included). Returns a SearchResult.
    overwrite: an out_dir that holds any of best, search.csv, search.json or trial (an earlier search) is
        refused (ValueError) unless overwrite=True: then trial is deleted before the first trial, and the
        others are replaced when this search first writes them (as fit's overwrite; `fastconv search`
        refuses the same --out unless --overwrite); an earlier best goes with the first table written
        while no setting has reached a best of its own.
    Each setting's best model is kept by rebuilding it from its config (checkpoint.load), so a model
    with a custom layer needs that layer registered (nn.register): refused before its trial trains.
    """
    name, _, mode = _metric(metric, mode)
    n_trials = _positive_int(n_trials, "n_trials", allow_none=True)
    overwrite = _check.flag(overwrite, "search: overwrite")  # (overwrite="no" replaced an earlier search)
    verbose = _check.flag(verbose, "search: verbose")
    _own_arguments(fit_kwargs, "an option here")
    settings = _settings(space, method, n_trials, seed)
    # Checked here; each fit takes them as given (x as a list takes its model's dtype there, as in fit).
    checked = _xy_pair(train, "train"), None if val is None else _xy_pair(val, "val")
    work = os.path.join(out_dir, "trial")
    best_dir = os.path.join(out_dir, "best")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):  # (os.makedirs: a bare "[Errno 17] File exists")
        raise ValueError(f"search: {_say('out_dir')} {os.fspath(out_dir)!r} is a file, but search writes its table "
                         f"and best model in a directory there: give another {_say('out_dir')}")
    if not overwrite:
        _keep_earlier_search(out_dir)
    if os.path.exists(best_dir) and not os.path.isdir(best_dir):  # fail now, not after the first trial
        raise ValueError(f"search: {os.fspath(best_dir)!r} is a file, but search saves the best model there "
                         "as a checkpoint directory")
    _remove(work)  # (overwrite=True: from here on, trial/ is this call's own)
    # The checkpoints' labels of the data, which each trial's fit would compute again (they only label
    # trial/'s checkpoints, which no search resumes: not the converted arrays a fit of a list trains on)
    digests = tuple(None if pair is None else _digest(*pair) for pair in checked)
    os.makedirs(out_dir, exist_ok=True)
    rows, best_row = [], None
    try:  # out_dir/trial goes on the way out, an interrupt (Ctrl-C) included; best/ and the table stay
        for trial, setting in enumerate(settings, start=1):
            built = build(dict(setting))
            if not isinstance(built, tuple) or len(built) not in (3, 4):
                raise TypeError("build(settings) must return (model, loss_fn, optimizer) or "
                                "(model, loss_fn, optimizer, fit_overrides)")
            model, loss_fn, optimizer = built[:3]
            overrides = built[3] if len(built) == 4 else {}
            if not isinstance(overrides, dict):
                raise TypeError(f"build(settings)'s fit_overrides must be a dict of fit's options, got "
                                f"{type(overrides).__name__}")
            _own_arguments(overrides, "an override build may return")
            _check_rebuildable(model)
            kwargs = {"seed": seed, "progress": progress, **fit_kwargs,
                      **{k: setting[k] for k in ("epochs", "batch_size") if k in setting}, **overrides}
            _best_extra(kwargs.get("checkpoint_extra"))  # (refused before the trial, not after it)
            shutil.rmtree(work, ignore_errors=True)  # the previous trial's
            t0 = time.perf_counter()
            history = fit(model, loss_fn, optimizer, train, val, metric=metric, mode=mode, checkpoint_dir=work,
                          _digests=digests, **kwargs)
            row = {"trial": trial, "settings": setting, "best_metric": history.best_metric,
                   "best_val_loss": _finite_or_none(history.best["val_loss"]) if history.best else None,
                   "best_epoch": history.best_epoch,
                   "epochs_run": history.records[-1]["epoch"] if history.records else 0,
                   "time_s": time.perf_counter() - t0}
            with _interrupts_deferred():  # best/ and the table agree on which trials finished
                rows.append(row)
                if history.best_metric is not None and (best_row is None or _order(row, mode) < _order(best_row, mode)):
                    best_row = row
                    # Copy the trial's best checkpoint (atomically, through save) to out_dir/best.
                    trial_model, info = _checkpoint.load(os.path.join(work, "best"))
                    _checkpoint.save(best_dir, trial_model, epoch=info["epoch"], metric=info["metric"],
                                     extra={**_best_extra(kwargs.get("checkpoint_extra")), "settings": setting,
                                            "trial": trial})
                if best_row is None:  # (overwrite=True: an earlier search's best/ does not go with this table)
                    _remove(best_dir)
                _write_table(out_dir, _ranked(rows, mode), list(space))  # after every trial: an interrupt keeps them
            if verbose:
                best = "none" if history.best_metric is None else f"{history.best_metric:.6g}"  # (None: never finite)
                print(f"trial {trial}/{len(settings)} {setting}: best {name} {best} at epoch {history.best_epoch} "
                      f"({row['time_s']:.1f} s)")
            del model, optimizer, built
            _backend.empty_cache()  # the next setting's shapes differ: the buffers kept for these would idle
    except KeyboardInterrupt as exc:
        if hasattr(exc, "add_note"):  # fit's note would point at trial/'s checkpoints, which go below
            exc.__notes__ = [_search_interrupted(len(rows), settings, out_dir)]
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = _ranked(rows, mode)
    return SearchResult(rows, name, mode, best_dir if best_row is not None else None)
