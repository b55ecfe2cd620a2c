"""The training recipe: which layers train, the optimizer and the learning-rate schedule, from train.py's
arguments. The tutorial's recipe is the default: SGD (momentum 0.9, weight decay 1e-4) and a cosine from
--lr down to --lr x --lrf."""
import argparse
import math

import torch
from torch import nn


def freeze_all_but_head(model: nn.Module) -> None:
    """Train only the last block of `model.features` (the 1x1 head conv) and the classifier, as the
    tutorial's --freeze-layers does; works for this project's and torchvision's module layout alike."""
    head = list(model.features.children())[-1]
    trainable = {id(p) for module in (head, model.classifier) for p in module.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)


class CosineFactor:
    """Learning-rate factor of the tutorial: from 1 down to `lrf` along half a cosine over `epochs`."""

    def __init__(self, epochs: int, lrf: float) -> None:
        self.epochs = epochs
        self.lrf = lrf

    def __call__(self, epoch: int) -> float:
        return ((1 + math.cos(epoch * math.pi / self.epochs)) / 2) * (1 - self.lrf) + self.lrf


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD over the parameters that train (all, or the head's with --freeze-layers)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(parameters, lr=args.lr, momentum=0.9, weight_decay=1e-4)


def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=CosineFactor(args.epochs, args.lrf))
