"""RVSE++: the residual region image encoder and the BiGRU text encoder in one joint space; the
text encoder may instead be a pretrained transformer (``text_encoder="transformer"``)."""

from __future__ import annotations

from dataclasses import dataclass

from selhn.models.base import DualEncoder
from selhn.models.image import ResidualRegionEncoder
from selhn.models.text import BiGRUTextEncoder
from selhn.models.transformer import TransformerTextEncoder


@dataclass(frozen=True)
class RVSEPPSizes:
    """Architecture sizes; the defaults are the paper's (METHOD.md section 4)."""

    vocab_size: int
    img_dim: int = 2048
    embed_size: int = 1024
    word_dim: int = 300
    mlp_hidden: int = 512
    text_encoder: str = "bigru"
    text_model: str | None = None  # transformer: a local Hugging Face model directory (None:
    # the packaged all-MiniLM-L6-v2)


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
        text_encoder: str = "bigru",
        text_model: str | None = None,
    ) -> None:
        super().__init__()
        self.sizes = RVSEPPSizes(
            vocab_size, img_dim, embed_size, word_dim, mlp_hidden, text_encoder, text_model
        )
        self.image_encoder = ResidualRegionEncoder(img_dim, embed_size, mlp_hidden)
        if text_encoder == "bigru":
            self.text_encoder = BiGRUTextEncoder(vocab_size, word_dim, embed_size)
        elif text_encoder == "transformer":
            self.text_encoder = TransformerTextEncoder(text_model, embed_size)
        else:
            raise ValueError(f"text_encoder must be bigru or transformer; got {text_encoder!r}")
