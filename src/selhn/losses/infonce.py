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

    def negative_totals(self, pairs: PairIndex) -> tuple[Tensor, Tensor]:
        """(N,) the negatives of each image row and (P,) of each caption, an image row counted
        once per caption of it; from the groups and targets, without a pass over the matrix."""
        n_images, n_pairs = self.negative.shape
        device = self.negative.device
        weight = torch.ones(n_images, dtype=torch.long, device=device)
        if self.count is not None:
            weight = self.count.reshape(-1).long()
        image_groups = _image_groups(pairs, n_images)
        if image_groups is None:  # only a pair's own image and caption
            row_same = (torch.arange(n_images, device=device) < n_pairs).long()
            col_same = (torch.arange(n_pairs, device=device) < n_images).long()
        else:
            assert pairs.groups is not None
            codes = torch.unique(torch.cat([image_groups, pairs.groups]), return_inverse=True)[1]
            image_codes, caption_codes = codes[:n_images], codes[n_images:]
            size = n_images + n_pairs
            row_same = torch.bincount(caption_codes, minlength=size)[image_codes]
            col_same = weight.new_zeros(size).index_add_(0, image_codes, weight)[caption_codes]
        row_total, col_total = n_pairs - row_same, weight.sum() - col_same
        if self.targets is not None:
            image, caption = self.targets
            row_total = row_total - torch.bincount(image, minlength=n_images)
            col_total = col_total - weight.new_zeros(n_pairs).index_add_(0, caption, weight[image])
        return row_total, col_total

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

    def image_sums(
        self, negatives: Tensor, off: Tensor, candidates: Candidates, total: Tensor
    ) -> Tensor:
        """(P,) log sum_j w_j exp(l_j) over each image anchor's negative captions (w_j = 1 for
        an anchor not weighted), from the negative logits, -inf where ``off``.

        One pass serves every row: a row is weighted where any of its pairs is, and the rows
        whose pairs disagree (captions of one image) also get the plain sum."""
        rows, n_rows = candidates.rows, negatives.shape[0]
        weighted_pairs = torch.zeros(n_rows, device=rows.device).index_add_(
            0, rows, self.image_pairs.float())  # fmt: skip
        sharp_rows = weighted_pairs > 0
        sums = self._log_sums(negatives, off, sharp_rows[:, None], 0.0, total, dim=1)[rows]
        row_pairs = weighted_pairs if candidates.count is None else candidates.count.reshape(-1)
        mixed = (sharp_rows & (weighted_pairs < row_pairs)).nonzero().reshape(-1)
        if len(mixed):
            plain = torch.logsumexp(negatives.index_select(0, mixed), dim=1)
            plain = sums.new_zeros(n_rows).index_copy(0, mixed, plain)[rows]
            sums = torch.where(self.image_pairs | ~sharp_rows[rows], sums, plain)
        return sums

    def text_sums(
        self, negatives: Tensor, off: Tensor, log_count: Tensor | float, total: Tensor
    ) -> Tensor:
        """(P,) the same over each caption anchor's negative images, an image row counted once
        per caption of it (log-weight ``log_count``)."""
        return self._log_sums(negatives, off, self.text_pairs[None, :], log_count, total, dim=0)

    def _log_sums(
        self,
        negatives: Tensor,
        off: Tensor,
        sharp: Tensor,
        log_count: Tensor | float,
        total: Tensor,
        dim: int,
    ) -> Tensor:
        """log sum_j w_j exp(l_j) along ``dim``, the weights where ``sharp`` (an (N, 1) or
        (1, P) bool) holds; ``total``: the (count-weighted) negatives of each anchor."""
        fixed = negatives.detach() * (self.hardness * sharp.to(negatives.dtype))
        fixed.masked_fill_(off, -math.inf)
        summed = negatives + fixed  # logsumexp: sum_j exp(l_j) exp(hardness * l_j), gradient
        # through exp(l_j) only
        if isinstance(log_count, Tensor):
            summed, fixed = summed + log_count, fixed + log_count
        norm = torch.logsumexp(fixed, dim=dim)  # -inf for an anchor with no negatives
        weighs = sharp.reshape(-1) & torch.isfinite(norm)
        log_total = total.to(norm.dtype).log()
        log_mean = torch.where(weighs, norm - log_total, torch.zeros_like(norm))
        return torch.logsumexp(summed, dim=dim) - log_mean


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
    off = ~candidates.negative
    negatives = logits.masked_fill(off, -math.inf)
    count = candidates.log_count(logits.dtype)
    image_pos = text_pos = pos
    if candidates.targets is not None:
        image, caption = candidates.targets
        extra = logits[image, caption]
        weighted = extra if candidates.count is None else extra + count[image, 0]
        image_pos = torch.logaddexp(pos, _grouped_logsumexp(extra, image, logits.shape[0])[rows])
        text_pos = torch.logaddexp(pos, _grouped_logsumexp(weighted, caption, logits.shape[1]))
    sharpening = sharpen(pos.detach(), negatives.detach()) if sharpen is not None else None
    if sharpening is None:
        image_neg = torch.logsumexp(negatives, dim=1)[rows]
        text_neg = torch.logsumexp(negatives + count, dim=0)
    else:
        row_total, col_total = candidates.negative_totals(pairs)
        image_neg = sharpening.image_sums(negatives, off, candidates, row_total)
        text_neg = sharpening.text_sums(negatives, off, count, col_total)
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
