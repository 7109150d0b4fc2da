"""The release's training augmentation: region (or grid cell) dropout, caption token
perturbation, and, for images, an optional random crop. Off at evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from selhn.data.vocab import TextVocabulary

Crop = tuple[float, float, float, float]  # (left, top, right, bottom) as shares of the image


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation of the release; off at evaluation."""

    region_drop: float = 0.2  # each region is dropped with this probability (one always stays)
    token_prob: float = 0.2  # each token is perturbed with this probability: of those,
    token_mask: float = 0.5  # this share becomes <mask>,
    token_random: float = 0.1  # this share a random word, and the rest is deleted
    crop_scale: float = 1.0  # images (end to end): crop sides are random shares in [this, 1]

    def regions(self, regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        keep = rng.random(len(regions)) >= self.region_drop
        if not keep.any():
            keep[rng.integers(len(regions))] = True
        return regions[keep]

    def cells(self, count: int, rng: np.random.Generator) -> Tensor:
        """(count,) bool: the grid cells an image keeps (``regions`` over the cell indices)."""
        keep = torch.zeros(count, dtype=torch.bool)
        keep[self.regions(np.arange(count), rng)] = True
        return keep

    def tokens(self, ids: list[int], vocab: TextVocabulary, rng: np.random.Generator) -> list[int]:
        out = []
        for token in ids:
            draw = rng.random()
            if draw >= self.token_prob:
                out.append(token)
                continue
            draw /= self.token_prob
            if draw < self.token_mask:
                out.append(vocab.mask_id)
            elif draw < self.token_mask + self.token_random:
                out.append(int(rng.integers(len(vocab))))
        return out or ids[:1]


def random_crop(min_share: float, rng: np.random.Generator) -> Crop:
    """A crop whose sides are random shares in [min_share, 1] of the image's, placed at random."""
    width, height = rng.uniform(min_share, 1.0, size=2)
    left, top = rng.uniform(0.0, 1.0 - width), rng.uniform(0.0, 1.0 - height)
    return (left, top, left + width, top + height)
