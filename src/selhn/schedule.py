"""What each epoch of training does, decided from the configuration alone: the learning rate, the
objective and whether a pretrained backbone learns. The loop reads the plan; it decides nothing."""

from __future__ import annotations

from dataclasses import dataclass

from selhn.config import LossConfig, TrainConfig


@dataclass(frozen=True)
class EpochPlan:
    lr: float  # before each optimiser group's lr_scale
    objective: str  # the loss name in force: the configured one, or "all" while warming up
    backbone_trainable: bool  # whether a pretrained image backbone learns


def plan_epoch(train: TrainConfig, loss: LossConfig, epoch: int) -> EpochPlan:
    """The plan of ``epoch`` (0-based): lr times ``lr_decay`` from ``lr_decay_epoch`` on; the
    all-negatives loss for the first ``warmup_epochs``; the backbone frozen for the first
    ``backbone_frozen_epochs``."""
    lr = train.lr * (train.lr_decay if epoch >= train.lr_decay_epoch else 1.0)
    objective = "all" if epoch < loss.warmup_epochs else loss.name
    return EpochPlan(lr, objective, epoch >= train.backbone_frozen_epochs)


def steps_per_epoch(pairs: int, batch_size: int, world_size: int = 1) -> tuple[int, bool]:
    """(optimiser steps of one epoch, whether the last batch is dropped) for ``pairs`` training
    pairs and a global ``batch_size`` split over ``world_size`` processes. Each process gets
    ``pairs // world_size`` pairs (the remainder is dropped so no pair repeats); a last batch of
    one pair is dropped too, since it has no negatives."""
    per_rank_pairs = pairs // world_size if world_size > 1 else pairs
    per_rank_batch = batch_size // world_size
    full, rest = divmod(per_rank_pairs, per_rank_batch)
    drop_last = rest == 1
    return full + (rest > 0 and not drop_last), drop_last
