"""Each example end to end with tiny settings: `fastconv train` writes its checkpoint, history and
plots; `fastconv evaluate` of the saved checkpoint gives the numbers printed after training."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import checkpoint, cli, ops, runs
from fastconv.evaluate import json_text
from helpers import strip_run_record

# The examples need the loss, conv, pool and optimizer ops (each merged from its own branch).
NEEDED_OPS = ("bce_with_logits_forward", "softmax_cross_entropy_forward", "mse_forward", "conv2d_forward",
              "max_pool2d_forward", "sgd_step", "adam_step")
missing = [op for op in NEEDED_OPS if not hasattr(ops, op)]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"ops not merged yet: {missing}")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# example -> (extra options for a quick run, the PNGs it writes)
QUICK = {
    "neuron": (["--epochs", "3"], ["loss.png", "roc.png"]),
    "tumour_mlp": (["--epochs", "3"], ["loss.png", "roc.png"]),
    "regression": (["--epochs", "3"], ["loss.png", "fit.png"]),
    "digits_cnn": (["--epochs", "1", "--subset", "120"], ["loss.png", "confusion.png"]),
}


def assert_valid_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def same_report(a, b):
    """Equal as written to report.json (strict JSON: NaN, e.g. the precision of a class never predicted, is
    null there, and equals NaN)."""
    return json.loads(json_text(a)) == json.loads(json_text(b))


def test_output_files_are_strict_json(tmp_path):
    # Python's json wrote NaN and Infinity, which jq, JavaScript and other strict parsers refuse.
    report = {"auc": float("nan"), "per_class": [{"precision": np.float32("inf")}, {"precision": -np.inf}],
              "n": np.int64(3), "ok": np.array([0.5, np.nan])}
    path = runs.save_json(report, tmp_path / "report.json")
    saved = json.loads(Path(path).read_text(), parse_constant=lambda token: pytest.fail(token))
    assert saved == {"auc": None, "per_class": [{"precision": None}, {"precision": None}], "n": 3, "ok": [0.5, None]}
    assert os.listdir(tmp_path) == ["report.json"]


def train(name, out, *options, backend="cpu"):
    code = cli.main(["train", name, "--out", str(out), "--quiet", "--backend", backend, *options])
    assert code == 0


@pytest.mark.parametrize("name", sorted(QUICK))
def test_train_writes_its_outputs_and_evaluate_repeats_its_numbers(name, tmp_path, capsys):
    options, pngs = QUICK[name]
    train(name, tmp_path, *options)
    printed = capsys.readouterr().out

    info = checkpoint.read_info(tmp_path / "best")
    assert info["extra"]["run"]["example"] == name
    assert (tmp_path / "last" / "checkpoint.json").exists()
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["records"]) == int(options[1])
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in history["records"])
    for png in pngs:
        assert_valid_png(tmp_path / png)
    report = json.loads((tmp_path / "report.json").read_text())
    run_record = json.loads((tmp_path / "run.json").read_text())
    assert run_record["example"] == name and run_record["backend"] == "cpu"

    # The same report again, from the saved checkpoint (a fresh model rebuilt from its config).
    assert same_report(runs.evaluate_checkpoint(cli.load_example(name), tmp_path / "best", verbose=False), report)
    assert cli.main(["evaluate", str(tmp_path / "best"), "--backend", "cpu"]) == 0
    evaluated = capsys.readouterr().out
    report_lines = evaluated.splitlines()[1:]  # after the "fastconv evaluate PATH" header
    assert report_lines and all(line in printed.splitlines() for line in report_lines)


def test_neuron_reports_auc_ci_and_both_operating_points(tmp_path, capsys):
    train("neuron", tmp_path, "--epochs", "5")
    report = json.loads((tmp_path / "report.json").read_text())
    auc = report["auc"]
    assert auc["method"] == "delong" and auc["low"] <= auc["auc"] <= auc["high"]
    points = report["operating_points"]
    assert points["screening"]["target"] == ["sensitivity", 0.95]
    assert points["high-risk"]["target"] == ["specificity", 0.95]
    # Chosen on validation data: the targets hold there by construction.
    assert points["screening"]["val"]["sensitivity"] >= 0.95
    assert points["high-risk"]["val"]["specificity"] >= 0.95
    for point in points.values():
        test = point["test"]
        assert test["tp"] + test["fn"] == report["n_test_positive"]
        assert test["tn"] + test["fp"] == report["n_test"] - report["n_test_positive"]
    out = capsys.readouterr().out
    assert "95% CI" in out and "screening" in out and "high-risk" in out


def test_digits_report_has_per_class_and_coarse_results(tmp_path):
    train("digits_cnn", tmp_path, "--epochs", "1", "--subset", "120")
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["class"] for c in report["per_class"]] == [str(d) for d in range(10)]
    assert np.asarray(report["confusion_matrix"]).sum() == report["n_test"] == 120
    assert set(report["coarse"]) == {"parity", "low/high"}
    assert report["coarse"]["parity"]["classes"] == {"even": [0, 2, 4, 6, 8], "odd": [1, 3, 5, 7, 9]}


def test_the_same_seed_gives_the_same_run(tmp_path):
    for out in ("a", "b"):
        train("regression", tmp_path / out, "--epochs", "2", "--seed", "3")
    a, b = (json.loads((tmp_path / out / "report.json").read_text()) for out in ("a", "b"))
    assert same_report(a, b)


def test_train_resume_continues_a_run_as_if_it_had_not_stopped(tmp_path, capsys):
    # `fastconv train` had no way to continue a run (an interrupted one, or one given more epochs).
    train("tumour_mlp", tmp_path / "whole", "--epochs", "6")
    train("tumour_mlp", tmp_path / "parts", "--epochs", "3")
    train("tumour_mlp", tmp_path / "parts", "--epochs", "6", "--resume")
    whole, parts = (json.loads((tmp_path / d / "history.json").read_text()) for d in ("whole", "parts"))
    drop_time = [{k: v for k, v in r.items() if k != "time"} for r in whole["records"]]
    assert [{k: v for k, v in r.items() if k != "time"} for r in parts["records"]] == drop_time
    assert same_report(*(json.loads((tmp_path / d / "report.json").read_text()) for d in ("whole", "parts")))
    capsys.readouterr()
    # Another seed splits the data otherwise: the saved position in the batches would mean other rows.
    code = cli.main(["train", "tumour_mlp", "--out", str(tmp_path / "parts"), "--quiet", "--backend", "cpu",
                     "--epochs", "8", "--seed", "1", "--resume"])
    assert code == 1 and "holds a run trained on another split, with --seed 0" in capsys.readouterr().err
    code = cli.main(["train", "search", "--out", str(tmp_path / "s"), "--quiet", "--resume"])
    assert code == 1 and "example 'search' cannot resume" in capsys.readouterr().err


def test_search_ranks_the_grid_and_keeps_the_best_model(tmp_path, capsys):
    code = cli.main(["search", "--epochs", "2", "--lrs", "0.01,0.001", "--widths", "4", "--batch-sizes", "64",
                     "--out", str(tmp_path), "--backend", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    table = json.loads((tmp_path / "search.json").read_text())
    assert [row["rank"] for row in table] == [1, 2]
    assert table[0]["best_metric"] <= table[1]["best_metric"]  # validation loss: lower is better
    assert "ranked on validation loss" in out
    assert (tmp_path / "search.csv").read_text().count("\n") == 3
    assert_valid_png(tmp_path / "roc.png")
    report = json.loads((tmp_path / "report.json").read_text())
    assert same_report(runs.evaluate_checkpoint(cli.load_example("search"), tmp_path / "best", verbose=False), report)


def test_an_example_script_runs_through_its_main(tmp_path, capsys):
    assert cli.load_example("regression").main(["--epochs", "1", "--out", str(tmp_path), "--quiet"]) == 0
    assert "test MSE" in capsys.readouterr().out


def test_neuron_trains_on_the_emulator(tmp_path):
    ok, why = fastconv.backend.availability("emu")
    if not ok:
        pytest.skip(f"emu unavailable: {why}")
    train("neuron", tmp_path, "--epochs", "1", "--subset", "48", "--batch-size", "16", backend="emu")
    report = json.loads((tmp_path / "report.json").read_text())
    assert json.loads((tmp_path / "run.json").read_text())["backend"] == "emu"
    assert 0.0 <= report["auc"]["auc"] <= 1.0
    with fastconv.use_backend("emu"):
        again = runs.evaluate_checkpoint(cli.load_example("neuron"), tmp_path / "best", verbose=False)
    assert same_report(again, report)


def test_resume_with_another_lr_is_refused_before_training(tmp_path, capsys):
    # Resume continued with the saved lr (fit warned), but the header and run.json named this call's.
    train("neuron", tmp_path, "--epochs", "2", "--subset", "40", "--lr", "0.01")
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    for other, says in ((["--lr", "0.5"], "not this call's lr 0.5: give --lr 0.01"),
                        ([], "not this call's lr 0.05 (the example's default): give --lr 0.01")):
        code = cli.main(["train", "neuron", "--out", str(tmp_path), "--quiet", "--backend", "cpu", "--epochs", "3",
                         "--subset", "40", "--resume", *other])
        out, err = capsys.readouterr()
        assert code == 1 and out == ""  # refused before the header
        assert f"{tmp_path} holds a run trained with lr 0.01; --resume continues it with that lr" in err and says in err
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == kept
    train("neuron", tmp_path, "--epochs", "3", "--subset", "40", "--lr", "1e-2", "--resume")
    assert json.loads((tmp_path / "run.json").read_text())["options"]["lr"] == 0.01


def test_resume_refused_by_fit_names_the_flags(tmp_path, capsys):
    # fit's refusals named its keywords (overwrite=True, checkpoint_dir): under the command they name its flags,
    # and the command adds a line saying what to do.
    train("neuron", tmp_path, "--epochs", "1", "--subset", "40")
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    run_json = tmp_path / "run.json"
    for other, says, unrecorded in ((["--batch-size", "8"], "was trained with batch_size 32 on 40 training rows", False),
                                    (["--seed", "1"], "was trained on other training data", True)):
        if unrecorded:  # (a last/ without its record, and no run.json: the command cannot tell the split, fit can)
            run_json.unlink()
            strip_run_record(tmp_path / "last")
            kept[tmp_path / "last" / checkpoint.INDEX] = (tmp_path / "last" / checkpoint.INDEX).read_bytes()
        code = cli.main(["train", "neuron", "--out", str(tmp_path), "--quiet", "--backend", "cpu", "--epochs", "2",
                         "--subset", "40", "--resume", *other])
        err = capsys.readouterr().err
        assert code == 1 and says in err and "overwrite=True" not in err
        assert err.splitlines()[-1] == (f"  --resume cannot continue the run in {tmp_path}: --overwrite starts afresh "
                                        "(replacing it), or give another --out")
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == {
            p: b for p, b in kept.items() if p != run_json or not unrecorded}
    weights, = (tmp_path / "last").glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-4])  # a last/ fit cannot load: a CheckpointError
    code = cli.main(["train", "neuron", "--out", str(tmp_path), "--quiet", "--backend", "cpu", "--epochs", "2",
                     "--subset", "40", "--resume"])
    assert code == 1 and "--overwrite starts afresh" in capsys.readouterr().err


def test_resume_on_another_split_is_refused_before_the_header(tmp_path, capsys):
    # fit refused it too, by the training rows' digest, but after loading the data and printing the header.
    train("neuron", tmp_path, "--epochs", "1", "--subset", "40", "--seed", "2")
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    for other in (["--subset", "40"], ["--seed", "2"], ["--seed", "2", "--subset", "41"]):
        code = cli.main(["train", "neuron", "--out", str(tmp_path), "--quiet", "--backend", "cpu", "--epochs", "2",
                         "--resume", *other])
        out, err = capsys.readouterr()
        assert code == 1 and out == ""
        assert err.strip() == (f"fastconv train: error: {tmp_path} holds a run trained on another split, with --seed 2 "
                               "and --subset 40; --resume continues it on that split: give --seed 2 and --subset 40")
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == kept
    # An interrupted run (no run.json): last/'s own record says its split.
    (tmp_path / "run.json").unlink()
    code = cli.main(["train", "neuron", "--out", str(tmp_path), "--quiet", "--backend", "cpu", "--epochs", "2",
                     "--resume", "--seed", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and "holds a run trained on another split, with --seed 2 and --subset 40" in err
    train("neuron", tmp_path, "--epochs", "2", "--subset", "40", "--seed", "2", "--resume")
    assert json.loads((tmp_path / "run.json").read_text())["options"]["epochs"] == 2


def test_resume_of_a_best_without_last_is_refused_before_the_header(tmp_path, capsys):
    # fit started afresh (nothing to resume) and replaced best/ at its first evaluation
    train("neuron", tmp_path, "--epochs", "1", "--subset", "40")
    shutil.rmtree(tmp_path / "last")
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    code = cli.main(["train", "neuron", "--out", str(tmp_path), "--quiet", "--backend", "cpu", "--epochs", "2",
                     "--subset", "40", "--resume"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert f"{tmp_path} holds an earlier run (best, history.json, report.json, run.json, loss.png, roc.png): " \
           "--overwrite replaces it, or give another --out" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == kept


def test_fit_refuses_a_resume_with_a_resume_error_naming_its_keywords(tmp_path):
    from fastconv import train as train_module

    example = cli.load_example("neuron")
    example.run(out=str(tmp_path), epochs=1, subset=40, verbose=False, progress=False)
    with pytest.raises(train_module.ResumeError, match=r"start afresh with overwrite=True\)$"):
        example.run(out=str(tmp_path), epochs=2, subset=40, batch_size=8, verbose=False, progress=False, resume=True)


def test_a_run_whose_stdout_closes_mid_training_stops_quietly_keeping_what_it_saved(tmp_path, capsys):
    # `fastconv train neuron | head -1`: the reader goes after the header; the report's print failed
    # with "fastconv train: error: [Errno 32] Broken pipe". The reader closes the pipe once the lines
    # printed before training are read, and 200 epochs (about a second) let it do so before the
    # report, even on a busy host: a run that ended first would print into the pipe's buffer.
    root = Path(cli.__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "fastconv", "train", "neuron", "--out", str(tmp_path),
                             "--epochs", "200", "--subset", "40", "--backend", "cpu", "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(root),
                                                                        PYTHONUNBUFFERED="1"))
    assert proc.stdout.readline().startswith("fastconv train neuron: backend cpu")
    assert [proc.stdout.readline()[:6] for _ in range(2)] == ["data: ", "model:"]  # the lines before training
    proc.stdout.close()
    err = proc.stderr.read()
    assert (proc.wait(timeout=300), err) == (1, "")
    assert not [p for p in tmp_path.rglob(".*")]  # no temp file left
    for name in ("best", "last"):
        checkpoint.load(tmp_path / name)
    report = json.loads((tmp_path / "report.json").read_text())
    assert json.loads((tmp_path / "run.json").read_text())["weights_sha256"] == runs.weights_sha256(tmp_path)
    assert same_report(runs.evaluate_checkpoint(cli.load_example("neuron"), tmp_path / "best", verbose=False), report)


@pytest.mark.parametrize("name", ["neuron", "tumour_mlp", "search"])
def test_a_subset_too_small_for_the_report_is_refused_before_training(name, tmp_path, capsys):
    """--subset 5 trained, then the binary report failed (DeLong needs 2 positives and 2 negatives),
    leaving best/, last/, history.json and loss.png without run.json and report.json."""
    out = tmp_path / "run"
    assert cli.main(["train", name, "--out", str(out), "--quiet", "--backend", "cpu", "--epochs", "1",
                     "--subset", "5"]) == 1
    err = capsys.readouterr().err
    assert "--subset 5 keeps too few rows for the test report: binary_report needs at least 2 positives and " \
           "2 negatives in the test labels" in err and "got 4 and 1 in test" in err
    assert not out.exists()  # nothing half-done


def test_a_run_without_a_best_fails_clearly_and_keeps_the_earlier_run(tmp_path, capsys):
    train("tumour_mlp", tmp_path, "--epochs", "2", "--subset", "40")
    kept = {name: (tmp_path / name).read_bytes() for name in ("run.json", "report.json", "best/checkpoint.json")}
    capsys.readouterr()
    # lr 1e30: every validation loss is NaN, so this run writes no best; the earlier run's is not its own.
    with pytest.warns(RuntimeWarning, match="training diverged"):
        code = cli.main(["train", "tumour_mlp", "--out", str(tmp_path), "--quiet", "--backend", "cpu", "--epochs",
                         "2", "--subset", "40", "--lr", "1e30", "--overwrite"])
    assert code == 1
    assert "training wrote no best checkpoint" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept  # not re-tagged, not overwritten

    # A history whose best was saved elsewhere: the best in DIR is still not this run's.
    example = cli.load_example("tumour_mlp")
    other = example.run(out=str(tmp_path / "other"), epochs=1, subset=40, verbose=False, progress=False)
    with pytest.raises(RuntimeError, match="the one there is not this run's"):
        runs.finish(example, tmp_path, other["history"], record={"example": "tumour_mlp"}, started=0.0)
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept


@pytest.mark.parametrize("argv, says", [
    (["train", "tumour_mlp", "--epochs", "1", "--subset", "40"],
     "{out} holds an earlier run (best, last, history.json, report.json, run.json, loss.png, roc.png): --resume "
     "continues it, --overwrite"),
    (["search", "--epochs", "1", "--lrs", "0.01", "--widths", "4", "--batch-sizes", "64"],
     "search: --out '{out}' holds an earlier search (best, search.csv, search.json; "),
])
def test_a_second_run_into_the_same_out_keeps_the_first(tmp_path, capsys, argv, says):
    # It replaced the first run's best model at its first evaluation, without a word.
    argv = [*argv, "--out", str(tmp_path), "--backend", "cpu", "--quiet"]
    assert cli.main(argv) == 0
    first = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert says.format(out=tmp_path) in err and "--overwrite replaces it" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == first
    assert cli.main([*argv, "--overwrite"]) == 0


def _interrupted_after_fit(monkeypatch, where, finished=0):
    """where.fit returns normally `finished` times, then trains once more (checkpoints written) and raises
    KeyboardInterrupt."""
    real_fit, calls = where.fit, []

    def interrupted_fit(*args, **kwargs):
        history = real_fit(*args, **kwargs)
        calls.append(1)
        if len(calls) > finished:
            raise KeyboardInterrupt
        return history

    monkeypatch.setattr(where, "fit", interrupted_fit)


def test_an_interrupted_runs_checkpoints_are_evaluated_on_their_own_split(tmp_path, capsys, monkeypatch):
    from fastconv import train as train_module

    tumour_mlp = cli.load_example("tumour_mlp")
    train("tumour_mlp", tmp_path, "--epochs", "2", "--subset", "40", "--seed", "1")
    # A run with another seed (another split) interrupted after its checkpoints were written, before
    # run.json: run.json is the seed-1 run's. Its record was once taken for theirs (this run's model
    # evaluated on seed 1's test split, which holds rows it trained on: test AUC 1.0, no error); now
    # best/ and last/ hold their own record from the first save.
    _interrupted_after_fit(monkeypatch, train_module)
    assert cli.main(["train", "tumour_mlp", "--out", str(tmp_path), "--quiet", "--backend", "cpu", "--epochs", "2",
                     "--subset", "40", "--seed", "2", "--overwrite"]) == 130
    assert "fastconv train: interrupted; " in capsys.readouterr().err
    assert json.loads((tmp_path / "run.json").read_text())["data"]["seed"] == 1
    own_split = tumour_mlp.load_data(seed=2, subset=40)
    for which in ("best", "last"):
        assert checkpoint.read_info(tmp_path / which)["extra"][runs.RECORD_KEY]["data"] == {"seed": 2, "subset": 40}
        report = runs.evaluate_checkpoint(tumour_mlp, tmp_path / which, verbose=False)
        model, _ = checkpoint.load(tmp_path / which)
        assert same_report(report, tumour_mlp.evaluate(model, own_split))
        assert cli.main(["evaluate", str(tmp_path / which), "--backend", "cpu"]) == 0
        capsys.readouterr()
    # Checkpoints without their record (an earlier fastconv's) beside a run.json of other weights: refused.
    for which in ("best", "last"):
        strip_run_record(tmp_path / which)
        assert cli.main(["evaluate", str(tmp_path / which), "--backend", "cpu"]) == 1
        assert "describes other weights (an earlier run's)" in capsys.readouterr().err


def test_an_interrupted_searchs_best_is_evaluated_on_its_own_split(tmp_path, capsys, monkeypatch):
    from fastconv import train as train_module

    search = cli.load_example("search")
    argv = ["search", "--epochs", "1", "--lrs", "0.01,0.02", "--widths", "4", "--batch-sizes", "64", "--out",
            str(tmp_path), "--backend", "cpu", "--quiet"]
    assert cli.main([*argv, "--seed", "1"]) == 0
    # Another seed's search, interrupted in its second setting: best/ holds its first one's model, beside the
    # seed-1 search's run.json (whose data, the seed-1 split, evaluate once took for best/'s own).
    _interrupted_after_fit(monkeypatch, train_module._search, finished=1)  # (search's own calls of fit)
    assert cli.main([*argv, "--seed", "2", "--overwrite"]) == 130
    capsys.readouterr()
    record = checkpoint.read_info(tmp_path / "best")["extra"][runs.RECORD_KEY]
    assert record["data"] == {"seed": 2, "subset": None} and "best_settings" not in record
    model, _ = checkpoint.load(tmp_path / "best")
    assert same_report(runs.evaluate_checkpoint(search, tmp_path / "best", verbose=False),
                       search.evaluate(model, search.load_data(seed=2)))
    strip_run_record(tmp_path / "best")
    assert cli.main(["evaluate", str(tmp_path / "best"), "--backend", "cpu"]) == 1
    assert "describes other weights (an earlier run's)" in capsys.readouterr().err


def test_the_data_fingerprint_is_the_labels_values_not_their_dtype():
    # int32 labels (NumPy 1's default int on Windows), big-endian ones, or float32 targets read as float64
    # are the same split; another order, another size or another value is not.
    from fastconv.data import Dataset

    def split(y, x_rows=None):
        y = np.asarray(y)
        x = np.zeros((x_rows or len(y), 2), np.float32)
        return Dataset(x, y, x, y, x, y, [], [], "")

    base = runs.data_fingerprint(split(np.array([0, 1, 1, 0], np.int64)))
    for same in (np.array([0, 1, 1, 0], np.int32), np.array([0, 1, 1, 0], ">i8"), [0, 1, 1, 0]):
        assert runs.data_fingerprint(split(same)) == base
    for other in ([1, 0, 1, 0], [0, 1, 1], [0, 1, 1, 2]):
        assert runs.data_fingerprint(split(other)) != base
    assert runs.data_fingerprint(split([0, 1, 1, 0], x_rows=5)) != base
    assert runs.data_fingerprint(split(np.array([0.5, 2.25], np.float32))) == runs.data_fingerprint(
        split(np.array([0.5, 2.25], np.float64)))
    listed = split([0, 1, 1, 0])
    listed.x_train = listed.x_train.tolist()  # (inputs as lists: their shape, as an array's)
    assert runs.data_fingerprint(listed) == base


def test_a_checkpoint_is_never_evaluated_on_another_split_than_it_was_trained_on(tmp_path, monkeypatch):
    # A release that changes the split (as the stratified split's sizes did) or the bundled data: the
    # record's loader arguments then give another test part, which can hold the model's training rows.
    tumour_mlp = cli.load_example("tumour_mlp")
    train("tumour_mlp", tmp_path, "--epochs", "1", "--subset", "60")
    runs.evaluate_checkpoint(tumour_mlp, tmp_path / "best", verbose=False)  # its own split: evaluated
    real_load = tumour_mlp.load_data
    for changed in (lambda seed=0, subset=None: real_load(seed + 1, subset),  # the rows shuffled otherwise
                    lambda seed=0, subset=None: real_load(seed, subset and subset - 1)):  # one row fewer
        monkeypatch.setattr(tumour_mlp, "load_data", changed)
        for which in ("best", "last"):
            with pytest.raises(checkpoint.CheckpointError, match=r"was trained on another split than example "
                               r"'tumour_mlp''s load_data\(seed=0, subset=60\) gives now \(its labels or sizes "
                               r"differ; fastconv .* saved it\): a report on these data could count its training"):
                runs.evaluate_checkpoint(tumour_mlp, tmp_path / which, verbose=False)


def test_search_shows_diverged_settings_and_fails_clearly_when_all_diverge(tmp_path, capsys):
    with pytest.warns(RuntimeWarning, match="training diverged"):
        code = cli.main(["search", "--epochs", "1", "--lrs", "1e30", "--widths", "4", "--batch-sizes", "64",
                         "--out", str(tmp_path), "--backend", "cpu", "--quiet"])
    assert code == 1
    assert "no setting reached a finite validation loss" in capsys.readouterr().err
    assert not (tmp_path / "best").exists()
    assert json.loads((tmp_path / "search.json").read_text())[0]["best_metric"] is None
    # One setting diverges, the other not: the table shows "-" for the diverged one's best.
    with pytest.warns(RuntimeWarning, match="training diverged"):
        code = cli.main(["search", "--epochs", "1", "--lrs", "1e30,0.01", "--widths", "4", "--batch-sizes", "64",
                         "--out", str(tmp_path / "mixed"), "--backend", "cpu", "--quiet"])
    assert code == 0
    last_row = capsys.readouterr().out.split("ranked on validation loss")[1].splitlines()[3].split()
    assert last_row[:2] == ["2", "1e+30"] and last_row[-3:-1] == ["-", "-"]



def readme_text():
    from pathlib import Path

    return (Path(__file__).resolve().parent.parent / "README.md").read_text()


def readme_block(starting):
    """The lines of README.md's code block whose first line starts with `starting`."""
    blocks = readme_text().split("```")[1::2]
    found = [b.strip("\n").splitlines() for b in blocks if b.lstrip("\n").startswith(starting)]
    assert len(found) == 1, f"README.md has {len(found)} code blocks starting {starting!r}"
    return found[0]


