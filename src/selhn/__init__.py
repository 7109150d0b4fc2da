"""selhn: Selectively Hard Negative Mining (SelHN) for image-text matching.

The losses are imported with the package; the model, the encoder and the factory load on first
use (``from selhn import RVSEPP, Encoder, create_model``), so ``import selhn`` stays light."""

from typing import Any

from selhn.losses import (
    STAT_NAMES,
    AllNegativesLoss,
    HardestNegativeLoss,
    InfoNCELoss,
    SelHNLoss,
)

__all__ = [
    "RVSEPP",
    "STAT_NAMES",
    "AllNegativesLoss",
    "Encoder",
    "HardestNegativeLoss",
    "InfoNCELoss",
    "SelHNLoss",
    "create_model",
]
__version__ = "0.1.0"

_LAZY = {
    "RVSEPP": "selhn.models",
    "create_model": "selhn.models",
    "Encoder": "selhn.inference.encoder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'selhn' has no attribute {name!r}")
