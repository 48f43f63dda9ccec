"""fastconv.train: fit learns, saves the best checkpoint, stops early, resumes bit for bit (cpu),
runs on emu; predict; search ranks settings and keeps the best model."""
import json
import os
import re
import shutil
import time
import warnings

import numpy as np
import pytest

from fastconv import checkpoint, losses, metrics, nn, ops, optim, train

pytestmark = pytest.mark.skipif(
    not all(hasattr(ops, n) for n in ("softmax_cross_entropy_forward", "bce_with_logits_forward", "mse_forward",
                                      "sgd_step", "adam_step")),
    reason="loss and optimizer ops not merged yet")


def blobs(n=120, seed=0, classes=3, features=4):
    centers = np.random.default_rng(100).standard_normal((classes, features)) * 3  # one distribution
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, features))).astype(np.float32)
    return x, y.astype(np.int64)


def mlp(seed=0, dropout=0.0):
    layers = [nn.Linear(4, 8, seed=seed), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout, seed=seed))
    return nn.Sequential(*layers, nn.Linear(8, 3, seed=seed + 1))


def build_mlp(settings):
    """search's build: mlp() trained by SGD at settings["lr"]."""
    model = mlp()
    return model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=settings["lr"])


def test_fit_learns_and_saves_the_best_checkpoint(tmp_path):
    (x, y), val = blobs(seed=0), blobs(60, seed=1)
    model = mlp()
    history = train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        (x, y), val, epochs=6, batch_size=16, metric="accuracy", checkpoint_dir=tmp_path,
                        progress=False)
    assert len(history) == 6 and history.mode == "max"
    assert history.records[-1]["train_loss"] < history.records[0]["train_loss"]
    assert history.best_metric >= 0.9 and history.best_metric == max(history.column("val_accuracy"))
    best, info = checkpoint.load(tmp_path / "best")
    assert info["epoch"] == history.best_epoch and info["metric"] == history.best_metric
    # The best checkpoint reproduces the metric it was saved for.
    assert train.evaluate(best, losses.CrossEntropyLoss(), val, 64,
                          lambda yt, s: float(np.mean(s.argmax(1) == yt)))[1] == history.best_metric
    history.to_json(tmp_path / "history.json")
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["best_epoch"] == history.best_epoch and len(saved["records"]) == 6


def test_history_to_json_replaces_the_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "history.json"
    train.History("loss", "min", [{"epoch": 1, "val_metric": 0.5}], 0).to_json(path)
    before = path.read_text()
    bad = train.History("loss", "min", [{"epoch": 1, "val_metric": 0.5}, {"epoch": 2, "val_metric": object()}], 0)
    with pytest.raises(TypeError):  # (json.dump had written the first record into the file by then)
        bad.to_json(path)
    assert path.read_text() == before and os.listdir(tmp_path) == ["history.json"]


def run(tmp_path, epochs, resume=False, eval_every=None, scheduler=True, overwrite=False):
    x, y = blobs(100, seed=1)
    val = blobs(40, seed=2)
    model = mlp(seed=3, dropout=0.2)
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5) if scheduler else None
    history = train.fit(model, losses.CrossEntropyLoss(), opt, (x, y), val, epochs=epochs, batch_size=16,
                        checkpoint_dir=tmp_path, resume=resume, scheduler=sched, eval_every=eval_every, seed=7,
                        progress=False, overwrite=overwrite)
    return model, history


def test_a_foreign_checkpoint_json_in_last_or_best_is_refused_before_training(tmp_path):
    # With overwrite=True fit trained, wrote best/, and only then failed to save last/ over it.
    (tmp_path / "last").mkdir()
    (tmp_path / "last" / "checkpoint.json").write_text('{"mine": 1}')
    with pytest.raises(ValueError, match=r"checkpoint_dir: .*last/checkpoint.json is not a fastconv checkpoint's "
                                         r"JSON; save would replace it"):
        run(tmp_path, 1, resume=False, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["last"] and os.listdir(tmp_path / "last") == ["checkpoint.json"]


def test_resume_with_fewer_epochs_than_trained_says_it_trains_nothing(tmp_path):
    # It returned the longer run's history without a word.
    _, trained = run(tmp_path, 3)
    with pytest.warns(RuntimeWarning, match=r"has trained 3 epochs, more than epochs=1: resume=True trains it no "
                                            r"further"):
        _, resumed = run(tmp_path, 1, resume=True)
    assert [r["epoch"] for r in resumed.records] == [r["epoch"] for r in trained.records] == [1, 2, 3]


def count_steps(monkeypatch, optimizer_class):
    """The optimizer steps taken from now on: a resume must take only those after its checkpoint (a run
    that ignored the checkpoint and started afresh would end with the same bits, seeded as it is)."""
    real, steps = optimizer_class.step, []
    monkeypatch.setattr(optimizer_class, "step", lambda self: steps.append(1) or real(self))
    return steps


# eval_every=2: the 2-epoch run (14 steps) ends on an evaluation, as a run killed there would; the
# 5-epoch run (35 steps) ends with the evaluation of its last step, which the resumed run repeats.
@pytest.mark.parametrize("eval_every", [None, 2])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, eval_every, monkeypatch):
    full_model, full = run(tmp_path / "full", 5, eval_every=eval_every)
    run(tmp_path / "parts", 2, eval_every=eval_every)  # "killed" after epoch 2
    steps = count_steps(monkeypatch, optim.Adam)
    model, resumed = run(tmp_path / "parts", 5, resume=True, eval_every=eval_every)
    assert len(steps) == 35 - 14
    for a, b in zip(model.parameters(), full_model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    keys = ("epoch", "step", "train_loss", "val_loss", "lr")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]


def test_resume_of_a_run_that_ended_between_evaluations_says_it_keeps_its_last_one(tmp_path):
    # eval_every=3: the 2-epoch run's 14 steps end between evaluations (12, 15), so it was evaluated
    # at step 14, which the 5-epoch run from the start is not: the resumed run keeps that record (and
    # says so); the weights trained are the same. With eval_every=2 (14 on the grid) no warning.
    full_model, full = run(tmp_path / "full", 5, eval_every=3)
    run(tmp_path / "parts", 2, eval_every=3)
    with pytest.warns(RuntimeWarning, match=r"ended at step 14, between evaluations every 3 steps.*keeps that "
                                            r"evaluation.*a run of 5 epochs from the start would not have made"):
        model, resumed = run(tmp_path / "parts", 5, resume=True, eval_every=3)
    assert [r["step"] for r in full] == list(range(3, 35, 3)) + [35]
    assert [r["step"] for r in resumed] == [3, 6, 9, 12, 14] + list(range(15, 35, 3)) + [35]
    for a, b in zip(model.parameters(), full_model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    run(tmp_path / "grid", 2, eval_every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(tmp_path / "grid", 5, resume=True, eval_every=2)


def test_resume_with_another_schedule_continues_the_saved_one_and_says_so(tmp_path):
    # The scheduler's state held base_lr and the step count only: a resumed run with StepLR(gamma=0.9)
    # continued the 0.5 run's lr at 0.9's rate (0.1, 0.05, then 0.081: up, mid-run), unsaid.
    def go(directory, epochs, gamma, resume=False):
        x, y = blobs(60, seed=1)
        model = mlp(seed=3)
        opt = optim.SGD(model.parameters(), lr=0.1)
        return train.fit(model, losses.CrossEntropyLoss(), opt, (x, y), blobs(20, seed=2), epochs=epochs,
                         batch_size=16, scheduler=optim.StepLR(opt, step_size=1, gamma=gamma), checkpoint_dir=directory,
                         resume=resume, progress=False)

    full = go(tmp_path / "full", 4, 0.5)
    go(tmp_path / "parts", 2, 0.5)
    with pytest.warns(RuntimeWarning, match=r"resume continues with the scheduler's hyperparameters saved in .*: "
                                            r"gamma 0.5 \(not 0.9\)"):
        resumed = go(tmp_path / "parts", 4, 0.9, resume=True)
    assert [r["lr"] for r in resumed] == [r["lr"] for r in full] == [0.1, 0.05, 0.025, 0.0125]


def test_a_checkpoint_dir_fit_cannot_write_fails_before_training(tmp_path, monkeypatch):
    # A read-only checkpoint_dir failed at the first save, after an epoch of training. (Simulated: a
    # root user, as CI's, writes into a chmod 555 directory.)
    import tempfile as tempfile_module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile_module, "mkstemp", refuse)
    x, y = blobs(40, seed=1)
    model = mlp(seed=3)
    steps = count_steps(monkeypatch, optim.SGD)
    with pytest.raises(PermissionError, match=r"fit: cannot write in '.*ro' \(Permission denied\), where fit saves "
                                              r"its checkpoints: give a checkpoint_dir it can write"):
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=1,
                  batch_size=8, checkpoint_dir=tmp_path / "ro", progress=False)
    assert not steps


def test_bad_targets_fail_before_training_and_name_their_set(monkeypatch):
    # A validation label outside the model's classes failed at the first evaluation, an epoch of
    # training later, naming neither the set nor the row.
    x, y = blobs(40, seed=1)
    model = mlp(seed=3)  # 3 classes
    before = [p.data.copy() for p in model.parameters()]
    bad = y.copy()
    bad[37] = 3
    for tr, val, which in (((x, y), (x, bad), "validation"), ((x, bad), (x, y), "training")):
        steps = count_steps(monkeypatch, optim.SGD)
        with pytest.raises(ValueError, match=rf"fit: the {which} targets \(rows 0 to 39\): .*labels must be class indices "
                                             r"in \[0, 3\).*got 3 at index 37"):
            train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), tr, val, epochs=1,
                      batch_size=8, progress=False)
        assert not steps
    assert all(np.array_equal(b, p.data) for b, p in zip(before, model.parameters()))
    # A target shape the loss refuses, too (BCE's (N,) against the (N, 1) output), with its hint.
    one = nn.Sequential(nn.Linear(4, 1, seed=0))
    with pytest.raises(ValueError, match=r"fit: the training targets .*reshape\(-1, 1\)"):
        train.fit(one, losses.BCEWithLogitsLoss(), optim.SGD(one.parameters(), lr=0.1), (x, (y > 0).astype(np.float32)),
                  epochs=1, batch_size=8, progress=False)


