"""The text files of a data directory, shared by both ways of reading its images.

``{split}_caps.txt`` holds one caption a line. Caption j describes image
``j // (captions / images)`` (SCAN's five per image), unless the optional
``{split}_caps_img.txt`` gives the image of every caption (one index per line; images may then
have any number of captions). ``{split}_images.txt`` lists the image file of each image, one per
line. The images themselves are ``{split}_ims.npy`` features (``precomp``) or those files
(``image_files``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selhn.utils.textfiles import read_lines

SPLIT_ALIASES = {"val": "dev"}


def split_name(split: str) -> str:
    """The canonical name of a split (``val`` is ``dev``)."""
    return SPLIT_ALIASES.get(split, split)


def read_captions(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: caption file not found")
    captions = read_lines(path)
    for line, caption in enumerate(captions, start=1):
        if not caption.strip():
            raise ValueError(f"{path}:{line}: empty caption")
    if not captions:
        raise ValueError(f"{path}: no captions")
    return captions


def images_path(root: Path, split: str) -> Path:
    """``{split}_images.txt``: the image file of each image, one per line."""
    return root / f"{split}_images.txt"


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
    lines = read_lines(path)
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
