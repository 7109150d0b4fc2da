"""Where a training run stands: the objective (model and losses), the optimiser, the next epoch
and the best dev rSum so far, saved beside each checkpoint so a resume repeats the run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from selhn.training.objective import TrainingObjective
from selhn.training.weight_average import WeightAverage


@dataclass
class TrainState:
    objective: TrainingObjective
    optimizer: torch.optim.Optimizer
    epoch: int = 0  # the next epoch to train
    best_rsum: float = -math.inf
    best_epoch: int = -1
    stopped: bool = False  # stopped early: dev rSum stopped improving
    average: WeightAverage | None = None  # the weights evaluated and saved; None: the live ones

    def finish_epoch(self, rsum: float) -> bool:
        """Record the dev rSum of the epoch just trained; True if it is the best so far."""
        is_best = rsum > self.best_rsum
        if is_best:
            self.best_rsum, self.best_epoch = rsum, self.epoch
        self.epoch += 1
        return is_best

    def state_dict(self) -> dict[str, Any]:
        """Everything but the model's weights (those are the checkpoint's ``weights.pt``; with a
        weight average they are the average, and the live weights are here)."""
        average = {"weight_average": self.average.state_dict()} if self.average else {}
        return average | {
            "optimizer": self.optimizer.state_dict(),
            "losses": self.objective.losses.state_dict(),
            "epoch": self.epoch,
            "best_rsum": self.best_rsum,
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.losses.load_state_dict(state["losses"])
        self.epoch = state["epoch"]
        self.best_rsum, self.best_epoch = state["best_rsum"], state["best_epoch"]
        self.stopped = state.get("stopped", False)  # not saved before early stopping existed
        if self.average is not None and "weight_average" in state:  # else it starts here
            self.average.load_state_dict(state["weight_average"])
