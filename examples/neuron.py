"""One neuron: logistic regression from tumour size to malignant/benign.

    p(malignant) = sigmoid(w · radius + b)

One Linear(1, 1) layer on the standardized mean radius of the cell nuclei, trained with binary
cross-entropy on its logit (BCEWithLogitsLoss). Then the clinical evaluation: the ROC curve on the
test data, the test AUC with its 95% CI (DeLong), and two operating points whose thresholds are
chosen on the VALIDATION data and reported on the TEST data:
  * screening:  the highest threshold with sensitivity >= 0.95 (miss few cancers),
  * high-risk:  the lowest threshold with specificity >= 0.95 (few false alarms before, say, surgery).

    fastconv train neuron --out runs/neuron
    python examples/neuron.py --epochs 50 --lr 0.05
"""
import sys
import time

import numpy as np

from fastconv import data, losses, nn, optim, runs, train
from fastconv.evaluate import binary_report, check_binary_labels, operating_points_on_test, sigmoid
from fastconv.plots import plot_roc

NAME = "neuron"
DEFAULTS = {"epochs": 60, "lr": 0.05, "batch_size": 32}
FEATURE = "mean radius"


def load_data(seed=0, subset=None):
    return runs.take_subset(data.load_breast_cancer(features=[FEATURE], seed=seed), subset)


def build_model(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 1))


def targets(y):
    """Labels 0/1 as float targets of the output's shape (N, 1)."""
    return y.reshape(-1, 1).astype(np.float32)


def probabilities(model, x):
    return sigmoid(train.predict(model, x)).ravel()


def evaluate(model, dataset):
    report = binary_report(dataset.y_val, probabilities(model, dataset.x_val),
                           dataset.y_test, probabilities(model, dataset.x_test))
    # The neuron itself, in the units of the data: logit = w * (radius - mean) / std + b.
    w, b = (float(np.asarray(a).ravel()[0]) for a in (_host(model[0].weight.data), _host(model[0].bias.data)))
    report["neuron"] = {"weight": w, "bias": b, "feature": FEATURE}
    if dataset.scaler is not None:
        mean, std = float(dataset.scaler.mean_[0]), float(dataset.scaler.std_[0])
        report["neuron"]["radius_at_p_half"] = mean - b * std / w if w else None
    return report


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def plots(out, model, dataset, report):
    roc = plot_roc(dataset.y_test, probabilities(model, dataset.x_test), f"{out}/roc.png",
                   operating_points_on_test(report), auc=_auc_result(report),
                   title=f"one neuron on {FEATURE}: test ROC")
    return {"roc_plot": roc}


def _auc_result(report):
    from fastconv.metrics import AUCResult

    return AUCResult(**report["auc"])


def run(out="runs/neuron", epochs=None, lr=None, batch_size=None, seed=0, subset=None, verbose=True, progress=None,
        resume=False, overwrite=False):
    options = runs.settings(DEFAULTS, epochs=epochs, lr=lr, batch_size=batch_size)
    dataset = load_data(seed, subset)
    runs.check_subset(subset, check_binary_labels, dataset.y_val, dataset.y_test)  # before training, not after
    model = build_model(seed)
    if verbose:
        print(runs.describe(NAME, dataset, model, seed=seed, options=options))
    record = runs.run_record(NAME, dataset, {"seed": seed, "subset": subset}, options)
    started = time.perf_counter()
    history = train.fit(
        model, losses.BCEWithLogitsLoss(), optim.SGD(model.parameters(), lr=options["lr"], momentum=0.9),
        train=(dataset.x_train, targets(dataset.y_train)), val=(dataset.x_val, targets(dataset.y_val)),
        epochs=options["epochs"], batch_size=options["batch_size"], metric="loss", checkpoint_dir=out,
        seed=seed, resume=resume, overwrite=overwrite, progress=verbose if progress is None else progress,
        checkpoint_extra={runs.RECORD_KEY: record})
    return runs.finish(sys.modules[__name__], out, history, record=record, started=started, verbose=verbose)


def summary(report):
    """One line about the neuron itself, printed with the report."""
    n = report["neuron"]
    text = f"the neuron: logit = {n['weight']:.3f} * standardized {FEATURE} {n['bias']:+.3f}"
    if n.get("radius_at_p_half") is not None:
        text += f"; p(malignant) = 0.5 at {FEATURE} {n['radius_at_p_half']:.2f}"
    return text


def main(argv=None):
    from fastconv import cli

    return cli.example_main(NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
