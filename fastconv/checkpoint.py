"""Checkpoints: a directory holding the weights in safetensors (readable by other tools) and a JSON
file describing them (architecture config, epoch, metric, fastconv version, optimizer and scheduler
state, the weights file's SHA-256).

    save("runs/best", model, optimizer=opt, epoch=3, metric=0.97)
    model, info = load("runs/best")                  # rebuilt from the config
    info = load_into("runs/last", model, opt)       # resume / fine-tune an existing model

Layout of a checkpoint directory:
    checkpoint.json                       names the weights file and its checksum; carries its own
                                          checksum (index_sha256, over its canonical content); the
                                          model's config, which parameters are tied and frozen,
                                          which modules were in eval mode
    weights-<unique>.safetensors          model parameters ("0.weight", ...) and optimizer buffers
                                          ("optim.<param index>.<buffer>")

Crash safety. Each save writes a NEW weights file under a fresh name (temp file, flush, fsync,
os.replace, fsync of the directory), then replaces checkpoint.json the same way, and only then
deletes the weights files the new JSON does not name. Until the JSON's os.replace the old JSON
names the old weights, which still exist; after it, the new JSON names new, fully written
weights. A crash at any point therefore leaves a complete, loadable checkpoint (old or new);
what a crash can leave behind is an unreferenced temp or weights file, removed by the next save.
Saves to one directory from several threads of a process take turns (the last one's checkpoint
stays); processes saving to the same directory at once are not supported.
"""
from __future__ import annotations

import functools
import hashlib
import json
import numbers
import os
import re
import threading
import time
import uuid

import numpy as np

from . import __version__
from . import backend as _backend
from . import nn
from .ops import _check
from ._host import to_numpy

__all__ = ["CheckpointError", "save", "load", "load_into", "read_info"]

