"""Architectures by name, so configs and checkpoints can name the model they use."""

from __future__ import annotations

import dataclasses
from typing import Any

from selhn.models.base import DualEncoder

ARCHITECTURES: dict[str, type[DualEncoder]] = {}


def register_model(cls: type[DualEncoder]) -> type[DualEncoder]:
    """Class decorator: make an architecture available by its ``architecture`` name."""
    ARCHITECTURES[cls.architecture] = cls
    return cls


def model_class(architecture: str) -> type[DualEncoder]:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture]


def create_model(settings: Any, **fields: Any) -> DualEncoder:
    """The one way to build a model: from an architecture's settings (``RVSEPPSettings(...)``,
    whose ``architecture`` names the class), or from the architecture's name and its settings'
    fields (``create_model("rvsepp", vocab_size=8500, img_dim=2048)``). ``fields`` replace those
    of given settings."""
    if isinstance(settings, str):
        cls = model_class(settings)
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls.Settings)}
        if unknown:
            raise ValueError(f"architecture {settings!r} takes no {sorted(unknown)}")
        settings = cls.Settings(**fields)
    elif fields:
        settings = dataclasses.replace(settings, **fields)
    return model_class(settings.architecture)(settings)
