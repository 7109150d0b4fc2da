"""Losses for image-text matching: SelHN, hardest negative (VSE++), all negatives (VSE0), InfoNCE.

The three triplet losses share one implementation and differ only in ``epsilon``, the gap below
which an anchor falls back from its hardest hinge to the mean of its hinges (METHOD.md section 3):

    epsilon = 0    -> every anchor uses its hardest negative (VSE++)
    epsilon = inf  -> every anchor uses the mean over its negatives (VSE0)

The work is done by custom autograd functions that never build the B x B masks and intermediates
of a straightforward implementation: the score matrix is reduced in row chunks to per-anchor
statistics; when every anchor takes its hardest branch the backward pass is a few gathered rows,
otherwise dL/dS is built once, chunk by chunk, and goes through two products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rows of the score matrix handled at once: 1M elements (4 MB in float32) per temporary, so that
# the several passes over a chunk stay in cache (benchmarks/loss_bench.py times the whole loss).
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
class _Options:
    margin: float
    epsilon: float
    threshold: float  # gap threshold for the vanishing statistic


@dataclass
class _Direction:
    """Per-anchor quantities of one direction (image anchors = rows, text anchors = columns)."""

    hardest_score: Tensor  # (B,) max score over the anchor's negatives, -inf if it has none
    hardest_index: Tensor  # (B,) column (rows) or row (columns) of that negative
    hinge_sum: Tensor  # (B,) sum of the anchor's hinges
    active: Tensor  # (B,) number of active hinges
    negatives: Tensor  # (B,) number of negatives


def _chunk_rows(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(n_cols, 1))


def _masked_rows(scores: Tensor, start: int, stop: int, ids: Tensor | None) -> Tensor:
    """Copy of ``scores[start:stop]`` with positives (diagonal, shared ids) set to -inf."""
    block = scores[start:stop].clone()
    block.diagonal(offset=start).fill_(-math.inf)
    if ids is not None:
        block.masked_fill_(ids[start:stop, None] == ids[None, :], -math.inf)
    return block


def _negative_counts(ids: Tensor | None, batch: int, device: torch.device) -> Tensor:
    if ids is None:
        return torch.full((batch,), batch - 1, device=device, dtype=torch.long)
    _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    return batch - counts[inverse]


def _reduce(scores: Tensor, ids: Tensor | None, margin: float) -> tuple[_Direction, _Direction]:
    """One chunked pass over ``scores`` giving every per-anchor statistic of both directions."""
    batch = scores.shape[0]
    pos = scores.diagonal()
    threshold = pos - margin  # a hinge is active where the negative's score exceeds this
    row_max = torch.empty_like(pos)
    row_arg = torch.empty(batch, dtype=torch.long, device=scores.device)
    row_sum, row_active = torch.empty_like(pos), torch.empty_like(row_arg)
    col_max = torch.full_like(pos, -math.inf)
    col_arg = torch.zeros_like(row_arg)
    col_sum, col_active = torch.zeros_like(pos), torch.zeros_like(row_arg)
    step = _chunk_rows(batch)
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        block = _masked_rows(scores, start, stop, ids)  # (rows, B)
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
    negatives = _negative_counts(ids, batch, scores.device)
    return (
        _Direction(row_max, row_arg, row_sum, row_active, negatives),
        _Direction(col_max, col_arg, col_sum, col_active, negatives),
    )


@dataclass
class _Plan:
    """What the backward pass needs: the loss's derivative with respect to the score matrix.

    dL/dS = sparse hardest-negative entries + dense mean-branch entries + a diagonal.
    """

    row_weight: Tensor  # (B,) weight of each active hinge of a mean-branch image anchor (else 0)
    col_weight: Tensor  # (B,) likewise for text anchors
    hard_rows: Tensor  # (n,) image anchors whose hardest hinge is active and selected
    hard_row_cols: Tensor  # (n,) their hardest negatives
    hard_cols: Tensor  # (m,) text anchors likewise
    hard_col_rows: Tensor  # (m,)
    hard_weight: float
    diagonal: Tensor  # (B,) dL/dS_ii
    dense: bool  # whether any anchor took the mean branch


def _select(
    pos: Tensor, direction: _Direction, opts: _Options
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-anchor loss, mean-branch mask, hardest-active mask and gap of one direction."""
    gap = (pos - direction.hardest_score).abs()  # inf for an anchor without negatives
    use_mean = gap < opts.epsilon
    hardest = (direction.hardest_score - pos + opts.margin).clamp(min=0)
    mean = direction.hinge_sum / direction.negatives.clamp(min=1)
    loss = torch.where(use_mean, mean, hardest)
    return loss, use_mean, (hardest > 0) & ~use_mean, gap


