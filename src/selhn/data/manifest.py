"""Raw-image data sets: Karpathy's split files and JSON-lines manifests.

Karpathy's files (``dataset_flickr30k.json``, ``dataset_coco.json``, ...) hold
``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw": ...}, ...]}, ...]}``;
``val`` is the dev split and ``restval`` joins train. A manifest holds one JSON object per line:
``{"image": "path relative to the manifest", "captions": ["...", ...], "split": "train"}``;
other keys are ignored. A line with neither captions nor a split (an image to index only, as
``selhn data folder`` writes one) is not a training image. Every problem is reported with the
line or entry it is in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selhn.data.layout import SPLIT_ALIASES
from selhn.utils.textfiles import read_lines, read_text

SPLITS = ("train", "dev", "test")
SPLIT_NAMES = {**{s: s for s in SPLITS}, **SPLIT_ALIASES, "restval": "train"}


@dataclass(frozen=True)
class ImageRecord:
    """One image, its captions, its split, and where it was described (for error messages)."""

    image: Path
    captions: tuple[str, ...]
    split: str
    source: str  # "manifest.jsonl:12" or "dataset_coco.json: images[17]"


def _record(image: Path, captions: Any, split: Any, source: str) -> ImageRecord:
    if split not in SPLIT_NAMES:
        expected = sorted(SPLIT_NAMES)
        raise ValueError(
            f"{source}: unknown split {split!r}; expected one of {expected} (`selhn data folder "
            "DIR --out MANIFEST` writes a manifest with splits for a folder of images)"
        )
    if not isinstance(captions, list) or not captions:
        raise ValueError(f"{source}: no captions (expected a non-empty list of strings)")
    cleaned = []
    for number, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{source}: caption {number} is not a non-empty string")
        cleaned.append(" ".join(caption.split()))  # one line each in {split}_caps.txt
    if not image.is_file():
        raise FileNotFoundError(f"{source}: image file {image} not found")
    return ImageRecord(image, tuple(cleaned), SPLIT_NAMES[split], source)


def manifest_entries(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("manifest.jsonl:12", object) of each non-blank line, each checked to be a JSON object
    with an ``image`` path."""
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{source}: not a JSON object ({err})") from err
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise ValueError(f"{source}: expected an object with an 'image' path")
        yield source, entry


def read_manifest(
    path: str | Path, images: str | Path | None = None, index_only: list[str] | None = None
) -> list[ImageRecord]:
    """Records of a JSON-lines manifest; image paths are relative to ``images`` (default: the
    manifest's folder). Blank lines are skipped; the images of lines with neither captions nor
    a split are appended to ``index_only`` (an error if it is None)."""
    path = Path(path)
    root = Path(images) if images is not None else path.parent
    records = []
    for source, entry in manifest_entries(path):
        if index_only is not None and not entry.get("captions") and "split" not in entry:
            index_only.append(entry["image"])
            continue
        image = root / entry["image"]
        records.append(_record(image, entry.get("captions"), entry.get("split"), source))
    if not records:
        raise ValueError(f"{path}: no images")
    _check_unique(records)
    return records


def read_karpathy(path: str | Path, images: str | Path) -> list[ImageRecord]:
    """Records of a Karpathy split file; ``images`` is the folder that ``filepath/filename``
    (Flickr30K: ``filename``) is relative to. Captions are the sentences' ``raw`` text."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
        entries = data["images"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a Karpathy split file with an 'images' list ({err})"
        ) from None
    records = []
    for number, entry in enumerate(entries):
        source = f"{path}: images[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise ValueError(f"{source}: expected an object with a 'filename'")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            raise ValueError(f"{source}: expected a 'sentences' list")
        captions = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
        image = Path(images) / entry.get("filepath", "") / entry["filename"]
        records.append(_record(image, captions, entry.get("split"), source))
    if not records:
        raise ValueError(f"{path}: no images")
    _check_unique(records)
    return records


def _check_unique(records: list[ImageRecord]) -> None:
    """An image listed twice would be two images to the evaluation: each counts the other as a
    wrong answer."""
    first: dict[Path, str] = {}
    for record in records:
        key = record.image.resolve()
        if key in first:
            raise ValueError(
                f"{record.source}: image {record.image} is already listed at {first[key]}; "
                "list each image once, with all its captions"
            )
        first[key] = record.source


def by_split(records: list[ImageRecord]) -> dict[str, list[ImageRecord]]:
    """The records of each split that has any, in file order."""
    out: dict[str, list[ImageRecord]] = {}
    for record in records:
        out.setdefault(record.split, []).append(record)
    return {split: out[split] for split in SPLITS if split in out}
