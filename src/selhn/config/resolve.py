"""The one step that decides a run's configuration, at its start: the recipe (named, or chosen
from the data's facts), a configuration file over it, the user's settings over that, then what
the data decide: the architecture's own rule (its settings' ``fit``) and the schedule's rule for
the schedule keys left open (``config.schedule``). Every choice comes back with its reason; the
result holds no value that waits for later, and nothing the user set is replaced.

A resumed run is resolved from the configuration its checkpoint saved, of which only the keys
in ``RESUMABLE`` may change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selhn.config.schedule import fit_schedule
from selhn.config.schema import LOSSES, Config, preset_file, read_yaml
from selhn.data.facts import DataFacts

RECIPES = Path(__file__).parent / "recipes"
AUTO = "auto"  # the recipe chosen from the data
NONE = "none"  # no recipe: the defaults (the paper's model and loss)
FOR_LOSS = "for_loss"  # a recipe's section of settings that apply to some losses only


@dataclass
class Resolved:
    """A configuration ready to train with, and each choice made for it, with why."""

    config: Config
    choices: list[str]


def recipes() -> list[str]:
    """The names of the packaged recipes (``--recipe NAME``)."""
    return sorted(path.stem for path in RECIPES.glob("*.yaml"))


def _read_recipe(name: str) -> dict[str, Any]:
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(recipes())} or none")
    return read_yaml(path)


def _split_recipe(name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(a recipe's settings, its ``FOR_LOSS`` section: ``{loss name: settings}``), checked."""
    values = _read_recipe(name)
    special = values.pop(FOR_LOSS, None) or {}
    unknown = sorted(set(special) - set(LOSSES))
    if unknown:
        raise ValueError(
            f"{RECIPES / name}.yaml: {FOR_LOSS} names unknown losses {unknown}; losses are "
            f"{', '.join(LOSSES)}"
        )
    return values, {loss: entries or {} for loss, entries in special.items()}


def recipe_values(name: str, loss: str | None = None) -> dict[str, Any]:
    """A recipe's settings, ``{section: {key: value}}``; with ``loss``, those it sets for that
    ``loss.name`` (its ``FOR_LOSS`` section) over them."""
    values, special = _split_recipe(name)
    for section, entries in special.get(loss, {}).items():
        values[section] = {**values.get(section, {}), **entries}
    return values


def recipe_loss_settings(name: str) -> dict[str, dict[str, Any]]:
    """``{loss name: {"section.key": value}}``: what a recipe sets for some losses only."""
    if name == NONE:
        return {}
    return {loss: dotted(values) for loss, values in _split_recipe(name)[1].items()}


def choose_recipe(facts: DataFacts) -> tuple[str, str]:
    """(recipe, why) for a data directory: own-data for features of ``selhn features`` that
    store the trunk activations its model learns on, none (the defaults) otherwise."""
    stage = recipe_values("own-data")["model"]["backbone_stage"]
    job = facts.features
    if job is None:
        return NONE, f"{facts.path} holds no features of selhn features"
    if job["backbone"] != stage:
        return NONE, f"{facts.path} holds features of {job['backbone']}, not of {stage}"
    if not facts.trunk:
        return NONE, (
            f"{facts.path} holds no trunk activations (features of an older selhn: selhn "
            "features on the same manifest and --out adds them)"
        )
    return "own-data", f"{facts.path} holds {stage} features of selhn features"


def dotted(values: Any) -> dict[str, Any]:
    """``{"section.key": value}`` of a YAML file's ``{section: {key: value}}``."""
    if not isinstance(values, dict):
        return {}
    return {
        f"{section}.{key}": value
        for section, entries in values.items()
        if isinstance(entries, dict)
        for key, value in entries.items()
    }


