"""benchmarks/backbone_tail.py: its image side is the backbone's last stage, learning or not."""

import torch
from backbone_tail import StageImageSide

from selhn.models.backbones import build_backbone
from selhn.models.stage import trunk_activations


def _images():
    torch.manual_seed(0)
    return torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)


def test_the_frozen_side_pools_the_backbones_grid():
    backbone = build_backbone()
    side = StageImageSide(backbone, learning=False).eval()
    images = _images()
    with torch.no_grad():
        pooled = backbone(images).mean((2, 3))  # what the probe's features pool
        expected = torch.nn.functional.normalize(side.fc(pooled), dim=-1)
        staged = side(trunk_activations(backbone, images))
    torch.testing.assert_close(staged, expected)
    assert not any(p.requires_grad for p in side.stage.parameters())


def test_the_learning_stage_gets_gradients_and_keeps_its_batchnorm_statistics():
    backbone = build_backbone()
    side = StageImageSide(backbone, learning=True).train()
    statistics = {k: v.clone() for k, v in side.state_dict().items() if "running" in k}
    side(trunk_activations(backbone, _images()).half()).sum().backward()  # as it caches them
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in side.stage.head.parameters())
    after = side.state_dict()
    assert statistics and all(torch.equal(after[k], v) for k, v in statistics.items())
