"""RVSE++: the residual region image encoder and the BiGRU text encoder in one joint space."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

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


class RVSEPP(nn.Module):
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

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return asdict(self.sizes)

    def encode_images(self, features: Tensor, lengths: Tensor) -> Tensor:
        """(B, K, img_dim) region features, (B,) region counts -> (B, embed_size) unit vectors."""
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
