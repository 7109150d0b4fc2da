"""What training does at each step and epoch, from a resolved configuration and the number of
training pairs: the learning rate, the objective, whether a pretrained backbone learns, how long
training lasts and when it stops early. The loop reads the schedule; it decides nothing."""

from __future__ import annotations

from dataclasses import dataclass

from selhn.config.schedule import steps_per_epoch
from selhn.config.schema import LossConfig, TrainConfig


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
    """The schedule of a run on ``pairs`` training pairs, from a resolved configuration."""
    if None in (train.epochs, train.warmup_steps, train.lr_decay_epoch, train.patience):
        raise ValueError("the schedule needs a resolved configuration (selhn.config.resolve)")
    per_epoch = steps_per_epoch(pairs, train.batch_size, world_size)[0]
    decay = round(train.lr_decay_epoch * per_epoch)
    return Schedule(
        pairs, per_epoch, train.epochs, train.warmup_steps, decay, train.patience, train.lr,
        train.lr_decay,
    )  # fmt: skip


@dataclass(frozen=True)
class EpochPlan:
    objective: str  # the loss name in force: the configured one, or "all" while warming up
    backbone_trainable: bool  # whether a pretrained image backbone learns


def plan_epoch(train: TrainConfig, loss: LossConfig, epoch: int) -> EpochPlan:
    """The plan of ``epoch`` (0-based): the all-negatives loss for the first ``warmup_epochs``;
    the backbone frozen for the first ``backbone_frozen_epochs``."""
    objective = "all" if epoch < loss.warmup_epochs else loss.name
    return EpochPlan(objective, epoch >= train.backbone_frozen_epochs)
