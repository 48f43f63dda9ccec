"""What fit checks before it trains or resumes, what it warns of, and what an interrupted fit says."""
import os
import tempfile
import warnings

from .. import backend as _backend
from .. import checkpoint as _checkpoint
from ._predict import _in_eval_mode
from ._words import _say


class ResumeError(ValueError):
    """fit(..., resume=True) refused: <checkpoint_dir>/last holds a run this call cannot continue (another
    metric, batch size, number of training rows, or training data). (A `last` that fit did not write is
    a checkpoint.CheckpointError.)"""


def _check_describable(model):
    """A checkpoint holds the model's architecture (model.config(), JSON): a model that cannot give it
    (a custom layer without _args()) is refused before training, not at the first save, an epoch in."""
    try:
        config = _checkpoint._json_normal(model.config(), "model config")
    except (NotImplementedError, TypeError) as exc:
        raise type(exc)(f"fit: {_say('checkpoint_dir')} needs the model's architecture for its checkpoints "
                        f"(model.config()), which this model cannot give: {exc}") from None
    _checkpoint._refuse_a_config_that_does_not_fit(model, config, who=f"fit: {_say('checkpoint_dir')}")


def _check_checkpoint_extra(extra) -> dict:
    """fit's checkpoint_extra as the checkpoints will hold it ({} for None), checked before training."""
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise TypeError(f"fit: checkpoint_extra must be a dict (stored in each checkpoint's extra), got "
                        f"{type(extra).__name__}")
    if "fit" in extra:
        raise ValueError("fit: checkpoint_extra must not have the key 'fit': fit keeps its own state there")
    try:
        return _checkpoint._json_normal(extra, "extra")
    except TypeError as exc:
        raise TypeError(f"fit: checkpoint_extra: {exc}") from None


def _check_optimizer_of(model, optimizer):
    """ValueError when the optimizer steps a parameter the model does not hold: made for another model
    (a notebook cell that rebuilt the model and not its optimizer), it stepped parameters that never got a
    gradient, and fit trained nothing, silently. (An optimizer of some of the model's parameters is
    fine: the others stay as they are, as in torch.)"""
    params = getattr(optimizer, "params", None)
    if not isinstance(params, list):
        return  # (not one of fastconv's optimizers: fit steps it as given)
    held = {id(p) for p in model.parameters()}
    foreign = [i for i, p in enumerate(params) if id(p) not in held]
    if foreign:
        raise ValueError(f"fit: {len(foreign)} of the optimizer's {len(params)} parameters (the first: "
                         f"optimizer.params[{foreign[0]}], shape {tuple(params[foreign[0]].data.shape)}) are not "
                         "among model.parameters(): the optimizer was made for another model (one built again?), "
                         "or the model keeps those layers where parameters() does not find them (a plain list: "
                         "make them attributes, or an nn.Sequential), so that they would not be saved or frozen "
                         "either; make the optimizer from this model: optim.Adam(model.parameters(), ...)")


def _warn_frozen(model):
    """A RuntimeWarning when every parameter of the model is frozen: the optimizer skips frozen
    parameters, so fit would run every epoch and change nothing, silently."""
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params):
        warnings.warn(f"fit: every parameter of the model ({type(model).__name__}, {len(params)} parameters) is "
                      "frozen (requires_grad=False), so training changes nothing: call model.unfreeze(), or "
                      "unfreeze() the layers to train, before fit (freeze() froze them)", RuntimeWarning, stacklevel=3)


def _warn_replaced_hyperparameters(last_dir, given, saved, scheduled, owner="optimizer"):
    """Resume takes the optimizer's (and scheduler's) hyperparameters from the checkpoint (as torch's
    load_state_dict does): a warning where this call's had others, which it would otherwise drop
    unsaid. (Not the optimizer's lr under a scheduler: the saved one is the schedule's by then.)"""
    changed = {k: (given[k], saved[k]) for k in given
               if k in saved and given[k] != saved[k] and not (k == "lr" and scheduled)}
    if changed:
        replaced = ", ".join(f"{k} {old!r} (not {new!r})" for k, (new, old) in changed.items())
        warnings.warn(f"fit: resume continues with the {owner}'s hyperparameters saved in {os.fspath(last_dir)}, "
                      f"not {_say('this call')}'s: {replaced}", RuntimeWarning, stacklevel=3)


def _warn_final_evaluation_kept(last_dir, history, s, epochs, eval_every):
    """A run that trained to its last epoch between eval_every's evaluations was evaluated at its end
    (so that its final weights were too). Resumed for more epochs, it keeps that evaluation: its
    record, a best checkpoint saved from it, its count towards patience, the training loss averaged
    up to it. A run of those epochs from the start makes no evaluation there: the histories differ
    from then on, and so may the best checkpoint and an early stop (the weights trained do not)."""
    last = history.records[-1] if history.records else None
    if (eval_every is None or last is None or s["epoch"] >= epochs or s["batch"] != 0 or last.get("step") != s["step"]
            or s["step"] % eval_every == 0):
        return
    warnings.warn(f"fit: the run in {os.fspath(last_dir)} ended at step {s['step']}, between evaluations every "
                  f"{eval_every} steps, and was evaluated there, at the end of its training; resumed for more "
                  "epochs it keeps that evaluation (its history record, a best checkpoint saved from it, its count "
                  f"towards patience), which a run of {epochs} epochs from the start would not have made",
                  RuntimeWarning, stacklevel=3)


