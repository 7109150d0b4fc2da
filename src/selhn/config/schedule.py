"""The schedule's rule: what the schedule keys a configuration leaves None become, from the
number of training pairs and processes alone. Counted in optimiser steps:

  length:   enough epochs for ``TARGET_STEPS`` steps, at least ``MIN_EPOCHS`` and at most
            ``MAX_EPOCHS`` epochs (large data sets get ``MIN_EPOCHS``, the paper's 30);
  warm-up:  the learning rate rises linearly over the first ``WARMUP_SHARE`` of the steps;
  decay:    it is multiplied by ``lr_decay`` once half of the steps are done;
  stopping: training ends when dev rSum has not improved for ``PATIENCE_SHARE`` of the epochs
            (at least ``MIN_PATIENCE``).
"""

from __future__ import annotations

import math

from selhn.config.schema import TrainConfig

TARGET_STEPS = 1000
MIN_EPOCHS, MAX_EPOCHS = 30, 300
WARMUP_SHARE = 0.05
PATIENCE_SHARE, MIN_PATIENCE = 0.05, 5


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


def fit_schedule(train: TrainConfig, pairs: int, world_size: int = 1) -> list[str]:
    """Set the schedule keys of ``train`` that are None by the rule (module docstring), for a
    run on ``pairs`` training pairs; return one line per choice, with its reason."""
    per_epoch = steps_per_epoch(pairs, train.batch_size, world_size)[0]
    chosen = []
    if train.epochs is None:
        wanted = math.ceil(TARGET_STEPS / per_epoch)
        train.epochs = min(max(wanted, MIN_EPOCHS), MAX_EPOCHS)
        chosen.append(
            f"train.epochs={train.epochs}, as {TARGET_STEPS} steps at {per_epoch} per epoch "
            f"need {wanted} epochs, kept within [{MIN_EPOCHS}, {MAX_EPOCHS}]"
        )
    total = per_epoch * train.epochs
    if train.warmup_steps is None:
        train.warmup_steps = round(WARMUP_SHARE * total)
        chosen.append(
            f"train.warmup_steps={train.warmup_steps}, as {WARMUP_SHARE:.0%} of the steps"
        )
    if train.lr_decay_epoch is None:
        decay = total // 2
        train.lr_decay_epoch = decay / per_epoch  # the schedule counts it back to this step
        shown = f"{train.lr_decay_epoch:g}"
        chosen.append(f"train.lr_decay_epoch={shown} (step {decay}), as half of the steps")
    if train.patience is None:
        train.patience = max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * train.epochs))
        chosen.append(
            f"train.patience={train.patience}, as {PATIENCE_SHARE:.0%} of the epochs, at least "
            f"{MIN_PATIENCE} (epochs without a better dev rSum before training stops)"
        )
    return chosen
