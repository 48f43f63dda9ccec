"""A two-layer fully connected network on all 30 tumour measurements.

    30 standardized measurements -> Linear(30, 16) -> ReLU -> Linear(16, 1) -> logit of malignancy

trained with BCEWithLogitsLoss and Adam, the best checkpoint chosen on validation loss, then
evaluated like the one neuron: test AUC with its 95% CI (DeLong), and the screening and high-risk
operating points (thresholds chosen on validation data, reported on test data).

    fastconv train tumour_mlp --out runs/tumour_mlp
"""
import sys
import time

import numpy as np

from fastconv import data, losses, nn, optim, runs, train
from fastconv.evaluate import binary_report, check_binary_labels, operating_points_on_test, sigmoid
from fastconv.metrics import AUCResult
from fastconv.plots import plot_roc

NAME = "tumour_mlp"
DEFAULTS = {"epochs": 40, "lr": 0.01, "batch_size": 32, "width": 16}


def load_data(seed=0, subset=None):
    return runs.take_subset(data.load_breast_cancer(seed=seed), subset)


def build_model(width=16, seed=0, n_features=30):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, 1))


def targets(y):
    """Labels 0/1 as float targets of the output's shape (N, 1)."""
    return y.reshape(-1, 1).astype(np.float32)


def probabilities(model, x):
    return sigmoid(train.predict(model, x)).ravel()


def evaluate(model, dataset):
    return binary_report(dataset.y_val, probabilities(model, dataset.x_val),
                         dataset.y_test, probabilities(model, dataset.x_test))


def plots(out, model, dataset, report):
    path = plot_roc(dataset.y_test, probabilities(model, dataset.x_test), f"{out}/roc.png",
                    operating_points_on_test(report), auc=AUCResult(**report["auc"]),
                    title="two-layer network, 30 measurements: test ROC")
    return {"roc_plot": path}


def run(out="runs/tumour_mlp", epochs=None, lr=None, batch_size=None, width=None, seed=0, subset=None,
        verbose=True, progress=None, resume=False, overwrite=False):
    options = runs.settings(DEFAULTS, epochs=epochs, lr=lr, batch_size=batch_size, width=width)
    dataset = load_data(seed, subset)
    runs.check_subset(subset, check_binary_labels, dataset.y_val, dataset.y_test)  # before training, not after
    model = build_model(options["width"], seed)
    if verbose:
        print(runs.describe(NAME, dataset, model, seed=seed, options=options))
    record = runs.run_record(NAME, dataset, {"seed": seed, "subset": subset}, options)
    started = time.perf_counter()
    history = train.fit(
        model, losses.BCEWithLogitsLoss(), optim.Adam(model.parameters(), lr=options["lr"]),
        train=(dataset.x_train, targets(dataset.y_train)), val=(dataset.x_val, targets(dataset.y_val)),
        epochs=options["epochs"], batch_size=options["batch_size"], metric="loss", patience=15,
        checkpoint_dir=out, seed=seed, resume=resume, overwrite=overwrite,
        progress=verbose if progress is None else progress, checkpoint_extra={runs.RECORD_KEY: record})
    return runs.finish(sys.modules[__name__], out, history, record=record, started=started, verbose=verbose)


def main(argv=None):
    from fastconv import cli

    return cli.example_main(NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