def _warn_diverged(record, name, best):
    """Once per fit: a non-finite evaluation (training diverged) is recorded and never the best, but a
    run without patience trains on to its last epoch with it."""
    kept = "no evaluation was the best yet" if best is None else f"the best so far (epoch {best['epoch']}) is kept"
    warnings.warn(f"fit: training diverged: the evaluation at epoch {record['epoch']}, step {record['step']} has "
                  f"{name} {record['val_metric']} (outputs or loss not finite); such evaluations never count as the "
                  f"best, and {kept}. A lower learning rate may help.", RuntimeWarning, stacklevel=4)


def _interrupted(s, total_steps, checkpoint_dir, on_disk, metric):
    """What an interrupted fit says: where it stopped and what its checkpoints hold."""
    note = f"fit was interrupted in epoch {s['epoch'] + 1}, at step {s['step']} of {total_steps}; "
    if checkpoint_dir is None:
        return note + "nothing was saved (no checkpoint_dir)"
    if on_disk["step"] is None:
        return note + f"nothing was saved in {checkpoint_dir} yet (the first evaluation or epoch end saves)"
    note += (f"{os.path.join(checkpoint_dir, 'last')} holds the run after step {on_disk['step']} "
             f"({_say('resume it')} continues from there)")
    best = on_disk["best"]
    if best is not None:
        note += f", {os.path.join(checkpoint_dir, 'best')} its best evaluation ({metric} {best['val_metric']:.4g}, " \
                f"epoch {best['epoch']}, step {best['step']})"
    return note


def _keep_earlier_run(checkpoint_dir, last_dir, best_dir):
    """ValueError when checkpoint_dir holds checkpoints (another run's, or this one's before a restart): a
    fresh run would replace its best at the first evaluation, and nothing a user saved may be lost unasked."""
    held = [os.path.basename(d) for d in (best_dir, last_dir) if os.path.exists(os.path.join(d, _checkpoint.INDEX))]
    if held:
        raise ValueError(f"fit: {_say('checkpoint_dir')} {os.fspath(checkpoint_dir)!r} holds an earlier run's "
                         f"checkpoints ({', '.join(held)}): {_say('resume')} continues it, {_say('overwrite')} "
                         f"replaces it, or give another {_say('checkpoint_dir')}")


def _keep_best_without_last(checkpoint_dir, last_dir, best_dir):
    """ValueError when resume has no last/ to continue but a best/ is there (a search's output, a run
    interrupted between the two saves): starting afresh, as resume does without a last/, would replace
    that best model at the first evaluation."""
    index = _checkpoint.INDEX
    if os.path.exists(os.path.join(best_dir, index)) and not os.path.exists(os.path.join(last_dir, index)):
        raise ValueError(f"fit: {_say('checkpoint_dir')} {os.fspath(checkpoint_dir)!r} holds a best checkpoint "
                         f"(best/) but no last/ for {_say('resume')} to continue: {_say('overwrite')} starts afresh, "
                         f"replacing it, or give another {_say('checkpoint_dir')}")


_TARGET_CHUNK = 8192  # rows a call of the loss takes in _check_targets


def _check_targets(model, loss_fn, data, name):
    """The loss's own checks of every target (a label's range, a target's shape against the output's),
    before training: on zero outputs of the model's output shape (one row through the model, in eval
    mode, which draws nothing from a Dropout's generator). A bad label in the validation set failed only
    at the first evaluation, an epoch of training later, and one in the training set at its batch;
    neither said which set."""
    x, y = data
    xp = _backend.current().xp
    with _in_eval_mode(model):
        out = model(xp.asarray(x[:1]))
    for start in range(0, len(y), _TARGET_CHUNK):
        part = y[start:start + _TARGET_CHUNK]
        try:
            value = loss_fn(xp.zeros((len(part), *out.shape[1:]), out.dtype), part)
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):
                raise
            raise type(exc)(f"fit: the {name} targets (rows {start} to {start + len(part) - 1}): {exc}") from None
        _check_loss_value(loss_fn, value)


def _check_loss_value(loss_fn, value):
    """fit sums the losses it is given: each must be one real number (a Python or NumPy number, or a
    0-d array); a TypeError before the first step, not after it."""
    shape, kind = getattr(value, "shape", None), getattr(getattr(value, "dtype", None), "kind", None)
    real = isinstance(value, (int, float)) or (shape == () and kind is not None and kind in "fiu")
    if isinstance(value, bool) or not real:
        got = (f"an array of shape {tuple(shape)} dtype {getattr(value, 'dtype', None)}" if shape is not None
               else type(value).__name__)
        raise TypeError(f"fit: the loss {type(loss_fn).__name__} returned {got}, not one number (a float, or a "
                        "0-d array of the mean loss)")


