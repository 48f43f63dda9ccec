"""Linear regression y = m·x + b with mean squared error, on a real pair of variables.

x = body-mass index (standardized with training statistics), y = a measure of diabetes progression
one year later (scikit-learn's diabetes data, 442 patients). The model is one Linear(1, 1) layer
trained by SGD on MSELoss; m and b are printed in standardized units and in kg/m², with the test
MSE and R².

    fastconv train regression --out runs/regression
"""
import sys
import time

import numpy as np

from fastconv import data, losses, nn, optim, runs, train
from fastconv.evaluate import regression_report
from fastconv.plots import plot_regression

NAME = "regression"
DEFAULTS = {"epochs": 40, "lr": 0.05, "batch_size": 32}


def load_data(seed=0, subset=None):
    return runs.take_subset(data.load_regression_pair(seed=seed), subset)


def build_model(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 1))


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def line(model, dataset):
    """(m, b) in standardized x, and (m, b) per kg/m² of BMI."""
    m = float(_host(model[0].weight.data).ravel()[0])
    b = float(_host(model[0].bias.data).ravel()[0])
    mean, std = float(dataset.scaler.mean_[0]), float(dataset.scaler.std_[0])
    return m, b, m / std, b - m * mean / std


def evaluate(model, dataset):
    report = regression_report(dataset.y_test, train.predict(model, dataset.x_test))
    m, b, m_raw, b_raw = line(model, dataset)
    report["line"] = {"m": m, "b": b, "m_per_bmi": m_raw, "b_bmi": b_raw}
    return report


def summary(report):
    fit = report["line"]
    return (f"y = m·x + b: m = {fit['m']:.2f}, b = {fit['b']:.2f} (x = standardized BMI); "
            f"per kg/m²: progression = {fit['m_per_bmi']:.2f} · BMI {fit['b_bmi']:+.1f}")


def plots(out, model, dataset, report):
    fit = report["line"]
    bmi = dataset.scaler.mean_[0] + dataset.scaler.std_[0] * dataset.x_test.ravel()
    path = plot_regression(bmi, dataset.y_test, fit["m_per_bmi"], fit["b_bmi"], f"{out}/fit.png",
                           xlabel="body-mass index (kg/m²)", ylabel="disease progression after one year",
                           title=f"test data: R² {report['r2']:.3f}")
    return {"fit_plot": path}


def run(out="runs/regression", epochs=None, lr=None, batch_size=None, seed=0, subset=None, verbose=True,
        progress=None, resume=False, overwrite=False):
    options = runs.settings(DEFAULTS, epochs=epochs, lr=lr, batch_size=batch_size)
    dataset = load_data(seed, subset)
    model = build_model(seed)
    if verbose:
        print(runs.describe(NAME, dataset, model, seed=seed, options=options))
    record = runs.run_record(NAME, dataset, {"seed": seed, "subset": subset}, options)
    started = time.perf_counter()
    history = train.fit(
        model, losses.MSELoss(), optim.SGD(model.parameters(), lr=options["lr"]),
        train=(dataset.x_train, dataset.y_train), val=(dataset.x_val, dataset.y_val),
        epochs=options["epochs"], batch_size=options["batch_size"], metric="loss", checkpoint_dir=out,
        seed=seed, resume=resume, overwrite=overwrite, progress=verbose if progress is None else progress,
        checkpoint_extra={runs.RECORD_KEY: record})
    return runs.finish(sys.modules[__name__], out, history, record=record, started=started, verbose=verbose)


def main(argv=None):
    from fastconv import cli

    return cli.example_main(NAME, argv)


if __name__ == "__main__":
    sys.exit(main())
