"""Image encoders of RVSE++: region features -> joint space -> residual MLP -> GPO -> L2 norm (or
the mean of the regions -> joint space -> L2 norm), and either over the grid cells of a pretrained
backbone (or of its last stage), which learns with them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selhn.models.backbones import GridBackbone
from selhn.models.class_prior import ClassPrior, with_prior
from selhn.models.pooling import GPO, length_mask, masked_mean
from selhn.models.stage import LastStage


class ResidualRegionEncoder(nn.Module):
    """x = fc(f); x = x + MLP(x); GPO over regions; L2 norm (docs/method.md).

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

    def forward(self, regions: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, K, img_dim) regions, (B,) valid counts (default: all K) -> (B, embed_size) unit
        vectors."""
        batch, slots, _ = regions.shape
        if lengths is None:
            lengths = regions.new_full((batch,), slots, dtype=torch.long)
        where = length_mask(lengths, slots).flatten().nonzero().squeeze(1)  # valid (b, k) slots
        valid = self.fc(regions.flatten(0, 1)[where])  # (n_valid, D)
        valid = valid + self.mlp(valid)
        feats = valid.new_zeros(batch * slots, valid.shape[1]).index_copy(0, where, valid)
        return F.normalize(self.pool(feats.view(batch, slots, -1), lengths), dim=-1)


class PooledLinearEncoder(nn.Module):
    """Mean of the valid regions -> Linear -> L2 norm: VSE++'s image encoder (the mean of the
    projected regions, computed in the cheaper order) and the probe's."""

    def __init__(self, img_dim: int, embed_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)

    def forward(self, regions: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, K, img_dim) regions, (B,) valid counts (default: all K) -> (B, embed_size)."""
        if lengths is None:
            return F.normalize(self.fc(regions.mean(dim=1)), dim=-1)
        return F.normalize(self.fc(masked_mean(regions, lengths)), dim=-1)


IMAGE_HEADS = ("residual", "mean")


class GridImageEncoder(nn.Module):
    """Images (or trunk activations) -> a pretrained backbone's (or its last stage's) grid of
    cells -> ``ResidualRegionEncoder`` (``head="residual"``) or ``PooledLinearEncoder``
    (``"mean"``) over the cells.

    End-to-end training (VSE-infinity's grid path): the cells play the regions. The backbone's
    BatchNorm statistics stay frozen (it is always in eval mode); its weights learn only while
    ``backbone_trainable`` is set, and otherwise it runs without autograd.

    With a ``prior`` (``class_prior``), the head's embedding is followed by the prior of the
    mean of the kept cells, weighted by ``prior_weight`` (``class_prior.with_prior``).
    """

    def __init__(
        self,
        backbone: GridBackbone | LastStage,
        embed_size: int = 1024,
        mlp_hidden: int = 512,
        head: str = "residual",
        prior: ClassPrior | None = None,
        prior_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if head not in IMAGE_HEADS:
            raise ValueError(f"image head must be one of {IMAGE_HEADS}; got {head!r}")
        self.backbone = backbone
        self.prior, self.prior_weight = prior, prior_weight
        self.cell_encoder: ResidualRegionEncoder | PooledLinearEncoder
        if head == "residual":
            self.cell_encoder = ResidualRegionEncoder(backbone.channels, embed_size, mlp_hidden)
        else:
            self.cell_encoder = PooledLinearEncoder(backbone.channels, embed_size)
        self.set_backbone_trainable(False)

    @property
    def backbone_trainable(self) -> bool:
        return next(self.backbone.parameters()).requires_grad

    def set_backbone_trainable(self, trainable: bool) -> None:
        self.backbone.requires_grad_(trainable)

    def train(self, mode: bool = True) -> GridImageEncoder:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: Tensor, cell_mask: Tensor | None = None) -> Tensor:
        """(B, 3, S, S) 0..255 images (or the last stage's activations) -> (B, embed_size) unit
        vectors.

        ``cell_mask``: (B, cells) bool, the grid cells each image keeps (training augmentation);
        None keeps them all.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trainable):
            grid = self.backbone(images).flatten(2).transpose(1, 2)  # (B, cells, C)
        batch, cells, _ = grid.shape
        if cell_mask is None:
            return self._encode_cells(grid, grid.new_full((batch,), cells, dtype=torch.long))
        if cell_mask.shape != (batch, cells):
            raise ValueError(
                f"cell_mask must be (images, cells) = ({batch}, {cells}) for this backbone on "
                f"inputs of side {images.shape[-1]}; got {tuple(cell_mask.shape)}"
            )
        # kept cells first (GPO pools a set, so their order does not matter)
        order = torch.argsort((~cell_mask).to(torch.uint8), dim=1, stable=True)
        kept = grid.gather(1, order.unsqueeze(2).expand_as(grid))
        return self._encode_cells(kept, cell_mask.sum(1))

    def _encode_cells(self, cells: Tensor, lengths: Tensor) -> Tensor:
        embedding = self.cell_encoder(cells, lengths)
        if self.prior is None:
            return embedding
        return with_prior(embedding, self.prior(masked_mean(cells, lengths)), self.prior_weight)
