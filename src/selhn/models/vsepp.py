"""VSE++ on region features: mean-pooled projected regions, and a GRU's last hidden state.

The second architecture of the plug-and-play comparison (``model.architecture=vsepp``): no
residual MLP, no GPO, a unidirectional GRU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from selhn.models.base import DualEncoder
from selhn.models.pooling import length_mask


@dataclass(frozen=True)
class VSEPPSizes:
    vocab_size: int
    img_dim: int = 2048
    embed_size: int = 1024
    word_dim: int = 300


class MeanRegionEncoder(nn.Module):
    """Linear projection of every region, mean over the valid ones, L2 norm."""

    def __init__(self, img_dim: int, embed_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)

    def forward(self, regions: Tensor, lengths: Tensor) -> Tensor:
        mask = length_mask(lengths, regions.shape[1])[..., None]
        mean = (self.fc(regions) * mask).sum(dim=1) / lengths[:, None]
        return F.normalize(mean, dim=-1)


class LastStateTextEncoder(nn.Module):
    """Embedding -> 1-layer GRU -> hidden state after the last token -> L2 norm."""

    def __init__(self, vocab_size: int, word_dim: int, embed_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = nn.GRU(word_dim, embed_size, batch_first=True)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(
            self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, last = self.rnn(packed)  # (1, B, H), in the input's order
        return F.normalize(last[0], dim=-1)


class VSEPP(DualEncoder):
    """Dual encoder with the RVSEPP interface (``encode_images``, ``encode_texts``)."""

    architecture = "vsepp"

    def __init__(
        self, vocab_size: int, img_dim: int = 2048, embed_size: int = 1024, word_dim: int = 300
    ) -> None:
        super().__init__()
        self.sizes = VSEPPSizes(vocab_size, img_dim, embed_size, word_dim)
        self.image_encoder = MeanRegionEncoder(img_dim, embed_size)
        self.text_encoder = LastStateTextEncoder(vocab_size, word_dim, embed_size)
