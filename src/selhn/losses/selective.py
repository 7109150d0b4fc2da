"""Selective InfoNCE: SelHN's per-anchor switch inside a softmax objective."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from selhn.losses.infonce import Candidates, InfoNCELoss, Sharpening, contrastive_terms
from selhn.losses.inputs import PairIndex, as_scoring_dtype


class SelectiveInfoNCELoss(InfoNCELoss):
    """InfoNCE whose negatives are weighted by hardness for the anchors that pass SelHN's gap
    test (docs/losses.md, "Selective InfoNCE").

    For each anchor (an image's pair, or a caption) the gap is ``|S_pos - max S_neg|`` on the
    scores (cosine for unit embeddings), S_neg over its negatives. An anchor with gap >=
    ``epsilon`` weights each negative's exponential by ``exp(hardness * l) / mean exp(hardness *
    l)`` over its negatives (HN-NCE's weights, ``l`` the logits); one with gap < ``epsilon`` (the
    regime where the hardest triplet's gradient vanishes) keeps InfoNCE's uniform negatives. The
    weights and the switch carry no gradient. ``hardness=0`` or ``epsilon=inf`` is InfoNCE.

    Args:
        temperature, learnable: as in ``InfoNCELoss``.
        epsilon: the gap below which an anchor keeps uniform negatives.
        hardness: beta of the weights, in units of the logits (>= 0).
        reduction, gather_distributed, check_inputs: as in ``PairLoss``.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        epsilon: float = 0.01,
        hardness: float = 0.5,
        learnable: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(temperature, learnable, **options)
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if not 0 <= hardness < math.inf:
            raise ValueError(f"hardness must be a finite number >= 0, got {hardness}")
        self.epsilon, self.hardness = epsilon, hardness

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, hardness={self.hardness}"

    def score_terms(self, scores: Tensor, pairs: PairIndex) -> Tensor:
        scale = as_scoring_dtype(self.logit_scale).clamp(max=math.log(100)).exp()
        candidates = Candidates.of(pairs, *scores.shape, scores.device)
        self.stats = {"temperature": (1 / scale).detach()}

        def gap_test(pos: Tensor, negatives: Tensor) -> Sharpening | None:
            """The anchors whose gap |S_pos - max S_neg| (logits / scale) reaches epsilon."""
            rows = candidates.rows
            unit = scale.detach()
            row_gap = (pos - negatives.amax(dim=1)[rows]).abs() / unit
            col_gap = (pos - negatives.amax(dim=0)).abs() / unit  # inf: no negative
            for name, gap in (("i2t", row_gap), ("t2i", col_gap)):
                finite = torch.isfinite(gap)
                self.stats[f"vanishing_{name}"] = (gap < self.epsilon).float().mean()
                total = gap.where(finite, torch.zeros_like(gap)).sum()
                self.stats[f"gap_{name}"] = total / finite.sum().clamp(min=1)
            if not self.hardness:
                return None
            return Sharpening(self.hardness, row_gap >= self.epsilon, col_gap >= self.epsilon)

        return contrastive_terms(scale * scores, pairs, candidates, gap_test)
