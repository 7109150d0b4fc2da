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
import stat
from dataclasses import dataclass, field
from pathlib import Path

from selhn.data.manifest import manifest_entries
from selhn.inference.index.files import inside, kind_of

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


@dataclass
class Collection:
    """Image files under ``root`` (resolved), in a fixed order, and their captions if given."""

    root: Path
    names: list[str]  # each file's path relative to the root, as listed
    targets: list[str]  # each file's path relative to the root, links resolved
    captions: list[list[str]] | None = None  # per file, where the source gives captions
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (name, why not indexed)


def _name(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, as POSIX text."""
    return Path(os.path.relpath(path, root)).as_posix()


def _shown(path: Path, root: Path) -> str:
    """``_name`` with line breaks and bytes that are not UTF-8 escaped, for a report."""
    return repr(_name(path, root))[1:-1]


def _refusal(path: Path, root: Path) -> str | None:
    """Why the file at ``path`` is not indexed (before anything opens it), or None."""
    if inside(root, path) is None:
        return f"it resolves outside the indexed folder {root.name}"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None  # missing: reported with the unreadable files when it is read
    if not stat.S_ISREG(mode):
        return f"{kind_of(mode)}, not a regular file"
    return None


def from_folder(root: str | Path) -> Collection:
    """Every file under ``root`` (recursively, sorted) whose suffix is an image format's. Links
    to folders are not walked: a folder inside ``root`` is indexed where it lies, and a link to
    one outside is reported. Hidden files and folders (``.name``) are left out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    top = root.absolute()
    found, ignored = [], []
    for folder, subfolders, names in os.walk(top):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for sub in subfolders:
            if inside(top, Path(folder) / sub) is None:  # os.walk does not enter a link
                ignored.append((_shown(Path(folder) / sub, top), "a link to a folder outside it"))
        found += [Path(folder) / n for n in names if not n.startswith(".")]
    names, targets, first = [], [], {}
    for path in sorted(found):
        problem = _unlistable(path)
        if problem is None and path.suffix.lower() not in IMAGE_SUFFIXES:
            problem = "not an image file name"
        problem = problem or _refusal(path, top)
        target = inside(top, path)
        if problem is None and target in first:
            problem = f"a link to {first[target]}, indexed under that name"
        if problem:
            ignored.append((_shown(path, top), problem))
        else:
            first[target] = _name(path, top)
            names.append(first[target])
            targets.append(target)
    if not names:
        raise ValueError(f"{root}: no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return Collection(Path(os.path.realpath(top)), names, targets, None, sorted(ignored))


def _unlistable(path: Path) -> str | None:
    """Why a file name cannot be one line of UTF-8 text, if it cannot."""
    name = str(path)
    if "\n" in name or "\r" in name:
        return "the file name holds a line break"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not UTF-8"
    return None


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
        if problem := _unlistable(image):
            raise ValueError(f"{source}: {problem}; rename the file")
        if problem := _refusal(image, top):
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
