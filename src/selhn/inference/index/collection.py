"""The images an index is built from: every image file under a folder, or a manifest's images.

A manifest for an index holds one JSON object per line, ``{"image": "path", "captions": [...]}``,
with ``captions`` optional and other keys (``split``) ignored; image paths are relative to the
manifest's folder (or ``root``). Listed files that are missing are not an error here: the index
reports them with the unreadable ones.

Every file lies inside one root folder: the folder indexed, or the manifest's folder. A file is
known by its name (its path relative to the root, as listed: what answers show) and its target
(the path it resolves to, relative to the resolved root: what is read). Files that resolve
outside the root and files that are not regular files (named pipes, devices, sockets) are
reported, never opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from selhn.data.manifest import manifest_entries
from selhn.data.walk import image_files, inside, refusal, unlistable


@dataclass
class Collection:
    """Image files under ``root`` (resolved), in a fixed order, and their captions if given."""

    root: Path
    names: list[str]  # each file's path relative to the root, as listed
    targets: list[str]  # each file's path relative to the root, links resolved
    captions: list[list[str]] | None = None  # per file, where the source gives captions
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (name, why not indexed)


def from_folder(root: str | Path) -> Collection:
    """Every image file under ``root`` (``data.walk.image_files``), without captions."""
    found = image_files(root)
    return Collection(found.root, found.names, found.targets, None, found.ignored)


def from_manifest(path: str | Path, root: str | Path | None = None) -> Collection:
    """The images of a JSON-lines manifest, with their captions where lines give them. Image
    paths are relative to ``root`` (default: the manifest's folder), and must lie inside it."""
    path = Path(path)
    top = Path(root if root is not None else path.parent).absolute()
    names, targets, captions, ignored = [], [], [], []
    first: dict[str, str] = {}
    for source, entry in manifest_entries(path):
        given = entry.get("captions", [])
        if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
            raise ValueError(f"{source}: 'captions' must be a list of strings")
        image = top / entry["image"]
        if problem := unlistable(image):
            raise ValueError(f"{source}: {problem}; rename the file")
        if problem := refusal(image, top):
            ignored.append((entry["image"], problem))
            continue
        target = inside(top, image)
        if target in first:
            raise ValueError(
                f"{source}: image {entry['image']} is already listed at {first[target]}"
            )
        first[target] = source
        names.append(target)  # links resolved: a name never spells a path outside the root
        targets.append(target)
        captions.append([" ".join(c.split()) for c in given if c.strip()])
    if not names:
        raise ValueError(f"{path}: no images inside {top}")
    given = captions if any(captions) else None
    return Collection(Path(os.path.realpath(top)), names, targets, given, ignored)
