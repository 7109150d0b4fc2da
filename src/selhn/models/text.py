"""Text encoder of RVSE++: word embeddings -> bidirectional GRU -> GPO -> L2 norm."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from selhn.models.pooling import GPO
from selhn.models.rnn import BiGRU


class BiGRUTextEncoder(nn.Module):
    """Embedding(V, word_dim) -> 1-layer BiGRU (directions averaged) -> GPO -> L2 norm."""

    def __init__(self, vocab_size: int, word_dim: int = 300, embed_size: int = 1024) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = BiGRU(word_dim, embed_size)
        self.pool = GPO()
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) token ids, (B,) lengths -> (B, embed_size) unit vectors."""
        out = self.rnn(self.embed(tokens), lengths)
        return F.normalize(self.pool(out, lengths), dim=-1)
