"""figures.py: what the learning-curve figure does with awkward histories."""
import figures


def test_loss_curves_switch_to_a_log_scale_only_when_a_spike_would_flatten_them(monkeypatch, tmp_path):
    scales = []
    real_subplots = figures.pyplot().subplots

    def recording_subplots(*args, **kwargs):
        figure, axes = real_subplots(*args, **kwargs)
        scales.append(axes[0])  # the loss panel
        return figure, axes

    monkeypatch.setattr(figures.pyplot(), "subplots", recording_subplots)
    calm = [{"epoch": e, "train_loss": 1.6 - 0.1 * e, "val_loss": 1.5 - 0.1 * e, "train_acc": 0.5, "val_acc": 0.5,
             "lr": 0.01} for e in range(1, 6)]
    spiked = [dict(row, val_loss=300.0 if row["epoch"] == 2 else row["val_loss"]) for row in calm]
    figures.plot_curves(calm, tmp_path / "calm.png")
    figures.plot_curves(spiked, tmp_path / "spiked.png")
    assert [axis.get_yscale() for axis in scales] == ["linear", "log"]