def test_fit_and_predict_take_lists_and_refuse_what_is_not_rows():
    x, y = blobs(24, seed=1)
    model = mlp(seed=3)
    ref = mlp(seed=3)
    train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x.tolist(), y.tolist()),
              epochs=1, batch_size=8, progress=False)
    train.fit(ref, losses.CrossEntropyLoss(), optim.SGD(ref.parameters(), lr=0.1), (x, y), epochs=1, batch_size=8,
              progress=False)
    np.testing.assert_array_equal(train.predict(model, x.tolist()), train.predict(ref, x))  # lists as the model's dtype
    for data, match in (((x, None), "train: y must be an array .* got NoneType"), (({"a": 1}, y), "got dict"),
                        (((r for r in x), y), "got generator"), ((x[0, 0], y), "got float32")):
        with pytest.raises(TypeError, match=match):
            train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), data, epochs=1,
                      batch_size=8, progress=False)
    with pytest.raises(TypeError, match="predict: x must be an array .* got NoneType"):
        train.predict(model, None)


def test_a_checkpoint_dir_that_links_nowhere_is_a_clear_error(tmp_path):
    os.symlink(tmp_path / "missing", tmp_path / "link")
    x, y = blobs(20, seed=1)
    model = mlp(seed=3)
    with pytest.raises(ValueError, match=r"checkpoint_dir: '.*link' is a symbolic link to '.*missing', which does not "
                                         r"exist: create it, or give another checkpoint_dir"):
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=1,
                  batch_size=8, checkpoint_dir=tmp_path / "link", progress=False)


def test_fit_refuses_a_scheduler_of_another_optimizer():
    x, y = blobs(20, seed=1)
    model = mlp(seed=3)
    opt, other = optim.SGD(model.parameters(), lr=0.1), optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="the scheduler was made for another optimizer than the one fit steps"):
        train.fit(model, losses.CrossEntropyLoss(), opt, (x, y), epochs=1, batch_size=8,
                  scheduler=optim.StepLR(other, step_size=1), progress=False)


def test_resume_refuses_a_model_with_other_parameters_frozen(tmp_path):
    x, y = blobs(40, seed=1)

    def go(freeze, resume=False, epochs=1):
        model = mlp(seed=3)
        if freeze:
            model[0].freeze()
        return model, train.fit(model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), (x, y),
                                epochs=epochs, batch_size=8, checkpoint_dir=tmp_path, resume=resume, progress=False)

    go(freeze=True)
    model = mlp(seed=3)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(train.ResumeError, match=r"trained with \['0.weight', '0.bias'\] parameters frozen, this call's "
                                                r"model has none frozen: freeze\(\) the same layers"):
        train.fit(model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.01), (x, y), epochs=2,
                  batch_size=8, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert all(np.array_equal(b, p.data) for b, p in zip(before, model.parameters()))
    resumed, history = go(freeze=True, resume=True, epochs=2)  # the same layers frozen: it continues
    assert len(history) == 2 and resumed[0].weight.frozen


@pytest.mark.parametrize("first_val, then_val, says", [
    ("val", "other", "was evaluated on other validation data"),
    ("val", None, "was evaluated on validation data, and this call gives none"),
    (None, "val", "was trained without validation data, and this call gives some"),
])
def test_resume_refuses_other_validation_data(tmp_path, first_val, then_val, says):
    """The best so far was measured on the saved run's validation data: resumed on another set (or with
    none, or some where there was none), its later evaluations would be compared with it."""
    x, y = blobs(40, seed=1)
    sets = {"val": blobs(20, seed=2), "other": blobs(20, seed=3), None: None}

    def go(val, epochs):
        model = mlp(seed=3)
        return train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05), (x, y),
                         sets[val], epochs=epochs, batch_size=8, checkpoint_dir=tmp_path, resume=True, progress=False)

    go(first_val, 1)
    with pytest.raises(train.ResumeError, match=says):
        go(then_val, 2)
    assert len(go(first_val, 2)) == 2  # the same val: it continues


def test_a_checkpoint_written_before_the_validation_digest_resumes(tmp_path):
    """last/ of a release that saved no digest of val (before 2026-12-07) is taken as it is."""
    x, y = blobs(40, seed=1)

    def go(epochs, val):
        model = mlp(seed=3)
        return train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05), (x, y), val,
                         epochs=epochs, batch_size=8, checkpoint_dir=tmp_path, resume=True, progress=False)

    go(1, blobs(20, seed=2))
    index = tmp_path / "last" / checkpoint.INDEX
    info = json.loads(index.read_text())
    del info["extra"]["fit"]["batches"]["val_data"]
    info["index_sha256"] = checkpoint._index_digest(info)
    index.write_text(json.dumps(info))
    assert len(go(2, blobs(20, seed=3))) == 2  # (not known: another val is not refused)


def test_resume_after_a_kill_mid_epoch(tmp_path, monkeypatch):
    # 7 batches per epoch, evaluations every 3 steps: "last" is written mid-epoch at step 9; the run is
    # killed at step 11 and resumed from there.
    full_model, full = run(tmp_path / "full", 3, eval_every=3)
    real_step = optim.Adam.step
    calls = {"n": 0}

    def dying_step(self):
        if calls["n"] == 11:
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        real_step(self)

    monkeypatch.setattr(optim.Adam, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part", 3, eval_every=3)
    monkeypatch.undo()
    state = checkpoint.read_info(tmp_path / "part" / "last")["extra"]["fit"]["state"]
    assert (state["step"], state["epoch"], state["batch"]) == (9, 1, 2)
    steps = count_steps(monkeypatch, optim.Adam)
    model, resumed = run(tmp_path / "part", 3, resume=True, eval_every=3)
    assert len(steps) == 21 - 9
    for a, b in zip(model.parameters(), full_model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    keys = ("epoch", "step", "train_loss", "val_loss", "lr")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]


def test_resume_after_an_early_stop_on_an_epochs_last_batch_ends_that_epoch(tmp_path, monkeypatch):
    # 4 batches per epoch, evaluations every 4 steps, lr 0: the evaluation at step 8 (epoch 2's last batch)
    # stops the run, which still ends epoch 2 (scheduler step, last/ saved). Killed in that last save, the
    # resumed run found stopped_early in the evaluation's checkpoint and returned: the scheduler and last/
    # stayed one epoch behind the uninterrupted run's.
    x, y = blobs(40, seed=1)

    def run(directory, resume=False):
        model = mlp()
        opt = optim.SGD(model.parameters(), lr=0.0)
        sched = optim.StepLR(opt, step_size=1)
        history = train.fit(model, losses.CrossEntropyLoss(), opt, (x, y), (x, y), epochs=5, batch_size=10,
                            eval_every=4, patience=1, scheduler=sched, checkpoint_dir=directory, resume=resume,
                            progress=False)
        return history, sched

    full, full_sched = run(tmp_path / "full")
    real_save, saves = checkpoint.save, []

    def dying_save(*args, **kwargs):
        if len(saves) == 4:  # best and last at step 4, last at epoch 1's end, last at step 8; then epoch 2's end
            raise KeyboardInterrupt("killed")
        saves.append(args[0])
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part")
    monkeypatch.undo()
    steps = count_steps(monkeypatch, optim.SGD)
    resumed, sched = run(tmp_path / "part", resume=True)
    assert steps == []  # the step-8 evaluation's checkpoint: the run had stopped, only epoch 2's end was left
    assert full.stopped_early and resumed.stopped_early and len(resumed) == len(full) == 2
    assert sched.state_dict() == full_sched.state_dict() == {"type": "StepLR", "base_lr": 0.0, "last_epoch": 2,
                                                                "hyperparameters": {"step_size": 1, "gamma": 0.1}}
    expected, got = (checkpoint.read_info(tmp_path / d / "last") for d in ("full", "part"))
    assert got["epoch"] == expected["epoch"] == 2 and got["scheduler"] == expected["scheduler"]
    assert {k: v for k, v in got["extra"]["fit"]["state"].items() if k != "elapsed"} == \
        {k: v for k, v in expected["extra"]["fit"]["state"].items() if k != "elapsed"}


def test_ctrl_c_while_a_search_saves_a_trial_keeps_best_and_table_in_agreement(tmp_path, monkeypatch):
    # A SIGINT between copying the second trial's model to best/ and rewriting the table left best/
    # holding trial 1 while search.json listed trial 0 alone. The bookkeeping now finishes first.
    import signal as signal_module

    x, y = blobs(80, seed=6)
    val = blobs(40, seed=6)

    real_save, saves = checkpoint.save, []

    def save_then_ctrl_c(path, *args, **kwargs):
        result = real_save(path, *args, **kwargs)
        if os.fspath(path) == os.path.join(tmp_path, "best"):  # (not fit's trial/best)
            saves.append(path)
            if len(saves) == 2:  # the second trial's copy to out_dir/best, before its table
                os.kill(os.getpid(), signal_module.SIGINT)
        return result

    monkeypatch.setattr(checkpoint, "save", save_then_ctrl_c)
    # Python's own Ctrl-C handler, whatever this process inherited: started in the background by a
    # non-interactive shell, it ignores SIGINT (and then so does search, rightly).
    inherited = signal_module.signal(signal_module.SIGINT, signal_module.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train.search(build_mlp, {"lr": [0.0, 0.2, 0.3]}, (x, y), val, out_dir=tmp_path, metric="accuracy",
                         epochs=2, batch_size=16, verbose=False)
    finally:
        signal_module.signal(signal_module.SIGINT, inherited)
    assert len(saves) == 2
    table = json.loads((tmp_path / "search.json").read_text())
    assert sorted(r["trial"] for r in table) == [1, 2]  # (numbered from 1, as the lines printed: trial 1/3)
    assert checkpoint.read_info(tmp_path / "best")["extra"]["trial"] == table[0]["trial"] == 2


@pytest.mark.skipif(not hasattr(KeyboardInterrupt(), "add_note"), reason="exception notes: Python 3.11+")
def test_an_interrupted_fit_says_where_it_stopped_and_what_is_saved(tmp_path, monkeypatch):
    x, y = blobs(40, seed=1)
    real_step, calls = optim.SGD.step, []

    def dying_step(self):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(1)
        real_step(self)

    monkeypatch.setattr(optim.SGD, "step", dying_step)
    for directory, says in ((None, "nothing was saved (no checkpoint_dir)"),
                            (tmp_path, f"{tmp_path / 'last'} holds the run after step 4 (fit(..., resume=True) "
                                       f"continues from there), {tmp_path / 'best'} its best evaluation (accuracy ")):
        calls.clear()
        model = mlp()
        with pytest.raises(KeyboardInterrupt) as interrupt:
            train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), (x, y),
                      epochs=5, batch_size=10, metric="accuracy", checkpoint_dir=directory, progress=False)
        note = " ".join(interrupt.value.__notes__)
        assert note.startswith("fit was interrupted in epoch 2, at step 6 of 20; ") and says in note


