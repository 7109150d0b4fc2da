"""SelHN and the two triplet losses it interpolates: hardest negative (VSE++), all negatives (VSE0).

They share one implementation and differ only in ``epsilon``, the gap below which an anchor falls
back from its hardest hinge to the mean of its hinges (docs/method.md):

    epsilon = 0    -> every anchor uses its hardest negative (VSE++)
    epsilon = inf  -> every anchor uses the mean over its negatives (VSE0)
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from selhn.losses.hinges import STAT_NAMES, EmbeddingHingeLoss, HingeOptions, ScoresHingeLoss
from selhn.losses.inputs import (
    check_reduction,
    prepare_embeddings,
    prepare_scores,
    refuse_gathered_scores,
    scoring_precision,
)

IntVector = Tensor | list[int] | None


def default_vanishing_threshold(epsilon: float) -> float:
    """The gap that counts as vanishing in ``stats``: epsilon itself, or 0.01 where epsilon is 0
    (hardest negatives) or infinite (all negatives) and so says nothing about the gap."""
    return epsilon if 0 < epsilon < math.inf else 0.01


class SelHNLoss(nn.Module):
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
        reduction: ``"mean"`` (a 0-d loss) or ``"none"``: a (2, P) tensor for the P pairs, row 0
            the image-anchor term and row 1 the text-anchor term of each pair; its mean is the
            ``"mean"`` loss.
        gather_distributed: all-gather the embeddings (and ids) of every process of the default
            process group, with gradients, so each rank mines negatives over the global batch;
            every rank then computes the loss of the global batch (pairs in rank order). A no-op
            without a process group.
        check_inputs: raise a ValueError on non-finite inputs and on an invalid
            ``caption_to_image``. The check reads values back to the host, which is free on the
            CPU but waits for a GPU, so the default (None) checks CPU inputs only. Unchecked
            non-finite inputs give a non-finite loss.

    After each call ``stats`` maps the names in ``STAT_NAMES`` to detached 0-d tensors.
    """

    def __init__(
        self,
        margin: float = 0.2,
        epsilon: float = 0.01,
        vanishing_threshold: float | None = None,
        *,
        reduction: str = "mean",
        gather_distributed: bool = False,
        check_inputs: bool | None = None,
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
        self.reduction = check_reduction(reduction)
        self.gather_distributed = gather_distributed
        self.check_inputs = check_inputs
        self.stats: dict[str, Tensor] = {}

    def extra_repr(self) -> str:
        return f"margin={self.margin}, epsilon={self.epsilon}, reduction={self.reduction!r}"

    @property
    def _opts(self) -> HingeOptions:
        return HingeOptions(self.margin, self.epsilon, self.vanishing_threshold)

    def _finish(self, losses: Tensor, stats: Tensor) -> Tensor:
        self.stats = dict(zip(STAT_NAMES, stats.unbind(), strict=True))
        return losses.mean() if self.reduction == "mean" else losses

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        ids: IntVector = None,
        caption_to_image: IntVector = None,
    ) -> Tensor:
        """Loss of a batch of matching pairs; scores are ``img_emb @ txt_emb.T``.

        Args:
            img_emb: (B, D) image embeddings, row i matching row i of ``txt_emb``; or, with
                ``caption_to_image``, (N, D): each image once.
            txt_emb: (B, D) (or (P, D)) text embeddings. The caller normalises both if cosine
                is wanted.
            ids: optional (P,) integers; pairs that share an id are not negatives of each other.
            caption_to_image: optional (P,) image row of each caption. The loss equals that of
                ``img_emb[caption_to_image]`` paired row by row with ``txt_emb`` and
                ``ids=caption_to_image`` (or ``ids`` where given), in value and gradients, from
                an (N, P) score matrix. Every image row needs a caption.

        Returns:
            0-d tensor, or (2, P) with ``reduction="none"``.
        """
        img_emb, txt_emb, pairs = prepare_embeddings(
            img_emb, txt_emb, ids, caption_to_image, self.check_inputs, self.gather_distributed
        )
        with scoring_precision(img_emb.device):
            losses, stats = EmbeddingHingeLoss.apply(
                img_emb, txt_emb, pairs.rows, pairs.groups, self._opts
            )
            return self._finish(losses, stats)

    def from_scores(
        self, scores: Tensor, ids: IntVector = None, caption_to_image: IntVector = None
    ) -> Tensor:
        """Loss of a score matrix whose diagonal holds the matching pairs.

        Args:
            scores: (B, B) scores, e.g. from a cross-attention model; larger means closer. With
                ``caption_to_image``, (N images, P captions).
            ids: optional (P,) integers; pairs that share an id are not negatives of each other.
            caption_to_image: optional (P,) image row of each caption, as in ``forward``.

        Returns:
            0-d tensor, or (2, P) with ``reduction="none"``.
        """
        refuse_gathered_scores(self.gather_distributed)
        scores, pairs = prepare_scores(scores, ids, caption_to_image, self.check_inputs)
        with scoring_precision(scores.device):
            losses, stats = ScoresHingeLoss.apply(scores, pairs.rows, pairs.groups, self._opts)
            return self._finish(losses, stats)


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
