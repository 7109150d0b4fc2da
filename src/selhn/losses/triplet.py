"""SelHN and the two triplet losses it interpolates: hardest negative (VSE++), all negatives (VSE0).

They share one implementation and differ only in ``epsilon``, the gap below which an anchor falls
back from its hardest hinge to the mean of its hinges (docs/method.md):

    epsilon = 0    -> every anchor uses its hardest negative (VSE++)
    epsilon = inf  -> every anchor uses the mean over its negatives (VSE0)
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from selhn.losses.base import PairLoss
from selhn.losses.hinges import STAT_NAMES, EmbeddingHingeLoss, HingeOptions, ScoresHingeLoss
from selhn.losses.inputs import PairIndex


def default_vanishing_threshold(epsilon: float) -> float:
    """The gap that counts as vanishing in ``stats``: epsilon itself, or 0.01 where epsilon is 0
    (hardest negatives) or infinite (all negatives) and so says nothing about the gap."""
    return epsilon if 0 < epsilon < math.inf else 0.01


class SelHNLoss(PairLoss):
    """Bidirectional triplet loss with selectively hard negatives.

    Each anchor uses its hardest hinge unless ``|S_pos - max S_neg| < epsilon``, in which case it
    uses the mean of its hinges. The loss is half the sum of the mean over image anchors and the
    mean over text anchors. Scores, gaps and the branch choice are computed in float32 (float64
    inputs stay float64) even inside ``torch.autocast``; the loss is float32 and gradients reach
    the inputs in their own dtype. Double backward is not supported (it raises).

    Args:
        margin: triplet margin alpha.
        epsilon: gap below which an anchor falls back to the mean of its hinges.
        vanishing_threshold: gap below which an anchor counts as vanishing in ``stats``
            (defaults to ``epsilon``, or 0.01 where ``epsilon`` is 0 or infinite).
        reduction, gather_distributed, check_inputs: as in ``PairLoss``.

    After each call ``stats`` maps the names in ``STAT_NAMES`` to detached 0-d tensors.
    """

    def __init__(
        self,
        margin: float = 0.2,
        epsilon: float = 0.01,
        vanishing_threshold: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if not margin >= 0 or math.isinf(margin):
            raise ValueError(f"margin must be a finite number >= 0, got {margin}")
        if not epsilon >= 0:
            raise ValueError(
                f"epsilon must be >= 0 (inf for the all-negatives loss), got {epsilon}"
            )
        if vanishing_threshold is None:
            vanishing_threshold = default_vanishing_threshold(epsilon)
        self.margin = float(margin)
        self.epsilon = float(epsilon)
        self.vanishing_threshold = float(vanishing_threshold)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, epsilon={self.epsilon}, reduction={self.reduction!r}"

    @property
    def _opts(self) -> HingeOptions:
        return HingeOptions(self.margin, self.epsilon, self.vanishing_threshold)

    def _record(self, terms: Tensor, stats: Tensor) -> Tensor:
        self.stats = dict(zip(STAT_NAMES, stats.unbind(), strict=True))
        return terms

    def embedding_terms(self, img_emb: Tensor, txt_emb: Tensor, pairs: PairIndex) -> Tensor:
        """The hinge terms from the embeddings (the backward pass needs no B x B matrix when
        every anchor is on its hardest branch)."""
        return self._record(
            *EmbeddingHingeLoss.apply(img_emb, txt_emb, self._opts, *pairs.tensors())
        )

    def score_terms(self, scores: Tensor, pairs: PairIndex) -> Tensor:
        return self._record(*ScoresHingeLoss.apply(scores, self._opts, *pairs.tensors()))


class HardestNegativeLoss(SelHNLoss):
    """VSE++ ("max of hinges"): SelHN with epsilon = 0, at the same scale. Keyword options as in
    ``SelHNLoss``."""

    def __init__(self, margin: float = 0.2, vanishing_threshold: float = 0.01, **options) -> None:
        super().__init__(margin, 0.0, vanishing_threshold, **options)


class AllNegativesLoss(SelHNLoss):
    """VSE0 ("sum of hinges"): SelHN with epsilon = inf, at the same scale. Keyword options as in
    ``SelHNLoss``."""

    def __init__(self, margin: float = 0.2, vanishing_threshold: float = 0.01, **options) -> None:
        super().__init__(margin, math.inf, vanishing_threshold, **options)
