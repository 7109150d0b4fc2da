"""What every loss shares: its inputs (embeddings or a score matrix, checked, in float32, gathered
if asked), its options and its reduction. A loss only computes the per-pair terms."""

from __future__ import annotations

from torch import Tensor, nn

from selhn.losses.inputs import (
    Duplicates,
    PairIndex,
    check_reduction,
    prepare_embeddings,
    prepare_scores,
    refuse_gathered_scores,
    scoring_precision,
)

IntVector = Tensor | list[int] | None


class PairLoss(nn.Module):
    """A loss over the P matching pairs of a batch.

    Subclasses implement ``score_terms`` (and may implement ``embedding_terms`` where the
    embeddings allow a cheaper computation): the (2, P) per-pair terms, row 0 the image-anchor
    term and row 1 the text-anchor term of each pair, with ``stats`` set.

    Args:
        reduction: ``"mean"`` (a 0-d loss) or ``"none"``: the (2, P) terms, whose mean is the
            ``"mean"`` loss.
        gather_distributed: all-gather the embeddings (and ids, ``caption_to_image``) of every
            process of the default process group, with gradients, so each rank mines negatives
            over the global batch; every rank then computes the loss of the global batch (pairs
            in rank order). A no-op without a process group.
        check_inputs: raise a ValueError on non-finite inputs and on an invalid
            ``caption_to_image``. The check reads values back to the host, which is free on the
            CPU but waits for a GPU, so the default (None) checks CPU inputs only. Unchecked
            non-finite inputs give a non-finite loss.
    """

    def __init__(
        self,
        *,
        reduction: str = "mean",
        gather_distributed: bool = False,
        check_inputs: bool | None = None,
    ) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.gather_distributed = gather_distributed
        self.check_inputs = check_inputs
        self.stats: dict[str, Tensor] = {}

    def forward(
        self,
        img_emb: Tensor,
        txt_emb: Tensor,
        ids: IntVector = None,
        caption_to_image: IntVector = None,
        duplicates: Duplicates | None = None,
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
            duplicates: optional ``Duplicates``: captions that also describe another image of
                the batch (false negatives): never negatives; InfoNCE counts them as positives.
                Gathered with the embeddings under ``gather_distributed``.

        Returns:
            0-d tensor, or (2, P) with ``reduction="none"``.
        """
        img_emb, txt_emb, pairs = prepare_embeddings(
            img_emb, txt_emb, ids, caption_to_image, self.check_inputs, self.gather_distributed,
            duplicates,
        )  # fmt: skip
        with scoring_precision(img_emb.device):
            return self._reduce(self.embedding_terms(img_emb, txt_emb, pairs))

    def from_scores(
        self,
        scores: Tensor,
        ids: IntVector = None,
        caption_to_image: IntVector = None,
        duplicates: Duplicates | None = None,
    ) -> Tensor:
        """Loss of a score matrix whose diagonal holds the matching pairs.

        Args:
            scores: (B, B) scores, e.g. from a cross-attention model; larger means closer. With
                ``caption_to_image``, (N images, P captions).
            ids: optional (P,) integers; pairs that share an id are not negatives of each other.
            caption_to_image: optional (P,) image row of each caption, as in ``forward``.
            duplicates: optional ``Duplicates``, as in ``forward``.

        Returns:
            0-d tensor, or (2, P) with ``reduction="none"``.
        """
        refuse_gathered_scores(self.gather_distributed)
        scores, pairs = prepare_scores(scores, ids, caption_to_image, self.check_inputs, duplicates)
        with scoring_precision(scores.device):
            return self._reduce(self.score_terms(scores, pairs))

    def embedding_terms(self, img_emb: Tensor, txt_emb: Tensor, pairs: PairIndex) -> Tensor:
        """(2, P) terms of S = img_emb @ txt_emb.T."""
        return self.score_terms(img_emb @ txt_emb.T, pairs)

    def score_terms(self, scores: Tensor, pairs: PairIndex) -> Tensor:
        """(2, P) terms of an (N, P) score matrix."""
        raise NotImplementedError

    def _reduce(self, terms: Tensor) -> Tensor:
        return terms.mean() if self.reduction == "mean" else terms