def resolve(
    facts: DataFacts,
    recipe: str = AUTO,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    world_size: int = 1,
) -> Resolved:
    """The configuration of a new run on ``facts``' data directory.

    Args:
        recipe: a packaged recipe (``recipes()``), ``none`` for the defaults, or ``auto``: the
            recipe ``choose_recipe`` picks for the data.
        config_file: a YAML file (or packaged preset) of settings over the recipe.
        overrides: ``{"section.key": value}`` settings over both.
        world_size: the processes the run trains on (their batches share each step).
    """
    choices = []
    if recipe == AUTO:
        recipe, why = choose_recipe(facts)
        shown = "none (the defaults: the paper's model and loss)" if recipe == NONE else recipe
        choices.append(f"recipe {shown}, as {why} (--recipe sets it)")
    config, given, notes = layered(recipe, config_file, overrides)
    choices += notes
    choices += config.model.fit(facts, given)
    config.validate()
    choices += fit_schedule(config.train, facts.pairs, world_size)
    config.validate()
    return Resolved(config, choices)


def layered(
    recipe: str, config_file: str | Path | None, overrides: dict[str, Any] | None
) -> tuple[Config, set[str], list[str]]:
    """(the defaults with the recipe, the file and the overrides over them, in that order, not
    yet validated; the keys the user set; notes on what was left out or added). A recipe's model
    settings are its architecture's: with another ``model.architecture`` they are left out, and
    so are its settings for a loss (``FOR_LOSS``), which otherwise come last, for the chosen
    loss and the keys the user did not set."""
    base = {} if recipe == NONE else recipe_values(recipe)
    file_values, source = {}, None
    if config_file is not None:
        source = preset_file(config_file)
        file_values = read_yaml(source)
    given = dotted(file_values) | dict(overrides or {})
    own = base.get("model", {}).get("architecture", "rvsepp")
    architecture = str(given.get("model.architecture", own))
    notes = []
    if architecture != own and "model" in base:
        base = {k: v for k, v in base.items() if k != "model"}
        notes.append(
            f"the {recipe} recipe's model settings are {own}'s: model.architecture="
            f"{architecture} keeps its own defaults"
        )
    config = Config()
    config.update(base, f"recipe {recipe}")
    if source is not None:
        config.update(file_values, str(source))
    config.set_all(overrides or {})
    loss = config.loss.name
    special = recipe_loss_settings(recipe).get(loss, {}) if architecture == own else {}
    for key, value in special.items():
        if key not in given:
            config.set(key, value, f"recipe {recipe}, for loss {loss}")
            notes.append(f"{key}={value}, the {recipe} recipe's setting for loss.name={loss}")
    return config, set(given), notes


# What a resume may change: how long the run goes on and how it is computed and logged, never
# what it computes (model, loss, data, optimisation), which the checkpoint holds.
RESUMABLE = (
    "train.epochs",
    "train.patience",
    "train.device",
    "train.eval_batch_size",
    "train.log_every",
    "train.tensorboard",
    "data.num_workers",
)


def resume(
    saved: Config,
    overrides: dict[str, Any],
    facts: DataFacts,
    checkpoint: str | Path,
    world_size: int = 1,
) -> Resolved:
    """The configuration of a resumed run: ``saved`` (its checkpoint's) with ``overrides`` of
    ``RESUMABLE`` keys; schedule keys a run of an earlier version saved as None are chosen by
    the rule, as that version chose them at every start."""
    config = copy.deepcopy(saved)
    config.set_all(overrides)
    check_resumable(saved, config, checkpoint)
    config.validate()
    return Resolved(config, fit_schedule(config.train, facts.pairs, world_size))


def check_resumable(saved: Config, config: Config, checkpoint: str | Path) -> None:
    """Raise ValueError naming every setting of ``config`` that differs from ``saved`` (the
    checkpoint's) and that a resume may not change."""
    old, new = _flat(saved), _flat(config)
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        listed = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in refused)
        raise ValueError(
            f"--resume cannot change what {checkpoint} was trained with ({listed}); a resume "
            f"may change only {', '.join(RESUMABLE)}. Start a new run (another --out) instead"
        )


def _flat(config: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, part in config.to_dict().items() for k, v in part.items()}
