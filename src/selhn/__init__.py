"""selhn: Selectively Hard Negative Mining (SelHN) for image-text matching."""

from selhn.losses import (
    STAT_NAMES,
    AllNegativesLoss,
    HardestNegativeLoss,
    InfoNCELoss,
    SelHNLoss,
)

__all__ = ["STAT_NAMES", "AllNegativesLoss", "HardestNegativeLoss", "InfoNCELoss", "SelHNLoss"]
__version__ = "0.1.0"
