"""A folder of images to a manifest: ``selhn data folder``.

Every image file under the folder (recursively, as ``selhn index`` finds them) becomes one
manifest line. Its captions come from a sidecar text file beside it (``photo.jpg`` and
``photo.txt``, one caption a line) and from a caption table the user names (CSV with ``image``
and ``caption`` columns, one row per caption; or JSON lines with ``image`` and ``captions``), with
image paths relative to the folder. A captioned image gets a split from a hash of its bytes, so
byte-identical files share a split and the split of a file never changes as the folder grows;
with at least three distinct captioned images, dev and test each get at least one. An image
without captions is listed without a split: ``selhn index`` indexes it, training leaves it out.
Files that are not readable images are reported, not listed.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from selhn.data.image_files import UnreadableImage, load_image
from selhn.data.manifest import manifest_entries
from selhn.data.walk import image_files
from selhn.utils.digests import file_sha256
from selhn.utils.textfiles import read_lines, read_text, write_atomic

SIDECAR = ".txt"
SPLIT_SHARES = {"test": 0.18, "dev": 0.12}  # of the captioned images, by hash; the rest train


@dataclass
class FolderManifest:
    """What ``folder_manifest`` wrote: counts per split, the images without captions and the
    files left out with the reason."""

    splits: dict[str, int]
    index_only: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _caption_lines(path: Path) -> list[str]:
    return [" ".join(line.split()) for line in read_lines(path) if line.strip()]


def read_caption_table(path: Path, names: set[str]) -> dict[str, list[str]]:
    """Captions per image name from a CSV (``image``, ``caption`` columns) or JSON-lines table
    (``image``, ``captions`` list); an image that is not one of ``names`` is an error."""
    table: dict[str, list[str]] = {}

    def add(source: str, image: object, captions: list[object]) -> None:
        if not isinstance(image, str) or image not in names:
            raise ValueError(f"{source}: image {image!r} is not an image file of the folder")
        for caption in captions:
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{source}: expected non-empty caption text; got {caption!r}")
            table.setdefault(image, []).append(" ".join(caption.split()))

    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(read_text(path).splitlines())
        if not {"image", "caption"} <= set(rows.fieldnames or ()):
            raise ValueError(f"{path}: expected a header with 'image' and 'caption' columns")
        for number, row in enumerate(rows, start=2):
            add(f"{path}:{number}", row["image"], [row["caption"]])
    else:
        for source, entry in manifest_entries(path):
            captions = entry.get("captions", [entry["caption"]] if "caption" in entry else None)
            if not isinstance(captions, list):
                raise ValueError(f"{source}: expected 'captions' (a list) or 'caption'")
            add(source, entry["image"], captions)
    return table


def _unit(digest: str) -> float:
    """A file's place in [0, 1), from its SHA-256."""
    return int(digest[:16], 16) / 2**64


def assign_splits(digests: dict[str, str]) -> dict[str, str]:
    """The split of each captioned image (by name), from its digest. Identical files share a
    split; with three distinct files or more, dev and test each hold at least one."""
    split_of = {}
    for digest in set(digests.values()):
        place, bound = _unit(digest), 0.0
        split_of[digest] = "train"
        for split, share in SPLIT_SHARES.items():
            bound += share
            if place < bound:
                split_of[digest] = split
                break
    if len(split_of) >= 3:
        for split in SPLIT_SHARES:
            if split not in split_of.values():  # the train file nearest the split's range
                trained = [d for d, s in split_of.items() if s == "train"]
                split_of[min(trained, key=_unit)] = split
    return {name: split_of[digest] for name, digest in digests.items()}


def folder_manifest(
    root: str | Path, out: str | Path, captions: str | Path | None = None
) -> FolderManifest:
    """Write the manifest of the images under ``root`` to ``out`` (image paths relative to
    ``out``'s folder) and say what it holds."""
    root, out = Path(root), Path(out)
    collection = image_files(root)
    names = set(collection.names)
    sidecars = {str(Path(n).with_suffix(SIDECAR)) for n in names}
    skipped = [(name, why) for name, why in collection.ignored if name not in sidecars]
    table = read_caption_table(Path(captions), names) if captions else {}
    entries, digests = {}, {}
    for name in collection.names:
        path = collection.root / name
        try:
            load_image(path, 32, name, reduce=True)
        except UnreadableImage as err:
            skipped.append((name, err.reason))
            continue
        texts = table.get(name, [])
        sidecar = path.with_suffix(SIDECAR)
        if sidecar.is_file():
            texts = _caption_lines(sidecar) + texts
        entries[name] = texts
        if texts:
            digests[name] = file_sha256(path)
    split_of = assign_splits(digests)
    base = os.path.relpath(collection.root, out.absolute().parent)
    lines, counts = [], {"train": 0, "dev": 0, "test": 0}
    for name, texts in entries.items():
        entry: dict[str, object] = {"image": Path(base, name).as_posix(), "captions": texts}
        if name in split_of:
            entry["split"] = split_of[name]
            counts[split_of[name]] += 1
        lines.append(json.dumps(entry, ensure_ascii=False))
    write_atomic(out, "".join(f"{line}\n" for line in lines))
    index_only = len(entries) - len(split_of)
    return FolderManifest(counts, index_only, sorted(skipped))
