"""fit: the training loop (what it does, and what resume keeps exact: fastconv.train's docstring)."""
import math
import os
import time
import warnings

import numpy as np

from .. import backend as _backend
from .. import checkpoint as _checkpoint
from ..ops import _check
from .. import nn as _nn
from . import _compile_ahead, _compile_notice
from ._data import _check_loss, _check_model, _digest, _positive_int, _xy_pair
from ._evaluation import _check_metric_labels, _class_weighted, _evaluate, _improved, _metric
from ._fit_checks import (_check_checkpoint_extra, _check_describable, _check_optimizer_of, _check_resumable,
                          _check_targets, _check_writable, _interrupted, _keep_best_without_last, _keep_earlier_run,
                          _warn_diverged, _warn_final_evaluation_kept, _warn_frozen, _warn_replaced_hyperparameters)
from ._history import History
from ._words import _say


def _schedule(scheduler):
    """A scheduler's hyperparameters and the lr it starts from (base_lr: under a scheduler the optimizer's lr
    is the schedule's, so a resume with another Adam(lr=...) would otherwise go unsaid)."""
    return None if scheduler is None else {**scheduler.hyperparameters(), "base_lr": scheduler.base_lr}


def _progress_bar(total, enabled, initial):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, leave=True)


def _rows_weight(loss_fn, labels):
    """What a batch's mean loss is a mean over: its rows, or for a class-weighted CrossEntropyLoss the
    sum of its labels' weights (its loss is sum w[y_i] l_i / sum w[y_i]), so that the epoch's train_loss
    is the mean over the epoch's rows that evaluate() gives for a whole set."""
    if _class_weighted(loss_fn):
        return float(loss_fn.weight[labels].sum(dtype=np.float64))
    return len(labels)


