"""Text encoder of RVSE++: word embeddings -> bidirectional GRU -> GPO -> L2 norm."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from selhn.models.pooling import GPO


class BiGRUTextEncoder(nn.Module):
    """Embedding(V, word_dim) -> 1-layer BiGRU (directions averaged) -> GPO -> L2 norm."""

    def __init__(self, vocab_size: int, word_dim: int = 300, embed_size: int = 1024) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = nn.GRU(word_dim, embed_size, num_layers=1, batch_first=True, bidirectional=True)
        self.pool = GPO()
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) token ids, (B,) lengths -> (B, embed_size) unit vectors."""
        packed = pack_padded_sequence(
            self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        half = out.shape[-1] // 2
        out = (out[..., :half] + out[..., half:]) / 2
        return F.normalize(self.pool(out, lengths), dim=-1)
