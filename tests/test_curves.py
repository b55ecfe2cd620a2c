"""figures.py's learning curves: whole epochs on the axis, and the chance level on the accuracy plot."""
from effnet.reports import figures


def history(epochs: int) -> list[dict[str, float]]:
    return [{"epoch": e, "train_loss": 1.6 - 0.1 * e, "val_loss": 1.5 - 0.1 * e, "train_acc": 0.2 + 0.05 * e,
             "val_acc": 0.2 + 0.04 * e, "val_macro_f1": 0.1 + 0.04 * e, "lr": 0.01 / e} for e in range(1, epochs + 1)]


def test_the_epoch_axis_has_whole_numbers_only():
    for epochs in (1, 2, 3, 7, 30):
        figure = figures.curves_figure(history(epochs), chance=0.2)
        for axis in figure.axes:
            low, high = axis.get_xlim()
            ticks = [tick for tick in axis.get_xticks() if low <= tick <= high]
            assert ticks and all(float(tick).is_integer() for tick in ticks), (epochs, axis.get_title(), ticks)


def test_the_accuracy_plot_draws_the_chance_level_as_a_line():
    loss, accuracy, rate = figures.curves_figure(history(3), chance=0.2).axes
    chance = [line for line in accuracy.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and set(chance[0].get_ydata()) == {0.2} and chance[0].get_label() == "chance (0.2)"
    assert not [line for axis in (loss, rate) for line in axis.get_lines() if line.get_label().startswith("chance")]
    assert "chance (0.2)" in [text.get_text() for text in accuracy.get_legend().get_texts()]
    without = figures.curves_figure(history(3)).axes[1]  # a caller that knows no class count draws no line
    assert not [line for line in without.get_lines() if line.get_label().startswith("chance")]


def test_a_run_redraws_its_curves_when_drawing_is_cheap_next_to_its_epochs_and_always_at_the_end(tmp_path,
                                                                                                 monkeypatch):
    from effnet.training import run_folder

    clock, drawn = [0.0], []

    def plot_curves(rows, path, chance=None):  # drawing takes one second of the fake clock
        drawn.append(len(rows))
        clock[0] += 1.0

    monkeypatch.setattr(run_folder.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(run_folder.figures, "plot_curves", plot_curves)
    monkeypatch.setattr(run_folder, "save_checkpoint", lambda checkpoint, path: None)
    folder = run_folder.RunFolder(tmp_path)
    checkpoint = {"class_names": ["a", "b"]}
    for epoch, seconds in enumerate([2.0, 2.0, 2.0, 2.0, 30.0, 2.0], start=1):  # epoch 5 is a long one
        clock[0] += seconds
        folder.write_epoch(checkpoint, False, history(epoch))
    assert drawn == [1, 5]  # 1 s is more than 5% of the 7 s since the first drawing, less than 5% of 37 s
    folder.write_end([[1, 0], [0, 1]], ["a", "b"], 1, history(6))
    assert drawn == [1, 5, 6]  # the end draws every epoch
    folder.write_end([[1, 0], [0, 1]], ["a", "b"], 1, history(6))
    assert drawn == [1, 5, 6]  # and not twice