def _direction_stats(gap: Tensor, direction: _Direction, threshold: float) -> tuple[Tensor, ...]:
    has_negative = direction.negatives > 0
    vanishing = (gap < threshold).to(gap.dtype).mean()
    mean_gap = torch.where(has_negative, gap, 0).sum() / has_negative.sum().clamp(min=1)
    active = direction.active.sum().to(gap.dtype) / direction.negatives.sum().clamp(min=1)
    return vanishing, mean_gap, active


def _forward(scores: Tensor, ids: Tensor | None, opts: _Options) -> tuple[Tensor, Tensor, _Plan]:
    """Loss, diagnostics (see STAT_NAMES) and backward plan of a detached (B, B) score matrix."""
    batch = scores.shape[0]
    pos = scores.diagonal()
    rows, cols = _reduce(scores, ids, opts.margin)
    row_loss, row_mean, row_hard, row_gap = _select(pos, rows, opts)
    col_loss, col_mean, col_hard, col_gap = _select(pos, cols, opts)
    loss = 0.5 * (row_loss.mean() + col_loss.mean())

    anchor_weight = 0.5 / batch
    per_hinge = anchor_weight / rows.negatives.clamp(min=1).to(pos.dtype)  # same for columns
    row_weight = torch.where(row_mean, per_hinge, 0)
    col_weight = torch.where(col_mean, per_hinge, 0)
    diagonal = -(
        row_weight * rows.active
        + col_weight * cols.active
        + anchor_weight * (row_hard.to(pos.dtype) + col_hard.to(pos.dtype))
    )
    hard_rows = row_hard.nonzero().squeeze(1)
    hard_cols = col_hard.nonzero().squeeze(1)
    plan = _Plan(
        row_weight=row_weight,
        col_weight=col_weight,
        hard_rows=hard_rows,
        hard_row_cols=rows.hardest_index[hard_rows],
        hard_cols=hard_cols,
        hard_col_rows=cols.hardest_index[hard_cols],
        hard_weight=anchor_weight,
        diagonal=diagonal,
        dense=bool((row_mean | col_mean).any()),
    )
    stats = torch.stack(
        _direction_stats(row_gap, rows, opts.threshold)
        + _direction_stats(col_gap, cols, opts.threshold)
    )
    stats = stats[[0, 3, 1, 4, 2, 5]]  # interleave the directions in STAT_NAMES order
    return loss, stats, plan


def _dense_rows(
    scores: Tensor,
    start: int,
    stop: int,
    ids: Tensor | None,
    margin: float,
    plan: _Plan,
    out: Tensor,
) -> None:
    """Write rows ``start:stop`` of the mean-branch part of dL/dS into ``out`` (diagonal zero)."""
    block = scores[start:stop]
    pos = scores.diagonal()
    torch.mul(
        block > (pos[start:stop] - margin)[:, None], plan.row_weight[start:stop, None], out=out
    )
    out.addcmul_(block > (pos - margin)[None, :], plan.col_weight[None, :])
    out.diagonal(offset=start).zero_()
    if ids is not None:
        out.masked_fill_(ids[start:stop, None] == ids[None, :], 0)


def _score_grad(scores: Tensor, ids: Tensor | None, margin: float, plan: _Plan) -> Tensor:
    """dL/dS as a dense (B, B) matrix."""
    batch = scores.shape[0]
    if plan.dense:
        grad = torch.empty_like(scores)
        step = _chunk_rows(batch)
        for start in range(0, batch, step):
            stop = min(start + step, batch)
            _dense_rows(scores, start, stop, ids, margin, plan, grad[start:stop])
    else:
        grad = torch.zeros_like(scores)
    weight = scores.new_tensor(plan.hard_weight)
    grad.index_put_((plan.hard_rows, plan.hard_row_cols), weight, accumulate=True)
    grad.index_put_((plan.hard_col_rows, plan.hard_cols), weight, accumulate=True)
    grad.diagonal().add_(plan.diagonal)
    return grad


