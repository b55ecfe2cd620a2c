"""Where a run stands after each epoch: its history (metrics.csv's rows), its best epoch so far, what a checkpoint
holds to rebuild the model and resume exactly, and the one line each epoch prints."""
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from effnet.reports import metrics
from effnet.training.settings import TrainSettings
from effnet.training.steps import EpochResult


@dataclass
class Progress:
    """The record of a run's epochs; saved in every checkpoint, so a resumed run carries on."""

    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch, as metrics.csv
    best_acc: float = -1.0  # validation accuracy of the best epoch
    best_epoch: int = -1
    best_confusion: Any = None  # the best epoch's validation confusion matrix
    next_epoch: int = 0  # epochs completed, so the index of the next one
    best_score: float = -1.0  # --best-metric of the best epoch

    def record(self, epoch: int, lr: float, size: int, trained: EpochResult, validated: EpochResult,
               settings: TrainSettings) -> bool:
        """Add epoch `epoch` (from 1), trained at `size` px, to the history; True when it is the best so far by
        --best-metric. Weights
        whose validation outputs are not finite (activations that overflow while BatchNorm's statistics lag,
        early in a run from scratch) classify nothing, and an epoch that read no photo proved nothing: never
        the best."""
        row = {"epoch": epoch, "train_loss": trained.loss, "train_acc": trained.accuracy,
               "val_loss": validated.loss, "val_acc": validated.accuracy,
               "val_macro_f1": metrics.macro_f1(validated.confusion), "lr": lr,
               "train_images_per_s": trained.images_per_second, "train_size": size}
        self.history.append(row)
        score = settings.best_metric_of(row)
        improved = math.isfinite(validated.loss) and validated.images > 0 and score > self.best_score
        if improved:
            self.best_acc, self.best_epoch, self.best_score = validated.accuracy, epoch, score
            self.best_confusion = validated.confusion
        self.next_epoch = epoch
        return improved

    def checkpoint(self, model_fields: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None,
                   settings: TrainSettings, class_names: list[str], image: Mapping[str, Any],
                   confusion: torch.Tensor | None) -> dict[str, Any]:
        """Everything needed to rebuild the model (`model_fields`: recipe.TrainingSteps.checkpoint_fields) and to
        resume the run exactly; `confusion` is this epoch's."""
        return {**model_fields, "class_names": class_names, "image": dict(image), "epoch": self.next_epoch,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "best_acc": self.best_acc,
                "best_epoch": self.best_epoch, "best_score": self.best_score, "history": self.history,
                "args": settings.to_dict(), "confusion": confusion}


def epoch_line(epoch: int, epochs: int, lr: float, trained: EpochResult, validated: EpochResult, improved: bool,
               skipped: int) -> str:
    """The line an epoch prints; `skipped`: training photos that could not be read."""
    finite = math.isfinite(validated.loss)
    return (f"epoch {epoch}/{epochs}: train loss {trained.loss:.4f} acc {trained.accuracy:.3f} | "
            f"val loss {validated.loss:.4f} acc {validated.accuracy:.3f} | lr {lr:.5f} | "
            f"{trained.images_per_second:.1f} img/s{' | new best' if improved else ''}"
            f"{'' if finite else ' | outputs not finite in evaluation, so not kept as best'}"
            f"{f' | {skipped} unreadable images left out' if skipped > 0 else ''}")
