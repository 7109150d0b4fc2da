"""What training does at each step and epoch, decided from the configuration and the number of
training pairs alone: the learning rate, the objective, whether a pretrained backbone learns,
how long training lasts and when it stops early. The loop reads the schedule; it decides nothing.

The rule for what the configuration leaves open (``None``), in optimiser steps:
  length:   enough epochs for ``TARGET_STEPS`` steps, at least ``MIN_EPOCHS`` and at most
            ``MAX_EPOCHS`` epochs (large data sets get ``MIN_EPOCHS``, the paper's 30);
  warm-up:  the learning rate rises linearly over the first ``WARMUP_SHARE`` of the steps;
  decay:    it is multiplied by ``lr_decay`` once half of the steps are done;
  stopping: training ends when dev rSum has not improved for ``PATIENCE_SHARE`` of the epochs
            (at least ``MIN_PATIENCE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from selhn.config import LossConfig, TrainConfig

TARGET_STEPS = 1000
MIN_EPOCHS, MAX_EPOCHS = 30, 300
WARMUP_SHARE = 0.05
PATIENCE_SHARE, MIN_PATIENCE = 0.05, 5


@dataclass(frozen=True)
class Schedule:
    """A run's schedule. Steps count from 0 over the whole run."""

    pairs: int
    steps_per_epoch: int
    epochs: int
    warmup_steps: int
    decay_step: int  # the learning rate is multiplied by lr_decay from this step on
    patience: int  # epochs without a better dev rSum before training stops; 0: never
    base_lr: float
    lr_decay: float
    chosen: tuple[str, ...]  # what the rule chose, with why, for the start of the run

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def lr(self, step: int) -> float:
        """The learning rate at ``step`` (before each optimiser group's ``lr_scale``)."""
        lr = self.base_lr * (self.lr_decay if step >= self.decay_step else 1.0)
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr

    def describe(self) -> str:
        """The learning-rate plan and the stopping rule, in one line."""
        warmup = f"warm-up {self.warmup_steps} steps" if self.warmup_steps else "no warm-up"
        stop = (
            f"early stop after {self.patience} epochs without a better dev rSum"
            if self.patience
            else "no early stop"
        )
        return f"{warmup}; lr x{self.lr_decay:g} from step {self.decay_step}; {stop}"


def make_schedule(train: TrainConfig, pairs: int, world_size: int = 1) -> Schedule:
    """The schedule of a run on ``pairs`` training pairs: the configured values, and the rule
    (module docstring) for those left as None."""
    per_epoch = steps_per_epoch(pairs, train.batch_size, world_size)[0]
    chosen = []
    epochs = train.epochs
    if epochs is None:
        wanted = math.ceil(TARGET_STEPS / per_epoch)
        epochs = min(max(wanted, MIN_EPOCHS), MAX_EPOCHS)
        chosen.append(
            f"epochs {epochs}: {TARGET_STEPS} steps at {per_epoch} per epoch need {wanted} "
            f"epochs, kept within [{MIN_EPOCHS}, {MAX_EPOCHS}] (train.epochs sets them)"
        )
    total = per_epoch * epochs
    warmup = train.warmup_steps
    if warmup is None:
        warmup = round(WARMUP_SHARE * total)
        chosen.append(
            f"warm-up {warmup} steps: {WARMUP_SHARE:.0%} of the steps (train.warmup_steps sets it)"
        )
    if train.lr_decay_epoch is None:
        decay = total // 2
        chosen.append(f"decay at step {decay}: half of the steps (train.lr_decay_epoch sets it)")
    else:
        decay = train.lr_decay_epoch * per_epoch
    patience = train.patience
    if patience is None:
        patience = max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))
        chosen.append(
            f"early stop after {patience} epochs without a better dev rSum: "
            f"{PATIENCE_SHARE:.0%} of the epochs, at least {MIN_PATIENCE} (train.patience sets it)"
        )
    return Schedule(
        pairs, per_epoch, epochs, warmup, decay, patience, train.lr, train.lr_decay, tuple(chosen)
    )


@dataclass(frozen=True)
class EpochPlan:
    objective: str  # the loss name in force: the configured one, or "all" while warming up
    backbone_trainable: bool  # whether a pretrained image backbone learns


def plan_epoch(train: TrainConfig, loss: LossConfig, epoch: int) -> EpochPlan:
    """The plan of ``epoch`` (0-based): the all-negatives loss for the first ``warmup_epochs``;
    the backbone frozen for the first ``backbone_frozen_epochs``."""
    objective = "all" if epoch < loss.warmup_epochs else loss.name
    return EpochPlan(objective, epoch >= train.backbone_frozen_epochs)


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
