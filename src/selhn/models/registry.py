"""Architectures by name, so configs and checkpoints can name the model they use."""

from __future__ import annotations

import inspect
from typing import Any

from selhn.models.base import DualEncoder
from selhn.models.rvsepp import RVSEPP
from selhn.models.vsepp import VSEPP

ARCHITECTURES: dict[str, type[DualEncoder]] = {"rvsepp": RVSEPP, "vsepp": VSEPP}


def model_sizes(architecture: str) -> set[str]:
    """The size arguments an architecture takes."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return set(inspect.signature(ARCHITECTURES[architecture]).parameters)


def build_model(architecture: str, **sizes: Any) -> DualEncoder:
    """An architecture from its name and size arguments (``vocab_size``, ``img_dim``, ...)."""
    unknown = set(sizes) - model_sizes(architecture)
    if unknown:
        raise ValueError(f"architecture {architecture!r} takes no {sorted(unknown)}")
    return ARCHITECTURES[architecture](**sizes)
