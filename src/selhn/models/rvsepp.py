"""RVSE++: the residual region image encoder and the BiGRU text encoder in one joint space."""

from __future__ import annotations

from dataclasses import dataclass

from selhn.models.base import DualEncoder
from selhn.models.image import ResidualRegionEncoder
from selhn.models.text import BiGRUTextEncoder


@dataclass(frozen=True)
class RVSEPPSizes:
    """Architecture sizes; the defaults are the paper's (METHOD.md section 4)."""

    vocab_size: int
    img_dim: int = 2048
    embed_size: int = 1024
    word_dim: int = 300
    mlp_hidden: int = 512


class RVSEPP(DualEncoder):
    """Dual encoder; the score of an image and a caption is the dot product of their embeddings."""

    architecture = "rvsepp"

    def __init__(
        self,
        vocab_size: int,
        img_dim: int = 2048,
        embed_size: int = 1024,
        word_dim: int = 300,
        mlp_hidden: int = 512,
    ) -> None:
        super().__init__()
        self.sizes = RVSEPPSizes(vocab_size, img_dim, embed_size, word_dim, mlp_hidden)
        self.image_encoder = ResidualRegionEncoder(img_dim, embed_size, mlp_hidden)
        self.text_encoder = BiGRUTextEncoder(vocab_size, word_dim, embed_size)
