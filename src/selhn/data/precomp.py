"""The SCAN "precomp" layout: ``{split}_ims.npy`` (N, K, F) float32 region features beside the
caption files (``layout``). Features are memory-mapped: opening a split reads only the .npy
header, never the array."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from selhn.data.augment import Augmentation
from selhn.data.batch import pad_regions
from selhn.data.layout import caption_images, images_path, read_captions, split_name, write_captions
from selhn.utils.textfiles import read_lines


@dataclass
class PrecompSplit:
    """One split: a memory-mapped feature array, its captions and the image of each caption."""

    name: str
    features_path: Path
    captions_path: Path
    features: np.ndarray  # (N, K, F) float32 memmap
    captions: list[str]
    caption_images: np.ndarray  # (N_captions,) int64 image index of each caption

    @property
    def num_images(self) -> int:
        return self.features.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[2]

    def caption_to_image(self) -> np.ndarray:
        return self.caption_images

    def image_files(self) -> list[str] | None:
        """The image file of each image, where ``selhn features`` listed them."""
        path = images_path(self.features_path.parent, self.name)
        return read_lines(path) if path.exists() else None

    def image(self, index: int) -> np.ndarray:
        """(K, F) float32 regions of one image, checked to be finite."""
        regions = np.array(self.features[index], dtype=np.float32)  # copy out of the memmap
        if not np.isfinite(regions).all():
            bad = np.argwhere(~np.isfinite(regions))[0].tolist()
            raise ValueError(
                f"{self.features_path}: image {index} has a non-finite feature at region "
                f"{bad[0]}, channel {bad[1]}"
            )
        return regions

    def training_image(
        self, index: int, augmentation: Augmentation | None, rng: np.random.Generator | None
    ) -> np.ndarray:
        """The image's regions, some dropped when augmenting (``rng`` given)."""
        regions = self.image(index)
        return regions if rng is None else augmentation.regions(regions, rng)

    @staticmethod
    def collate_images(items: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        """``encode_images`` arguments of a list of images: padded regions and their counts."""
        return pad_regions(items)

    collate_training_images = collate_images


def _open_features(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature file not found")
    try:
        features = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a .npy array ({err})") from err
    if features.dtype != np.float32:
        raise ValueError(f"{path}: features must be float32, found {features.dtype}")
    if features.ndim != 3 or 0 in features.shape:
        raise ValueError(
            f"{path}: features must be (images, regions, channels), found shape {features.shape}"
        )
    return features


def features_path(root: Path, split: str) -> Path:
    return root / f"{split}_ims.npy"


def open_split(root: str | Path, split: str) -> PrecompSplit:
    """Open ``root/{split}_ims.npy`` (memory-mapped) and ``root/{split}_caps.txt``."""
    root = Path(root)
    split = split_name(split)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data directory not found")
    features_file, captions_path = features_path(root, split), root / f"{split}_caps.txt"
    features = _open_features(features_file)
    captions = read_captions(captions_path)
    owners = caption_images(root, split, len(captions), features.shape[0], features_file.name)
    return PrecompSplit(split, features_file, captions_path, features, captions, owners)


def write_split(root: str | Path, split: str, features: np.ndarray, captions: list[str]) -> None:
    """Write a split in the precomp layout (used by the synthetic generator and the tests)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    np.save(features_path(root, split), np.ascontiguousarray(features, dtype=np.float32))
    write_captions(root, split, captions)