def _check_writable(directory):
    """An OSError (PermissionError for a read-only directory) now, not at the first checkpoint an epoch
    later: a file created in `directory` and removed."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-writable-", dir=directory)
    except OSError as exc:
        raise type(exc)(f"fit: cannot write in {os.fspath(directory)!r} ({exc.strerror or exc}), where fit saves its "
                        f"checkpoints: give a {_say('checkpoint_dir')} it can write") from None
    os.close(fd)
    os.unlink(probe)


def _check_resumable(last_dir, name, mode, batches, model, scheduler):
    """CheckpointError for a `last` that train.fit did not write; ResumeError for another metric, a
    scheduler where the run had none or none where it had one (the lr would go another way), or
    for another batch size or number of training rows (the saved position in the epoch's shuffled
    order would point elsewhere: rows skipped or repeated), other training data (by its digest), other
    validation data (the best so far was measured on the saved run's), or other parameters frozen
    (other parameters would train)."""
    info = _checkpoint.read_info(last_dir)
    extra = info.get("extra")
    saved = extra.get("fit") if isinstance(extra, dict) else None
    if not (isinstance(saved, dict) and {"state", "rng", "history"} <= set(saved)):
        raise _checkpoint.CheckpointError(
            f"resume: {last_dir} was not written by train.fit (its JSON has no training-loop state in "
            f"extra['fit']); use another {_say('checkpoint_dir')}, or {_say('overwrite')} to replace it")
    metric, saved_mode = saved["history"].get("metric"), saved["history"].get("mode")
    if metric != name or saved_mode != mode:
        raise ResumeError(f"resume: the checkpoint in {last_dir} monitored {metric} ({saved_mode}), "
                          f"{_say('this call')} {name} ({mode})")
    saved_batches = saved.get("batches", batches)  # (checkpoints from before this check: not known)
    if any(saved_batches.get(k) != batches[k] for k in ("batch_size", "train_rows")):
        raise ResumeError(f"resume: the checkpoint in {last_dir} was trained with batch_size "
                          f"{saved_batches.get('batch_size')} on {saved_batches.get('train_rows')} training rows, "
                          f"{_say('this call')} has batch_size {batches['batch_size']} on {batches['train_rows']}; "
                          f"resume with the same ones (or start afresh with {_say('overwrite')})")
    if saved_batches.get("train_data", batches["train_data"]) != batches["train_data"]:  # (older: not recorded)
        raise ResumeError(f"resume: the checkpoint in {last_dir} was trained on other training data (as many rows, "
                          "other values or order: another split or seed?); resume with the same (x, y), or start "
                          f"afresh with {_say('overwrite')}")
    if saved_batches.get("val_data", batches["val_data"]) != batches["val_data"]:  # (older: not recorded)
        saved_val, given_val, this_call = saved_batches["val_data"], batches["val_data"], _say("this call")
        differs = (f"was trained without validation data, and {this_call} gives some" if saved_val is None else
                   f"was evaluated on validation data, and {this_call} gives none" if given_val is None else
                   f"was evaluated on other validation data (other values, order or size) than {this_call}'s")
        raise ResumeError(f"resume: the run in {last_dir} {differs}: its best so far would be compared with "
                          f"evaluations of another kind; resume with the same val, or start afresh with "
                          f"{_say('overwrite')}")
    saved_scheduler = info.get("scheduler")
    if (saved_scheduler is None) != (scheduler is None):  # (without: the lr stayed where the schedule had left it)
        kind = saved_scheduler.get("type", "scheduler") if isinstance(saved_scheduler, dict) else "scheduler"
        had, fix = ((f"a {kind}", f"give the run's {kind} (of this optimizer)") if saved_scheduler is not None
                    else ("no scheduler", "give none"))
        given = "none" if scheduler is None else f"a {type(scheduler).__name__}"
        raise ResumeError(f"resume: the run in {last_dir} was trained with {had}, {_say('this call')} gives {given}: "
                          f"its learning rate would go on another way; {fix} to continue it, or start afresh with "
                          f"{_say('overwrite')} (from its weights: checkpoint.load_into, then fit in another "
                          f"{_say('checkpoint_dir')})")
    frozen = _checkpoint.frozen_names(model)
    if "frozen" in info and info["frozen"] != frozen:  # (checkpoints from before it was saved: not known)
        raise ResumeError(f"resume: the run in {last_dir} trained with {info['frozen'] or 'no'} parameters frozen, "
                          f"{_say('this call')}'s model has {frozen or 'none'} frozen: freeze() the same layers "
                          f"to continue it (or start afresh with {_say('overwrite')})")
