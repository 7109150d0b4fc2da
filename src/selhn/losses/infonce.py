"""Symmetric contrastive loss (InfoNCE) with a learnable temperature, as in CLIP."""

from __future__ import annotations

import math
from collections.abc import Callable
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
    targets: tuple[Tensor, Tensor] | None  # (image rows, captions): caption q describes image
    # i (a duplicate) and is not of its group; None without duplicates
    count: Tensor | None  # (N, 1) the number of captions of each image row; None: one each

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
        targets, negative = None, ~same
        if pairs.duplicates is not None:
            image, caption = pairs.duplicates.pairs(rows)
            other = negative[image, caption]
            targets = (image[other], caption[other])
            negative[targets] = False
        count = None
        if pairs.rows is not None:
            count = torch.zeros(n_images, device=device)
            count.index_add_(0, rows, torch.ones(n_pairs, device=device))
            count = count[:, None]
        return cls(rows, negative, targets, count)

    def log_count(self, dtype: torch.dtype) -> Tensor | float:
        """(N, 1) log of the captions of each image row (0 where each has one)."""
        return 0.0 if self.count is None else self.count.to(dtype).log()


@dataclass(frozen=True)
class Sharpening:
    """HN-NCE's hardness weights on the negatives of some anchors: negative j's exponential
    weighs w_j = exp(hardness * l_j) / mean_k exp(hardness * l_k) over the anchor's negatives
    (an image shared by several captions counted once per caption), without gradient.

    ``image_pairs``, ``text_pairs``: (P,) bool, the image (text) anchors weighted; ``hardness``
    > 0.
    """

    hardness: float
    image_pairs: Tensor
    text_pairs: Tensor

    def log_sums(
        self, negatives: Tensor, log_count: Tensor | float, candidates: Candidates
    ) -> tuple[Tensor, Tensor]:
        """(N,) log sum_j w_j exp(l_j) over each image row's negative captions and (P,) over
        each caption's negative images, from the -inf-masked negative logits."""
        fixed = self.hardness * negatives.detach()  # -inf off the negatives
        sharp = negatives + fixed  # logsumexp: sum_j exp(l_j) exp(hardness * l_j), gradient
        # through exp(l_j) only

        def log_mean(values: Tensor, dim: int, total: Tensor) -> Tensor:
            norm = torch.logsumexp(values, dim=dim)  # -inf for an anchor with no negatives
            return torch.where(torch.isfinite(norm), norm - total.log(), torch.zeros_like(norm))

        negative = candidates.negative.to(negatives.dtype)
        count = candidates.count
        col_total = negative.sum(0) if count is None else count.to(negative.dtype).T @ negative
        image = torch.logsumexp(sharp, dim=1) - log_mean(fixed, 1, negative.sum(1))
        text = torch.logsumexp(sharp + log_count, dim=0) - log_mean(
            fixed + log_count, 0, col_total.reshape(-1)
        )
        return image, text


def _grouped_logsumexp(values: Tensor, groups: Tensor, size: int) -> Tensor:
    """(size,) log sum exp of ``values`` per group (-inf for a group without values)."""
    top = values.new_full((size,), -math.inf).scatter_reduce(0, groups, values.detach(), "amax")
    shift = top.where(torch.isfinite(top), torch.zeros_like(top))
    total = values.new_zeros(size).index_add(0, groups, (values - shift[groups]).exp())
    found = total > 0
    return torch.where(found, shift + total.where(found, torch.ones_like(total)).log(), -math.inf)


def contrastive_terms(
    logits: Tensor,
    pairs: PairIndex,
    candidates: Candidates,
    sharpen: Callable[[Tensor, Tensor], Sharpening | None] | None = None,
) -> Tensor:
    """(2, P) cross-entropies of an (N, P) logit matrix: row 0 each image anchor's over the
    captions, row 1 each caption's over the images.

    Each term is -log(sum over the targets / sum over the targets and the negatives), the
    targets being the pair's own and its duplicates. An image that several captions share is
    counted once per caption among a caption's candidates (log-weight log(count)), as if it
    were repeated. ``sharpen``, given the (P,) positive logits and the (N, P) negative ones
    (-inf elsewhere), both detached, may reweight the negatives of some anchors."""
    rows = candidates.rows
    pos = positives(logits, pairs.rows)
    negatives = logits.masked_fill(~candidates.negative, -math.inf)
    count = candidates.log_count(logits.dtype)
    image_pos = text_pos = pos
    if candidates.targets is not None:
        image, caption = candidates.targets
        extra = logits[image, caption]
        weighted = extra if candidates.count is None else extra + count[image, 0]
        image_pos = torch.logaddexp(pos, _grouped_logsumexp(extra, image, logits.shape[0])[rows])
        text_pos = torch.logaddexp(pos, _grouped_logsumexp(weighted, caption, logits.shape[1]))
    image_neg = torch.logsumexp(negatives, dim=1)[rows]
    text_neg = torch.logsumexp(negatives + count, dim=0)
    sharpening = sharpen(pos.detach(), negatives.detach()) if sharpen is not None else None
    if sharpening is not None:
        image_sharp, text_sharp = sharpening.log_sums(negatives, count, candidates)
        image_neg = torch.where(sharpening.image_pairs, image_sharp[rows], image_neg)
        text_neg = torch.where(sharpening.text_pairs, text_sharp, text_neg)
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
