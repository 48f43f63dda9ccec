"""fastconv.train: fit learns, saves the best checkpoint, stops early, resumes bit for bit (cpu),
runs on emu; predict; search ranks settings and keeps the best model."""
import json
import os

import numpy as np
import pytest

from fastconv import checkpoint, losses, nn, ops, optim, train

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


def run(tmp_path, epochs, resume=False, eval_every=None, scheduler=True):
    x, y = blobs(100, seed=1)
    val = blobs(40, seed=2)
    model = mlp(seed=3, dropout=0.2)
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5) if scheduler else None
    history = train.fit(model, losses.CrossEntropyLoss(), opt, (x, y), val, epochs=epochs, batch_size=16,
                        checkpoint_dir=tmp_path, resume=resume, scheduler=sched, eval_every=eval_every, seed=7,
                        progress=False)
    return model, history


@pytest.mark.parametrize("eval_every", [None, 5])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, eval_every):
    full_model, full = run(tmp_path / "full", 5, eval_every=eval_every)
    run(tmp_path / "parts", 2, eval_every=eval_every)  # "killed" after epoch 2
    model, resumed = run(tmp_path / "parts", 5, resume=True, eval_every=eval_every)
    for a, b in zip(model.parameters(), full_model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    keys = ("epoch", "step", "train_loss", "val_loss", "lr")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]


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
    model, resumed = run(tmp_path / "part", 3, resume=True, eval_every=3)
    for a, b in zip(model.parameters(), full_model.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    keys = ("epoch", "step", "train_loss", "val_loss", "lr")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]


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
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        train.fit(model, loss, opt, (x, y), epochs=1, batch_size=0, progress=False)


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
    assert csv_lines[0].startswith("rank,trial,lr,width,best_metric") and len(csv_lines) == 5
    assert len(json.loads((tmp_path / "search.json").read_text())) == 4
    assert not os.path.exists(tmp_path / "trial")

    rnd = train.search(build, {"lr": lambda rng: float(10 ** rng.uniform(-2, -0.5)), "width": [4, 8]}, (x, y), val,
                       method="random", n_trials=2, out_dir=tmp_path / "rnd", epochs=1, batch_size=16, verbose=False)
    assert len(rnd.table) == 2 and all(0.01 <= r["settings"]["lr"] <= 10 ** -0.5 for r in rnd.table)
