"""PNG plots of a training run: loss curves, an ROC curve with its operating points marked, a
confusion matrix, a fitted line. matplotlib with the Agg backend (no display needed); each
function writes one file and returns its path."""
from __future__ import annotations

import os
import uuid

import numpy as np

__all__ = ["plot_history", "plot_roc", "plot_confusion_matrix", "plot_regression"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op when a non-interactive backend is already set
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    """Writes the figure whole or not at all (a temp file beside it, then a rename: a run stopped while
    it draws leaves the earlier plot, not half of one), and closes it."""
    plt = _pyplot()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110, format=os.path.splitext(str(path))[1].lstrip(".") or "png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        plt.close(fig)
    return str(path)


def plot_history(history: dict, path, title="training", best_epoch=None):
    """Loss per epoch (train and validation) and, beside it, the validation metric if recorded.

    history: a dict of equally long lists, e.g. {"epoch": [...], "train_loss": [...],
    "val_loss": [...], "val_accuracy": [...]} (fastconv.evaluate.history_dict makes one).
    best_epoch: marked with a vertical line (the epoch of the saved best checkpoint).
    """
    plt = _pyplot()
    losses = [k for k in ("train_loss", "val_loss") if history.get(k)]
    others = [k for k, v in history.items()
              if k.startswith("val_") and k not in ("val_loss", "val_metric") and v and _numeric(v)]
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(10 if others else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    for key in losses:
        y = np.asarray(history[key], dtype=float)
        x = np.asarray(history.get("epoch") or np.arange(1, len(y) + 1))[: len(y)]
        ax.plot(x, y, marker="." if len(y) < 40 else None, label=key.replace("_", " "))
    ax.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    if best_epoch is not None:
        for a in axes[0]:
            a.axvline(best_epoch, color="grey", ls=":", lw=1)
        ax.plot([], [], color="grey", ls=":", label=f"best (epoch {best_epoch})")
    if losses:
        ax.legend()
    ax.grid(alpha=0.3)
    if others:
        ax = axes[0, 1]
        for key in others:
            y = np.asarray(history[key], dtype=float)
            x = np.asarray(history.get("epoch") or np.arange(1, len(y) + 1))[: len(y)]
            ax.plot(x, y, marker="." if len(y) < 40 else None, label=key.replace("_", " "))
        ax.set(xlabel="epoch", title=f"{title}: validation metrics")
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _numeric(values):
    try:
        np.asarray(values, dtype=float)
        return True
    except (TypeError, ValueError):
        return False


def plot_roc(y_true, scores, path, operating_points=None, auc=None, title="ROC curve"):
    """The ROC curve of scores against 0/1 labels, each operating point (name -> an object with
    .sensitivity, .specificity, .threshold, as fastconv.metrics.OperatingPoint) marked on it,
    and the AUC (a fastconv.metrics.AUCResult, optional) in the title."""
    from . import metrics

    plt = _pyplot()
    fpr, tpr, _ = metrics.roc_curve(y_true, scores)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(fpr, tpr, lw=2, label="model")  # vertices at each threshold: the points lie on it
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    markers = iter("os^Dv")
    for name, op in (operating_points or {}).items():
        ax.plot(1 - op.specificity, op.sensitivity, next(markers, "o"), ms=9,
                label=f"{name}: sens {op.sensitivity:.2f}, spec {op.specificity:.2f} (t={op.threshold:.3g})")
    if auc is not None:
        title += f"\nAUC {auc.auc:.3f} ({auc.level:.0%} CI {auc.low:.3f}-{auc.high:.3f}, {auc.method})"
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion_matrix(matrix, path, class_names=None, title="confusion matrix"):
    """Counts (C, C), rows = true class, columns = predicted class, each cell labelled."""
    plt = _pyplot()
    m = np.asarray(matrix)
    names = class_names or [str(i) for i in range(m.shape[0])]
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(names) + 2, 0.5 * len(names) + 2))
    image = ax.imshow(m, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title=title)
    threshold = m.max() / 2 if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > threshold else "black")
    return _save(fig, path)


def plot_regression(x, y, slope, intercept, path, xlabel="x", ylabel="y", title="y = m·x + b"):
    """Scatter of (x, y) and the fitted line y = slope·x + intercept."""
    plt = _pyplot()
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(x, y, s=10, alpha=0.6, label="data")
    line_x = np.linspace(x.min(), x.max(), 2)
    ax.plot(line_x, slope * line_x + intercept, color="C3", lw=2,
            label=f"y = {slope:.3g}·x + {intercept:.3g}")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)
