"""benchmarks/backbone_tail.py: its last stage on cached trunk activations is the backbone's."""

import torch
from backbone_tail import StageImageSide, trunk

from selhn.models.backbones import build_backbone


def _images():
    torch.manual_seed(0)
    return torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)


def test_the_frozen_last_stage_on_trunk_activations_gives_the_grid_of_selhn_features():
    backbone = build_backbone()
    images = _images()
    side = StageImageSide(backbone.trunk.net, learning=False).eval()
    with torch.no_grad():
        grid = backbone(images)  # (2, 1280, 7, 7): what selhn features stores
        staged = side.grid(trunk(backbone, images))
    assert staged.shape == grid.shape == (2, 1280, 7, 7)
    # the trunk activations are cached in float16: equal up to that precision
    assert (staged - grid).abs().max() <= 1e-3 * grid.abs().max()
    assert not any(p.requires_grad for p in side.stage_parameters())


def test_the_learning_stage_gets_gradients_and_keeps_its_batchnorm_statistics():
    backbone = build_backbone()
    side = StageImageSide(backbone.trunk.net, learning=True).train()
    acts = trunk(backbone, _images())
    statistics = {k: v.clone() for k, v in side.state_dict().items() if "running" in k}
    side(acts).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in side.head.parameters())
    after = side.state_dict()
    assert statistics and all(torch.equal(after[k], v) for k, v in statistics.items())