def _embedding_grads(
    img: Tensor, txt: Tensor, scores: Tensor | None, ids: Tensor | None, margin: float, plan: _Plan
) -> tuple[Tensor, Tensor]:
    """(dL/d img, dL/d txt) for S = img @ txt.T.

    With a mean-branch anchor dL/dS is dense and goes through two products; otherwise it has 3B
    non-zeros at most and the gradients are gathered rows, without any B x B work.
    """
    if plan.dense:
        assert scores is not None
        grad = _score_grad(scores, ids, margin, plan)
        return grad @ txt, grad.T @ img
    w = plan.hard_weight
    grad_img = plan.diagonal[:, None] * txt
    grad_txt = plan.diagonal[:, None] * img
    # hardest image anchor i with negative text k: dL/dS_ik = w
    grad_img.index_add_(0, plan.hard_rows, txt[plan.hard_row_cols], alpha=w)
    grad_txt.index_add_(0, plan.hard_row_cols, img[plan.hard_rows], alpha=w)
    # hardest text anchor j with negative image k: dL/dS_kj = w
    grad_img.index_add_(0, plan.hard_col_rows, txt[plan.hard_cols], alpha=w)
    grad_txt.index_add_(0, plan.hard_cols, img[plan.hard_col_rows], alpha=w)
    return grad_img, grad_txt


class _ScoresFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, ids: Tensor | None, opts: _Options):  # type: ignore[override]
        loss, stats, plan = _forward(scores, ids, opts)
        ctx.save_for_backward(scores)
        ctx.ids, ctx.opts, ctx.plan = ids, opts, plan
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_stats: Tensor):  # type: ignore[override]
        (scores,) = ctx.saved_tensors
        grad = _score_grad(scores, ctx.ids, ctx.opts.margin, ctx.plan)
        return grad * grad_loss, None, None


class _EmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, img: Tensor, txt: Tensor, ids: Tensor | None, opts: _Options):  # type: ignore[override]
        scores = img @ txt.T
        loss, stats, plan = _forward(scores, ids, opts)
        # Without a mean-branch anchor the backward pass is sparse and needs no scores.
        ctx.save_for_backward(img, txt, scores if plan.dense else None)
        ctx.ids, ctx.opts, ctx.plan = ids, opts, plan
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_stats: Tensor):  # type: ignore[override]
        img, txt, scores = ctx.saved_tensors
        grad_img, grad_txt = _embedding_grads(img, txt, scores, ctx.ids, ctx.opts.margin, ctx.plan)
        return grad_img * grad_loss, grad_txt * grad_loss, None, None