def test_early_stopping(tmp_path):
    x, y = blobs(60, seed=4)
    model = mlp()
    # lr = 0: nothing improves after the first evaluation, so patience 2 stops after 3 evaluations.
    history = train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.0), (x, y), (x, y),
                        epochs=20, batch_size=20, patience=2, progress=False)
    assert history.stopped_early and len(history) == 3 and history.best_epoch == 1


def test_binary_auc_with_bce_and_predict():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 4)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.standard_normal(120) > 0).astype(np.float32).reshape(-1, 1)
    model = nn.Sequential(nn.Linear(4, 1, seed=0))
    history = train.fit(model, losses.BCEWithLogitsLoss(), optim.Adam(model.parameters(), lr=0.05), (x, y), (x, y),
                        epochs=5, batch_size=32, metric="auc", progress=False, restore_best=True)
    assert history.mode == "max" and history.best_metric > 0.9
    out = train.predict(model, x, batch_size=50)
    assert out.shape == (120, 1) and isinstance(out, np.ndarray)
    assert model.training  # predict restores the mode


def test_binary_metrics_refuse_soft_targets_instead_of_cutting_them_to_zero():
    # BCE takes probabilities as targets; the metrics' astype(int64) turned 0.9 into 0: a validation AUC
    # of ~0.5 for a model that ranks well, and the best checkpoint chosen on it.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 4)).astype(np.float32)
    hard = (x[:, :1] > 0).astype(np.float32)
    soft = np.where(hard > 0, 0.9, 0.1).astype(np.float32)
    model = nn.Sequential(nn.Linear(4, 1, seed=0))
    before = [p.data.copy() for p in model.parameters()]
    for metric in ("auc", "accuracy"):
        with pytest.raises(ValueError, match=rf"metric='{metric}' counts or ranks labels of 0 and 1, but the labels "
                                             r"hold 0\.1, 0\.9: soft targets have no class"):
            train.fit(model, losses.BCEWithLogitsLoss(), optim.SGD(model.parameters(), lr=0.1), (x, soft), (x, soft),
                      epochs=1, batch_size=32, metric=metric, progress=False)
        with pytest.raises(ValueError, match=rf"metric='{metric}' counts or ranks labels of 0 and 1"):
            train.evaluate(model, losses.BCEWithLogitsLoss(), (x, soft), metric_fn=metric)
    assert all(np.array_equal(b, p.data) for b, p in zip(before, model.parameters()))  # refused before training
    # soft training targets with hard validation labels are fine, and the metric is the true one
    history = train.fit(model, losses.BCEWithLogitsLoss(), optim.SGD(model.parameters(), lr=0.5), (x, soft),
                        (x, hard), epochs=3, batch_size=32, metric="auc", progress=False, restore_best=True)
    scores = train.predict(model, x)[:, 0]
    assert history.best_metric == pytest.approx(metrics.auc(hard[:, 0].astype(np.int64), scores), abs=1e-12)
    assert history.best_metric > 0.9
    # MSE's targets too (any loss but cross-entropy, whose labels are class indices)
    with pytest.raises(ValueError, match=r"metric='auc' counts or ranks labels of 0 and 1, but the labels hold 0\.1"):
        train.fit(model, losses.MSELoss(), optim.SGD(model.parameters(), lr=0.1), (x, soft), (x, soft), epochs=1,
                  batch_size=32, metric="auc", progress=False)
    # several binary outputs: accuracy is refused before training (it failed after the first epoch)
    two = nn.Sequential(nn.Linear(4, 2, seed=0))
    with pytest.raises(ValueError, match=r"metric='accuracy' scores one label per row .* shape \(120, 2\)"):
        train.fit(two, losses.BCEWithLogitsLoss(), optim.SGD(two.parameters(), lr=0.1), (x, np.hstack([hard, hard])),
                  (x, np.hstack([hard, hard])), epochs=1, batch_size=32, metric="accuracy", progress=False)


def test_predict_on_zero_rows_gives_zero_rows_of_the_output_shape(backend):
    """predict(model, x[:0]) raised numpy's "need at least one array to concatenate"; it runs the model
    on the empty batch instead, which gives the output's columns and dtype, in eval mode."""
    x = np.zeros((5, 1, 8, 8), np.float32)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, seed=0), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5),
                        nn.Flatten(), nn.Linear(32, 3, seed=1))
    out = train.predict(cnn, x[:0])
    assert type(out) is np.ndarray and out.shape == (0, 3) and out.dtype == np.float32
    assert cnn.training  # the mode is restored
    out = train.predict(mlp(), np.zeros((0, 4), np.float32), batch_size=7)
    assert out.shape == (0, 3) and out.dtype == np.float32

    class Unsized(nn.Module):  # a model that cannot run on zero rows (as Flatten could not)
        def forward(self, x):
            return x.reshape(x.shape[0], -1)

    with pytest.raises(ValueError, match=r"predict: x has no rows \(shape \(0, 2\)\) and the model did not run on "
                                         r"it, so the shape of its output is unknown: ValueError"):
        train.predict(Unsized(), np.zeros((0, 2), np.float32))


def test_fit_input_errors():
    x, y = blobs(30)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss = losses.CrossEntropyLoss()
    with pytest.raises(ValueError, match="x has 30 rows but y has 29"):
        train.fit(model, loss, opt, (x, y[:-1]), epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="needs validation data"):
        train.fit(model, loss, opt, (x, y), epochs=1, batch_size=8, metric="accuracy", progress=False)
    with pytest.raises(ValueError, match="metric must be"):
        train.fit(model, loss, opt, (x, y), (x, y), epochs=1, batch_size=8, metric="f1", progress=False)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        train.fit(model, loss, opt, (x, y), epochs=1, batch_size=0, progress=False)
    # A float where an int is needed is the wrong kind of value (TypeError), even an integral one.
    for kw in (dict(epochs=2.5), dict(epochs=2.0), dict(batch_size=8.0), dict(patience=1.5), dict(eval_every="2"),
               dict(predict_batch_size=64.0)):
        args = {"epochs": 1, "batch_size": 8, **kw}
        name = next(iter(kw))
        with pytest.raises(TypeError, match=f"{name} must be an int, got {kw[name]!r}"):
            train.fit(model, loss, opt, (x, y), progress=False, **args)
    with pytest.raises(TypeError, match="batch_size must be an int, got 2.5"):
        train.predict(model, x, batch_size=2.5)


def test_fit_on_every_backend_with_a_tiny_model(backend):
    x, y = blobs(24, seed=5)
    model = mlp(seed=2)
    history = train.fit(model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=0.05), (x, y),
                        (x, y), epochs=3, batch_size=12, metric="accuracy", progress=False)
    assert len(history) == 3 and history.records[-1]["train_loss"] < history.records[0]["train_loss"]


def test_fit_skips_the_input_gradient_only_where_backward_takes_input_grad():
    class OwnBackward(nn.Sequential):  # a user model whose backward() has no input_grad
        def backward(self, dy):
            self.calls = getattr(self, "calls", 0) + 1
            return super().backward(dy)

    x, y = blobs(24, seed=5)
    model = OwnBackward(*mlp(seed=2))
    train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05), (x, y), (x, y), epochs=1,
              batch_size=12, progress=False)
    assert model.calls == 2


def test_search_ranks_settings_and_keeps_the_best(tmp_path, capsys):
    x, y = blobs(80, seed=6)
    val = blobs(40, seed=6)

    def build(settings):
        model = nn.Sequential(nn.Linear(4, settings["width"], seed=0), nn.ReLU(), nn.Linear(settings["width"], 3, seed=1))
        return model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=settings["lr"])

    result = train.search(build, {"lr": [0.0, 0.2], "width": [4, 8]}, (x, y), val, out_dir=tmp_path,
                          metric="accuracy", epochs=3, batch_size=16)
    assert len(result.table) == 4 and [r["rank"] for r in result.table] == [1, 2, 3, 4]
    scores = [r["best_metric"] for r in result.table]
    assert scores == sorted(scores, reverse=True)
    assert result.best_settings["lr"] == 0.2
    best, info = checkpoint.load(result.best_checkpoint)
    assert info["metric"] == result.best["best_metric"] and info["extra"]["settings"] == result.best_settings
    csv_lines = (tmp_path / "search.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,trial,lr,width,best_metric,best_val_loss") and len(csv_lines) == 5
    assert len(json.loads((tmp_path / "search.json").read_text())) == 4
    assert not os.path.exists(tmp_path / "trial")
    # The lines printed and the table number the trials alike (the table had counted from 0), and the lines
    # round the metric as a table would (it was printed with all 17 digits).
    printed = re.findall(r"^trial (\d)/4 .*: best accuracy (\S+) at epoch", capsys.readouterr().out, re.M)
    assert [int(t) for t, _ in printed] == [1, 2, 3, 4] == sorted(r["trial"] for r in result.table)
    by_trial = {r["trial"]: r["best_metric"] for r in result.table}
    assert all(value == f"{by_trial[int(t)]:.6g}" for t, value in printed)

    rnd = train.search(build, {"lr": lambda rng: float(10 ** rng.uniform(-2, -0.5)), "width": [4, 8]}, (x, y), val,
                       method="random", n_trials=2, out_dir=tmp_path / "rnd", epochs=1, batch_size=16, verbose=False)
    assert len(rnd.table) == 2 and all(0.01 <= r["settings"]["lr"] <= 10 ** -0.5 for r in rnd.table)


