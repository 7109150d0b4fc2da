"""Runs of earlier selhn versions read as this version reads its own: the one place that knows
what they saved differently.

- selhn 0.1.0 wrote every architecture's model keys at their defaults (a VSE++ run also had
  RVSE++'s ``text_encoder``); keys of another architecture at a default of theirs (now or then)
  are dropped.
- Keys a run did not save take today's defaults, which are the paper's and so behave as those
  runs did; schedule keys a run saved as None are chosen by the rule when it resumes
  (``resolve.resume``), as that version chose them at every start.
- selhn 0.1.0 saved one loss's training state as ``loss``, and the epoch only in
  ``config.json`` (``trainer_state``).
- Runs before ``loss.false_negatives`` saved ``loss.mask_same_image``: true is ``same_image``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from selhn.config.schema import Config
from selhn.models.registry import ARCHITECTURES, model_class

FORMER_DEFAULTS = {"text_encoder": "bigru"}  # selhn 0.1.0's, written into its configs


def saved_config(values: dict[str, Any], source: str) -> Config:
    """The configuration a run saved (its checkpoint's ``config``), upgraded."""
    values = copy.deepcopy(values)
    loss = values.get("loss")
    if isinstance(loss, dict) and "mask_same_image" in loss:
        loss["false_negatives"] = "same_image" if loss.pop("mask_same_image") else "none"
    model = values.get("model")
    if isinstance(model, dict):
        own = {
            f.name
            for f in dataclasses.fields(model_class(model.get("architecture", "rvsepp")).Settings)
        }
        for key in [k for k in model if k not in own and _a_default_elsewhere(k, model[k])]:
            del model[key]
    config = Config()
    config.update(values, source)
    return config


def _a_default_elsewhere(key: str, value: Any) -> bool:
    """Whether ``value`` is the default (now or in 0.1.0) of an architecture that has ``key``."""
    for cls in ARCHITECTURES.values():
        names = {f.name for f in dataclasses.fields(cls.Settings)}
        if key in names and value in (getattr(cls.Settings(), key), FORMER_DEFAULTS.get(key)):
            return True
    return False


def trainer_state(state: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A saved training state as ``TrainState`` reads it (``meta``: the checkpoint's
    ``config.json``)."""
    if "losses" in state:
        return state
    loss = meta["config"]["loss"]["name"]
    old = dict(state)
    losses = {f"{loss}.{key}": value for key, value in old.pop("loss").items()}
    return {**old, "losses": losses, "epoch": meta["epoch"] + 1}
