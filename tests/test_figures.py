"""figures.py: what the learning-curve figure does with awkward histories."""
from effnet.reports import figures


def test_loss_curves_switch_to_a_log_scale_only_when_a_spike_would_flatten_them(tmp_path):
    calm = [{"epoch": e, "train_loss": 1.6 - 0.1 * e, "val_loss": 1.5 - 0.1 * e, "train_acc": 0.5, "val_acc": 0.5,
             "lr": 0.01} for e in range(1, 6)]
    spiked = [dict(row, val_loss=300.0 if row["epoch"] == 2 else row["val_loss"]) for row in calm]
    assert [figures.curves_figure(history).axes[0].get_yscale() for history in (calm, spiked)] == ["linear", "log"]
    figures.plot_curves(spiked, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_predict_passes_over_the_formats_whose_figures_carry_its_mark():
    import predict  # which names it without importing this module: a one-photo run does without it

    assert set(predict.FIGURE_SUFFIXES) == {f".{suffix}" for suffix in figures.MARKED_FORMATS}
