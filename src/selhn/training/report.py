"""What a run prints: its plan at the start, a line per epoch with the time left, and why it
stops or has nothing left to train."""

from __future__ import annotations

import time

import torch
from torch import nn

from selhn.config.schema import Config
from selhn.data.inputs import Split
from selhn.models import DualEncoder
from selhn.training.schedule import Schedule
from selhn.training.state import TrainState
from selhn.utils.distributed import Distributed


class EpochClock:
    """Seconds per epoch (training and evaluation) and an estimate of the time left: at most the
    remaining epochs, and with early stopping (``patience`` epochs without a better dev rSum)
    the time until it stops if the dev rSum does not improve."""

    def __init__(self, epochs: int, patience: int = 0) -> None:
        self.epochs, self.patience = epochs, patience
        self.start, self.done, self.total = time.perf_counter(), 0, 0.0

    def lap(self, epoch: int, best_epoch: int) -> str:
        """The time of the epoch that just ended (0-based ``epoch``), and the time left."""
        now = time.perf_counter()
        seconds, self.start, self.done = now - self.start, now, self.done + 1
        self.total += seconds
        mean, remaining = self.total / self.done, self.epochs - epoch - 1
        if not remaining:
            return f"{seconds:.0f} s"
        if self.patience:
            unless = self.patience - (epoch - best_epoch)
            if 0 < unless < remaining:
                return (
                    f"{seconds:.0f} s, at most {_duration(mean * remaining)} left; "
                    f"{_duration(mean * unless)} if the dev rSum does not improve"
                )
        return f"{seconds:.0f} s, about {_duration(mean * remaining)} left"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def summary(
    model: DualEncoder,
    device: torch.device,
    job: Distributed,
    splits: tuple[Split, Split],
    schedule: Schedule,
    config: Config,
    run: str,
    state: TrainState,
) -> str:
    """What a run is about to do, printed at its start (``splits``: train and dev)."""
    tc, (train_split, dev_split) = config.train, splits

    def count(module: nn.Module) -> str:
        total = sum(p.numel() for p in module.parameters())
        learning = sum(p.numel() for p in module.parameters() if p.requires_grad)
        return f"{total:,}" + (f" ({learning:,} learn)" if learning != total else "")

    processes = f", {job.world_size} processes" if job.enabled else ""
    start = f"resuming at epoch {state.epoch + 1}" if state.epoch else "new run"
    averaged = [
        f"  eval   a moving average of the weights (decay {tc.weight_average:g} per step) is"
        " evaluated and saved"
    ]
    return "\n".join([
        f"training {model.architecture} on {device}{processes}",
        f"  data   train {train_split.num_images} images, {len(train_split.captions)} captions;"
        f" {dev_split.name} {dev_split.num_images} images, {len(dev_split.captions)} captions",
        f"  steps  {schedule.steps_per_epoch} per epoch (global batch {tc.batch_size}),"
        f" {schedule.total_steps} in {schedule.epochs} epochs",
        f"  plan   {schedule.describe()}",
        *(averaged if tc.weight_average else []),
        f"  model  image encoder {count(model.image_encoder)} parameters, text encoder"
        f" {count(model.text_encoder)}; loss {config.loss.name}",
        f"  run    {run} ({start})",
    ])  # fmt: skip


def epoch_line(state: TrainState, schedule: Schedule, rsum: float, clock: EpochClock) -> str:
    """The line of the epoch that just ended (``state`` already counts it)."""
    epoch = state.epoch - 1
    return (
        f"epoch {epoch + 1}/{schedule.epochs}  dev rSum {rsum:.1f}  (best {state.best_rsum:.1f} "
        f"at epoch {state.best_epoch + 1})  {clock.lap(epoch, state.best_epoch)}"
    )


def early_stop_line(state: TrainState) -> str:
    waited = state.epoch - 1 - state.best_epoch
    return (
        f"stopping early: dev rSum has not improved for {waited} epochs (best "
        f"{state.best_rsum:.1f} at epoch {state.best_epoch + 1}; train.patience sets this)"
    )


def nothing_to_resume(state: TrainState, schedule: Schedule) -> str:
    """Why a resumed run trains no further epoch, and what would let it."""
    best = f"best dev rSum {state.best_rsum:.1f} at epoch {state.best_epoch + 1}"
    if state.stopped:
        waited = state.epoch - 1 - state.best_epoch
        return (
            f"nothing to train: the run stopped early after epoch {state.epoch} ({waited} epochs "
            f"without a better dev rSum, train.patience={schedule.patience}; {best}); resume "
            f"with --train.patience above {waited} (or 0: never stop) to go on"
        )
    return (
        f"nothing to train: all {schedule.epochs} epochs are done ({best}); resume with "
        f"--epochs above {schedule.epochs} to go on"
    )
