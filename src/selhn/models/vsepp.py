"""VSE++ on region features: the projected mean of the regions, and a GRU's last hidden state.

The second architecture of the plug-and-play comparison (``model.architecture=vsepp``): no
residual MLP, no GPO, a unidirectional GRU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from selhn.data.facts import DataFacts
from selhn.models.base import DualEncoder
from selhn.models.image import PooledLinearEncoder
from selhn.models.registry import register_model
from selhn.utils.extras import EXTRAS


@dataclass
class VSEPPSettings:
    """Everything VSEPP is built from."""

    architecture: str = "vsepp"  # the registered model: rvsepp | vsepp | probe
    vocab_size: int | None = None  # from the data: words of the vocabulary
    img_dim: int | None = 2048  # from the data: channels per region
    embed_size: int = 1024  # joint embedding dimension
    word_dim: int = 300  # word embedding dimension
    word_vectors: str | None = None  # "glove" initialises the words from GloVe 6B 50-d

    @property
    def has_tokenizer(self) -> bool:
        return False

    def extras(self, pretrained: bool = True) -> dict[str, tuple[str, ...]]:
        """The optional packages these settings need: extra -> its modules needed (GloVe only
        for a new model)."""
        return {"glove": EXTRAS["glove"]} if self.word_vectors == "glove" and pretrained else {}

    def fit(self, facts: DataFacts, given: set[str]) -> list[str]:
        """Nothing of these settings depends on the data."""
        return []

    def checks(self) -> list[tuple[bool, str, str]]:
        """(holds, key, what is expected) of every constraint on these settings."""
        return [
            (self.embed_size >= 1, "embed_size", ">= 1"),
            (self.word_dim >= 1, "word_dim", ">= 1"),
            (self.word_vectors in (None, "glove"), "word_vectors", "None or glove"),
        ]


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


@register_model
class VSEPP(DualEncoder):
    """Dual encoder with the RVSEPP interface (``encode_images``, ``encode_texts``)."""

    architecture = "vsepp"
    Settings = VSEPPSettings
    settings: VSEPPSettings

    def __init__(self, settings: VSEPPSettings) -> None:
        super().__init__(settings)
        s = self.settings
        if s.vocab_size is None or s.img_dim is None:
            raise ValueError("vocab_size and img_dim (region feature channels) are needed")
        self.image_encoder = PooledLinearEncoder(s.img_dim, s.embed_size)
        self.text_encoder = LastStateTextEncoder(s.vocab_size, s.word_dim, s.embed_size)