def test_search_orders_equal_metrics_by_their_validation_loss_and_keeps_that_model(tmp_path):
    # Many settings reach a validation accuracy (or AUC) of 1 on a small set: they were ranked in grid order,
    # and best/ kept the first, whatever its loss; search.csv had no loss to tell them apart.
    x, y = blobs(80, seed=6)
    val = blobs(40, seed=6)

    def build(settings):
        model = nn.Sequential(nn.Linear(4, 8, seed=0), nn.ReLU(), nn.Linear(8, 3, seed=1))
        return model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=settings["lr"])

    result = train.search(build, {"lr": [0.05, 0.1, 0.2, 0.5]}, (x, y), val, out_dir=tmp_path, metric="accuracy",
                          epochs=4, batch_size=16, verbose=False)
    metrics_ranked = [r["best_metric"] for r in result.table]
    assert len(set(metrics_ranked)) == 2 and metrics_ranked == sorted(metrics_ranked, reverse=True)  # two pairs tie
    for tied in set(metrics_ranked):
        losses_tied = [r["best_val_loss"] for r in result.table if r["best_metric"] == tied]
        assert losses_tied == sorted(losses_tied) and len(set(losses_tied)) == 2
    assert [r["trial"] for r in result.table] == [4, 3, 2, 1]  # (by loss within each tie: not the trial order)
    losses_ranked = [r["best_val_loss"] for r in result.table]
    kept = checkpoint.read_info(tmp_path / "best")["extra"]
    assert kept["trial"] == result.best["trial"] and kept["settings"] == result.best_settings
    saved = json.loads((tmp_path / "search.json").read_text())
    assert [r["best_val_loss"] for r in saved] == losses_ranked


def test_an_interrupted_search_keeps_the_table_of_the_trials_it_finished(tmp_path):
    # The table was written once, at the end: Ctrl-C in the third trial left only best/ (and trial/).
    x, y = blobs(80, seed=6)
    val = blobs(40, seed=6)

    def build(settings):
        if settings["lr"] == 0.3:
            raise KeyboardInterrupt
        model = mlp()
        return model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=settings["lr"])

    with pytest.raises(KeyboardInterrupt):
        train.search(build, {"lr": [0.0, 0.2, 0.3]}, (x, y), val, out_dir=tmp_path, metric="accuracy", epochs=2,
                     batch_size=16, verbose=False)
    table = json.loads((tmp_path / "search.json").read_text())
    assert [(r["rank"], r["settings"]["lr"]) for r in table] == [(1, 0.2), (2, 0.0)]
    assert (tmp_path / "search.csv").read_text().count("\n") == 3
    assert checkpoint.read_info(tmp_path / "best")["extra"]["settings"] == {"lr": 0.2}


def test_an_interrupted_search_removes_its_trial_directory_and_keeps_best_and_table(tmp_path, monkeypatch):
    # Ctrl-C during a trial's training left out_dir/trial/ (that trial's checkpoints) behind.
    x, y = blobs(80, seed=6)
    val = blobs(40, seed=6)

    real_step, steps = optim.SGD.step, {"n": 0}

    def dying_step(self):  # in the third trial's second epoch, after its first checkpoints
        steps["n"] += 1
        if steps["n"] == 2 * 2 * 5 + 5 + 2:  # two trials of 2 epochs of 5 batches, then an epoch and 2 steps
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(optim.SGD, "step", dying_step)
    with pytest.raises(KeyboardInterrupt) as interrupt:
        train.search(build_mlp, {"lr": [0.0, 0.2, 0.3]}, (x, y), val, out_dir=tmp_path, metric="accuracy", epochs=2,
                     batch_size=16, verbose=False)
    if hasattr(interrupt.value, "add_note"):  # (Python 3.11+) search's note, not fit's: that named trial/last
        assert interrupt.value.__notes__ == [
            f"search was interrupted in setting 3 of 3 ({{'lr': 0.3}}); {tmp_path}/search.csv and search.json rank "
            f"the settings that finished; the interrupted setting's run is not kept ({tmp_path}/trial is removed), "
            "and a search does not resume: run the settings that are left as a search of their own"]
    assert sorted(os.listdir(tmp_path)) == ["best", "search.csv", "search.json"]
    assert [r["settings"]["lr"] for r in json.loads((tmp_path / "search.json").read_text())] == [0.2, 0.0]
    assert checkpoint.read_info(tmp_path / "best")["extra"]["settings"] == {"lr": 0.2}
    checkpoint.load(tmp_path / "best")  # whole: its weights match their checksum


@pytest.mark.skipif(not hasattr(KeyboardInterrupt(), "add_note"), reason="exception notes: Python 3.11+")
def test_a_search_interrupted_after_its_last_training_still_says_so(tmp_path, monkeypatch):
    # (the note indexed the settings by the count of finished ones: past the last, an IndexError
    # would have replaced the KeyboardInterrupt)
    x, y = blobs(40, seed=6)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train._search, "_write_table", interrupted)  # after the only setting's training
    with pytest.raises(KeyboardInterrupt) as interrupt:
        train.search(_search_build, {"lr": [0.1]}, (x, y), (x, y), out_dir=tmp_path, metric="accuracy", epochs=1,
                     batch_size=20, verbose=False)
    assert interrupt.value.__notes__[0].startswith("search was interrupted after its last setting's training (1 of 1)")


def _search_build(settings):
    model = mlp()
    return model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=settings["lr"])


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_search_keeps_an_earlier_search_unless_overwrite(tmp_path):
    # A second search into the same out_dir replaced the first's best/ and table without a word (fit and
    # `fastconv search` refuse theirs).
    x, y = blobs(40, seed=1)
    val = blobs(20, seed=2)

    def run(lrs, **kw):
        return train.search(_search_build, {"lr": lrs}, (x, y), val, out_dir=tmp_path, metric="accuracy", epochs=1,
                            batch_size=10, verbose=False, **kw)

    run([0.1])
    first = _files(tmp_path)
    with pytest.raises(ValueError, match=r"search: out_dir '.*' holds an earlier search \(best, search.csv, "
                                         r"search.json; .*\): overwrite=True replaces it, or give another out_dir"):
        run([0.5, 0.2])
    assert _files(tmp_path) == first
    result = run([0.5, 0.2], overwrite=True)
    assert len(result.table) == 2 and len(json.loads((tmp_path / "search.json").read_text())) == 2
    assert checkpoint.read_info(tmp_path / "best")["extra"]["settings"] == result.best_settings
    assert sorted(os.listdir(tmp_path)) == ["best", "search.csv", "search.json"]


@pytest.mark.parametrize("name", ["best", "search.csv", "search.json", "trial"])
def test_search_never_replaces_or_deletes_what_out_dir_holds_unasked(tmp_path, name):
    # out_dir/trial was deleted before each trial, whoever had put it there.
    x, y = blobs(40, seed=1)
    (tmp_path / name).mkdir()
    (tmp_path / name / "mine.txt").write_text("a user's file")
    kept = _files(tmp_path)
    with pytest.raises(ValueError, match=rf"holds an earlier search \({name};"):
        train.search(_search_build, {"lr": [0.1]}, (x, y), blobs(20, seed=2), out_dir=tmp_path, epochs=1,
                     batch_size=10, verbose=False)
    assert _files(tmp_path) == kept


def test_search_with_overwrite_leaves_no_earlier_best_beside_its_own_table(tmp_path):
    # Every setting of the second search diverged: the first search's best/ stayed beside the new table
    # (whose best_checkpoint was None), as if it were this search's best model.
    x, y = blobs(40, seed=1)
    val = blobs(20, seed=2)
    first = train.search(_search_build, {"lr": [0.1]}, (x, y), val, out_dir=tmp_path, epochs=1, batch_size=10,
                         verbose=False)
    assert first.best_checkpoint is not None and (tmp_path / "best").exists()
    with pytest.warns(RuntimeWarning):
        second = train.search(_search_build, {"lr": [1e30]}, (x, y), val, out_dir=tmp_path, epochs=1, batch_size=10,
                              verbose=False, overwrite=True)
    assert second.best_checkpoint is None and not (tmp_path / "best").exists()
    assert len(json.loads((tmp_path / "search.json").read_text())) == 1


def test_search_refuses_flags_that_are_not_bools_and_overrides_of_its_own_arguments(tmp_path):
    # overwrite="no" was true (an earlier search replaced); build's overrides of checkpoint_dir, metric
    # or mode failed in fit's call ("got multiple values"), and resume=True was taken.
    x, y = blobs(40, seed=1)
    val = blobs(20, seed=2)
    train.search(_search_build, {"lr": [0.1]}, (x, y), val, out_dir=tmp_path, epochs=1, batch_size=10, verbose=False)
    kept = _files(tmp_path)
    for flag in ("overwrite", "verbose"):
        with pytest.raises(TypeError, match=f"search: {flag} must be True or False, got 'no'"):
            train.search(_search_build, {"lr": [0.1]}, (x, y), val, out_dir=tmp_path, epochs=1, batch_size=10,
                         **{"verbose": False, flag: "no"})
    assert _files(tmp_path) == kept
    for key, value in (("checkpoint_dir", str(tmp_path / "x")), ("resume", True), ("metric", "accuracy"),
                       ("mode", "max")):
        def build(settings, key=key, value=value):
            return (*_search_build(settings), {key: value})
        with pytest.raises(ValueError, match=f"search: {key} is not an override build may return"):
            train.search(build, {"lr": [0.1]}, (x, y), val, out_dir=tmp_path / key, epochs=1, batch_size=10,
                         verbose=False)
    with pytest.raises(TypeError, match="fit_overrides must be a dict of fit's options, got list"):
        train.search(lambda s: (*_search_build(s), [("epochs", 1)]), {"lr": [0.1]}, (x, y), val,
                     out_dir=tmp_path / "list", epochs=1, batch_size=10, verbose=False)


def test_search_refuses_an_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ValueError, match=r"search: out_dir '.*afile' is a file, but search writes its table"):
        train.search(_search_build, {"lr": [0.1]}, blobs(40, seed=1), blobs(20, seed=2), out_dir=tmp_path / "afile",
                     epochs=1, batch_size=10, verbose=False)
    assert (tmp_path / "afile").read_text() == "mine"


def test_search_writes_strict_json(tmp_path):
    # A NaN setting went into search.json as a bare NaN token, which strict readers (jq, JavaScript's
    # JSON.parse) refuse.
    x, y = blobs(40, seed=1)
    val = blobs(20, seed=2)
    with pytest.raises(ValueError, match="setting 'lr' = nan .* is not a JSON value"):
        train.search(_search_build, {"lr": [float("nan")]}, (x, y), val, out_dir=tmp_path / "a", epochs=1,
                     batch_size=10, verbose=False)
    with pytest.warns(RuntimeWarning):
        result = train.search(_search_build, {"lr": [0.1, 1e30]}, (x, y), val, out_dir=tmp_path, epochs=1,
                              batch_size=10, verbose=False)
    assert result.table[-1]["best_metric"] is None  # (never improved)

    def refuse(token):
        raise AssertionError(f"search.json holds {token}")
    table = json.loads((tmp_path / "search.json").read_text(), parse_constant=refuse)
    assert [r["settings"]["lr"] for r in table] == [0.1, 1e30] and table[1]["best_metric"] is None
    assert table[0]["best_metric"] == result.table[0]["best_metric"]


