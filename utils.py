"""The tutorial's utils.py: its names keep working here. The code lives in the package: the train/validation
split and the train and evaluate loops in effnet/training/loop.py."""
from effnet.training.loop import (DataSplit, EpochResult, StepSettings, evaluate, read_data, read_split_data,
                                  train_one_epoch, train_step)

__all__ = ["DataSplit", "EpochResult", "StepSettings", "evaluate", "read_data", "read_split_data", "train_one_epoch",
           "train_step"]
