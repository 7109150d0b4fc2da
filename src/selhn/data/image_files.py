"""Splits read as image files, for end-to-end training and evaluation (no precomputed features).

The layout is the precomp one without ``{split}_ims.npy``: the caption files and
``{split}_images.txt``, one image file per line, absolute or relative to the data directory
(``layout``). ``selhn data images`` writes it from a manifest or a Karpathy split file;
``selhn features`` writes it beside the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor

from selhn.data.augment import Augmentation, Crop, random_crop
from selhn.data.layout import (
    caption_images,
    images_path,
    read_captions,
    split_name,
    write_captions,
)
from selhn.data.manifest import ImageRecord, by_split
from selhn.utils.extras import require
from selhn.utils.textfiles import read_lines


class TooManyPixels(ValueError):
    """An image larger than a reader's pixel limit: refused before it is decoded."""


class UnreadableImage(ValueError):
    """A file that is not a readable image; ``reason`` says why, without the file's name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def load_image(
    path: Path | IO[bytes],
    size: int,
    source: str = "",
    crop: Crop | None = None,
    max_pixels: int | None = None,
    reduce: bool = False,
) -> Tensor:
    """(3, size, size) uint8 RGB tensor: the image (or its ``crop``) resized, bicubic.

    Args:
        path: a file name or an open binary file.
        max_pixels: refuse (``TooManyPixels``) an image of more pixels, from its header alone;
            None: Pillow's own limit (``Image.MAX_IMAGE_PIXELS``, a DecompressionBombError
            above twice it).
        reduce: decode a JPEG at the smallest scale (1/2 to 1/8) still at least ``size``, which
            bounds the memory of decoding a large photo, at a small cost in fidelity.

    Raises ``UnreadableImage`` (a ValueError) if it is not a readable image: whatever Pillow's
    readers raise on a damaged file (a truncated file is one: Pillow reads strictly unless
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set).
    """
    require("images", "reading image files", ("PIL",))
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise TooManyPixels(
                    f"{source or 'the image'}: {width} x {height} pixels; at most {max_pixels:,}"
                )
            box = None
            if crop is not None:
                box = (crop[0] * width, crop[1] * height, crop[2] * width, crop[3] * height)
            elif reduce:
                image.draft("RGB", (size, size))
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC, box)
    except TooManyPixels:
        raise
    except Image.DecompressionBombError as err:
        if max_pixels is None:
            raise UnreadableImage(f"{source or path}: {err}", str(err)) from err
        raise TooManyPixels(
            f"{source or 'the image'}: more pixels than Pillow decodes; at most {max_pixels:,}"
        ) from err
    except Exception as err:  # Pillow's readers raise many kinds on damaged data
        if isinstance(err, UnidentifiedImageError):
            reason = "not an image format Pillow reads"
        else:
            reason = str(err) or type(err).__name__
        if isinstance(path, str | Path):
            raise UnreadableImage(
                f"{source or path}: cannot read image {path} ({err})", reason
            ) from err
        raise UnreadableImage(
            f"{source or 'the file'}: cannot read the image ({reason})", reason
        ) from err
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


class GridCellBatches:
    """Batches of a split whose images a model cuts into grid cells: the images stacked, and in
    training the (B, cells) bool cells each keeps."""

    @staticmethod
    def collate_images(items: list[Tensor]) -> tuple[Tensor]:
        """``encode_images`` arguments of a list of images, every cell."""
        return (torch.stack(items),)

    @staticmethod
    def collate_training_images(items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        images, keep = zip(*items, strict=True)
        return torch.stack(images), torch.stack(keep)


@dataclass
class ImageSplit(GridCellBatches):
    """One split as image files, read at ``image_size`` x ``image_size`` pixels; ``cells`` is the
    number of grid cells the model's backbone makes of an image (its training augmentation drops
    some)."""

    name: str
    images_path: Path
    captions_path: Path
    files: list[Path]
    captions: list[str]
    caption_images: np.ndarray  # (N_captions,) int64 image index of each caption
    image_size: int
    cells: int = 0

    @property
    def num_images(self) -> int:
        return len(self.files)

    @property
    def feature_dim(self) -> None:
        """Pixels, not features: the model's backbone decides the channels."""
        return None

    def caption_to_image(self) -> np.ndarray:
        return self.caption_images

    def image_files(self) -> list[str]:
        return [str(f) for f in self.files]

    def image(self, index: int, crop: Crop | None = None) -> Tensor:
        """(3, S, S) uint8 pixels of one image (of its ``crop``, if given)."""
        source = f"{self.images_path}:{index + 1}"
        return load_image(self.files[index], self.image_size, source, crop)

    def training_image(
        self, index: int, augmentation: Augmentation | None, rng: np.random.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """(pixels, kept grid cells): with ``rng``, each cell dropped with probability
        ``region_drop`` (one always kept) and, if ``crop_scale`` < 1, a random crop."""
        if rng is None:
            return self.image(index), torch.ones(self.cells, dtype=torch.bool)
        keep = augmentation.cells(self.cells, rng)
        crop = random_crop(augmentation.crop_scale, rng) if augmentation.crop_scale < 1 else None
        return self.image(index, crop), keep


def open_image_split(root: str | Path, split: str, image_size: int, cells: int = 0) -> ImageSplit:
    """Open ``root/{split}_images.txt`` and the captions; every listed file must exist.
    ``cells``: grid cells of the model's backbone at ``image_size`` (for training pairs)."""
    root = Path(root)
    split = split_name(split)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data directory not found")
    listing = images_path(root, split)
    if not listing.is_file():
        raise FileNotFoundError(
            f"{listing}: not found; training from images reads the image files listed there "
            "(written by selhn data images or selhn features)"
        )
    files = []
    for number, line in enumerate(read_lines(listing), start=1):
        name = line.strip()
        path = root / name  # an absolute name replaces root
        if not name or not path.is_file():
            raise FileNotFoundError(f"{listing}:{number}: image file {name!r} not found")
        files.append(path)
    if not files:
        raise ValueError(f"{listing}: no images")
    captions_path = root / f"{split}_caps.txt"
    captions = read_captions(captions_path)
    owners = caption_images(root, split, len(captions), len(files), listing.name)
    return ImageSplit(split, listing, captions_path, files, captions, owners, image_size, cells)


def write_image_index(out: Path, split: str, records: list[ImageRecord]) -> None:
    """The captions, the image of each caption and the (absolute) image files of a split."""
    captions = [c for r in records for c in r.captions]
    owners = [i for i, r in enumerate(records) for _ in r.captions]
    write_captions(out, split, captions, owners, [str(r.image.absolute()) for r in records])


def write_image_splits(records: list[ImageRecord], out: str | Path) -> dict[str, int]:
    """``selhn data images``: the layout above for every split of ``records``, without features;
    returns the images per split. An ``out`` that already holds a split is refused."""
    out = Path(out)
    splits = by_split(records)
    for split in splits:
        if (out / f"{split}_caps.txt").exists():
            raise FileExistsError(
                f"{out / f'{split}_caps.txt'}: {out} holds data; use another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    for split, part in splits.items():
        write_image_index(out, split, part)
    return {split: len(part) for split, part in splits.items()}