def test_search_with_overwrite_deletes_a_trial_directory_it_finds(tmp_path):
    x, y = blobs(40, seed=1)
    (tmp_path / "trial" / "last").mkdir(parents=True)  # an interrupted search's, say (or a file named trial)
    (tmp_path / "trial" / "last" / "stale.safetensors").write_bytes(b"old")
    result = train.search(_search_build, {"lr": [0.1]}, (x, y), blobs(20, seed=2), out_dir=tmp_path, epochs=1,
                          batch_size=10, verbose=False, overwrite=True)
    assert result.best_checkpoint is not None and not (tmp_path / "trial").exists()
    (tmp_path / "trial").write_text("a file")
    train.search(_search_build, {"lr": [0.1]}, (x, y), blobs(20, seed=2), out_dir=tmp_path, epochs=1,
                 batch_size=10, verbose=False, overwrite=True)
    assert not (tmp_path / "trial").exists()


def test_search_hashes_the_training_and_validation_data_once(tmp_path, monkeypatch):
    # Each trial's fit (with its checkpoint_dir) hashed all of train (and val) again for its resume check.
    x, y = blobs(80, seed=6)
    real_digest, digests = train._data._digest, []
    for module in (train._fit, train._search):  # (search's own hash, and each trial's fit's)
        monkeypatch.setattr(module, "_digest", lambda *xy: digests.append(real_digest(*xy)) or digests[-1])

    train.search(build_mlp, {"lr": [0.0, 0.1, 0.2]}, (x, y), blobs(40, seed=6), out_dir=tmp_path, epochs=1,
                 batch_size=16, verbose=False)
    assert len(digests) == 2  # train's and val's
    model = mlp()  # fit on its own still hashes train, to the same digest
    train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=1,
              batch_size=16, checkpoint_dir=tmp_path / "fit", progress=False)
    assert len(digests) == 3 and digests[0] == digests[2]
    saved = checkpoint.read_info(tmp_path / "fit" / "last")["extra"]["fit"]["batches"]
    assert saved["train_data"] == digests[0] and saved["val_data"] is None


@pytest.mark.parametrize("metric", ["accuracy", "auc", "loss"])
def test_diverged_evaluations_score_nan_and_are_never_the_best(tmp_path, metric):
    # A learning rate of 1e10 on inputs of 1e18: NaN outputs from the first evaluation on. Argmax would
    # call every NaN row class 0 (accuracy 0.55 here, saved as "best"); AUC would raise mid-training.
    (x, y), (xv, yv) = blobs(100, seed=0, classes=2), blobs(40, seed=1, classes=2)
    model = nn.Sequential(nn.Linear(4, 8, seed=0), nn.ReLU(), nn.Linear(8, 2, seed=1))
    with pytest.warns(RuntimeWarning, match="training diverged: the evaluation at epoch 1, step 7 has ") as caught:
        history = train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=1e10), (x * 1e18, y),
                            (xv * 1e18, yv), epochs=4, batch_size=16, metric=metric, patience=2,
                            checkpoint_dir=tmp_path, progress=False)
    assert len(caught) == 1 and caught[0].filename == __file__  # once per fit, at the caller's line
    assert len(history) == 2 and history.stopped_early  # NaN counts as no improvement, for patience too
    assert all(np.isnan(v) for v in history.column("val_metric")) and history.best_index is None
    assert not (tmp_path / "best").exists() and (tmp_path / "last").exists()
    assert np.isnan(train.evaluate(model, losses.CrossEntropyLoss(), (xv, yv), 64, train._evaluation._accuracy)[1])
    # history.json is strict JSON (jq and JavaScript refuse Python's NaN token): NaN is null there.
    history.to_json(tmp_path / "history.json")
    saved = json.loads((tmp_path / "history.json").read_text(), parse_constant=lambda token: pytest.fail(token))
    assert [r["val_metric"] for r in saved["records"]] == [None, None] and saved["best_metric"] is None
    # Called directly, the thresholding of one-column (sigmoid) scores rejects NaN as the metrics do.
    with pytest.raises(ValueError, match="NaN or inf"):
        train._evaluation._accuracy(np.array([[0], [1]]), np.array([[np.nan], [0.9]]))


def test_auc_of_several_classes_averages_over_the_classes_in_the_validation_labels(tmp_path):
    (x, y), (xv, yv) = blobs(100, seed=0), blobs(60, seed=1)
    keep = yv != 2  # class 2 absent from validation: it has no AUC, the other two do
    model = mlp()
    history = train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y),
                        (xv[keep], yv[keep]), epochs=2, batch_size=16, metric="auc", checkpoint_dir=tmp_path,
                        progress=False, restore_best=True)
    assert np.all(np.isfinite(history.column("val_metric"))) and (tmp_path / "best").exists()
    scores = train._evaluation._probabilities(train.predict(model, xv[keep]), losses.CrossEntropyLoss())
    onehot = np.eye(3, dtype=np.int64)[yv[keep]]
    expected = np.mean([metrics.auc(onehot[:, c], scores[:, c]) for c in (0, 1)])
    assert history.best_metric == pytest.approx(expected, abs=1e-12)
    # One class only: undefined at every evaluation, so an error before any training.
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="metric='auc' needs validation labels of at least two classes"):
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y),
                  (xv[yv == 1], yv[yv == 1]), epochs=2, batch_size=16, metric="auc", progress=False)
    assert all(np.array_equal(b, p.data) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("labels, match", [
    ([0, 1.5, 2, 1], "y must hold integer class labels"),  # (astype had made 1.5 class 1)
    ([0, -1, 2, 1], r"y has negative class labels \(min -1\)"),  # (and -1 the last class)
    ([0, 3, 2, 1], r"the labels go up to class 3, but the scores have 3 columns"),
])
def test_auc_of_several_classes_refuses_labels_that_are_not_its_classes(labels, match):
    scores = np.random.default_rng(0).random((4, 3))
    with pytest.raises(ValueError, match=match):
        train._evaluation._auc(np.array(labels), scores)
    assert train._evaluation._auc(np.array([0, 1, 2, 1]), scores) == pytest.approx(np.mean(
        [metrics.auc(np.array([0, 1, 2, 1]) == c, scores[:, c]) for c in range(3)]), abs=1e-15)


def test_the_progress_bars_clock_leaves_out_the_first_step(capfd):
    # A first run compiles the kernels in its first step (a minute): the bar showed 1/600 at 67 s/batch and
    # an ETA of 11 hours. That step's time is left out of the bar's clock, so rate and ETA are the steps'.
    class SlowFirstStep(optim.SGD):
        slept = False

        def step(self):
            if not self.slept:
                time.sleep(3.0)
                self.slept = True
            super().step()

    model = mlp()
    train.fit(model, losses.CrossEntropyLoss(), SlowFirstStep(model.parameters(), lr=0.1), blobs(64), blobs(32, seed=1),
              epochs=2, batch_size=16, progress=True)
    last = capfd.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    elapsed = re.search(r"8/8 \[(\d+):(\d+)<", last)
    assert elapsed, last
    assert int(elapsed[1]) * 60 + int(elapsed[2]) < 3, last  # (with the first step: 00:03 at least)


def test_an_optimizer_of_another_model_is_refused(tmp_path):
    # A notebook cell that rebuilt the model and not its optimizer: fit stepped parameters that never got a
    # gradient and trained nothing, silently (val_loss the same at every evaluation).
    x, y = blobs(32)
    model, other = mlp(seed=0), mlp(seed=0)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"fit: 4 of the optimizer's 4 parameters \(the first: optimizer.params\[0\], "
                                         r"shape \(8, 4\)\) are not among model.parameters\(\): the optimizer was "
                                         r"made for another model \(one built again\?\), or the model keeps those "
                                         r"layers where parameters\(\) does not find them \(a plain list"):
        train.fit(model, losses.CrossEntropyLoss(), optim.Adam(other.parameters()), (x, y), epochs=1, batch_size=8,
                  progress=False)
    assert all(np.array_equal(b, p.data) for b, p in zip(before, model.parameters()))
    # Some of the model's parameters only (the head, as in torch): the others stay as they are.
    train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model[2].parameters(), lr=0.5), (x, y), epochs=1,
              batch_size=8, progress=False)
    assert np.array_equal(before[0], model[0].weight.data) and not np.array_equal(before[2], model[2].weight.data)


def test_resume_refuses_a_scheduler_the_run_did_not_have_or_its_absence_and_warns_of_another_base_lr(tmp_path):
    # Without its StepLR a resumed run went on at the lr the schedule had left, silently; a new Adam(lr=...)
    # under a scheduler was replaced by the saved base_lr without a word.
    x, y = blobs(32)

    def run(epochs, lr=0.01, scheduled=True):
        model = mlp()
        opt = optim.Adam(model.parameters(), lr=lr)
        return train.fit(model, losses.CrossEntropyLoss(), opt, (x, y), (x, y), epochs=epochs, batch_size=8,
                         scheduler=optim.StepLR(opt, 3, 0.5) if scheduled else None, checkpoint_dir=tmp_path,
                         resume=True, progress=False)

    run(4)
    with pytest.raises(train.ResumeError, match=r"was trained with a StepLR, this call gives none: its learning rate "
                                                r"would go on another way; give the run's StepLR"):
        run(8, scheduled=False)
    with pytest.warns(RuntimeWarning, match=r"the scheduler's hyperparameters saved in .*: base_lr 0.01 \(not 0.5\)"):
        history = run(8, lr=0.5)
    assert [r["lr"] for r in history.records] == [0.01] * 3 + [0.005] * 3 + [0.0025] * 2
    (tmp_path / "plain").mkdir()

    def plain(epochs, scheduled):
        model = mlp()
        opt = optim.Adam(model.parameters(), lr=0.01)
        return train.fit(model, losses.CrossEntropyLoss(), opt, (x, y), epochs=epochs, batch_size=8,
                         scheduler=optim.StepLR(opt, 3, 0.5) if scheduled else None,
                         checkpoint_dir=tmp_path / "plain", resume=True, progress=False)

    plain(2, False)
    with pytest.raises(train.ResumeError, match=r"was trained with no scheduler, this call gives a StepLR: .* give none"):
        plain(4, True)


