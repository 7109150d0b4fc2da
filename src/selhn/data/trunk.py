"""Splits read as stored trunk activations (``{split}_trunk.npy`` of ``selhn features``): the
input of a backbone's last stage, which the model trains (``models.stage``). Memory-mapped, like
``precomp``'s features; ``train_trunk_flipped.npy`` holds the training images flipped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selhn.data.augment import Augmentation
from selhn.data.image_files import GridCellBatches
from selhn.data.layout import caption_images, images_path, read_captions, split_name
from selhn.utils.textfiles import read_lines


def trunk_path(root: Path, split: str, flipped: bool = False) -> Path:
    """Where a split's trunk activations (or those of its flipped images) are stored."""
    return root / (f"{split}_trunk_flipped.npy" if flipped else f"{split}_trunk.npy")


@dataclass
class TrunkSplit(GridCellBatches):
    """One split: memory-mapped (N, C, s, s) float16 activations, its captions and the image of
    each caption; ``cells`` is the number of grid cells the last stage makes of them."""

    name: str
    trunk_path: Path
    captions_path: Path
    trunk: np.ndarray
    flipped: np.ndarray | None  # the images flipped left-right, where stored
    captions: list[str]
    caption_images: np.ndarray  # (N_captions,) int64 image index of each caption
    cells: int

    @property
    def num_images(self) -> int:
        return self.trunk.shape[0]

    @property
    def feature_dim(self) -> None:
        """Activations for the model's last stage, not region features."""
        return None

    def caption_to_image(self) -> np.ndarray:
        return self.caption_images

    def image_files(self) -> list[str] | None:
        path = images_path(self.trunk_path.parent, self.name)
        return read_lines(path) if path.exists() else None

    def image(self, index: int, flipped: bool = False) -> Tensor:
        """(C, s, s) float16 activations of one image, checked to be finite."""
        source = self.flipped if flipped else self.trunk
        activations = torch.from_numpy(np.array(source[index]))  # copied out of the memmap
        if not torch.isfinite(activations).all():
            path = trunk_path(self.trunk_path.parent, self.name, flipped)
            raise ValueError(f"{path}: image {index} has non-finite activations")
        return activations

    def training_image(
        self, index: int, augmentation: Augmentation | None, rng: np.random.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """(activations, kept grid cells): with ``rng``, the image flipped left-right with
        probability 0.5 (where stored) and each cell dropped with probability ``region_drop``
        (one always kept)."""
        if rng is None:
            return self.image(index), torch.ones(self.cells, dtype=torch.bool)
        flip = self.flipped is not None and rng.random() < 0.5
        return self.image(index, flip), augmentation.cells(self.cells, rng)


def _open_trunk(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a .npy array ({err})") from err
    if array.dtype != np.float16 or array.ndim != 4 or array.shape[1:] != shape:
        raise ValueError(
            f"{path}: expected float16 activations (images, {', '.join(map(str, shape))}), found "
            f"{array.dtype} {array.shape}"
        )
    return array


def open_trunk_split(
    root: str | Path, split: str, shape: tuple[int, int, int], cells: int
) -> TrunkSplit:
    """Open ``root/{split}_trunk.npy`` (memory-mapped, each image ``shape``), its flipped copy if
    there is one, and the captions."""
    root = Path(root)
    split = split_name(split)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data directory not found")
    path = trunk_path(root, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: trunk activations not found; selhn features writes them (run it again on "
            "the same manifest and --out to add them to features of an older selhn)"
        )
    trunk = _open_trunk(path, shape)
    flipped_path = trunk_path(root, split, flipped=True)
    flipped = _open_trunk(flipped_path, shape) if flipped_path.exists() else None
    if flipped is not None and len(flipped) != len(trunk):
        raise ValueError(f"{flipped_path}: {len(flipped)} images, but {path} has {len(trunk)}")
    captions_path = root / f"{split}_caps.txt"
    captions = read_captions(captions_path)
    owners = caption_images(root, split, len(captions), len(trunk), path.name)
    return TrunkSplit(split, path, captions_path, trunk, flipped, captions, owners, cells)
