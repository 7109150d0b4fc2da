"""RVSE++: the residual region image encoder and the BiGRU text encoder in one joint space; the
text encoder may instead be a pretrained transformer (``text_encoder="transformer"``), and the
regions the grid cells of a pretrained CNN trained end to end from images (``backbone=NAME``)."""

from __future__ import annotations

from dataclasses import dataclass

from selhn.models.backbones import build_backbone
from selhn.models.base import DualEncoder
from selhn.models.image import GridImageEncoder, ResidualRegionEncoder
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
    backbone: str | None = None  # end to end from images: a backbone name (img_dim: its channels)
    image_size: int = 224  # backbone: the square size images are resized to


class RVSEPP(DualEncoder):
    """Dual encoder; the score of an image and a caption is the dot product of their embeddings."""

    architecture = "rvsepp"

    def __init__(
        self,
        vocab_size: int,
        img_dim: int | None = 2048,
        embed_size: int = 1024,
        word_dim: int = 300,
        mlp_hidden: int = 512,
        text_encoder: str = "bigru",
        text_model: str | None = None,
        backbone: str | None = None,
        image_size: int = 224,
    ) -> None:
        """``backbone``: images in, through this backbone's grid (untrained here: see
        ``GridBackbone.load_pretrained``); ``img_dim`` must then be None or its channels."""
        super().__init__()
        self.image_encoder: GridImageEncoder | ResidualRegionEncoder
        if backbone is not None:
            grid = build_backbone(backbone, pretrained=False)
            if img_dim not in (None, grid.channels):
                raise ValueError(f"backbone {backbone} has {grid.channels} channels, not {img_dim}")
            img_dim = grid.channels
            self.image_encoder = GridImageEncoder(grid, embed_size, mlp_hidden)
        elif img_dim is None:
            raise ValueError("img_dim (region feature channels) is needed without a backbone")
        else:
            self.image_encoder = ResidualRegionEncoder(img_dim, embed_size, mlp_hidden)
        self.sizes = RVSEPPSizes(
            vocab_size, img_dim, embed_size, word_dim, mlp_hidden, text_encoder, text_model,
            backbone, image_size,
        )  # fmt: skip
        if text_encoder == "bigru":
            self.text_encoder = BiGRUTextEncoder(vocab_size, word_dim, embed_size)
        elif text_encoder == "transformer":
            self.text_encoder = TransformerTextEncoder(text_model, embed_size)
        else:
            raise ValueError(f"text_encoder must be bigru or transformer; got {text_encoder!r}")
