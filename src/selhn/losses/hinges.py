"""The triplet losses' arithmetic: per-anchor hinge statistics in row chunks and a custom backward.

A batch of P pairs defines the P x P pair score matrix S'[p, q] = S[row(p), q]: caption q scored
against the image of pair p, where S = img @ txt.T is (N images, P captions) and row(p) = p unless
several captions share an image. S' is what the loss is defined on (the matrix of the same pairs
with each image repeated per caption) but it is never built: chunks of its rows are gathered from
S, reduced to per-anchor statistics of both directions and dropped, and dL/dS' is folded back onto
S's rows, so an image that several captions share gets the sum of its pairs' gradients.

When every anchor uses its hardest hinge, dL/dS has at most 3P non-zeros and the embedding
gradients are gathered rows. With a mean-branch anchor, dL/dS is built once, chunk by chunk, and
goes through two products. Choosing between the two reads a value back from the device, so off
the CPU the dense path is always taken.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from selhn.losses.inputs import PairIndex, scoring_precision

# Rows of the pair score matrix handled at once: 1M elements (4 MB in float32) per temporary, so
# that the several passes over a chunk stay in cache (benchmarks/loss_bench.py times the loss).
_CHUNK_ELEMENTS = 1 << 20

STAT_NAMES = (
    "vanishing_i2t",  # share of image anchors with gap < vanishing threshold
    "vanishing_t2i",
    "gap_i2t",  # mean |S_pos - max S_neg| over image anchors that have a negative
    "gap_t2i",
    "active_i2t",  # share of (anchor, negative) hinges that are active
    "active_t2i",
)


@dataclass(frozen=True)
class HingeOptions:
    margin: float
    epsilon: float  # gap below which an anchor uses the mean of its hinges
    threshold: float  # gap below which an anchor counts as vanishing in the statistics


@dataclass
class _Direction:
    """Per-anchor quantities of one direction (image anchors: rows of S'; text: columns)."""

    hardest_score: Tensor  # (P,) max score over the anchor's negatives, -inf if it has none
    hardest_index: Tensor  # (P,) column (image anchors) or pair row (text anchors) of it
    hinge_sum: Tensor  # (P,) sum of the anchor's hinges
    active: Tensor  # (P,) number of active hinges
    negatives: Tensor  # (P,) number of negatives


@dataclass
class Selection:
    """What the backward pass needs from the forward pass; every field is (P,)."""

    row_mean: Tensor  # image anchor uses the mean of its hinges
    col_mean: Tensor  # text anchor likewise
    row_hard: Tensor  # image anchor uses its hardest hinge, and that hinge is active
    col_hard: Tensor
    row_hardest: Tensor  # column of each image anchor's hardest negative
    col_hardest: Tensor  # pair row of each text anchor's hardest negative
    row_active: Tensor  # active hinges per image anchor
    col_active: Tensor
    row_negatives: Tensor  # negatives per image anchor
    col_negatives: Tensor  # negatives per text anchor (the same as the image anchors' but
    # where duplicates relate captions to other images)

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, field.name) for field in fields(self))


