"""Losses for image-text matching: SelHN, hardest negative (VSE++), all negatives (VSE0), InfoNCE
and selective InfoNCE.

Every loss takes embeddings (``loss(img_emb, txt_emb)``) or a score matrix (``loss.from_scores``),
works inside ``torch.autocast``, takes several captions per image (``caption_to_image``), returns
per-pair terms with ``reduction="none"`` and can gather the batch over a process group.
"""

from selhn.losses.base import PairLoss
from selhn.losses.hinges import STAT_NAMES
from selhn.losses.infonce import InfoNCELoss
from selhn.losses.inputs import Duplicates
from selhn.losses.selective import SelectiveInfoNCELoss
from selhn.losses.triplet import (
    AllNegativesLoss,
    HardestNegativeLoss,
    SelHNLoss,
    default_vanishing_threshold,
)

__all__ = [
    "STAT_NAMES",
    "AllNegativesLoss",
    "Duplicates",
    "HardestNegativeLoss",
    "InfoNCELoss",
    "PairLoss",
    "SelHNLoss",
    "SelectiveInfoNCELoss",
    "default_vanishing_threshold",
]