FORMAT = "fastconv-checkpoint"
FORMAT_VERSION = 1
INDEX = "checkpoint.json"
# The names save() writes, and so the only ones its cleanup deletes: a user's own files beside a
# checkpoint (weights-pretrained.safetensors, say) are not its to remove.
_OWN_FILE = re.compile(r"weights-\d{8}T\d{6}-[0-9a-f]{8}\.safetensors|\.tmp-[0-9a-f]{32}")
OPTIM_PREFIX = "optim."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated, or of another architecture."""


def _directory(path) -> str:
    """The checkpoint directory of `path` (the directory or its JSON); CheckpointError for another file."""
    path = os.fspath(path)
    if not path:
        raise CheckpointError("the checkpoint path is empty: give a directory")
    directory = os.path.dirname(path) or "." if os.path.basename(path) == INDEX else path
    if os.path.islink(directory) and not os.path.exists(directory):  # (os.makedirs: a bare FileExistsError)
        raise CheckpointError(f"{directory!r} is a symbolic link to {os.readlink(directory)!r}, which does not "
                              "exist: create its target, or give another directory")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory!r} is a file, not a checkpoint directory (pass the directory or "
                              f"its {INDEX})")
    return directory


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(directory, name, data: bytes):
    """directory/name = data, whole or not at all: a temp file, fsync, rename, fsync of the directory."""
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


# One lock per checkpoint directory (by real path): a save's cleanup deletes every weights and temp
# file its JSON does not name, so two saves to one directory at once deleted each other's files (the
# one committed last could name weights the other had deleted: a checkpoint that no longer loads).
_directory_locks: dict = {}
_directory_locks_lock = threading.Lock()


def _lock_of(directory) -> threading.Lock:
    key = os.path.realpath(directory)
    with _directory_locks_lock:
        return _directory_locks.setdefault(key, threading.Lock())


def _after_fork_in_child():
    # A lock held by a thread of the parent (one saving while another forked) stays held in the
    # child, which has no such thread: its own save there would wait forever. No one saves there yet.
    global _directory_locks, _directory_locks_lock
    _directory_locks, _directory_locks_lock = {}, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _jsonable(value):
    """Optimizer/scheduler state minus arrays (those go to safetensors)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_normal(value, what):
    """`value` as it reads back from the JSON (keys strings, tuples lists): the checksum is computed on
    this form, so it still matches after a reload. TypeError naming `what` if JSON cannot hold it."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint {what} must be JSON-serializable (dicts, lists, strings, numbers, "
                        f"bools, None): {exc}") from None


def _host_array(a):
    """A C-contiguous host copy of a device array, of the same shape: np.ascontiguousarray alone
    makes a 0-d array (a scalar parameter) 1-d, which then no longer loads into its parameter."""
    return np.ascontiguousarray(to_numpy(a)).reshape(tuple(a.shape))


def _split_optimizer(optimizer):
    """(JSON-able optimizer state, {safetensors key: host array})."""
    sd = optimizer.state_dict()
    arrays, state = {}, {}
    for i, entry in sd["state"].items():
        state[str(i)] = {}
        for key, value in entry.items():
            if hasattr(value, "shape") and not isinstance(value, (np.generic, numbers.Number)):
                # (a 0-d buffer too: the state of a scalar parameter; "step" is a Python int)
                arrays[f"{OPTIM_PREFIX}{i}.{key}"] = _host_array(value)
            else:
                state[str(i)][key] = _jsonable(value)
    return {"type": sd["type"], "hyperparameters": _jsonable(sd["hyperparameters"]), "state": state}, arrays


def _index_digest(info) -> str:
    """SHA-256 of the JSON's content (canonical form, without this field): the weights carry their own
    checksum, and this one covers what the JSON holds (epoch, metric, optimizer hyperparameters, the
    training loop's state), where a flipped digit would otherwise load silently."""
    content = {k: v for k, v in info.items() if k != "index_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, allow_nan=True).encode()).hexdigest()


def _metric_value(metric):
    """save's metric as a float (None stays None); a TypeError naming it for anything else (float()'s own
    said "could not convert string to float" and no more)."""
    if metric is None:
        return None
    # (a 0-d array, as a loss op returns, is a number; a string or a bool is not)
    if not isinstance(metric, (str, bytes, bool, np.bool_)) and np.ndim(metric) == 0:
        try:
            return float(metric)
        except (TypeError, ValueError):
            pass
        except OverflowError:  # (an int past the largest float: 10**400)
            raise ValueError(f"checkpoint.save: metric {metric!r:.60} is past the largest float") from None
    raise TypeError(f"checkpoint.save: metric must be a number or None, got {metric!r:.60}")


def _refuse_a_config_that_does_not_fit(model, config, who="checkpoint.save"):
    """ValueError where the model its config rebuilds has other parameter shapes or dtypes than `model`
    (a layer replaced after the model was built, its _args() still the old one's): such a checkpoint was
    written, and failed only at load. A config that cannot be rebuilt here (an unregistered layer) is
    let through: load says so, and load_into needs no config."""
    layout = tuple((name, tuple(int(n) for n in a.shape), str(a.dtype)) for name, a in model.state_dict().items())
    registry = tuple(sorted((name, id(cls)) for name, cls in nn._REGISTRY.items()))  # (what rebuilds it)
    try:
        misfit = _config_misfit(json.dumps(config, sort_keys=True), layout, registry)
    except Exception:  # noqa: BLE001 (not rebuildable here: an unregistered layer, a constructor's own error, no
        return  # memory for the copy on a GPU; load says so, and load_into needs no config. Not cached.)
    if misfit:
        raise ValueError(f"{who}: model.config() does not describe this model: {misfit}; a checkpoint of it would "
                         "not load (a layer replaced after the model was built? the module's _args() must give "
                         "what rebuilds it as it is now)")


@functools.lru_cache(maxsize=64)  # (a check per model layout, not per save: it builds the model again)
def _config_misfit(config_text, layout, registry):
    with nn._no_init():
        rebuilt = dict(nn.from_config(json.loads(config_text)).named_parameters())
    extra = sorted(set(rebuilt) - {name for name, _, _ in layout})
    if extra:
        return f"the model the config rebuilds has parameters {extra[:3]} which this model lacks"
    for name, shape, dtype in layout:
        if name not in rebuilt:
            return f"its parameter {name} is not in the model the config rebuilds"
        p = rebuilt[name]
        if (tuple(p.shape), str(p.dtype)) != (shape, dtype):
            return (f"its parameter {name} is {shape} {dtype}, but {tuple(p.shape)} {p.dtype} in the model the "
                    "config rebuilds")
    return None


def save(path, model, *, optimizer=None, scheduler=None, epoch, metric=None, extra=None) -> str:
    """Writes the checkpoint directory `path` (created if needed); returns the JSON's path.

    extra: any JSON-able dict (the training loop keeps its own state there), stored in its JSON form:
    int keys come back as strings. Something JSON cannot hold is a TypeError before any file is written.
    """
    from safetensors.numpy import save as st_save

    directory = _directory(path)
    # Everything the JSON will hold is checked (and put in its JSON form) before any file is written.
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastconv_version": __version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "epoch": _check.integer(epoch, "checkpoint.save: epoch", low=0),
        "metric": _metric_value(metric),
        "config": _json_normal(model.config(), "model config"),
        "parameters": list(model.state_dict().keys()),
        "tied": _tied(model),
        "frozen": frozen_names(model),
        "eval_modules": eval_module_names(model),
        "module_state": _json_normal(_jsonable(model.extra_state()), "module state"),
        "weights": None,
        "optimizer": None,
        "scheduler": None if scheduler is None else _json_normal(_jsonable(scheduler.state_dict()), "scheduler state"),
        "extra": _json_normal(extra, "extra"),
    }
    tensors = {name: _host_array(a) for name, a in model.state_dict().items()}
    if optimizer is not None:
        optim_state, optim_arrays = _split_optimizer(optimizer)
        info["optimizer"] = _json_normal(optim_state, "optimizer state")
        clash = sorted(set(optim_arrays) & set(tensors))
        if clash:
            raise ValueError(f"checkpoint.save: the model's state names {clash[:3]} are also the names the optimizer's "
                             f"state is saved under ({OPTIM_PREFIX}<parameter index>.<buffer>): rename that submodule")
        tensors.update(optim_arrays)
    _refuse_a_config_that_does_not_fit(model, info["config"])

    os.makedirs(directory, exist_ok=True)
    _refuse_a_foreign_index(directory)
    # One metadata key: safetensors keeps them in a Rust HashMap, whose order changes from save to save,
    # so two keys gave the same weights two files (and two sha256s) by chance. The version is in the JSON.
    data = st_save(tensors, metadata={"format": FORMAT})
    weights = f"weights-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.safetensors"
    info["weights"] = {"file": weights, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    info["index_sha256"] = _index_digest(info)
    text = json.dumps(info, indent=1, allow_nan=True).encode()
    with _lock_of(directory):
        _write_atomically(directory, weights, data)
        _write_atomically(directory, INDEX, text)  # the commit point
        for name in os.listdir(directory):
            if _OWN_FILE.fullmatch(name) and name != weights:  # earlier saves' weights, interrupted ones' files
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
        _fsync_directory(directory)
    return os.path.join(directory, INDEX)


def _refuse_a_foreign_index(directory):
    """CheckpointError where directory/checkpoint.json is a JSON file of something else (a user's own
    file of that name): save would replace it."""
    try:
        with open(os.path.join(directory, INDEX), "rb") as f:
            text = f.read()
    except OSError:
        return  # none
    try:
        found = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # Not JSON: a corrupt checkpoint's where a weights file of save's own lies beside it (a new save
        # replaces it); else a user's own file of that name (notes), which save would destroy.
        try:
            names = os.listdir(directory)
        except OSError:
            names = []
        if any(name.startswith("weights-") and _OWN_FILE.fullmatch(name) for name in names):
            return
        found = None
    if not (isinstance(found, dict) and found.get("format") == FORMAT):
        raise CheckpointError(f"{os.path.join(directory, INDEX)} is not a fastconv checkpoint's JSON; save would "
                              "replace it: save the checkpoint to another directory")


def read_info(path) -> dict:
    """The checkpoint's JSON (no weights read)."""
    directory = _directory(path)
    index = os.path.join(directory, INDEX)
    try:
        with open(index, "rb") as f:
            info = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {directory!r} ({INDEX} not found)") from None
    except OSError as exc:  # a directory of that name, no permission to read it
        raise CheckpointError(f"cannot read {index}: {exc}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # (RecursionError: JSON nested too deep)
        raise CheckpointError(f"{index} is not valid JSON ({type(exc).__name__}: {exc}): the checkpoint is "
                              "corrupt") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{index} is not a fastconv checkpoint")
    version = info.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{index} has format_version {version!r}, not an integer: the checkpoint is corrupt")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{index} has format version {version}; this fastconv "
                              f"({__version__}) reads up to {FORMAT_VERSION}")
    if info.get("index_sha256") != _index_digest(info):
        raise CheckpointError(f"{index} fails its SHA-256 check (its content does not match the checksum "
                              "written with it): the checkpoint is corrupt")
    # The fields load() and load_into() rely on (a JSON edited and re-signed by hand may lack them).
    missing = [k for k in ("epoch", "config", "weights") if k not in info]
    weights = info.get("weights")
    if not missing and not (isinstance(weights, dict) and isinstance(weights.get("file"), str)
                            and isinstance(weights.get("sha256"), str) and isinstance(weights.get("bytes"), int)):
        missing = ["weights.file, weights.sha256 or weights.bytes"]
    if missing:
        raise CheckpointError(f"{index} lacks {', '.join(missing)}: the checkpoint is corrupt or was not "
                              "written by fastconv.checkpoint.save")
    return info


def _read_tensors(directory, info) -> dict:
    """The weights file's arrays, after checking its size and SHA-256 against the JSON."""
    from safetensors.numpy import load as st_load

    meta = info["weights"]
    file = os.path.join(directory, meta["file"])
    try:
        with open(file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"the checkpoint's weights file {file!r} is missing") from None
    if len(data) != meta["bytes"]:
        raise CheckpointError(f"{file} is {len(data)} bytes but the checkpoint recorded {meta['bytes']}: "
                              "the file is truncated or was replaced")
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["sha256"]:
        raise CheckpointError(f"{file} fails its SHA-256 check (expected {meta['sha256']}, got {digest}): "
                              "the file is corrupt")
    try:
        return st_load(data)
    except Exception as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None


_READ_TRIES = 5  # reads of a checkpoint that saves keep replacing, before the last error stands


def _read_saved(directory, info):
    """(info, its weights' arrays) of one save, from `info` (read_info's) on. A save that replaced the
    checkpoint after `info` was read has deleted the weights it names: then the new JSON is read and
    its weights (again, a few times, while saves keep replacing it)."""
    for _ in range(_READ_TRIES - 1):
        try:
            return info, _read_tensors(directory, info)
        except CheckpointError:
            newer = read_info(directory)
            if newer["weights"] == info["weights"]:
                raise
            info = newer
    return info, _read_tensors(directory, info)


def _model_weights(info, tensors):
    """The model's tensors: those the JSON lists as its parameters (a model of its own may name a
    submodule "optim", whose tensors a test of the prefix took for the optimizer's); checkpoints
    without that list, by the prefix."""
    names = info.get("parameters")
    if not isinstance(names, list):
        return {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    return {k: tensors[k] for k in names if k in tensors}


def _optimizer_state(info, tensors):
    saved = info.get("optimizer")
    if saved is None:
        return None
    state = {}
    for i, entry in saved["state"].items():
        state[int(i)] = dict(entry)
    model_names = set(info.get("parameters") or ())
    for key, value in tensors.items():
        if key.startswith(OPTIM_PREFIX) and key not in model_names:
            i, buf = key[len(OPTIM_PREFIX):].split(".", 1)
            state.setdefault(int(i), {})[buf] = value
    return {"type": saved["type"], "hyperparameters": saved["hyperparameters"], "state": state}


# Config entries that say how a layer computes, not what, by layer type: models that differ only
# there take each other's checkpoints (Conv2d's algorithm, present when not "auto").
_HOW_NOT_WHAT = {"Conv2d": frozenset({"algorithm"})}


def _config_difference(a, b, where="model"):
    """A short description of the first difference between two configs, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        how = _HOW_NOT_WHAT.get(a.get("type"), frozenset()) if a.get("type") == b.get("type") else frozenset()
        for key in [k for k in list(a) + [k for k in b if k not in a] if k not in how]:
            if key not in a or key not in b:
                return f"{where}.{key}: present in only one of them"
            diff = _config_difference(a[key], b[key], f"{where}.{key}")
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} entries vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _config_difference(x, y, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{where}: {a!r} in the checkpoint, {b!r} in the model"


def _tied(model) -> list:
    """The groups of parameter names that share one Parameter (weights tied by assigning one layer's
    Parameter to another: b.weight = a.weight), each in named_parameters' order. config() describes
    the layers, not this: load() ties the rebuilt model's parameters again from it."""
    names = {}
    for name, p in model.named_parameters():
        names.setdefault(id(p), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def frozen_names(model) -> list:
    """The names of the model's frozen parameters (requires_grad False), in named_parameters' order."""
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def eval_module_names(model) -> list:
    """The names of the model's modules in eval mode ("" for the model itself), depth first. (Saved
    while another thread predicts with the model, they are the eval modes predict switched to.)"""
    return [name for name, m in model._named_modules() if not m.training]


def _set_eval_modules(model, names, directory):
    """Puts the rebuilt model's modules the saved model had in eval mode back in it (the others train,
    as a newly built model does), so that a model saved after eval() computes the same outputs when
    loaded: its Dropout layers, say, pass their input through."""
    modules = dict(model._named_modules())
    if not (isinstance(names, list) and all(isinstance(n, str) and n in modules for n in names)):
        raise CheckpointError(f"the checkpoint {directory!r} lists {names!r} as its modules in eval mode, which are "
                              "not modules of its model")
    nn._set_modes(model, "" not in names, [(m, name not in names) for name, m in modules.items()])


def _freeze(model, names, directory):
    """Freezes the rebuilt model's parameters the saved model had frozen."""
    params = dict(model.named_parameters())
    if not (isinstance(names, list) and all(isinstance(n, str) and n in params for n in names)):
        raise CheckpointError(f"the checkpoint {directory!r} lists {names!r} as its frozen parameters, which are not "
                              "parameters of its model")
    for name in names:
        params[name].requires_grad = False


def _tie(model, groups, directory):
    """Ties the rebuilt model's parameters as the saved model's were (groups: _tied's, from the JSON)."""
    params, modules = dict(model.named_parameters()), dict(model._named_modules())
    if not isinstance(groups, list):
        raise CheckpointError(f"the checkpoint {directory!r} lists its tied parameters as {groups!r}, not a list")
    for group in groups:
        if not (isinstance(group, list) and len(group) > 1 and all(isinstance(n, str) and n in params for n in group)
                and len({(params[n].shape, params[n].dtype) for n in group}) == 1):
            raise CheckpointError(f"the checkpoint {directory!r} ties {group!r}, which are not parameters of one "
                                  "shape and dtype in its model")
        for name in group[1:]:
            owner, _, attribute = name.rpartition(".")
            setattr(modules[owner], attribute, params[group[0]])


def load(path):
    """(model rebuilt from the checkpoint's config with its weights, its tied and frozen parameters and
    each module's train/eval mode as saved, info dict). (load_into leaves the model's modes as they are,
    as torch's load_state_dict does.)"""
    directory = _directory(path)
    info, tensors = _read_saved(directory, read_info(directory))
    # The rebuilt layers draw no initial weights (the file's overwrite them) and take Dropout seeds
    # from a generator of their own: the one nn.manual_seed sets is left where it was, so a model built
    # after a load (a search's next trial, fit after restore_best), or in another thread during it, gets
    # the weights it would get without it.
    try:
        with nn._no_init():
            model = nn.from_config(info["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot rebuild the model from {directory!r}: {exc}") from None
    _tie(model, info.get("tied", []), directory)  # (checkpoints from before ties were saved: none)
    _freeze(model, info.get("frozen", []), directory)  # (nor frozen parameters)
    _set_eval_modules(model, info.get("eval_modules", []), directory)  # (nor modes: all training)
    try:
        model.load_state_dict(_model_weights(info, tensors))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"the weights in {directory!r} do not fit its own config: {exc}") from None
    try:
        model.load_extra_state(info.get("module_state") or {})
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"the module state in {directory!r} does not fit its own config: {exc}") from None
    return model, info


def load_into(path, model, optimizer=None, scheduler=None, *, strict=True):
    """Loads the checkpoint's weights (and optimizer / scheduler state when given) into existing
    objects; returns the info dict. Everything is checked before anything changes: a corrupt file or
    another architecture raises CheckpointError and leaves model, optimizer and scheduler untouched.

    strict=False (fine-tuning into a changed model): the architectures need not match; the
    parameters present in both with the same names are loaded (their shapes must agree), and the
    returned dict says which were not: "missing_keys" (the model's, left as they were) and
    "unexpected_keys" (the checkpoint's, not loaded), as torch's load_state_dict returns them. No
    name in common is a CheckpointError; so is an optimizer whose model's parameters are not the
    checkpoint's (its state goes by parameter position).
    """
    directory = _directory(path)

    def check_architecture(info):
        diff = _config_difference(info["config"], model.config()) if strict else None
        if strict and not diff and "tied" in info and info["tied"] != _tied(model):
            diff = f"tied parameters: {info['tied']!r} in the checkpoint, {_tied(model)!r} in the model"
        if diff:
            raise CheckpointError(f"the checkpoint {directory!r} holds another architecture than the model "
                                  f"({diff})")

    first = read_info(directory)
    check_architecture(first)  # before reading the weights
    info, tensors = _read_saved(directory, first)
    if info is not first:  # replaced by a save meanwhile
        check_architecture(info)
    try:
        weights = _model_weights(info, tensors)
        pairs, missing, unexpected = model.check_state_dict(weights, strict=strict)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"the checkpoint {directory!r} does not fit the model: {exc}") from None
    def names():  # (for the refusals below only)
        return f"the model's {[name for name, _ in model.named_parameters()]}, the checkpoint's {list(weights)}"

    if not pairs and (missing or unexpected):  # (strict=False: a fine-tune that matched nothing "succeeded")
        raise CheckpointError(f"no parameter of the checkpoint {directory!r} has the name of one of the model's "
                              f"({names()}): nothing to load")
    try:
        extra_loads = model.check_extra_state(info.get("module_state") or {}) if strict else []
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"the module state in {directory!r} does not fit the model: {exc}") from None
    optim_state = None
    if optimizer is not None and (missing or unexpected):  # (its state is per parameter position)
        raise CheckpointError(f"the optimizer state in {directory!r} is kept by parameter position, and the "
                              f"model's parameters are not the checkpoint's ({names()}): load the weights alone "
                              "(load_into without the optimizer) and start the optimizer afresh")
    if optimizer is not None:
        try:  # (a JSON edited and re-signed by hand: a list where a dict was, a key gone)
            saved = _optimizer_state(info, tensors)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the optimizer state in {directory!r} is malformed ({type(exc).__name__}: "
                                  f"{exc})") from None
        if saved is None:
            raise CheckpointError(f"the checkpoint {directory!r} has no optimizer state")
        try:
            optim_state = optimizer.check_state_dict(saved)
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"the optimizer state in {directory!r} does not fit the optimizer: {exc}") from None
    if scheduler is not None:
        if info.get("scheduler") is None:
            raise CheckpointError(f"the checkpoint {directory!r} has no scheduler state")
        if not isinstance(info["scheduler"], dict):
            raise CheckpointError(f"the scheduler state in {directory!r} is a {type(info['scheduler']).__name__}, "
                                  "not the dict state_dict() gives")
        if info["scheduler"].get("type") != type(scheduler).__name__:
            raise CheckpointError(f"the checkpoint {directory!r} holds a {info['scheduler'].get('type')} state, "
                                  f"not a {type(scheduler).__name__}")
        try:  # before anything is written: load_state_dict below then cannot fail
            scheduler.check_state_dict(info["scheduler"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"the scheduler state in {directory!r} does not fit the scheduler: {exc}") from None

    xp = _backend.current().xp
    for p, value in pairs:
        p.data[...] = xp.asarray(value)
    for load in extra_loads:
        load()
    if optimizer is not None:
        optimizer.state = optim_state
        for key, value in saved["hyperparameters"].items():
            setattr(optimizer, key, tuple(value) if isinstance(value, list) else value)
    if scheduler is not None:
        scheduler.load_state_dict(info["scheduler"])
    return dict(info, missing_keys=missing, unexpected_keys=unexpected)