def without_time_and_place(lines, out):
    """Lines printed by `fastconv train`, the wall time and the output directory masked."""
    import re

    return [re.sub(r"^trained in [0-9.]+ s;", "trained in T s;", line).replace(f"wrote {out}/:", "wrote OUT/:")
            for line in lines]


def _avx512():
    from fastconv._cpu import _vecmath

    return _vecmath.AVX512


# The README's run is on an AVX-512 host. AVX2 hosts gave the same bits here until the AVX-512 exp
# took its table form (2026-12-06); they, and hosts with neither, which run the portable float32
# loops, round otherwise.
@pytest.mark.skipif(not _avx512(), reason="the README's numbers are those of the AVX-512 kernels")
def test_the_readme_shows_what_the_main_job_prints(tmp_path, capsys, monkeypatch):
    """README.md's main job prints what its block says (but the time and the directory), and its
    sentence on FASTCONV_WINOGRAD=0 holds: a change of rounding anywhere in the kernels moves this
    run, and the README went stale that way once (it showed 0.9703 where the run gave 0.9740)."""
    import re

    from fastconv._cpu import conv

    shown = without_time_and_place(readme_block("fastconv train digits_cnn: backend cpu"), "runs/digits")
    monkeypatch.setattr(conv, "WINOGRAD", True)  # the README's run, whatever FASTCONV_WINOGRAD says here
    train("digits_cnn", tmp_path / "digits")
    printed = without_time_and_place(capsys.readouterr().out.splitlines(), tmp_path / "digits")
    assert printed == shown

    sentence = re.search(r"`FASTCONV_WINOGRAD=0` the same command prints test accuracy ([0-9.]+) (\(\d+/\d+\)), "
                         r"best epoch (\d+)", readme_text())
    assert sentence, "README.md no longer states the FASTCONV_WINOGRAD=0 run in the form this test reads"
    monkeypatch.setattr(conv, "WINOGRAD", False)
    train("digits_cnn", tmp_path / "direct")
    out = capsys.readouterr().out
    assert f"test accuracy {sentence[1]}  {sentence[2]}" in out
    assert f"best epoch {sentence[3]} " in out


