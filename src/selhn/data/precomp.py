"""The SCAN "precomp" layout: ``{split}_ims.npy`` (N, K, F) float32 and ``{split}_caps.txt``.

Caption j describes image ``j // (captions / images)`` (SCAN's five per image), unless the optional
``{split}_caps_img.txt`` gives the image of every caption (one index per line; images may then
have any number of captions, as written by ``selhn features``). Features are memory-mapped:
opening a split reads only the .npy header, never the array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_ALIASES = {"val": "dev"}


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
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else None

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


def read_captions(path: Path) -> list[str]:
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


def features_path(root: Path, split: str) -> Path:
    return root / f"{split}_ims.npy"


def images_path(root: Path, split: str) -> Path:
    """``{split}_images.txt``: the image file of each image, one per line."""
    return root / f"{split}_images.txt"


def open_split(root: str | Path, split: str) -> PrecompSplit:
    """Open ``root/{split}_ims.npy`` (memory-mapped) and ``root/{split}_caps.txt``."""
    root = Path(root)
    split = SPLIT_ALIASES.get(split, split)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data directory not found")
    features_file, captions_path = features_path(root, split), root / f"{split}_caps.txt"
    features = _open_features(features_file)
    captions = read_captions(captions_path)
    owners = caption_images(root, split, len(captions), features.shape[0], features_file.name)
    return PrecompSplit(split, features_file, captions_path, features, captions, owners)


def caption_images(
    root: Path, split: str, num_captions: int, num_images: int, images_in: str
) -> np.ndarray:
    """The image of each caption: from ``{split}_caps_img.txt`` if there is one, else SCAN's
    rule (an equal number of consecutive captions per image). ``images_in`` names the file the
    images were counted in, for the error message."""
    owners_path = root / f"{split}_caps_img.txt"
    if owners_path.exists():
        return _read_caption_images(owners_path, num_captions, num_images)
    if num_captions % num_images:
        raise ValueError(
            f"{root / f'{split}_caps.txt'}: {num_captions} caption lines are not a multiple of "
            f"the {num_images} images in {images_in} (and there is no {owners_path.name} saying "
            "which image each caption describes)"
        )
    return np.arange(num_captions) // (num_captions // num_images)


def _read_caption_images(path: Path, num_captions: int, num_images: int) -> np.ndarray:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != num_captions:
        raise ValueError(f"{path}: {len(lines)} lines, expected one per caption ({num_captions})")
    owners = np.empty(num_captions, dtype=np.int64)
    for number, line in enumerate(lines, start=1):
        if not line.strip().isdigit() or int(line) >= num_images:
            raise ValueError(f"{path}:{number}: expected an image index in [0, {num_images})")
        owners[number - 1] = int(line)
    counts = np.bincount(owners, minlength=num_images)
    if (counts == 0).any():
        raise ValueError(f"{path}: image {int(np.argmin(counts))} has no caption")
    return owners


def write_split(root: str | Path, split: str, features: np.ndarray, captions: list[str]) -> None:
    """Write a split in the precomp layout (used by the synthetic generator and the tests)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    np.save(features_path(root, split), np.ascontiguousarray(features, dtype=np.float32))
    write_captions(root, split, captions)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_captions(
    root: Path,
    split: str,
    captions: list[str],
    caption_images: list[int] | None = None,
    image_files: list[str] | None = None,
) -> None:
    """``{split}_caps.txt`` and, if given, ``{split}_caps_img.txt`` (the image of each caption)
    and ``{split}_images.txt`` (the file of each image)."""
    _write_lines(root / f"{split}_caps.txt", captions)
    if caption_images is not None:
        _write_lines(root / f"{split}_caps_img.txt", [str(i) for i in caption_images])
    if image_files is not None:
        _write_lines(images_path(root, split), image_files)
