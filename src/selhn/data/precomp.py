"""The SCAN "precomp" layout: ``{split}_ims.npy`` (N, K, F) float32 and ``{split}_caps.txt``.

Features are memory-mapped: opening a split reads only the .npy header, never the array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_ALIASES = {"val": "dev"}


@dataclass
class PrecompSplit:
    """One split: a memory-mapped feature array and its captions.

    Caption j describes image ``j // captions_per_image``.
    """

    name: str
    features_path: Path
    captions_path: Path
    features: np.ndarray  # (N, K, F) float32 memmap
    captions: list[str]

    @property
    def num_images(self) -> int:
        return self.features.shape[0]

    @property
    def captions_per_image(self) -> int:
        return len(self.captions) // self.num_images

    @property
    def feature_dim(self) -> int:
        return self.features.shape[2]

    def caption_to_image(self) -> np.ndarray:
        return np.arange(len(self.captions)) // self.captions_per_image

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


def _read_captions(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: caption file not found")
    captions = path.read_text(encoding="utf-8").splitlines()
    for line, caption in enumerate(captions, start=1):
        if not caption.strip():
            raise ValueError(f"{path}:{line}: empty caption")
    if not captions:
        raise ValueError(f"{path}: no captions")
    return captions


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


def open_split(root: str | Path, split: str) -> PrecompSplit:
    """Open ``root/{split}_ims.npy`` (memory-mapped) and ``root/{split}_caps.txt``."""
    root = Path(root)
    split = SPLIT_ALIASES.get(split, split)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data directory not found")
    features_path, captions_path = root / f"{split}_ims.npy", root / f"{split}_caps.txt"
    features = _open_features(features_path)
    captions = _read_captions(captions_path)
    if len(captions) % features.shape[0]:
        raise ValueError(
            f"{captions_path}: {len(captions)} caption lines are not a multiple of the "
            f"{features.shape[0]} images in {features_path.name}"
        )
    return PrecompSplit(split, features_path, captions_path, features, captions)


def write_split(root: str | Path, split: str, features: np.ndarray, captions: list[str]) -> None:
    """Write a split in the precomp layout (used by the synthetic generator and the tests)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / f"{split}_ims.npy", np.ascontiguousarray(features, dtype=np.float32))
    (root / f"{split}_caps.txt").write_text("".join(c + "\n" for c in captions), encoding="utf-8")