def _paragraph_of(text, phrase):
    """The README paragraph that holds `phrase`, its lines joined."""
    found = [p for p in text.split("\n\n") if phrase in " ".join(p.split())]
    assert len(found) == 1, f"README.md has {len(found)} paragraphs holding {phrase!r}"
    return " ".join(found[0].split())


@pytest.mark.parametrize("command, phrase", [("train", "options of `fastconv train`: `--epochs`"), ("search", "whose options are")])
def test_the_readme_names_every_option_of_train_and_search(command, phrase):
    """README.md's option lists of `fastconv train` and `fastconv search` are the parser's (train's with
    the backends it takes)."""
    import argparse

    from fastconv import cli

    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    paragraph = _paragraph_of(readme_text(), phrase)
    for action in subparsers.choices[command]._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert f"`{option}" in paragraph, f"README.md's options of fastconv {command} leave out {option}"
        if command == "train" and action.choices and action.option_strings:
            assert f"`{action.option_strings[0]} {'|'.join(action.choices)}`" in paragraph


def test_runs_documents_every_argument_fastconv_train_passes(monkeypatch, tmp_path):
    """fastconv.runs' docstring is the examples' contract: run() as documented there takes every
    argument `fastconv train` passes (resume included, with --resume)."""
    import functools
    import inspect
    import re

    from fastconv import cli, runs

    documented = re.search(r"run\((.*?)\) \(what `fastconv train NAME` calls", " ".join(runs.__doc__.split()))
    assert documented, "fastconv.runs no longer documents run(...) in the form this test reads"
    names = {part.split("=")[0].strip() for part in documented[1].split(",")}
    passed = {}
    example = cli.load_example("neuron")

    @functools.wraps(example.run)  # (its signature: the command checks that it takes resume)
    def spy(**kwargs):
        passed.update(kwargs)
    monkeypatch.setattr(example, "run", spy)
    assert cli.main(["train", "neuron", "--out", str(tmp_path / "n"), "--epochs", "1", "--lr", "0.1", "--batch-size",
                     "8", "--subset", "20", "--quiet", "--resume"]) == 0
    assert passed and set(passed) - names == set()
    assert names <= set(inspect.signature(cli.load_example("digits_cnn").run).parameters)