def test_checkpoint_epoch_is_the_history_epoch_with_eval_every(tmp_path):
    # 7 batches per epoch, evaluations every 3 steps: most fall partway through an epoch.
    x, y = blobs(100, seed=0)
    val = blobs(40, seed=1)
    model = mlp()
    history = train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05), (x, y), val,
                        epochs=3, batch_size=16, metric="accuracy", eval_every=3, checkpoint_dir=tmp_path,
                        progress=False)
    assert [r["epoch"] for r in history] == [1, 1, 2, 2, 3, 3, 3]
    info = checkpoint.read_info(tmp_path / "best")
    assert info["epoch"] == history.best_epoch and info["extra"]["fit"]["state"]["step"] == history.best_step
    assert checkpoint.read_info(tmp_path / "last")["epoch"] == 3

    result = train.search(build_mlp, {"lr": [0.05]}, (x, y), val, out_dir=tmp_path / "search", metric="accuracy",
                          epochs=3, batch_size=16, eval_every=3, verbose=False)
    assert checkpoint.read_info(result.best_checkpoint)["epoch"] == result.best["best_epoch"] == history.best_epoch


@pytest.mark.parametrize("eval_every, steps", [(100, [14]), (4, [4, 8, 12, 14])])
def test_eval_every_also_evaluates_the_last_step(tmp_path, eval_every, steps):
    # 14 steps: eval_every=100 would never evaluate (no best, nothing to restore); eval_every=4 would
    # leave the last two steps unevaluated.
    x, y = blobs(100, seed=1)
    model = mlp()
    history = train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.05), (x, y),
                        blobs(40, seed=2), epochs=2, batch_size=16, eval_every=eval_every, checkpoint_dir=tmp_path,
                        restore_best=True, progress=False)
    assert history.column("step") == steps and history.records[-1]["epoch"] == 2
    assert history.best_index is not None and (tmp_path / "best").exists()


def test_resume_checks_the_checkpoint_before_loading_it(tmp_path):
    x, y = blobs(40, seed=1)
    val = blobs(20, seed=2)
    model = mlp()
    train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), val, epochs=2,
              batch_size=8, checkpoint_dir=tmp_path / "a", progress=False)
    other = mlp(seed=5)
    before = [p.data.copy() for p in other.parameters()]
    with pytest.raises(ValueError, match="monitored loss .min., this call accuracy .max."):
        train.fit(other, losses.CrossEntropyLoss(), optim.SGD(other.parameters(), lr=0.1), (x, y), val, epochs=3,
                  batch_size=8, metric="accuracy", checkpoint_dir=tmp_path / "a", resume=True, progress=False)
    assert all(np.array_equal(b, p.data) for b, p in zip(before, other.parameters()))  # not loaded
    # Another batch size: the saved position in the epoch's order would point at other rows.
    with pytest.raises(ValueError, match="trained with batch_size 8 on 40 training rows, this call has batch_size 16"):
        train.fit(other, losses.CrossEntropyLoss(), optim.SGD(other.parameters(), lr=0.1), (x, y), val, epochs=3,
                  batch_size=16, checkpoint_dir=tmp_path / "a", resume=True, progress=False)
    assert all(np.array_equal(b, p.data) for b, p in zip(before, other.parameters()))
    # Other rows of the same count (another split, say): the run went on on them, silently.
    for x2, y2 in ((blobs(40, seed=9)[0], y), (x, y[::-1].copy()), (x[::-1].copy(), y[::-1].copy())):
        with pytest.raises(ValueError, match="was trained on other training data .as many rows, other values or order"):
            train.fit(other, losses.CrossEntropyLoss(), optim.SGD(other.parameters(), lr=0.1), (x2, y2), val,
                      epochs=3, batch_size=8, checkpoint_dir=tmp_path / "a", resume=True, progress=False)
    assert all(np.array_equal(b, p.data) for b, p in zip(before, other.parameters()))
    # A `last` saved by hand, not by fit: no loop state to resume from.
    checkpoint.save(tmp_path / "b" / "last", model, optimizer=optim.SGD(model.parameters(), lr=0.1), epoch=1)
    with pytest.raises(checkpoint.CheckpointError, match="was not written by train.fit"):
        train.fit(other, losses.CrossEntropyLoss(), optim.SGD(other.parameters(), lr=0.1), (x, y), val, epochs=3,
                  batch_size=8, checkpoint_dir=tmp_path / "b", resume=True, progress=False)


def test_fit_keeps_an_earlier_runs_checkpoints_unless_resume_or_overwrite(tmp_path):
    # A second fit into the same checkpoint_dir replaced the first's best/ at its first evaluation, unsaid.
    x, y = blobs(40, seed=1)
    val = blobs(20, seed=2)

    def run(lr, **kw):
        model = mlp()
        return train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=lr), (x, y), val,
                         epochs=1, batch_size=10, metric="accuracy", checkpoint_dir=tmp_path, progress=False, **kw)

    run(0.1)
    first = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"fit: checkpoint_dir '.*' holds an earlier run's checkpoints \(best, "
                                         r"last\): resume=True continues it, overwrite=True replaces it"):
        run(0.5)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first
    with pytest.raises(ValueError, match="give one"):
        run(0.5, resume=True, overwrite=True)
    assert len(run(0.1, resume=True)) == 1  # the run was complete: resume trains it no further
    assert len(run(0.5, overwrite=True)) == 1
    assert checkpoint.read_info(tmp_path / "last")["optimizer"]["hyperparameters"]["lr"] == 0.5  # replaced
    shutil.rmtree(tmp_path / "best")  # last/ alone is an earlier run too
    with pytest.raises(ValueError, match=r"holds an earlier run's checkpoints \(last\)"):
        run(0.5)
    # best/ without last/ (a search's output): resume had nothing to continue, started afresh and replaced it
    run(0.1, overwrite=True)
    shutil.rmtree(tmp_path / "last")
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"fit: checkpoint_dir '.*' holds a best checkpoint \(best/\) but no last/ "
                                         r"for resume=True to continue: overwrite=True starts afresh"):
        run(0.5, resume=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == kept
    shutil.rmtree(tmp_path / "best")
    assert len(run(0.5, resume=True)) == 1  # an empty checkpoint_dir: resume starts afresh


def test_a_file_as_checkpoint_dir_fails_before_training(tmp_path):
    x, y = blobs(40, seed=1)
    (tmp_path / "afile").write_text("hi")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "best").write_text("hi")
    model = mlp()
    before = [p.data.copy() for p in model.parameters()]
    for directory in (tmp_path / "afile", tmp_path / "d"):
        with pytest.raises(ValueError, match="is a file, but fit writes the checkpoint directories"):
            train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), epochs=1,
                      batch_size=8, checkpoint_dir=directory, progress=False)
    assert all(np.array_equal(b, p.data) for b, p in zip(before, model.parameters()))


