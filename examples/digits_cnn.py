"""A convolutional network with several filters per layer on the 8x8 handwritten digits.

    (N, 1, 8, 8) -> Conv2d(1, 16, 3, padding=1) -> ReLU -> Conv2d(16, 32, 3, padding=1) -> ReLU
                 -> MaxPool2d(2) -> Flatten -> Linear(32*4*4, 64) -> ReLU -> Linear(64, 10)

trained with softmax cross-entropy and Adam; the checkpoint with the best validation accuracy is
kept. Reported on the test images: accuracy, the confusion matrix, per-class sensitivity,
precision and one-vs-rest AUC, and coarse classes made by summing the ten class probabilities
(train on fine classes, decide on coarse ones): even/odd and 0-4/5-9.

    fastconv train digits_cnn --out runs/digits
"""
import sys
import time

from fastconv import data, losses, nn, optim, runs, train
from fastconv.evaluate import multiclass_report, softmax
from fastconv.plots import plot_confusion_matrix

NAME = "digits_cnn"
DEFAULTS = {"epochs": 15, "lr": 0.003, "batch_size": 32}
COARSE = {
    "parity": {"even": [0, 2, 4, 6, 8], "odd": [1, 3, 5, 7, 9]},
    "low/high": {"0-4": [0, 1, 2, 3, 4], "5-9": [5, 6, 7, 8, 9]},
}


def load_data(seed=0, subset=None):
    return runs.take_subset(data.load_digits(seed=seed), subset)


def build_model(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def probabilities(model, x):
    return softmax(train.predict(model, x))


def evaluate(model, dataset):
    return multiclass_report(dataset.y_test, probabilities(model, dataset.x_test), dataset.class_names, COARSE)


def plots(out, model, dataset, report):
    path = plot_confusion_matrix(report["confusion_matrix"], f"{out}/confusion.png", dataset.class_names,
                                 title=f"digits CNN, test accuracy {report['accuracy']:.3f}")
    return {"confusion_plot": path}


def run(out="runs/digits_cnn", epochs=None, lr=None, batch_size=None, seed=0, subset=None, verbose=True,
        progress=None, resume=False, overwrite=False):
    options = runs.settings(DEFAULTS, epochs=epochs, lr=lr, batch_size=batch_size)
    dataset = load_data(seed, subset)
    model = build_model(seed)
    if verbose:
        print(runs.describe(NAME, dataset, model, seed=seed, options=options))
    record = runs.run_record(NAME, dataset, {"seed": seed, "subset": subset}, options)
    started = time.perf_counter()
    history = train.fit(
        model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=options["lr"]),
        train=(dataset.x_train, dataset.y_train), val=(dataset.x_val, dataset.y_val),
        epochs=options["epochs"], batch_size=options["batch_size"], metric="accuracy", checkpoint_dir=out,
        seed=seed, resume=resume, overwrite=overwrite, progress=verbose if progress is None else progress,
        checkpoint_extra={runs.RECORD_KEY: record})
    return runs.finish(sys.modules[__name__], out, history, record=record, started=started, verbose=verbose)


def main(argv=None):
    from fastconv import cli

    return cli.example_main(NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
