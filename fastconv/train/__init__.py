"""The training loop the course teaches, and hyperparameter search.

    history = fit(model, CrossEntropyLoss(), Adam(model.parameters()), (x_tr, y_tr), (x_va, y_va),
                  epochs=20, batch_size=64, metric="accuracy", checkpoint_dir="runs/cnn", patience=5)

fit(): shuffled mini-batches (a seeded NumPy Generator), forward, loss, backward, optimizer step;
an evaluation on the validation set every epoch (or every `eval_every` steps): validation loss and
the chosen metric; the checkpoint `<checkpoint_dir>/best` rewritten whenever the metric is the best
so far, `<checkpoint_dir>/last` after every evaluation and epoch (for resume=True); early stopping
after `patience` evaluations without improvement.

Resume is exact: "last" holds the weights, the optimizer and scheduler state, Dropout generators,
the data generator's state at the start of the current epoch and the position in it, the loss sum
since the last evaluation and the history; a resumed run repeats the uninterrupted one bit for bit
on the cpu backend. One exception: a run that trained to its end between eval_every's evaluations
was evaluated at its last step; resumed for more epochs it keeps that evaluation (record, best
checkpoint, patience count), which the longer run from the start would not have made (a
RuntimeWarning says so).

Metrics: "loss" (minimized), "accuracy", "auc" (maximized), or a callable(y_true, scores) -> float
(maximized unless mode="min"; recorded as val_<its __name__>, which must not be "loss"). The
training loss in the history is the mean over the rows trained on since the last evaluation (with a
class-weighted CrossEntropyLoss, their weighted mean, as evaluate gives it). Scores are the model's
outputs turned into probabilities where the loss says how: softmax for CrossEntropyLoss, sigmoid for
BCEWithLogitsLoss, raw otherwise. "auc" with several classes is the macro average of the one-vs-rest
AUCs over the classes present in the validation labels (an absent class has no AUC); it needs at
least two classes there.
An evaluation whose outputs are not all finite (a diverged model) or whose loss is NaN scores NaN
under every metric: it is recorded, never counts as an improvement, and no best is saved from it; the
first one in a fit() warns (RuntimeWarning: training diverged), since without patience the run goes on.

epoch, in History records and in the checkpoints' JSON: the 1-based epoch an evaluation or save
happened in. At the end of epoch k it is k (k epochs completed); an evaluation partway through epoch
k (eval_every) says k as well.
"""
from ._evaluation import evaluate
from ._fit import fit
from ._fit_checks import ResumeError
from ._history import History
from ._predict import predict
from ._search import SearchResult, search

__all__ = ["History", "fit", "predict", "evaluate", "search", "SearchResult", "ResumeError"]

# The public names as fastconv.train's (tracebacks, help() and pickles name them so, not the private
# module each is defined in).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
