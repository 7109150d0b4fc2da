"""Image files under a folder, listed without opening them: what ``selhn index`` indexes and
``selhn data folder`` describes.

A file is known by its name (its path relative to the root, as listed) and its target (the path
it resolves to, relative to the resolved root: what is read). Files that resolve outside the root
and files that are not regular files (named pipes, devices, sockets) are reported, never opened.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a link",
}


@dataclass
class FoundImages:
    """The image files under ``root`` (resolved), in a fixed order, and what was left out."""

    root: Path
    names: list[str]  # each file's path relative to the root, as listed
    targets: list[str]  # each file's path relative to the root, links resolved
    ignored: list[tuple[str, str]]  # (name, why not listed)


def kind_of(mode: int) -> str:
    """'a named pipe', 'a folder', ... for a ``st_mode`` that is not a regular file's."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def inside(root: Path, path: Path) -> str | None:
    """``path`` resolved (links followed) relative to the resolved ``root``, as POSIX text; None
    if it resolves outside ``root``."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return None
    return PurePosixPath(Path(os.path.relpath(real, real_root))).as_posix()


def _name(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, as POSIX text."""
    return Path(os.path.relpath(path, root)).as_posix()


def _shown(path: Path, root: Path) -> str:
    """``_name`` with line breaks and bytes that are not UTF-8 escaped, for a report."""
    return repr(_name(path, root))[1:-1]


def refusal(path: Path, root: Path) -> str | None:
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


def unlistable(path: Path) -> str | None:
    """Why a file name cannot be one line of UTF-8 text, if it cannot."""
    name = str(path)
    if "\n" in name or "\r" in name:
        return "the file name holds a line break"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not UTF-8"
    return None


def image_files(root: str | Path) -> FoundImages:
    """Every file under ``root`` (recursively, sorted) whose suffix is an image format's. Links
    to folders are not walked: a folder inside ``root`` is listed where it lies, and a link to
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
        problem = unlistable(path)
        if problem is None and path.suffix.lower() not in IMAGE_SUFFIXES:
            problem = "not an image file name"
        problem = problem or refusal(path, top)
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
    return FoundImages(Path(os.path.realpath(top)), names, targets, sorted(ignored))
