"""Hyperparameter search on the two-layer tumour network (examples/tumour_mlp.py).

A grid over learning rate × hidden width × batch size: each setting trains a fresh network
(train.search runs the whole fit per setting), the settings are ranked on their best validation
loss, and the table is saved (search.csv, search.json). The best model is kept (best/) and only
it is evaluated on the test data, once — choosing among settings is part of training, so the
test data must not take part in it.

    fastconv search --out runs/search
    fastconv search --lrs 0.001,0.01 --widths 8,32 --batch-sizes 16,64 --epochs 30
"""
import sys
import time

from fastconv import losses, optim, runs, train
from fastconv.evaluate import check_binary_labels, format_report

NAME = "search"
DEFAULTS = {"epochs": 30, "lrs": [0.001, 0.01, 0.05], "widths": [4, 16, 64], "batch_sizes": [16, 64]}


def _mlp():
    from fastconv import cli

    return cli.load_example("tumour_mlp")


def load_data(seed=0, subset=None):
    return _mlp().load_data(seed, subset)


def evaluate(model, dataset):
    return _mlp().evaluate(model, dataset)


def plots(out, model, dataset, report):
    return _mlp().plots(out, model, dataset, report)


def format_table(rows, metric):
    lines = [f"{'rank':>4}  {'lr':>7}  {'width':>5}  {'batch':>5}  {'best val ' + metric:>14}  {'epoch':>5}  {'time':>6}"]
    for r in rows:
        s = r["settings"]
        best = "-" if r["best_metric"] is None else f"{r['best_metric']:.4f}"  # None: never improved (NaN)
        lines.append(f"{r['rank']:>4}  {s['lr']:>7g}  {s['width']:>5}  {s['batch_size']:>5}  "
                     f"{best:>14}  {str(r['best_epoch'] or '-'):>5}  {r['time_s']:>5.1f}s")
    return "\n".join(lines)


def run(out="runs/search", epochs=None, lrs=None, widths=None, batch_sizes=None, lr=None, batch_size=None,
        seed=0, subset=None, verbose=True, progress=None, overwrite=False):
    """`lr` and `batch_size` (from `fastconv train search --lr ...`) fix that setting to one value.
    progress=False (--quiet) leaves out the line per setting; verbose=False prints nothing.
    overwrite=True (--overwrite) replaces the search `out` holds (train.search refuses such an out without it)."""
    options = runs.settings(DEFAULTS, epochs=epochs, lrs=[lr] if lr else lrs, widths=widths,
                            batch_sizes=[batch_size] if batch_size else batch_sizes)
    mlp = _mlp()
    dataset = load_data(seed, subset)
    runs.check_subset(subset, check_binary_labels, dataset.y_val, dataset.y_test)  # before the trials, not after
    n_features = dataset.x_train.shape[1]
    space = {"lr": options["lrs"], "width": options["widths"], "batch_size": options["batch_sizes"]}

    def build(setting):
        model = mlp.build_model(setting["width"], seed, n_features)
        return model, losses.BCEWithLogitsLoss(), optim.Adam(model.parameters(), lr=setting["lr"])

    if verbose:
        n = len(space["lr"]) * len(space["width"]) * len(space["batch_size"])
        print(f"fastconv search: {n} settings of the two-layer tumour network, {options['epochs']} epochs each "
              f"(lr {space['lr']}, width {space['width']}, batch size {space['batch_size']})")
    data = {"seed": seed, "subset": subset}
    started = time.perf_counter()
    result = train.search(build, space, (dataset.x_train, mlp.targets(dataset.y_train)),
                          (dataset.x_val, mlp.targets(dataset.y_val)), out_dir=out, overwrite=overwrite, metric="loss",
                          epochs=options["epochs"], seed=seed, patience=10,
                          progress=False, verbose=verbose and progress is not False,  # a line per trial: the progress
                          checkpoint_extra={runs.RECORD_KEY: runs.run_record(NAME, dataset, data, options)})
    seconds = time.perf_counter() - started
    if result.best_checkpoint is None:
        raise RuntimeError(f"no setting reached a finite validation loss (did every one diverge?), so "
                           f"there is no best model to evaluate; the trials are in {out}/search.csv")
    record = runs.run_record(NAME, dataset, data, options, best_settings=result.best_settings)
    runs.tag_checkpoint(result.best_checkpoint, record)
    report, model, dataset = runs.evaluate_saved(sys.modules[__name__], result.best_checkpoint)
    files = {"checkpoint": result.best_checkpoint, "table_csv": f"{out}/search.csv", "table_json": f"{out}/search.json",
             **plots(out, model, dataset, report)}
    files["report"] = runs.save_json(report, f"{out}/report.json")
    files["run"] = f"{out}/run.json"
    runs.save_json({**record, "search_seconds": seconds, "files": files,
                    "weights_sha256": runs.weights_sha256(out, ("best",))}, f"{out}/run.json")
    if verbose:
        print(f"\nranked on validation loss ({seconds:.1f} s in all):")
        print(format_table(result.table, "loss"))
        print(f"\nbest setting {result.best_settings}, on the test data:")
        print(format_report(report))
        print(f"wrote {out}/: best, search.csv, search.json, report.json, roc.png, run.json")
    return {"result": result, "report": report, "files": files, "seconds": seconds}


def main(argv=None):
    from fastconv import cli

    return cli.example_main(NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
