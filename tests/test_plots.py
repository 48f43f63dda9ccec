"""fastconv.plots: each function writes one PNG, whole or not at all."""
import matplotlib.figure
import pytest

from fastconv import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_plot_is_a_png_and_a_failed_one_leaves_the_earlier_file(tmp_path, monkeypatch):
    history = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.6],
               "val_accuracy": [0.5, 0.8, 0.9]}
    path = plots.plot_history(history, tmp_path / "loss.png", best_epoch=3)
    earlier = (tmp_path / "loss.png").read_bytes()
    assert path == str(tmp_path / "loss.png") and earlier.startswith(PNG)

    def half_then_fail(fig, fname, **kw):  # savefig wrote to its final name: a stop mid-way left half a PNG
        with open(fname, "wb") as f:
            f.write(PNG)
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        plots.plot_history(history, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes() == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # no temp file left