def _check_ids(ids: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    if ids is None:
        return None
    ids = torch.as_tensor(ids, device=device)
    if ids.shape != (batch,) or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise ValueError(
            f"ids must be a length-{batch} integer tensor (one id per pair); "
            f"got shape {tuple(ids.shape)}, dtype {ids.dtype}"
        )
    return ids


def _check_finite(name: str, value: Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        bad = (~torch.isfinite(value)).nonzero()[0].tolist()
        raise ValueError(f"{name} must be finite; found {value[tuple(bad)].item()} at index {bad}")


def _float(value: Tensor) -> Tensor:
    """Reduced-precision inputs (autocast) are scored in float32."""
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


def default_vanishing_threshold(epsilon: float) -> float:
    """The gap that counts as vanishing in ``stats``: epsilon itself, or 0.01 where epsilon is 0
    (hardest negatives) or infinite (all negatives) and so says nothing about the gap."""
    return epsilon if 0 < epsilon < math.inf else 0.01


class SelHNLoss(nn.Module):
    """Bidirectional triplet loss with selectively hard negatives (METHOD.md section 3).

    Each anchor uses its hardest hinge unless ``|S_pos - max S_neg| < epsilon``, in which case it
    uses the mean of its hinges. The loss is half the sum of the mean over image anchors and the
    mean over text anchors.

    Args:
        margin: triplet margin alpha.
        epsilon: gap below which an anchor falls back to the mean of its hinges.
        vanishing_threshold: gap below which an anchor counts as vanishing in ``stats``
            (defaults to ``epsilon``, or 0.01 where ``epsilon`` is 0 or infinite).

    After each call ``stats`` maps the names in ``STAT_NAMES`` to detached 0-d tensors.
    """

    def __init__(
        self, margin: float = 0.2, epsilon: float = 0.01, vanishing_threshold: float | None = None
    ) -> None:
        super().__init__()
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
        self.stats: dict[str, Tensor] = {}

    def extra_repr(self) -> str:
        return f"margin={self.margin}, epsilon={self.epsilon}"

    @property
    def _opts(self) -> _Options:
        return _Options(self.margin, self.epsilon, self.vanishing_threshold)

    def _record(self, stats: Tensor) -> None:
        self.stats = dict(zip(STAT_NAMES, stats.unbind(), strict=True))

    def forward(self, img_emb: Tensor, txt_emb: Tensor, ids: Tensor | None = None) -> Tensor:
        """Loss of a batch of matching pairs; scores are ``img_emb @ txt_emb.T``.

        Args:
            img_emb: (B, D) image embeddings; row i matches row i of ``txt_emb``.
            txt_emb: (B, D) text embeddings. The caller normalises both if cosine is wanted.
            ids: optional (B,) integers; pairs that share an id are not negatives of each other.

        Returns:
            0-d tensor.
        """
        if img_emb.dim() != 2 or txt_emb.dim() != 2 or img_emb.shape != txt_emb.shape:
            raise ValueError(
                "img_emb and txt_emb must both be (B, D) with the same shape; "
                f"got {tuple(img_emb.shape)} and {tuple(txt_emb.shape)}"
            )
        if img_emb.shape[0] < 2:
            raise ValueError(f"img_emb and txt_emb need B >= 2 pairs; got B = {img_emb.shape[0]}")
        _check_finite("img_emb", img_emb)
        _check_finite("txt_emb", txt_emb)
        ids = _check_ids(ids, img_emb.shape[0], img_emb.device)
        img_emb, txt_emb = _float(img_emb), _float(txt_emb)
        txt_emb = txt_emb.to(img_emb.dtype)
        loss, stats = _EmbeddingFunction.apply(img_emb, txt_emb, ids, self._opts)
        self._record(stats)
        return loss

    def from_scores(self, scores: Tensor, ids: Tensor | None = None) -> Tensor:
        """Loss of a (B, B) score matrix whose diagonal holds the matching pairs.

        Args:
            scores: (B, B) scores, e.g. from a cross-attention model; larger means closer.
            ids: optional (B,) integers; pairs that share an id are not negatives of each other.

        Returns:
            0-d tensor.
        """
        if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
            raise ValueError(f"scores must be a square (B, B) matrix; got {tuple(scores.shape)}")
        if scores.shape[0] < 2:
            raise ValueError(f"scores needs B >= 2 pairs; got {tuple(scores.shape)}")
        _check_finite("scores", scores)
        ids = _check_ids(ids, scores.shape[0], scores.device)
        loss, stats = _ScoresFunction.apply(_float(scores), ids, self._opts)
        self._record(stats)
        return loss


class HardestNegativeLoss(SelHNLoss):
    """VSE++ ("max of hinges"): SelHN with epsilon = 0, at the same scale."""

    def __init__(self, margin: float = 0.2, vanishing_threshold: float = 0.01) -> None:
        super().__init__(margin, 0.0, vanishing_threshold)


class AllNegativesLoss(SelHNLoss):
    """VSE0 ("sum of hinges"): SelHN with epsilon = inf, at the same scale."""

    def __init__(self, margin: float = 0.2, vanishing_threshold: float = 0.01) -> None:
        super().__init__(margin, math.inf, vanishing_threshold)


class InfoNCELoss(nn.Module):
    """Symmetric contrastive loss with a learnable temperature, as in CLIP.

    ``logits = exp(logit_scale) * scores``; the loss is the mean of the image->text and
    text->image cross-entropies with the diagonal as targets. ``logit_scale`` starts at
    log(1 / temperature) and is clamped to at most log(100) when used, as CLIP does.

    Args:
        temperature: initial temperature.
        learnable: whether ``logit_scale`` is a trainable parameter (the optimiser must see it).
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = True) -> None:
        super().__init__()
        if not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a positive number, got {temperature}")
        scale = torch.tensor(math.log(1 / temperature))
        if learnable:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        self.stats: dict[str, Tensor] = {}

    def forward(self, img_emb: Tensor, txt_emb: Tensor, ids: Tensor | None = None) -> Tensor:
        """Loss of (B, D) embeddings whose row i match; ``ids`` as in ``SelHNLoss``."""
        if img_emb.dim() != 2 or txt_emb.dim() != 2 or img_emb.shape != txt_emb.shape:
            raise ValueError(
                "img_emb and txt_emb must both be (B, D) with the same shape; "
                f"got {tuple(img_emb.shape)} and {tuple(txt_emb.shape)}"
            )
        return self.from_scores(_float(img_emb) @ _float(txt_emb).T, ids)

    def from_scores(self, scores: Tensor, ids: Tensor | None = None) -> Tensor:
        """Loss of a (B, B) score matrix whose diagonal holds the matching pairs."""
        if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
            raise ValueError(
                f"scores must be a square (B, B) matrix with B >= 2; got {tuple(scores.shape)}"
            )
        _check_finite("scores", scores)
        ids = _check_ids(ids, scores.shape[0], scores.device)
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * _float(scores)
        if ids is not None:  # other pairs of the same id are neither targets nor negatives
            same = (ids[:, None] == ids[None, :]) & ~torch.eye(
                len(ids), dtype=torch.bool, device=ids.device
            )
            logits = logits.masked_fill(same, -math.inf)
        target = torch.arange(scores.shape[0], device=scores.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        self.stats = {"temperature": (1 / scale).detach()}
        return loss
