"""One interface over the three ways a split's images are read, and what a model asks for.

A model says which images it reads (``RegionFeatures``, ``ImageFiles`` or ``TrunkActivations``);
``open`` returns a ``Split``. The datasets, the trainer and the evaluation use a split only
through this interface.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor

from selhn.data.augment import Augmentation
from selhn.data.image_files import open_image_split
from selhn.data.precomp import open_split
from selhn.data.trunk import open_trunk_split


class Split(Protocol):
    """One split of a data directory: captions, the image of each caption, and its images."""

    name: str
    captions: list[str]
    captions_path: Path  # where the captions were read
    caption_images: np.ndarray  # (N_captions,) image index of each caption

    @property
    def num_images(self) -> int: ...

    @property
    def feature_dim(self) -> int | None:
        """Channels per region of precomputed features; None for image files."""

    def caption_to_image(self) -> np.ndarray: ...

    def image_files(self) -> list[str] | None: ...

    def image(self, index: int) -> Any:
        """One image as evaluation reads it."""

    def training_image(
        self, index: int, augmentation: Augmentation | None, rng: np.random.Generator | None
    ) -> Any:
        """One image as training reads it, augmented when ``rng`` is given."""

    def collate_images(self, items: list[Any]) -> tuple[Tensor, ...]:
        """The model's ``encode_images`` arguments of a list of ``image`` results."""

    def collate_training_images(self, items: list[Any]) -> tuple[Tensor, ...]:
        """Likewise for ``training_image`` results."""


@dataclass(frozen=True)
class RegionFeatures:
    """Precomputed region features (``{split}_ims.npy``) of ``dim`` channels (None: any)."""

    dim: int | None = None
    stored = True  # features stored in the data directory (its features.json says how made)

    def open(self, root: str | Path, split: str) -> Split:
        opened = open_split(root, split)
        if self.dim is not None and opened.feature_dim != self.dim:
            raise ValueError(
                f"{opened.features_path}: {opened.feature_dim} channels per region, but the "
                f"model expects {self.dim}"
            )
        return opened


@dataclass(frozen=True)
class ImageFiles:
    """Image files (``{split}_images.txt``) at ``size`` pixels, cut into ``cells`` grid cells."""

    size: int
    cells: int
    stored = False  # the model computes its input from the files

    def open(self, root: str | Path, split: str) -> Split:
        return open_image_split(root, split, self.size, self.cells)


@dataclass(frozen=True)
class TrunkActivations:
    """Stored activations entering the last stage of ``backbone`` (``{split}_trunk.npy``), each
    image ``shape`` (channels, side, side), which the stage makes ``cells`` grid cells."""

    backbone: str
    shape: tuple[int, int, int]
    cells: int
    stored = True

    def open(self, root: str | Path, split: str) -> Split:
        return open_trunk_split(root, split, self.shape, self.cells)


ImageInput = RegionFeatures | ImageFiles | TrunkActivations


def fingerprint(split: Split) -> dict[str, Any]:
    """What identifies a split's contents without reading its images: its name, sizes, feature
    channels and a SHA-256 of its captions, the image of each caption and the image files."""
    digest = hashlib.sha256()
    digest.update(json.dumps([split.captions, split.image_files()]).encode())
    digest.update(np.ascontiguousarray(split.caption_to_image(), dtype=np.int64).tobytes())
    return {
        "split": split.name,
        "images": split.num_images,
        "captions": len(split.captions),
        "feature_dim": split.feature_dim,
        "sha256": digest.hexdigest(),
    }
