"""History: fit's record of its evaluations."""
import os

from .. import checkpoint as _checkpoint
from ..evaluate import json_text


class History:
    """One record per evaluation: epoch, step, train_loss, val_loss, val_metric (the monitored
    metric; also under "val_<name>"), lr, time (seconds since fit started). best_* name the best
    evaluation; stopped_early says whether patience ran out."""

    def __init__(self, metric="loss", mode="min", records=None, best_index=None, stopped_early=False):
        self.metric, self.mode = metric, mode
        self.records = list(records or [])
        self.best_index = best_index
        self.stopped_early = stopped_early

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __iter__(self):
        return iter(self.records)

    def column(self, key):
        return [r.get(key) for r in self.records]

    @property
    def best(self):
        return None if self.best_index is None else self.records[self.best_index]

    @property
    def best_metric(self):
        return None if self.best is None else self.best["val_metric"]

    @property
    def best_epoch(self):
        return None if self.best is None else self.best["epoch"]

    @property
    def best_step(self):
        return None if self.best is None else self.best["step"]

    def to_dict(self):
        return {"metric": self.metric, "mode": self.mode, "best_index": self.best_index,
                "best_epoch": self.best_epoch, "best_metric": self.best_metric,
                "stopped_early": self.stopped_early, "records": self.records}

    @classmethod
    def from_dict(cls, d):
        return cls(d["metric"], d["mode"], d["records"], d["best_index"], d.get("stopped_early", False))

    def to_json(self, path):
        """Writes to_dict() to path, whole or not at all (a temp file, then a rename: _write_atomically).
        json.dump straight into the file wrote it as it went, so a value JSON cannot hold (or an
        interrupt) left an earlier run's history.json half overwritten. Strict JSON: a diverged
        evaluation's NaN is null there (evaluate.json_text), as strict parsers (jq, JavaScript) need."""
        directory, name = os.path.split(os.path.abspath(os.fspath(path)))
        _checkpoint._write_atomically(directory, name, json_text(self.to_dict()).encode())

    def __repr__(self):
        return (f"History({len(self)} evaluations, best {self.metric}={self.best_metric} at epoch "
                f"{self.best_epoch})")
