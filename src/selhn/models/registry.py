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


def build_model(architecture: str, **settings: Any) -> DualEncoder:
    """An architecture from its name and settings (``vocab_size``, ``img_dim``, ...)."""
    cls = model_class(architecture)
    known = {field.name for field in dataclasses.fields(cls.Settings)}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"architecture {architecture!r} takes no {sorted(unknown)}")
    return cls(**settings)


def create_model(settings: Any) -> DualEncoder:
    """The model of a settings object (its ``architecture`` field names the class)."""
    return model_class(settings.architecture)(settings)