def _chunks(n_rows: int, n_cols: int) -> Iterator[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def positives(scores: Tensor, rows: Tensor | None) -> Tensor:
    """(P,) score of each pair."""
    if rows is None:
        return scores.diagonal()
    return scores[rows, torch.arange(scores.shape[1], device=scores.device)]


def _pair_rows(scores: Tensor, rows: Tensor | None, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of S' (a view where pair p is row p, else a gathered copy)."""
    return scores[start:stop] if rows is None else scores.index_select(0, rows[start:stop])


def _reduce(
    scores: Tensor, pairs: PairIndex, margin: float
) -> tuple[Tensor, _Direction, _Direction, Tensor]:
    """One chunked pass over S' giving the positives, every per-anchor statistic of both
    directions."""
    n_pairs = scores.shape[1]
    pos = positives(scores, pairs.rows)
    threshold = pos - margin  # a hinge is active where the negative's score exceeds this
    row_max = torch.empty_like(pos)
    row_arg = torch.empty(n_pairs, dtype=torch.long, device=scores.device)
    row_sum, row_active = torch.empty_like(pos), torch.empty_like(row_arg)
    col_max = torch.full_like(pos, -math.inf)
    col_arg = torch.zeros_like(row_arg)
    col_sum, col_active = torch.zeros_like(pos), torch.zeros_like(row_arg)
    row_negatives = torch.full_like(row_arg, n_pairs - 1)
    col_excluded = torch.zeros_like(row_arg)  # beyond the pair's own
    for start, stop in _chunks(n_pairs, n_pairs):
        block = _pair_rows(scores, pairs.rows, start, stop).clone()  # (rows, P)
        block.diagonal(offset=start).fill_(-math.inf)
        same = pairs.excluded(start, stop, n_pairs, scores.device)  # the diagonal included
        if same is not None:
            block.masked_fill_(same, -math.inf)
            row_negatives[start:stop] = n_pairs - same.sum(dim=1)
            col_excluded += same.sum(dim=0)
            col_excluded[start:stop] -= same.diagonal(offset=start).long()
        row_max[start:stop], row_arg[start:stop] = block.max(dim=1)
        chunk_max, chunk_arg = block.max(dim=0)
        better = chunk_max > col_max  # strict: the first maximal row wins, as in torch.max
        col_max = torch.where(better, chunk_max, col_max)
        col_arg = torch.where(better, chunk_arg + start, col_arg)

        hinge = (block - threshold[start:stop, None]).clamp_(min=0)
        row_sum[start:stop] = hinge.sum(dim=1)
        row_active[start:stop] = torch.count_nonzero(hinge, dim=1)
        hinge = torch.sub(block, threshold, out=hinge).clamp_(min=0)
        col_sum += hinge.sum(dim=0)
        col_active += torch.count_nonzero(hinge, dim=0)
    rows = _Direction(row_max, row_arg, row_sum, row_active, row_negatives)
    cols = _Direction(col_max, col_arg, col_sum, col_active, n_pairs - 1 - col_excluded)
    return pos, rows, cols


def _select(
    pos: Tensor, direction: _Direction, opts: HingeOptions
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-anchor loss, mean-branch mask, hardest-active mask and gap of one direction."""
    gap = (pos - direction.hardest_score).abs()  # inf for an anchor without negatives
    use_mean = gap < opts.epsilon
    hardest = (direction.hardest_score - pos + opts.margin).clamp(min=0)
    mean = direction.hinge_sum / direction.negatives.clamp(min=1)
    loss = torch.where(use_mean, mean, hardest)
    return loss, use_mean, (hardest > 0) & ~use_mean, gap


def _direction_stats(gap: Tensor, direction: _Direction, threshold: float) -> tuple[Tensor, ...]:
    negatives = direction.negatives
    has_negative = negatives > 0
    vanishing = (gap < threshold).to(gap.dtype).mean()
    mean_gap = torch.where(has_negative, gap, 0).sum() / has_negative.sum().clamp(min=1)
    active = direction.active.sum().to(gap.dtype) / negatives.sum().clamp(min=1)
    return vanishing, mean_gap, active


def hinge_losses(
    scores: Tensor, pairs: PairIndex, opts: HingeOptions
) -> tuple[Tensor, Tensor, Selection]:
    """Per-anchor losses (2, P) (row 0: image anchors, row 1: text anchors), diagnostics (see
    STAT_NAMES) and backward selection of a detached (N, P) score matrix."""
    pos, rows, cols = _reduce(scores, pairs, opts.margin)
    row_loss, row_mean, row_hard, row_gap = _select(pos, rows, opts)
    col_loss, col_mean, col_hard, col_gap = _select(pos, cols, opts)
    row_stats = _direction_stats(row_gap, rows, opts.threshold)
    col_stats = _direction_stats(col_gap, cols, opts.threshold)
    # STAT_NAMES order; stacked as tensors (a list index would be copied to the device blocking)
    stats = torch.stack([s for pair in zip(row_stats, col_stats, strict=True) for s in pair])
    selection = Selection(
        row_mean=row_mean,
        col_mean=col_mean,
        row_hard=row_hard,
        col_hard=col_hard,
        row_hardest=rows.hardest_index,
        col_hardest=cols.hardest_index,
        row_active=rows.active,
        col_active=cols.active,
        row_negatives=rows.negatives,
        col_negatives=cols.negatives,
    )
    return torch.stack([row_loss, col_loss]), stats, selection


def needs_dense_backward(selection: Selection, device: torch.device) -> bool:
    """Whether dL/dS must be built: some anchor took the mean branch. Only the CPU reads that
    back (free there); elsewhere the answer is yes without waiting for the device."""
    return device.type != "cpu" or bool((selection.row_mean | selection.col_mean).any())


@dataclass
class _Weights:
    """dL/dS' in terms of the per-anchor loss gradients ``grad`` (2, P)."""

    row_hinge: Tensor  # (P,) weight of each active hinge of a mean-branch image anchor (else 0)
    col_hinge: Tensor  # (P,) likewise for text anchors
    row_hard: Tensor  # (P,) weight of an image anchor's hardest negative entry (else 0)
    col_hard: Tensor  # (P,)
    diagonal: Tensor  # (P,) dL/dS'_pp

    @classmethod
    def of(cls, selection: Selection, grad: Tensor) -> _Weights:
        per_row_hinge = 1 / selection.row_negatives.clamp(min=1).to(grad.dtype)
        per_col_hinge = 1 / selection.col_negatives.clamp(min=1).to(grad.dtype)
        row_hinge = torch.where(selection.row_mean, grad[0] * per_row_hinge, 0)
        col_hinge = torch.where(selection.col_mean, grad[1] * per_col_hinge, 0)
        row_hard = torch.where(selection.row_hard, grad[0], 0)
        col_hard = torch.where(selection.col_hard, grad[1], 0)
        diagonal = -(
            row_hinge * selection.row_active
            + col_hinge * selection.col_active
            + row_hard
            + col_hard
        )
        return cls(row_hinge, col_hinge, row_hard, col_hard, diagonal)


def _score_grad(
    scores: Tensor, pairs: PairIndex, margin: float, sel: Selection, w: _Weights, dense: bool
) -> Tensor:
    """dL/dS as a dense (N, P) matrix."""
    n_pairs = scores.shape[1]
    pos = positives(scores, pairs.rows)
    in_place = dense and pairs.rows is None  # every entry is written below
    grad = torch.empty_like(scores) if in_place else torch.zeros_like(scores)
    if dense:
        for start, stop in _chunks(n_pairs, n_pairs):
            block = _pair_rows(scores, pairs.rows, start, stop)
            part = grad[start:stop] if in_place else torch.empty_like(block)
            row_active = block > (pos[start:stop] - margin)[:, None]
            torch.mul(row_active, w.row_hinge[start:stop, None], out=part)
            part.addcmul_(block > (pos - margin)[None, :], w.col_hinge[None, :])
            part.diagonal(offset=start).zero_()
            same = pairs.excluded(start, stop, n_pairs, scores.device)
            if same is not None:
                part.masked_fill_(same, 0)
            if not in_place:
                grad.index_add_(0, pairs.rows[start:stop], part)
    pair_rows = torch.arange(n_pairs, device=scores.device) if pairs.rows is None else pairs.rows
    columns = torch.arange(n_pairs, device=scores.device)
    grad.index_put_((pair_rows, sel.row_hardest), w.row_hard, accumulate=True)
    grad.index_put_((pair_rows[sel.col_hardest], columns), w.col_hard, accumulate=True)
    grad.index_put_((pair_rows, columns), w.diagonal, accumulate=True)
    return grad


def _embedding_grads(
    img: Tensor,
    txt: Tensor,
    scores: Tensor | None,
    pairs: PairIndex,
    margin: float,
    sel: Selection,
    w: _Weights,
) -> tuple[Tensor, Tensor]:
    """(dL/d img, dL/d txt) for S = img @ txt.T; ``scores`` is None where no anchor took the
    mean branch, and then dL/dS has at most 3P non-zeros: the gradients are gathered rows."""
    if scores is not None:
        grad = _score_grad(scores, pairs, margin, sel, w, dense=True)
        return grad @ txt, grad.T @ img
    pair_img = img if pairs.rows is None else img[pairs.rows]  # (P, D) the image of each pair
    grad_pair_img = w.diagonal[:, None] * txt
    grad_txt = w.diagonal[:, None] * pair_img
    # image anchor p with hardest negative caption k: dL/dS'_pk = row_hard[p]
    grad_pair_img += w.row_hard[:, None] * txt[sel.row_hardest]
    grad_txt.index_add_(0, sel.row_hardest, w.row_hard[:, None] * pair_img)
    # text anchor q with hardest negative pair k: dL/dS'_kq = col_hard[q]
    grad_pair_img.index_add_(0, sel.col_hardest, w.col_hard[:, None] * txt)
    grad_txt += w.col_hard[:, None] * pair_img[sel.col_hardest]
    if pairs.rows is None:
        return grad_pair_img, grad_txt
    return torch.zeros_like(img).index_add_(0, pairs.rows, grad_pair_img), grad_txt


def _first_order_only(backward: Callable) -> Callable:
    """Refuse a backward pass that builds a graph (``create_graph=True``, double backward). The
    gradient is computed outside autograd; ``once_differentiable`` raises only when the incoming
    gradient itself needs a graph, which a loss's does not, so without this check the returned
    gradient would silently carry no graph (a gradient penalty on it would add nothing)."""

    @functools.wraps(backward)
    def checked(ctx, *grads):
        if torch.is_grad_enabled():  # the engine enables grad mode only for create_graph=True
            raise RuntimeError(
                "the triplet losses support first derivatives only: their backward pass cannot "
                "be differentiated (create_graph=True / double backward, once_differentiable)"
            )
        return backward(ctx, *grads)

    return checked


INDEX = 5  # the tensors of a PairIndex (PairIndex.tensors), saved by the functions below


class ScoresHingeLoss(torch.autograd.Function):
    """Per-anchor losses and statistics of an (N, P) score matrix."""

    @staticmethod
    def forward(ctx, scores, opts, *index):  # type: ignore[override]
        pairs = PairIndex.from_tensors(*index)
        losses, stats, sel = hinge_losses(scores, pairs, opts)
        ctx.save_for_backward(scores, *index, *sel.tensors())
        ctx.opts, ctx.dense = opts, needs_dense_backward(sel, scores.device)
        ctx.mark_non_differentiable(stats)
        return losses, stats

    @staticmethod
    @_first_order_only
    @once_differentiable
    def backward(ctx, grad_losses, _grad_stats):  # type: ignore[override]
        scores, *saved = ctx.saved_tensors
        pairs, sel = PairIndex.from_tensors(*saved[:INDEX]), Selection(*saved[INDEX:])
        with scoring_precision(scores.device):
            weights = _Weights.of(sel, grad_losses)
            grad = _score_grad(scores, pairs, ctx.opts.margin, sel, weights, ctx.dense)
        return grad, None, *(None,) * INDEX


class EmbeddingHingeLoss(torch.autograd.Function):
    """Per-anchor losses and statistics of S = img @ txt.T."""

    @staticmethod
    def forward(ctx, img, txt, opts, *index):  # type: ignore[override]
        scores = img @ txt.T
        losses, stats, sel = hinge_losses(scores, PairIndex.from_tensors(*index), opts)
        dense = needs_dense_backward(sel, scores.device)
        # Without a mean-branch anchor the backward pass is sparse and needs no scores.
        ctx.save_for_backward(img, txt, scores if dense else None, *index, *sel.tensors())
        ctx.opts = opts
        ctx.mark_non_differentiable(stats)
        return losses, stats

    @staticmethod
    @_first_order_only
    @once_differentiable
    def backward(ctx, grad_losses, _grad_stats):  # type: ignore[override]
        img, txt, scores, *saved = ctx.saved_tensors
        pairs, sel = PairIndex.from_tensors(*saved[:INDEX]), Selection(*saved[INDEX:])
        with scoring_precision(img.device):
            weights = _Weights.of(sel, grad_losses)
            grad_img, grad_txt = _embedding_grads(
                img, txt, scores, pairs, ctx.opts.margin, sel, weights
            )
        return grad_img, grad_txt, None, *(None,) * INDEX
