"""Generalised pooling (GPO, VSE-infinity): a learned weighting of each channel's sorted values."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from selhn.models.rnn import BiGRU


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, max_len) bool mask, True at the first ``lengths[b]`` positions of row b."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(items: Tensor, lengths: Tensor) -> Tensor:
    """(B, K, D) padded items, (B,) valid counts -> (B, D) mean of each row's valid items."""
    mask = length_mask(lengths, items.shape[1])[..., None]
    return (items * mask).sum(dim=1) / lengths[:, None]


def positional_encoding(length: int, dim: int) -> Tensor:
    """(length, dim) sinusoidal encodings of positions 0..length-1."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(length, dim)
    enc[:, 0::2] = torch.sin(position * freq)
    enc[:, 1::2] = torch.cos(position * freq)
    return enc


class GPO(nn.Module):
    """Pools a padded set of n items into one vector: sum_k w_k * (k-th largest value per channel).

    The weights w_k come from a bidirectional GRU over the positional encodings of 0..n-1 (the two
    directions averaged), a linear score and a softmax at temperature 0.1, so they depend only on
    the item's own n, never on the padding of its batch.
    """

    def __init__(self, pe_dim: int = 32, hidden: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        self.pe_dim = pe_dim
        self.temperature = temperature
        self.gru = BiGRU(pe_dim, hidden)
        self.linear = nn.Linear(hidden, 1, bias=False)

    def weights(self, lengths: Tensor, max_len: int) -> Tensor:
        """(B, max_len, 1) pooling weights, zero past each length."""
        mask = length_mask(lengths, max_len)
        enc = positional_encoding(max_len, self.pe_dim).to(self.linear.weight)
        enc = enc.expand(len(lengths), -1, -1) * mask[..., None]
        out = self.gru(enc, lengths)
        scores = self.linear(out)  # (B, max_len, 1)
        scores = scores.masked_fill(~mask[..., None], -math.inf)
        return torch.softmax(scores / self.temperature, dim=1)

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Pool (B, N, D) features whose row b holds ``lengths[b]`` valid items into (B, D)."""
        max_len = int(lengths.max())
        features = features[:, :max_len]
        mask = length_mask(lengths, max_len)[..., None]
        ranked = features.masked_fill(~mask, -math.inf).sort(dim=1, descending=True).values
        ranked = ranked.masked_fill(~mask, 0)
        return (ranked * self.weights(lengths, max_len)).sum(dim=1)
