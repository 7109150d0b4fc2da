"""A backbone cut in two: a frozen trunk whose activations ``selhn features`` stores once, and the
last stage, which a model trains on them (a step costs the stage, not the whole backbone).

EfficientNet-Lite0 is cut before block 11: the trunk gives 112 channels at stride 16 (14 x 14 at
224 px); the last stage, blocks 11-15 and the 1x1 head convolution, gives the backbone's grid
(1280 channels at stride 32). Other backbones have no cut.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import Tensor, nn

from selhn.models.backbones import DEFAULT_BACKBONE, GridBackbone, build_backbone

# backbone -> (its first block of the last stage, the trunk's channels)
CUTS = {DEFAULT_BACKBONE: (11, 112)}


def has_cut(backbone: str) -> bool:
    """Whether this backbone's last stage can learn on stored trunk activations."""
    return backbone in CUTS


@functools.lru_cache
def stage_shapes(name: str, image_size: int) -> tuple[tuple[int, int, int], int]:
    """((C, s, s) trunk activations of one image, grid cells) of backbone ``name`` at this
    square input size (probed once on an untrained copy)."""
    backbone = build_backbone(name, pretrained=False)
    trunk = trunk_activations(backbone, torch.zeros(1, 3, image_size, image_size))
    grid = finish_stage(backbone, trunk)
    return (trunk.shape[1], trunk.shape[2], trunk.shape[3]), grid.shape[2] * grid.shape[3]


@torch.no_grad()
def trunk_activations(backbone: GridBackbone, images: Tensor) -> Tensor:
    """(B, C, s, s) activations entering the last stage, of (B, 3, S, S) 0..255 images."""
    first, _ = CUTS[backbone.name]
    net = backbone.trunk.net
    x = (images.float() - backbone.mean) / backbone.std
    x = net._swish(net._bn0(net._conv_stem(x)))
    for block in net._blocks[:first]:
        x = block(x)
    return x


@torch.no_grad()
def finish_stage(backbone: GridBackbone, activations: Tensor) -> Tensor:
    """The backbone's (B, channels, h, w) grid of its ``trunk_activations``."""
    first, _ = CUTS[backbone.name]
    net = backbone.trunk.net
    x = activations
    for block in net._blocks[first:]:
        x = block(x)
    return net._swish(net._bn1(net._conv_head(x)))


class LastStage(nn.Module):
    """Trunk activations -> the backbone's last blocks and head -> its (B, 1280, h, w) grid.

    Plays the backbone of ``GridImageEncoder``: ``channels``, ``load_pretrained``. It runs in the
    channels-last memory format: a forward and backward pass at batch 128 took 1.69x less time so
    on this project's CPU (``benchmarks/stage_step.py``)."""

    def __init__(self, backbone: GridBackbone) -> None:
        super().__init__()
        first, _ = CUTS[backbone.name]
        net = backbone.trunk.net
        self.name, self.channels = backbone.name, backbone.channels
        self.blocks = copy.deepcopy(net._blocks[first:])
        self.head = nn.Sequential(
            copy.deepcopy(net._conv_head), copy.deepcopy(net._bn1), copy.deepcopy(net._swish)
        )
        self.to(memory_format=torch.channels_last)

    def forward(self, activations: Tensor) -> Tensor:
        x = activations.float().contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def load_pretrained(self, weights: str | Path | None = None) -> None:
        """The pretrained weights of the backbone's last stage."""
        self.load_state_dict(LastStage(build_backbone(self.name, weights)).state_dict())


def build_stage(name: str = DEFAULT_BACKBONE) -> LastStage:
    """The untrained last stage of backbone ``name`` (ValueError if it has no cut)."""
    if not has_cut(name):
        raise ValueError(f"backbone {name!r} has no last stage to learn; expected one of {[*CUTS]}")
    return LastStage(build_backbone(name, pretrained=False))
