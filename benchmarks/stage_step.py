"""What the memory format costs the backbone's last stage: a forward and backward pass of
EfficientNet-Lite0's last stage (``selhn.models.stage.LastStage``) on trunk activations, in the
channels-last format it runs in, against the same stage and activations in the default format.

Activations are random, (``--batch``, 112, 14, 14) as at 224 px; medians after warm-up.

Usage: python benchmarks/stage_step.py [--device cpu|cuda] [--batch 128] [--steps 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import median_seconds

from selhn.models.backbones import build_backbone
from selhn.models.stage import LastStage


class ContiguousStage(LastStage):
    """The stage in the default (contiguous) memory format: the baseline."""

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        x = activations.float().contiguous()
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = build_backbone()
    activations = torch.randn(args.batch, 112, 14, 14, device=device)
    seconds = {}
    for name, stage in [
        ("contiguous", ContiguousStage(backbone).to(memory_format=torch.contiguous_format)),
        ("channels-last", LastStage(backbone)),
    ]:
        stage = stage.to(device).eval()
        seconds[name] = median_seconds(
            lambda stage=stage: stage(activations).mean().backward(), device, args.steps, 2
        )
        print(f"{name:14s} {seconds[name] * 1000:8.1f} ms per forward and backward pass")
    print(f"channels-last is {seconds['contiguous'] / seconds['channels-last']:.2f}x as fast")


if __name__ == "__main__":
    main()
