"""What training end to end costs: one training step from pixels with the backbone frozen and
learning, against a step on the same grid precomputed as features (``selhn features``).

Every step is the trainer's own (``selhn.trainer.train_step``: forward, SelHN loss, backward,
clipping, AdamW) on RVSE++ with EfficientNet-Lite0 at ``--image-size`` (224 px: 7 x 7 cells x
1280) and the BiGRU; images are random pixels, captions ``train_step.make_batch``'s. Medians after
warm-up, the device synchronised.

Usage: python benchmarks/backbone_step.py [--device cpu|cuda] [--batch 64] [--image-size 224]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_bench import median_seconds
from train_step import make_batch

from selhn import SelHNLoss
from selhn.data.batch import Batch
from selhn.models import RVSEPP
from selhn.models.backbones import grid_shape
from selhn.objective import TrainingObjective
from selhn.trainer import train_step


def step_seconds(model: RVSEPP, batch: Batch, device: torch.device, steps: int) -> float:
    objective = TrainingObjective(model.to(device).train(), {"selhn": SelHNLoss()})
    optimizer = torch.optim.AdamW(objective.param_groups(model, 0.1, 0.01, 2.0), lr=5e-4)
    batch = batch.to(device)
    return median_seconds(
        lambda: train_step(objective, objective, model, optimizer, batch, 2.0), device, steps, 2
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--vocab", type=int, default=8500)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = RVSEPP(
        vocab_size=args.vocab, img_dim=None, backbone="efficientnet-lite0",
        image_size=args.image_size,
    )  # fmt: skip
    cells, _ = grid_shape(model.image_encoder.backbone, args.image_size)
    text = make_batch(args.batch, 1, 1, args.vocab)
    images = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size),
                           dtype=torch.uint8)  # fmt: skip
    keep = torch.rand(args.batch, cells) >= 0.2
    keep[:, 0] = True
    pixels = Batch((images, keep), text.tokens, text.token_lengths, text.image_ids)
    times = {}
    for trainable in (False, True):
        model.image_encoder.set_backbone_trainable(trainable)
        times["learning" if trainable else "frozen"] = step_seconds(
            model, pixels, device, args.steps
        )
    torch.manual_seed(0)
    features_model = RVSEPP(vocab_size=args.vocab, img_dim=1280)
    features = make_batch(args.batch, cells, 1280, args.vocab)
    times["features"] = step_seconds(features_model, features, device, args.steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, batch {args.batch}, "
          f"{args.image_size} px ({cells} cells x 1280)")  # fmt: skip
    print("  ".join(f"{k} {v * 1e3:.0f} ms" for k, v in times.items()))
    print(f"learning / frozen {times['learning'] / times['frozen']:.2f}   "
          f"frozen / features {times['frozen'] / times['features']:.2f}   "
          f"learning / features {times['learning'] / times['features']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