def test_search_settings_from_numpy_and_n_trials_checked(tmp_path):
    x, y = blobs(60, seed=0)
    val = blobs(30, seed=1)

    # NumPy values (np.array(...).tolist() is not what everyone writes), and 1-D arrays of them as the
    # choices (np.logspace, say), are saved as plain numbers.
    result = train.search(build_mlp, {"lr": np.array([0.05]), "batch_size": list(np.array([16, 32]))}, (x, y), val,
                          out_dir=tmp_path / "np", epochs=1, verbose=False)
    assert sorted(r["settings"]["batch_size"] for r in result.table) == [16, 32]
    assert all(type(r["settings"]["batch_size"]) is int and type(r["settings"]["lr"]) is float for r in result.table)
    random = train.search(build_mlp, {"lr": np.array([0.05, 0.1]), "batch_size": (16,)}, (x, y), val, method="random",
                          n_trials=2, out_dir=tmp_path / "np-random", epochs=1, verbose=False)
    assert {r["settings"]["lr"] for r in random.table} <= {0.05, 0.1}
    for method, choices, got in (("grid", np.zeros((2, 2)), "a 2-D array of shape \\(2, 2\\)"),
                                 ("grid", np.array([]), "a 1-D array of shape \\(0,\\)"),
                                 ("random", [], "an empty list"), ("grid", 0.1, "float 0.1")):
        with pytest.raises(ValueError, match=f"{method} search: space\\['lr'\\] must be a non-empty list .*got {got}"):
            train.search(build_mlp, {"lr": choices}, (x, y), val, method=method, n_trials=2, out_dir=tmp_path / "bad",
                         epochs=1, batch_size=16, verbose=False)
    assert checkpoint.read_info(result.best_checkpoint)["extra"]["settings"] == result.best_settings
    # A value JSON cannot hold: an error before any trial, and no partial best.
    with pytest.raises(ValueError, match="setting 'lr' = .* is not a JSON value"):
        train.search(build_mlp, {"lr": [object()]}, (x, y), val, out_dir=tmp_path / "obj", epochs=1, batch_size=16,
                     verbose=False)
    assert not (tmp_path / "obj" / "best").exists()
    for n_trials, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match="n_trials must be an int"):
            train.search(build_mlp, {"lr": [0.01, 0.05]}, (x, y), val, out_dir=tmp_path / "n", n_trials=n_trials,
                         epochs=1, batch_size=16, verbose=False)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_evaluate_with_class_weights_is_the_whole_sets_weighted_mean(label_smoothing):
    """With class weights the loss is sum w[y_i] l_i / sum w[y_i]: batch means weighted by their rows
    are another number (it changed with the batch size), and NaN once a batch's labels all weigh 0
    (0/0), which made a fine model's validation 'diverged' (never the best, early stopping)."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = np.array([0, 0, 0, 0, 1, 2, 1, 2])
    model = nn.Sequential(nn.Linear(3, 3, seed=0))
    loss_fn = losses.CrossEntropyLoss(weight=np.array([0.0, 1.0, 3.0]), label_smoothing=label_smoothing)
    whole = float(loss_fn(model(x), y))
    for batch_size in (8, 4, 3, 2):
        loss, _ = train.evaluate(model, loss_fn, (x, y), batch_size)
        assert loss == pytest.approx(whole, rel=1e-6), batch_size


def test_evaluate_takes_fits_metric_names_and_predicts_batch_size_default():
    """evaluate(metric_fn="accuracy") failed ('str' object is not callable) where fit takes the name;
    batch_size was required where predict defaults to 256; evaluate was missing from train.__all__."""
    (x, y), val = blobs(seed=0), blobs(60, seed=1)
    model = mlp()
    loss_fn = losses.CrossEntropyLoss()
    history = train.fit(model, loss_fn, optim.SGD(model.parameters(), lr=0.1, momentum=0.9), (x, y), val,
                        epochs=2, batch_size=16, metric="accuracy", progress=False)
    loss, accuracy = train.evaluate(model, loss_fn, val, metric_fn="accuracy")
    assert accuracy == history.records[-1]["val_accuracy"] and loss == history.records[-1]["val_loss"]
    assert train.evaluate(model, loss_fn, val, metric_fn="loss") == (loss, loss)
    assert train.evaluate(model, loss_fn, val, 7, "auc")[1] == train.evaluate(model, loss_fn, val, 64, train._evaluation._auc)[1]
    with pytest.raises(ValueError, match=r"metric_fn must be 'loss', 'accuracy', 'auc' or a callable\(y_true, "
                                         r"scores\), got 'f1'"):
        train.evaluate(model, loss_fn, val, metric_fn="f1")
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        train.evaluate(model, loss_fn, val, 0)
    assert "evaluate" in train.__all__


def test_the_public_names_are_fastconv_trains():
    # Each is defined in a private module of the package; tracebacks, help() and pickles name it as
    # fastconv.train's (a History pickled by name comes back from there).
    import pickle

    assert {train.__dict__[name].__module__ for name in train.__all__} == {"fastconv.train"}
    history = pickle.loads(pickle.dumps(train.History("accuracy", "max", [{"epoch": 1}], 0)))
    assert type(history) is train.History and history.best == {"epoch": 1}


def test_fit_warns_when_every_parameter_is_frozen():
    """A model whose parameters were all frozen trained nothing (optimizers skip frozen parameters),
    silently, for every epoch."""
    (x, y), val = blobs(seed=0), blobs(60, seed=1)
    model = mlp().freeze()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match=r"fit: every parameter of the model \(Sequential, 4 parameters\) is "
                                            r"frozen .* call model.unfreeze\(\)"):
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), val,
                  epochs=1, batch_size=16, progress=False)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())
    model[0].unfreeze()  # some layer trains: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), val,
                  epochs=1, batch_size=16, progress=False)


def test_fit_with_checkpoints_refuses_a_model_without_a_config_before_training(tmp_path):
    """A custom layer without _args() failed only at the first save (NotImplementedError), after an epoch
    of training; it is now refused up front, and nothing is written."""
    class Scale(nn.Module):
        def forward(self, x):
            return x

        def backward(self, dy):
            return dy

    (x, y), val = blobs(seed=0), blobs(60, seed=1)
    model = nn.Sequential(*mlp(), Scale())
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(NotImplementedError, match=r"^fit: checkpoint_dir needs the model's architecture for its "
                                                  r"checkpoints \(model.config\(\)\), .*Scale does not describe"):
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), val,
                  epochs=1, batch_size=16, checkpoint_dir=tmp_path / "run", progress=False)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in before.items())  # not trained
    assert not (tmp_path / "run").exists()


def test_search_refuses_an_unregistered_layer_before_a_trial_trains(tmp_path):
    """search rebuilds each setting's best model from its config (checkpoint.load): a layer with _args()
    but not registered trained the whole first trial, then failed (CheckpointError: unknown layer type)."""
    class Twice(nn.Module):
        def _args(self):
            return {}

        def forward(self, x):
            return 2 * x

        def backward(self, dy):
            return 2 * dy

    x, y = blobs(40, seed=1)
    trained = []

    def build(settings):
        model = nn.Sequential(nn.Linear(4, 3, seed=0), Twice())
        optimizer = optim.SGD(model.parameters(), lr=settings["lr"])
        trained.append(model)
        return model, losses.CrossEntropyLoss(), optimizer

    with pytest.raises(ValueError, match=r"^search: .*needs every layer type registered: Twice is not \(decorate "
                                         r"its class with fastconv.nn.register\)"):
        train.search(build, {"lr": [0.1, 0.2]}, (x, y), blobs(20, seed=2), out_dir=tmp_path, epochs=1,
                     batch_size=10, verbose=False)
    assert len(trained) == 1 and not (tmp_path / "search.csv").exists() and not (tmp_path / "best").exists()
    fresh = nn.Sequential(nn.Linear(4, 3, seed=0), Twice())
    assert all(np.array_equal(v, fresh.state_dict()[k]) for k, v in trained[0].state_dict().items())


def test_predict_and_evaluate_restore_each_layers_own_mode():
    """A layer set apart from its model (a Dropout switched off in a training model, or on in an
    eval model) keeps its mode through predict/evaluate: restoring only the model's flag with
    model.train(flag) overwrote every layer's, so a disabled Dropout came back on, silently."""
    x, y = blobs(20, seed=5)
    model = mlp(dropout=0.5)
    model.train()
    model[2].eval()
    train.predict(model, x)
    train.evaluate(model, losses.CrossEntropyLoss(), (x, y), 8)
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    model.eval()
    model[2].train()
    train.predict(model, x)
    train.evaluate(model, losses.CrossEntropyLoss(), (x, y), 8)
    assert [m.training for m in model.modules()] == [False, False, False, True, False]


def test_predictions_in_several_threads_at_once_share_the_eval_mode():
    """Each predict/evaluate saved the model's modes and restored them on its own: with two threads
    predicting on one model in training, the one that finished first switched it back to training
    under the other's forwards (Dropout then dropped units: 1 of 120 predictions from 4 threads), and
    the last, having saved eval, left the model in eval mode. Two predictions' switches, stepped by
    hand in that order."""
    model = mlp(dropout=0.5)
    model.train()
    model[2].eval()
    modes = [m.training for m in model.modules()]
    first, second = train._predict._in_eval_mode(model), train._predict._in_eval_mode(model)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not any(m.training for m in model.modules())  # the second is still predicting
    second.__exit__(None, None, None)
    assert [m.training for m in model.modules()] == modes


def test_predict_inside_a_models_own_eval_does_not_deadlock():
    # predict holds a lock while it switches the model to eval mode; a model whose eval() itself
    # predicts (say, to calibrate) took that lock again on the same thread and waited forever.
    import threading

    class Calibrating(nn.Sequential):
        calibrating = False

        def eval(self):
            if not self.calibrating:
                self.calibrating = True
                self.seen = train.predict(self, np.zeros((1, 3), np.float32))
                self.calibrating = False
            return super().eval()

    model, result = Calibrating(nn.Linear(3, 2, seed=0)), []
    worker = threading.Thread(target=lambda: result.append(train.predict(model, np.ones((4, 3), np.float32))),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "predict deadlocked"
    assert result[0].shape == (4, 2) and model.seen.shape == (1, 2) and model.training


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_child_forked_while_other_threads_predict_gets_the_models_back_in_their_modes():
    # A thread predicting at the fork does not exist in the child and never leaves predict: its model
    # stayed in eval mode there for good (Dropout silently off in the child's training). A fork during
    # another thread's switch to eval mode left that model half switched, with nothing to switch it
    # back; the fork now waits for the switch. The child also gets a lock of its own (the old one is
    # the fork's).
    import signal
    import threading
    import time

    inside, switching, release = threading.Event(), threading.Event(), threading.Event()

    class Waiting(nn.Module):  # no ops: the child runs no kernels
        def forward(self, x):
            inside.set()
            release.wait(60)
            return x

    class SlowToSwitch(nn.Sequential):
        def eval(self):
            self[0].training = False
            switching.set()
            time.sleep(0.3)  # the fork comes now
            return super().eval()

    waiting = nn.Sequential(Waiting(), nn.Dropout(0.5, seed=0))
    slow = SlowToSwitch(nn.Dropout(0.5, seed=1), nn.Dropout(0.5, seed=2))
    x = np.ones((2, 3), np.float32)
    workers = [threading.Thread(target=train.predict, args=(model, x), daemon=True) for model in (waiting, slow)]
    workers[0].start()
    assert inside.wait(60)
    workers[1].start()
    assert switching.wait(60)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        code = 1
        try:
            modes_back = all(m.training for model in (waiting, slow) for m in model.modules())
            train.predict(nn.Sequential(nn.Dropout(0.5, seed=0)), x)  # the lock is usable
            code = 0 if modes_back and not train._predict._evaluating else 2
        finally:
            os._exit(code)
    release.set()
    for worker in workers:
        worker.join(60)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's predict hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0, "a model stayed (half) in eval mode in the child"
    assert all(m.training for model in (waiting, slow) for m in model.modules())


def test_resuming_an_early_stopped_run_with_more_patience_says_it_trains_no_further(tmp_path):
    # It returned the stopped run at once, silently: a user who raised patience to train on got nothing.
    x, y = blobs(40, seed=1)

    def run(patience, epochs):
        model = mlp()
        return train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.0), (x, y), (x, y),
                         epochs=epochs, batch_size=10, patience=patience, checkpoint_dir=tmp_path, resume=True,
                         progress=False)

    stopped = run(1, 5)
    assert stopped.stopped_early and len(stopped) == 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(run(1, 5)) == 2  # the same call again: nothing to say
    with pytest.warns(RuntimeWarning, match=r"stopped early at epoch 2 \(1 evaluation\(s\) without improvement\), so "
                                            r"resume=True trains it no further, whatever patience \(5\)"):
        again = run(5, 8)
    assert len(again) == 2 and again.stopped_early
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it warned: stopped at its last epoch, more patience trains no further
        assert len(run(5, 2)) == 2


