"""The captions an index holds, embedded by its model and searched exactly (their number is that
of the captioned images, small beside the images a faiss index is for)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selhn.inference.encoder import Encoder


@dataclass(frozen=True)
class CaptionHit:
    caption: str
    row: int  # the index row of the image it describes
    score: float


class CaptionIndex:
    """Every caption of an index (``captions[row]``: those of image ``row``), embedded once."""

    def __init__(self, captions: list[list[str]], encoder: Encoder) -> None:
        self.texts = [text for texts in captions for text in texts]
        self.rows = [row for row, texts in enumerate(captions) for _ in texts]
        dim = encoder.embed_size
        self.embeddings = encoder.encode_texts(self.texts) if self.texts else torch.empty(0, dim)

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, query: torch.Tensor, k: int) -> list[CaptionHit]:
        """The ``k`` captions of highest inner product with the (D,) ``query``, best first (the
        earlier caption first among equal scores)."""
        scores = self.embeddings @ query.float()
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        return [CaptionHit(self.texts[i], self.rows[i], float(scores[i])) for i in order.tolist()]
