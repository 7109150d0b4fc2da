"""The images an index is built from: every image file under a folder, or a manifest's images.

A manifest for an index holds one JSON object per line, ``{"image": "path", "captions": [...]}``,
with ``captions`` optional and other keys (``split``) ignored; image paths are relative to the
manifest's folder (or ``images``). Listed files that are missing are not an error here: the
index reports them with the unreadable ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from selhn.data.manifest import manifest_entries

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


@dataclass
class Collection:
    """Image files (absolute paths, in a fixed order) and, where given, their captions."""

    files: list[Path]
    captions: list[list[str]] | None = None  # per file, where the source gives captions
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (folder file, why not)

    def fingerprint(self) -> str:
        """SHA-256 of the file list and captions: which collection an index holds."""
        digest = hashlib.sha256(json.dumps([list(map(str, self.files)), self.captions]).encode())
        return digest.hexdigest()


def from_folder(root: str | Path) -> Collection:
    """Every file under ``root`` (recursively, following links to folders once, sorted) whose
    suffix is an image format's; a link whose target is missing is kept, so the index lists it
    as unreadable. Hidden files and folders (``.name``) are left out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    found, seen = [], set()
    for folder, subfolders, names in os.walk(root.absolute(), followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back to a folder already walked
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [Path(folder) / n for n in names if not n.startswith(".")]
    files, ignored = [], []
    for path in sorted(found):
        problem = _unlistable(path)
        if problem or path.suffix.lower() not in IMAGE_SUFFIXES:
            ignored.append((repr(str(path))[1:-1], problem or "not an image file name"))
        else:
            files.append(path)
    if not files:
        raise ValueError(f"{root}: no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return Collection(files, None, ignored)


def _unlistable(path: Path) -> str | None:
    """Why a file name cannot be one line of UTF-8 text (``files.txt``), if it cannot."""
    name = str(path)
    if "\n" in name or "\r" in name:
        return "the file name holds a line break"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not UTF-8"
    return None


def from_manifest(path: str | Path, images: str | Path | None = None) -> Collection:
    """The images of a JSON-lines manifest, with their captions where lines give them."""
    path = Path(path)
    root = Path(images) if images is not None else path.parent
    files: list[Path] = []
    captions: list[list[str]] = []
    first: dict[Path, str] = {}
    for source, entry in manifest_entries(path):
        given = entry.get("captions", [])
        if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
            raise ValueError(f"{source}: 'captions' must be a list of strings")
        image = (root / entry["image"]).resolve()
        if problem := _unlistable(image):
            raise ValueError(f"{source}: {problem}; rename the file")
        if image in first:
            raise ValueError(f"{source}: image {image} is already listed at {first[image]}")
        first[image] = source
        files.append(image)
        captions.append([" ".join(c.split()) for c in given if c.strip()])
    if not files:
        raise ValueError(f"{path}: no images")
    return Collection(files, captions if any(captions) else None)