def test_resume_with_other_optimizer_settings_says_the_saved_ones_win(tmp_path):
    # They were replaced by the checkpoint's without a word (as torch's load_state_dict does).
    import warnings

    x, y = blobs(40, seed=1)

    def run(lr, momentum, epochs, scheduler=False):
        model = mlp()
        opt = optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        sched = optim.StepLR(opt, step_size=1, gamma=0.5) if scheduler else None
        train.fit(model, losses.CrossEntropyLoss(), opt, (x, y), epochs=epochs, batch_size=10, scheduler=sched,
                  checkpoint_dir=tmp_path / ("s" if scheduler else "p"), resume=True, progress=False)
        return opt

    run(0.1, 0.0, 1)
    with pytest.warns(RuntimeWarning, match=r"hyperparameters saved in .*, not this call's: lr 0.1 \(not 0.5\), "
                                            r"momentum 0.0 \(not 0.9\)"):
        opt = run(0.5, 0.9, 2)
    assert opt.hyperparameters()["lr"] == 0.1
    run(0.1, 0.0, 1, scheduler=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(0.1, 0.0, 2, scheduler=True)  # the saved lr is the schedule's (0.05): not a change of this call's


def test_checkpoint_extra_is_in_every_checkpoint_and_refused_before_training_when_bad(tmp_path):
    (x, y), val = blobs(40, seed=0), blobs(20, seed=1)

    def fit(directory, extra, **kwargs):
        model = mlp()
        return train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), val,
                         epochs=2, batch_size=16, checkpoint_dir=directory, progress=False, checkpoint_extra=extra,
                         **kwargs)

    fit(tmp_path / "run", {"run": {"example": "blobs", "seed": (1, 2)}})
    for which in ("best", "last"):
        extra = checkpoint.read_info(tmp_path / "run" / which)["extra"]
        assert extra["run"] == {"example": "blobs", "seed": [1, 2]} and "fit" in extra  # (its JSON form)
    fit(tmp_path / "run", {"run": "resumed"}, resume=True)  # (nothing left to train: the checkpoints stay)
    assert checkpoint.read_info(tmp_path / "run" / "last")["extra"]["run"]["example"] == "blobs"
    fit(tmp_path / "run", {"run": "again"}, overwrite=True)
    assert checkpoint.read_info(tmp_path / "run" / "last")["extra"]["run"] == "again"
    for extra, error, says in ((["run"], TypeError, "fit: checkpoint_extra must be a dict .* got list"),
                               ({"fit": 1}, ValueError, "must not have the key 'fit': fit keeps its own state there"),
                               ({"run": object()}, TypeError, "fit: checkpoint_extra: checkpoint extra must be "
                                                              "JSON-serializable")):
        with pytest.raises(error, match=says):
            fit(tmp_path / "bad", extra)
        assert not (tmp_path / "bad").exists()


def test_search_keeps_fits_checkpoint_extra_in_its_best(tmp_path, monkeypatch):
    (x, y), val = blobs(40, seed=0), blobs(20, seed=1)
    result = train.search(build_mlp, {"lr": [0.05, 0.1]}, (x, y), val, out_dir=tmp_path / "s", epochs=1,
                          batch_size=16, verbose=False, checkpoint_extra={"run": {"example": "blobs"}})
    extra = checkpoint.read_info(result.best_checkpoint)["extra"]
    assert extra["run"] == {"example": "blobs"} and extra["settings"] == result.best_settings
    fits = []
    monkeypatch.setattr(train._search, "fit", lambda *args, **kwargs: fits.append(1))
    with pytest.raises(ValueError, match=r"search: checkpoint_extra must not have the keys \['trial'\]"):
        train.search(build_mlp, {"lr": [0.1]}, (x, y), val, out_dir=tmp_path / "t", epochs=1, batch_size=16,
                     verbose=False, checkpoint_extra={"trial": "mine"})
    assert fits == [] and not (tmp_path / "t" / "best").exists()  # refused before the first trial trained


def test_fit_evaluate_and_predict_refuse_what_is_not_a_model_or_a_loss():
    # "'NoneType' object is not callable", "MSELoss() takes no arguments", "... has no attribute 'parameters'"
    model, data = mlp(), blobs(8)
    for call, error in (
            (lambda: train.evaluate(model, None, data), "evaluate: loss_fn must be a loss object .* got NoneType"),
            (lambda: train.evaluate(model, losses.CrossEntropyLoss, data),
             r"evaluate: loss_fn must be a loss object, got the class CrossEntropyLoss: pass CrossEntropyLoss\(\)"),
            (lambda: train.predict(nn.Linear, data[0]), r"predict: model must be a model, got the class Linear: pass an "
             r"instance, Linear\(\.\.\.\)"),
            (lambda: train.predict(lambda x: x, data[0]), r"predict: model must be a fastconv.nn.Module \(or a model "
             r"with parameters\(\), train\(\) and eval\(\)\), got function \(it has no parameters, train, eval\)"),
            (lambda: train.fit(model, lambda out, y: 0.0, optim.SGD(model.parameters(), lr=0.1), data, epochs=1,
                               batch_size=4, progress=False),
             r"fit: loss_fn must be a loss object \(fastconv.losses: loss_fn\(output, target\), loss_fn.backward\(\)\), "
             "got function"),
            (lambda: train.fit(None, losses.CrossEntropyLoss(), None, data, epochs=1, batch_size=4),
             r"fit: model must be a fastconv.nn.Module \(or .*\), got NoneType")):
        with pytest.raises(TypeError, match=error):
            call()

    class Wrapper:  # a model that wraps a Module and forwards to it: taken, as before the checks
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, x):
            return self.inner(x)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    wrapped = Wrapper(model)
    np.testing.assert_array_equal(train.predict(wrapped, data[0]), train.predict(model, data[0]))
    assert train.evaluate(wrapped, losses.CrossEntropyLoss(), data) == train.evaluate(model, losses.CrossEntropyLoss(),
                                                                                      data)


def test_a_metric_callable_named_loss_is_refused_not_taken_for_the_loss():
    """A callable named "loss" was taken for the built-in loss: minimized (its best checkpoint the
    worst accuracy), and accepted without validation data, where it was never called."""
    def loss(y_true, scores):
        return float((scores.argmax(1) == y_true).mean())

    x, y = blobs(40)
    for val in ((x, y), None):
        model = mlp()
        with pytest.raises(ValueError, match="metric: a callable named 'loss' would be taken for the loss"):
            train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (x, y), val,
                      epochs=1, batch_size=8, metric=loss, progress=False)


def test_evaluate_takes_a_metric_callable_named_loss():
    """evaluate records nothing by the metric's name: a function named loss is any other function there."""
    def loss(y_true, scores):
        return float((scores.argmax(1) == y_true).mean())

    x, y = blobs(40)
    model = mlp()
    mean_loss, value = train.evaluate(model, losses.CrossEntropyLoss(), (x, y), metric_fn=loss)
    assert value == pytest.approx(loss(y, train.predict(model, x))) and value != mean_loss


def test_a_metric_callable_is_maximized_by_default_and_needs_validation_data():
    def accuracy_of(y_true, scores):
        return float((scores.argmax(1) == y_true).mean())

    x, y = blobs(60)
    model = mlp()
    history = train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.2), (x, y), (x, y),
                        epochs=4, batch_size=8, metric=accuracy_of, progress=False)
    values = [r["val_accuracy_of"] for r in history.records]
    assert history.mode == "max" and history.best_metric == max(values)
    with pytest.raises(ValueError, match="metric='accuracy_of' needs validation data"):
        train.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.2), (x, y), None,
                  epochs=1, batch_size=8, metric=accuracy_of, progress=False)


@pytest.mark.parametrize("smoothing, scale", [(0.0, 1.0), (0.2, 1.0), (0.0, 1e-3)])
def test_train_loss_with_class_weights_is_the_epochs_weighted_mean(smoothing, scale):
    """With lr = 0 the epoch's train_loss is the loss of one model over the training rows: with class
    weights, their weighted mean, as evaluate() gives it (batch means weighted by their rows were
    another number)."""
    x, y = blobs(30, classes=3)
    weight = np.array([0.1, 1.0, 3.0], np.float32) * np.float32(scale)  # (1e-3: the weights sum below 1)
    model = mlp()
    loss_fn = losses.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)
    history = train.fit(model, loss_fn, optim.SGD(model.parameters(), lr=0.0), (x, y), (x, y), epochs=2,
                        batch_size=3, progress=False)
    whole = train.evaluate(model, loss_fn, (x, y))[0]
    for record in history.records:
        assert record["train_loss"] == pytest.approx(whole, rel=1e-6) and record["val_loss"] == pytest.approx(whole)


def test_a_loss_returning_a_python_float_trains_and_one_returning_an_array_is_refused_before_a_step():
    class MeanSquares:
        def __init__(self, as_array_of_rows=False):
            self.rows = as_array_of_rows

        def __call__(self, out, target):
            self.diff = out - target
            squares = (self.diff ** 2).mean(axis=1)
            return squares if self.rows else float(squares.mean())

        def backward(self):
            return (2 * self.diff / self.diff.size).astype(np.float32)

    x, _ = blobs(24)
    target = x[:, :1] * 2
    model = nn.Sequential(nn.Linear(4, 1, seed=0))
    history = train.fit(model, MeanSquares(), optim.SGD(model.parameters(), lr=0.005), (x, target), None, epochs=3,
                        batch_size=4, progress=False)
    assert history.records[-1]["train_loss"] < history.records[0]["train_loss"]
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(TypeError, match=r"fit: the loss MeanSquares returned an array of shape \(\d+,\) dtype "
                                        r"float32, not one number"):
        train.fit(model, MeanSquares(True), optim.SGD(model.parameters(), lr=0.05), (x, target), None, epochs=1,
                  batch_size=4, progress=False)
    assert all((p.data == b).all() for p, b in zip(model.parameters(), before))


def test_search_takes_lists_as_fit_does_and_refuses_a_val_that_is_not_a_pair(tmp_path):
    """x as a list takes the model's dtype in fit; search had converted it to float64 first, which a
    float32 model refused. A val that is not an (x, y) pair got a bare TypeError from its digest."""
    x, y = blobs(40)
    result = train.search(build_mlp, {"lr": [0.1]}, (x.tolist(), y), (x.tolist(), y.tolist()), out_dir=tmp_path / "s",
                          epochs=1, batch_size=8, verbose=False)
    assert len(result.table) == 1 and np.isfinite(result.best["best_metric"])
    for val in ((x, y, y), x, {"x": x, "y": y}):
        with pytest.raises(TypeError, match=r"^val must be a pair \(x, y\) of arrays, got"):
            train.search(build_mlp, {"lr": [0.1]}, (x, y), val, out_dir=tmp_path / "t", epochs=1, batch_size=8,
                         verbose=False)
