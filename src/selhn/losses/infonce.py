"""Symmetric contrastive loss (InfoNCE) with a learnable temperature, as in CLIP."""

from __future__ import annotations

import math
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


def infonce_terms(logits: Tensor, pairs: PairIndex) -> Tensor:
    """(2, P) cross-entropies of an (N, P) logit matrix: row 0 each image anchor's over the
    captions, row 1 each caption's over the images.

    Same-group entries other than the pair's own are neither targets nor negatives. An image that
    several captions share is counted once per caption among a caption's negatives (log-weight
    log(count)), as if it were repeated."""
    n_images, n_pairs = logits.shape
    pos = positives(logits, pairs.rows)
    image_groups = _image_groups(pairs, n_images)
    if image_groups is None:
        same = torch.eye(n_images, n_pairs, dtype=torch.bool, device=logits.device)
    else:
        same = image_groups[:, None] == pairs.groups[None, :]
    negatives = logits.masked_fill(same, -math.inf)
    rows = torch.arange(n_pairs, device=logits.device) if pairs.rows is None else pairs.rows
    image_term = torch.logaddexp(torch.logsumexp(negatives, dim=1)[rows], pos) - pos
    captions_per_image = torch.zeros(n_images, dtype=logits.dtype, device=logits.device)
    captions_per_image.index_add_(0, rows, torch.ones_like(pos))
    weighted = negatives + captions_per_image.log()[:, None]
    text_term = torch.logaddexp(torch.logsumexp(weighted, dim=0), pos) - pos
    return torch.stack([image_term, text_term])


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