def fit(model, loss_fn, optimizer, train, val=None, *, epochs, batch_size, metric="loss", mode=None,
        eval_every=None, checkpoint_dir=None, patience=None, scheduler=None, seed=0, resume=False,
        overwrite=False, progress=True, predict_batch_size=None, restore_best=False, checkpoint_extra=None,
        _digests=None):
    """Trains `model` and returns its History (see fastconv.train's docstring).

    train, val: (x, y) NumPy arrays (moved to the device one batch at a time); without val the
    monitored value is the training loss (metric must then be "loss"). A model whose parameters are
    all frozen gets a RuntimeWarning (the optimizer skips frozen parameters: nothing would train).
    eval_every: evaluate every that many optimizer steps (default: at the end of each epoch), and at
        the end of training when the last step was not evaluated (so the final weights are too).
    scheduler: stepped at the end of every epoch.
    resume: continue from <checkpoint_dir>/last when it exists (start fresh otherwise, unless a best/
        without a last/ is there: refused, as without resume); a run that had
        stopped early stays stopped (warned where this call's patience would have gone on). A `last`
        this call cannot continue is refused: ResumeError (CheckpointError for one fit did not write).
    overwrite: start afresh in a checkpoint_dir that holds an earlier run's best/ or last/, replacing each
        when this run first writes it. Without it (or resume) such a checkpoint_dir is refused (ValueError),
        so that a run never replaces another's saved model unasked (`fastconv train` refuses the same --out
        unless --resume or --overwrite).
    restore_best: at the end, load the best evaluation's weights back into the model.
    checkpoint_extra: a JSON-able dict stored in every checkpoint's extra beside fit's own "fit" (what
        the run is, e.g. `fastconv train`'s run record: then even an interrupted run's best/ and last/
        say it).
    Before the first step, every training and validation target passes the loss's checks (labels in
    range, shapes), and the checkpoint_dir's directories are written to once. fit puts the whole model
    in training mode (model.train(): every layer, as torch's loops do) and leaves it so; evaluations
    run in eval mode and restore the layers' modes.
    On the cpu backend, when the targets' check (a row forward) compiles kernels (an empty Numba
    cache), a helper process compiles the backward's and the validation's meanwhile
    (fastconv/train/_compile_ahead.py: a first run ~30% shorter; the same results);
    FASTCONV_COMPILE_AHEAD=0 turns it off.
    (_digests: search's, the training and validation data's _digest computed once for all its trials.)
    """
    _check_model(model, "fit")
    _check_loss(loss_fn, "fit")
    x_train, y_train = _xy_pair(train, "train", model)
    if val is not None:
        val = _xy_pair(val, "val", model)
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    eval_every = _positive_int(eval_every, "eval_every", allow_none=True)
    patience = _positive_int(patience, "patience", allow_none=True)
    predict_batch_size = _positive_int(predict_batch_size, "predict_batch_size", allow_none=True) or max(batch_size, 256)
    progress = _check.flag(progress, "fit: progress")  # (progress="no" drew a bar)
    name, metric_fn, mode = _metric(metric, mode)
    if val is None and metric_fn is not None:
        raise ValueError(f"metric={name!r} needs validation data (val=(x, y)); without it only 'loss' (the "
                         "training loss) can be monitored")
    if scheduler is not None and getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("fit: the scheduler was made for another optimizer than the one fit steps: it would "
                         "set that one's lr, and this one's would never change (make it with "
                         "StepLR(optimizer, ...) / CosineAnnealingLR(optimizer, ...) of this optimizer)")
    _check_optimizer_of(model, optimizer)
    # The first forward: on a cold Numba cache, a helper process compiles the backward's kernels meanwhile.
    notice = _compile_notice.CompileNotice(progress)
    helper = _compile_ahead.helping(model, x_train, batch_size, predict_batch_size, len(val[0]) if val is not None else 0)
    with helper, notice:  # (notice: a line on stderr when kernels compile, here and in the loop below)
        for data, which in (((x_train, y_train), "training"), (val, "validation")):
            if data is not None:
                _check_targets(model, loss_fn, data, which)
    if val is not None and not callable(metric):
        _check_metric_labels(name, loss_fn, val[1])
    _warn_frozen(model)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    if resume and overwrite:
        raise ValueError("resume=True continues the run in checkpoint_dir, overwrite=True replaces it: give one")
    last_dir = best_dir = None
    if checkpoint_dir is not None and not os.fspath(checkpoint_dir):  # (os.makedirs: FileNotFoundError: '')
        raise ValueError(f"{_say('checkpoint_dir')} is an empty path: give a directory (or None for no checkpoints)")
    checkpoint_extra = _check_checkpoint_extra(checkpoint_extra)
    if checkpoint_dir is not None:  # fail now, not when the first checkpoint is written
        _check_describable(model)
        last_dir, best_dir = os.path.join(checkpoint_dir, "last"), os.path.join(checkpoint_dir, "best")
        for path in (checkpoint_dir, last_dir, best_dir):
            if os.path.exists(path) and not os.path.isdir(path):
                raise ValueError(f"{_say('checkpoint_dir')}: {os.fspath(path)!r} is a file, but fit writes the "
                                 f"checkpoint directories best/ and last/ in {_say('checkpoint_dir')}")
            if os.path.islink(path) and not os.path.exists(path):  # (os.makedirs: a bare FileExistsError)
                raise ValueError(f"{_say('checkpoint_dir')}: {os.fspath(path)!r} is a symbolic link to "
                                 f"{os.readlink(path)!r}, which does not exist: create it, or give another "
                                 f"{_say('checkpoint_dir')}")
        if not (resume or overwrite):
            _keep_earlier_run(checkpoint_dir, last_dir, best_dir)
        elif resume:
            _keep_best_without_last(checkpoint_dir, last_dir, best_dir)
        os.makedirs(checkpoint_dir, exist_ok=True)
        for path in (checkpoint_dir, last_dir, best_dir):
            if os.path.isdir(path):
                _check_writable(path)
        for path in (last_dir, best_dir):  # (a user's checkpoint.json there: save refused it after an epoch)
            if os.path.isdir(path):
                try:
                    _checkpoint._refuse_a_foreign_index(path)
                except _checkpoint.CheckpointError as exc:
                    raise ValueError(f"{_say('checkpoint_dir')}: {exc}") from None
    xp = _backend.current().xp

    n = len(x_train)
    batches_per_epoch = -(-n // batch_size)
    batches = {"batch_size": batch_size, "train_rows": n}  # what the saved batch position counts in
    if checkpoint_dir is not None:  # and the rows it counts (a resume checks them: _check_resumable)
        train_digest, val_digest = _digests or (_digest(x_train, y_train), None if val is None else _digest(*val))
        batches["train_data"] = train_digest
        batches["val_data"] = val_digest  # what the best so far was measured on
    # Loop state: everything a resumed run needs to continue exactly.
    rng = _check.generator(seed)
    s = {"epoch": 0, "batch": 0, "step": 0, "epoch_rng": None, "loss_sum": 0.0, "loss_count": 0,
         "evals_since_best": 0, "best": None, "elapsed": 0.0}
    history = History(name, mode)
    on_disk = {"step": None, "best": None}  # the step last/ holds, the evaluation best/ holds (an interrupt says)
    if resume and os.path.exists(os.path.join(last_dir, _checkpoint.INDEX)):
        _check_resumable(last_dir, name, mode, batches, model, scheduler)  # before load_into changes the model
        given = optimizer.hyperparameters()
        given_schedule = _schedule(scheduler)
        info = _checkpoint.load_into(last_dir, model, optimizer, scheduler)
        _warn_replaced_hyperparameters(last_dir, given, optimizer.hyperparameters(), scheduler is not None)
        if scheduler is not None:
            _warn_replaced_hyperparameters(last_dir, given_schedule, _schedule(scheduler), False, "scheduler")
        saved = info["extra"]["fit"]
        s.update(saved["state"])
        rng.bit_generator.state = saved["rng"]
        history = History.from_dict(saved["history"])
        on_disk = {"step": s["step"], "best": history.best}
        _warn_final_evaluation_kept(last_dir, history, s, epochs, eval_every)
        if s["epoch"] > epochs:  # (it returned as if done, the history of the longer run)
            warnings.warn(f"fit: the run in {last_dir} has trained {s['epoch']} epochs, more than epochs={epochs}: "
                          f"{_say('resume')} trains it no further", RuntimeWarning, stacklevel=2)
        if history.stopped_early and s["epoch"] < epochs and (patience is None or s["evals_since_best"] < patience):
            # This call's patience and epochs would have gone on; the run resumed had stopped, and stays stopped.
            warnings.warn(f"fit: the run in {last_dir} stopped early at epoch {history.records[-1]['epoch']} "
                          f"({s['evals_since_best']} evaluation(s) without improvement), so {_say('resume')} trains it "
                          f"no further, whatever patience ({patience}) {_say('this call')} gives; {_say('train on')}",
                          RuntimeWarning, stacklevel=2)
    best_state = None
    if restore_best and s["best"] is not None and os.path.exists(os.path.join(best_dir or "", _checkpoint.INDEX)):
        best_state = {k: xp.array(v, copy=True) for k, v in _checkpoint.load(best_dir)[0].state_dict().items()}

    def save(directory, metric_value):
        fit_state = {"state": dict(s), "rng": rng.bit_generator.state, "history": history.to_dict(),
                     "batches": batches}
        epoch = s["epoch"] + (1 if s["batch"] else 0)  # partway through an epoch: that epoch (docstring)
        _checkpoint.save(directory, model, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                         metric=metric_value, extra={**checkpoint_extra, "fit": fit_state})

    started = time.perf_counter() - s["elapsed"]
    loss_sum = xp.zeros((), dtype=np.float64) + s["loss_sum"]  # summed on the device, read at evaluations

    warned_diverged = False

    def run_evaluation():
        nonlocal loss_sum, warned_diverged
        train_loss = float(loss_sum) / s["loss_count"] if s["loss_count"] else None
        val_loss = value = None
        if val is not None:
            val_loss, value, finite = _evaluate(model, loss_fn, val, predict_batch_size, metric_fn)
            if metric_fn is None:
                value = val_loss if finite else math.nan
        else:
            value = train_loss
        record = {"epoch": s["epoch"] + 1, "step": s["step"], "train_loss": train_loss,
                  "val_loss": val_loss, "val_metric": value, "lr": optimizer.lr,
                  "time": time.perf_counter() - started}
        if metric_fn is not None:
            record[f"val_{name}"] = value
        history.records.append(record)
        loss_sum = xp.zeros((), dtype=np.float64)
        s["loss_sum"], s["loss_count"] = 0.0, 0
        improved = _improved(value, s["best"], mode)
        if improved:
            s["best"], s["evals_since_best"] = value, 0
            history.best_index = len(history.records) - 1
        else:
            s["evals_since_best"] += 1
        if patience is not None and s["evals_since_best"] >= patience:
            history.stopped_early = True
        if value is not None and not math.isfinite(value) and not warned_diverged:
            warned_diverged = True
            _warn_diverged(record, name, history.best)
        return improved, value

    def checkpoint(improved, value):
        nonlocal best_state
        s["elapsed"] = time.perf_counter() - started
        s["loss_sum"] = float(loss_sum)
        if improved and restore_best:
            best_state = {k: xp.array(v, copy=True) for k, v in model.state_dict().items()}
        if checkpoint_dir is None:
            return
        if improved:
            save(best_dir, value)
            on_disk["best"] = history.best
        save(last_dir, value)
        on_disk["step"] = s["step"]

    total_steps = epochs * batches_per_epoch
    bar = _progress_bar(total_steps, progress, min(s["step"], total_steps))
    shown_every = max(1, batches_per_epoch // 20)
    first_step = True
    model.train()
    notice.start()
    try:
        # (An early stop at an evaluation on an epoch's last batch still ends that epoch: scheduler step,
        # epoch count, last/. A resume from that evaluation's checkpoint, s["batch"] at the end, does too.)
        while s["epoch"] < epochs and (not history.stopped_early or s["batch"] == batches_per_epoch):
            if s["epoch_rng"] is None:
                s["epoch_rng"] = rng.bit_generator.state
            rng.bit_generator.state = s["epoch_rng"]
            order = rng.permutation(n)  # leaves rng where the next epoch starts
            window_start, window_examples = time.perf_counter(), 0  # examples/s over this epoch so far
            while s["batch"] < batches_per_epoch and not history.stopped_early:
                rows = order[s["batch"] * batch_size:(s["batch"] + 1) * batch_size]
                xb, yb = xp.asarray(x_train[rows]), y_train[rows]
                out = model(xb)
                loss = loss_fn(out, yb)
                optimizer.zero_grad()
                _nn.backward_without_input_grad(model, loss_fn.backward())
                optimizer.step()
                weight = _rows_weight(loss_fn, yb)
                loss_sum += xp.asarray(loss, dtype=np.float64) * weight
                s["loss_count"] += weight
                s["batch"] += 1
                s["step"] += 1
                window_examples += len(rows)
                if bar is not None:
                    if first_step:  # its time (a first run's compile: a minute) left out of the rate and ETA,
                        bar.unpause()  # which had been 11 hours at 1/600 steps
                        first_step = False
                    bar.update(1)
                    if s["step"] % shown_every == 0:
                        now = time.perf_counter()
                        bar.set_postfix(epoch=s["epoch"] + 1, loss=f"{float(loss):.4f}",
                                        ex_per_s=f"{window_examples / max(now - window_start, 1e-9):.0f}")
                if eval_every is not None and s["step"] % eval_every == 0:
                    checkpoint(*run_evaluation())
            if history.stopped_early and s["batch"] < batches_per_epoch:
                break
            s["epoch_rng"], s["batch"] = None, 0
            # With eval_every, the steps after its last multiple are evaluated at the end of training.
            at_eval = eval_every is None or (s["epoch"] + 1 == epochs and s["step"] % eval_every != 0)
            improved_value = run_evaluation() if at_eval else None
            if scheduler is not None:
                scheduler.step()
            s["epoch"] += 1
            if improved_value is not None:
                checkpoint(*improved_value)
            elif checkpoint_dir is not None:
                checkpoint(False, None)
    except KeyboardInterrupt as exc:
        if hasattr(exc, "add_note"):  # (Python 3.11+) shown under the traceback
            exc.add_note(_interrupted(s, total_steps, checkpoint_dir, on_disk, history.metric))
        raise
    finally:
        notice.stop()
        if bar is not None:
            bar.close()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return history
