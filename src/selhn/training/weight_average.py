"""An exponential moving average of the weights that learn: what a run evaluates and saves.

On small data sets the dev rSum of the live weights jumps from epoch to epoch, so the best
epoch is partly chance; the average moves smoothly. The decay is warmed up as in TensorFlow's
``ExponentialMovingAverage``: after ``n`` updates it is ``min(decay, (1 + n) / (10 + n))``, so
the first steps are not held back by the random start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class WeightAverage:
    """The moving average of ``parameters`` (those of a model that an optimiser updates)."""

    def __init__(self, parameters: list[nn.Parameter], decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"the weight average's decay must be in [0, 1); got {decay}")
        self.parameters, self.decay, self.updates = parameters, decay, 0
        self.average = [p.detach().clone() for p in parameters]
        self._live: list[Tensor] | None = None  # the parameters' own values while applied

    def rate(self) -> float:
        """The decay of the next update."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (after an optimiser step)."""
        weight = 1.0 - self.rate()
        torch._foreach_lerp_(self.average, self.parameters, weight)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The parameters hold the average inside the block and their own values after it."""
        self._live = [p.detach().clone() for p in self.parameters]
        try:
            _copy(self.parameters, self.average)
            yield
        finally:
            _copy(self.parameters, self._live)
            self._live = None

    def state_dict(self) -> dict[str, Any]:
        """The live weights and the count of updates: a checkpoint's weights are the average,
        so these complete it for a resume."""
        live = self._live if self._live is not None else self.parameters
        return {"live": [t.detach().cpu().clone() for t in live], "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint whose weights (the average) the parameters hold."""
        if len(state["live"]) != len(self.parameters):
            raise ValueError(
                f"the saved weight average covers {len(state['live'])} tensors; this model has "
                f"{len(self.parameters)} that learn"
            )
        _copy(self.average, self.parameters)
        _copy(self.parameters, state["live"])
        self.updates = state["updates"]


@torch.no_grad()
def _copy(targets: list[Tensor], sources: list[Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
