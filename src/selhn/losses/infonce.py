"""Symmetric contrastive loss (InfoNCE) with a learnable temperature, as in CLIP."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from selhn.losses.base import PairLoss
from selhn.losses.hinges import positives
from selhn.losses.inputs import PairIndex, as_scoring_dtype


def _image_groups(pairs: PairIndex, n_images: int) -> Tensor | None:
    """(N,) group of each image row: that of its captions (which agree)."""
    if pairs.rows is None:
        return pairs.groups
    assert pairs.groups is not None
    return pairs.groups.new_zeros(n_images).scatter_(0, pairs.rows, pairs.groups)


@dataclass(frozen=True)
class Candidates:
    """Who competes with whom in an (N images, P captions) logit matrix."""

    rows: Tensor  # (P,) image row of each caption
    negative: Tensor  # (N, P) bool: image i and caption q are negatives of each other
    target: Tensor  # (N, P) bool: caption q describes image i (a duplicate), not its own pair
    count: Tensor  # (N, 1) the number of captions of each image row

    @classmethod
    def of(cls, pairs: PairIndex, n_images: int, n_pairs: int, device: torch.device):
        """Same-group entries other than the pair's own are neither targets nor negatives;
        the captions (images) that ``pairs.duplicates`` names are targets."""
        image_groups = _image_groups(pairs, n_images)
        if image_groups is None:
            same = torch.eye(n_images, n_pairs, dtype=torch.bool, device=device)
        else:
            same = image_groups[:, None] == pairs.groups[None, :]
        rows = pairs.image_rows(n_pairs, device)
        target = torch.zeros_like(same)
        if pairs.duplicates is not None:
            images = torch.arange(n_images, device=device)
            target = pairs.duplicates.describes(images, rows) & ~same
        count = torch.zeros(n_images, device=device)
        count.index_add_(0, rows, torch.ones(n_pairs, device=device))
        return cls(rows, ~(same | target), target, count[:, None])


@dataclass(frozen=True)
class NegativeWeights:
    """Log-weights added to the negatives' logits of some anchors (no gradient through them).

    ``image``: (N, P), row r for the image anchors of row r's pairs; ``text``: (N, P), column q
    for caption anchor q; ``image_pairs``, ``text_pairs``: (P,) bool, the anchors weighted.
    """

    image: Tensor
    text: Tensor
    image_pairs: Tensor
    text_pairs: Tensor


def contrastive_terms(
    logits: Tensor,
    pairs: PairIndex,
    candidates: Candidates,
    weights: NegativeWeights | None = None,
) -> Tensor:
    """(2, P) cross-entropies of an (N, P) logit matrix: row 0 each image anchor's over the
    captions, row 1 each caption's over the images.

    Each term is -log(sum over the targets / sum over the targets and the negatives), the
    targets being the pair's own and its duplicates. An image that several captions share is
    counted once per caption among a caption's candidates (log-weight log(count)), as if it
    were repeated. ``weights`` reweights the negatives of the anchors it names."""
    rows = candidates.rows
    pos = positives(logits, pairs.rows)
    negatives = logits.masked_fill(~candidates.negative, -math.inf)
    extra = logits.masked_fill(~candidates.target, -math.inf)
    count = candidates.count.to(logits.dtype).log()
    image_pos = torch.logaddexp(pos, torch.logsumexp(extra, dim=1)[rows])  # (P,)
    text_pos = torch.logaddexp(pos, torch.logsumexp(extra + count, dim=0))
    image_neg = torch.logsumexp(negatives, dim=1)[rows]
    text_neg = torch.logsumexp(negatives + count, dim=0)
    if weights is not None:
        image_weighted = torch.logsumexp(negatives + weights.image, dim=1)[rows]
        text_weighted = torch.logsumexp(negatives + count + weights.text, dim=0)
        image_neg = torch.where(weights.image_pairs, image_weighted, image_neg)
        text_neg = torch.where(weights.text_pairs, text_weighted, text_neg)
    image_term = torch.logaddexp(image_neg, image_pos) - image_pos
    text_term = torch.logaddexp(text_neg, text_pos) - text_pos
    return torch.stack([image_term, text_term])


def infonce_terms(logits: Tensor, pairs: PairIndex) -> Tensor:
    """(2, P) InfoNCE terms of an (N, P) logit matrix (``contrastive_terms``, no bias)."""
    n_images, n_pairs = logits.shape
    return contrastive_terms(logits, pairs, Candidates.of(pairs, n_images, n_pairs, logits.device))


class InfoNCELoss(PairLoss):
    """Symmetric contrastive loss with a learnable temperature, as in CLIP.

    ``logits = exp(logit_scale) * scores``; the loss is the mean of the image->text and
    text->image cross-entropies with the matching pairs as targets. ``logit_scale`` starts at
    log(1 / temperature) and is clamped to at most log(100) when used, as CLIP does. Logits are
    float32 inside ``torch.autocast``.

    Args:
        temperature: initial temperature.
        learnable: whether ``logit_scale`` is a trainable parameter (the optimiser must see it).
        reduction, gather_distributed, check_inputs: as in ``PairLoss``.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = True, **options: Any) -> None:
        super().__init__(**options)
        if not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        scale = torch.tensor(math.log(1 / temperature))
        if learnable:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)

    def score_terms(self, scores: Tensor, pairs: PairIndex) -> Tensor:
        scale = as_scoring_dtype(self.logit_scale).clamp(max=math.log(100)).exp()
        self.stats = {"temperature": (1 / scale).detach()}
        return infonce_terms(scale * scores, pairs)
