"""Image encoder of RVSE++: region features -> joint space -> residual MLP -> GPO -> L2 norm."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from selhn.models.pooling import GPO, length_mask


class ResidualRegionEncoder(nn.Module):
    """x = fc(f); x = x + MLP(x); GPO over regions; L2 norm (METHOD.md section 4).

    MLP = Linear(D -> D/2) -> BatchNorm1d -> ReLU -> Linear(D/2 -> D). The MLP runs on the valid
    regions only, so padding never enters the batch statistics.
    """

    def __init__(self, img_dim: int = 2048, embed_size: int = 1024, mlp_hidden: int = 512) -> None:
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)
        self.mlp = nn.Sequential(
            nn.Linear(embed_size, mlp_hidden),
            nn.BatchNorm1d(mlp_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(mlp_hidden, embed_size),
        )
        self.pool = GPO()
        bound = math.sqrt(6.0) / math.sqrt(img_dim + embed_size)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, regions: Tensor, lengths: Tensor) -> Tensor:
        """(B, K, img_dim) regions, (B,) valid counts -> (B, embed_size) unit vectors."""
        batch, slots, _ = regions.shape
        where = length_mask(lengths, slots).flatten().nonzero().squeeze(1)  # valid (b, k) slots
        valid = self.fc(regions.flatten(0, 1)[where])  # (n_valid, D)
        valid = valid + self.mlp(valid)
        feats = valid.new_zeros(batch * slots, valid.shape[1]).index_copy(0, where, valid)
        return F.normalize(self.pool(feats.view(batch, slots, -1), lengths), dim=-1)
