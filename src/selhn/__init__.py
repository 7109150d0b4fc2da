"""selhn: Selectively Hard Negative Mining (SelHN) for image-text matching.

Everything loads on first use (``from selhn import SelHNLoss, RVSEPP, Encoder, create_model``),
so ``import selhn`` (and ``selhn --version``) does not import torch."""

from typing import Any

__all__ = [
    "RVSEPP",
    "STAT_NAMES",
    "AllNegativesLoss",
    "Encoder",
    "HardestNegativeLoss",
    "InfoNCELoss",
    "SelHNLoss",
    "SelectiveInfoNCELoss",
    "create_model",
]
__version__ = "0.1.0"

_LAZY = {
    **{
        name: "selhn.losses"
        for name in (
            "STAT_NAMES",
            "AllNegativesLoss",
            "HardestNegativeLoss",
            "InfoNCELoss",
            "SelHNLoss",
            "SelectiveInfoNCELoss",
        )
    },
    "RVSEPP": "selhn.models",
    "create_model": "selhn.models",
    "Encoder": "selhn.inference.encoder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'selhn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