@pytest.mark.parametrize("argv", [["search"], ["train", "search", "--subset", "40"]])
def test_search_quiet_leaves_out_the_line_per_setting(tmp_path, capsys, argv):
    """`fastconv search --quiet` (and `fastconv train search --quiet`) print no line per setting, only
    the table and the report: the flag reached the example as progress=False, which it ignored."""
    from fastconv import cli

    grid = ["--lrs", "0.01", "--widths", "4"] if argv == ["search"] else ["--lr", "0.01"]
    assert cli.main([*argv, *grid, "--batch-sizes" if argv == ["search"] else "--batch-size", "16", "--epochs", "1",
                     "--out", str(tmp_path / "s"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trial 1/" not in out
    assert "ranked on validation loss" in out and "test AUC" in out


def test_overwrite_removes_what_the_replaced_run_left(tmp_path, capsys):
    # --overwrite replaced the earlier run's files that this run writes, and left the others: another
    # example's fit.png, or a search's table, sat beside the new run as if they were its own.
    out = tmp_path / "run"
    train("regression", out, "--epochs", "1")
    assert (out / "fit.png").exists()
    capsys.readouterr()
    train("neuron", out, "--epochs", "1", "--subset", "60", "--overwrite")
    assert "removed what the replaced run left in" in capsys.readouterr().out
    assert not (out / "fit.png").exists() and (out / "roc.png").exists()
    search_argv = ["search", "--epochs", "1", "--lrs", "0.01", "--widths", "4", "--batch-sizes", "64", "--out",
                   str(out), "--backend", "cpu", "--quiet", "--overwrite"]
    assert cli.main(search_argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (f"removed what the replaced run left in {out}/: last, "
                                                       "history.json, loss.png")
    assert sorted(p.name for p in out.iterdir()) == ["best", "report.json", "roc.png", "run.json", "search.csv",
                                                     "search.json"]
    assert cli.main(["evaluate", str(out / "best"), "--backend", "cpu"]) == 0
    train("digits_cnn", out, "--epochs", "1", "--subset", "200", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["best", "confusion.png", "history.json", "last", "loss.png",
                                                     "report.json", "run.json"]
    # A directory that is not a checkpoint is not the replaced run's: it stays. What the new run names, however
    # spelled (through a link to out), and what changed since (written by the new run) stay too.
    (out / "last").rename(tmp_path / "moved")
    (out / "last").mkdir()
    (out / "last" / "notes.txt").write_text("mine")
    (tmp_path / "link").symlink_to(out)
    earlier = runs.earlier_run_files(out)
    (out / "history.json").write_text("{}")
    os.utime(out / "history.json", ns=(0, 0))
    assert runs.remove_left_over(tmp_path / "link", earlier, [str(out / "best"), str(out / "run.json"), str(out)]) \
        == ["report.json", "loss.png", "confusion.png"]
    assert (out / "last" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["best", "history.json", "last", "run.json"]
