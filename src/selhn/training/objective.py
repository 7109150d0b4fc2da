"""The model and its losses as one module: what DistributedDataParallel wraps and what the
optimiser and gradient clipping see, so a learned loss temperature is a parameter like any
other (averaged over ranks, clipped, saved in the training state)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from selhn.data.batch import Batch
from selhn.data.duplicates import SplitDuplicates
from selhn.losses import (
    AllNegativesLoss,
    Duplicates,
    HardestNegativeLoss,
    InfoNCELoss,
    SelectiveInfoNCELoss,
    SelHNLoss,
    default_vanishing_threshold,
)
from selhn.models import DualEncoder


def make_loss(
    name: str,
    margin: float = 0.2,
    epsilon: float = 0.01,
    temperature: float = 0.07,
    gather: bool = False,
    hardness: float = 0.5,
) -> nn.Module:
    """The loss named by ``loss.name``; the triplet losses measure vanishing at ``epsilon``.
    With ``gather`` the loss mines over the batches of every rank of the process group."""
    threshold = default_vanishing_threshold(epsilon)
    if name == "selnce":
        return SelectiveInfoNCELoss(temperature, epsilon, hardness, gather_distributed=gather)
    if name == "selhn":
        return SelHNLoss(margin, epsilon, gather_distributed=gather)
    if name == "hardest":
        return HardestNegativeLoss(margin, threshold, gather_distributed=gather)
    if name == "all":
        return AllNegativesLoss(margin, threshold, gather_distributed=gather)
    if name == "infonce":
        return InfoNCELoss(temperature, gather_distributed=gather)
    raise ValueError(f"loss.name must be selhn, hardest, all, infonce or selnce; got {name!r}")


class TrainingObjective(nn.Module):
    """``forward(batch)`` -> (loss, the loss's diagnostics) of the objective in use.

    Args:
        model: the model, or its ``torch.compile`` wrapper.
        losses: the objectives by name; the first is in use until ``use`` picks another. The
            parameters of a loss not in use do not learn.
        same_image: captions of one image in a batch are not negatives of each other.
        duplicates: the keys of the training split's images and captions, whose duplicates in
            a batch are not negatives either (InfoNCE's targets); None: no duplicates.
        amp: the autocast dtype of the model's forward pass, or None.
    """

    def __init__(
        self,
        model: nn.Module,
        losses: dict[str, nn.Module],
        same_image: bool = False,
        duplicates: SplitDuplicates | None = None,
        amp: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.losses = nn.ModuleDict(losses)
        self.same_image = same_image or duplicates is not None
        self.amp = amp
        self.objective = next(iter(losses))
        # buffers that follow the module to its device, neither saved nor synchronised by DDP
        names = ("image_keys", "caption_keys", "image_captions")
        keys = duplicates.tensors() if duplicates is not None else (None, None, None)
        for name, value in zip(names, keys, strict=True):
            self.register_buffer(name, value, persistent=False)
        self._ddp_params_and_buffers_to_ignore = list(names)

    def use(self, name: str) -> bool:
        """Make ``name`` the objective; True if the set of learning parameters changed."""
        changed = False
        for key, loss in self.losses.items():
            for param in loss.parameters():
                changed |= param.requires_grad != (key == name)
                param.requires_grad_(key == name)
        self.objective = name
        return changed

    def param_groups(
        self,
        model: DualEncoder,
        pretrained_lr_scale: float,
        backbone_lr_scale: float,
        stage_lr_scale: float,
    ):
        """AdamW groups: the model's, then the losses' parameters without weight decay."""
        groups = model.param_groups(pretrained_lr_scale, backbone_lr_scale, stage_lr_scale)
        loss_params = list(self.losses.parameters())
        if loss_params:
            groups.append({"params": loss_params, "lr_scale": 1.0, "weight_decay": 0.0})
        return groups

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        autocast: Any = contextlib.nullcontext()
        if self.amp is not None:
            autocast = torch.autocast(batch.tokens.device.type, dtype=self.amp)
        with autocast:
            img_emb, txt_emb = self.model(batch.image_input, batch.tokens, batch.token_lengths)
        ids = batch.image_ids if self.same_image else None
        loss_fn = self.losses[self.objective]
        loss = loss_fn(img_emb, txt_emb, ids, batch.caption_to_image, self._duplicates(batch))
        return loss, loss_fn.stats

    def _duplicates(self, batch: Batch) -> Duplicates | None:
        """The keys of the batch's image rows and captions."""
        if self.image_keys is None:
            return None
        if batch.caption_ids is None:
            raise ValueError("false negatives need each caption's index (Batch.caption_ids)")
        rows = batch.image_rows()
        return Duplicates(
            self.image_keys[rows], self.caption_keys[batch.caption_ids], self.image_captions[rows]
        )
