"""What every architecture shares: two encoders into one joint space, scored by dot product."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from torch import Tensor, nn


class DualEncoder(nn.Module):
    """Subclasses set ``architecture`` and, in ``__init__``, ``sizes`` (a dataclass of the
    constructor's arguments), ``image_encoder`` and ``text_encoder``; both encoders return
    L2-normalised embeddings."""

    architecture: str
    sizes: Any
    image_encoder: nn.Module
    text_encoder: nn.Module

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture."""
        return asdict(self.sizes)

    def encode_images(self, features: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, K, img_dim) region features, (B,) region counts -> (B, embed_size) unit vectors.

        An end-to-end model takes (B, 3, S, S) uint8 images instead, and optionally a (B, cells)
        bool mask of the grid cells to keep (default: all)."""
        if lengths is None:
            return self.image_encoder(features)
        return self.image_encoder(features, lengths)

    def encode_texts(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) token ids, (B,) lengths -> (B, embed_size) unit vectors."""
        return self.text_encoder(tokens, lengths)

    def forward(
        self, features: Tensor, feature_lengths: Tensor, tokens: Tensor, token_lengths: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Embeddings of a batch of images and of a batch of captions."""
        return self.encode_images(features, feature_lengths), self.encode_texts(
            tokens, token_lengths
        )
