"""Real image-caption data sets built from registry packages, written as selhn manifests.

Each set is a folder of RGB PNG files and ``manifest.jsonl`` (one
``{"image", "captions", "split"}`` object a line, see ``selhn.data.manifest``). Items are picked
deterministically (sorted inputs, seeded shuffle) and split at random with the seed, about 70%
train, 12% dev and 18% test. Items that cannot be used are skipped and counted by reason.

Sets:

- ``openclipart``: public-domain clip art (CC0 / public domain dedication) from Debian's
  ``openclipart-svg`` (8,121 SVG drawings, Open Clip Art Library 0.18), rendered by
  ``rsvg-convert`` (Debian ``librsvg2-bin``) to 256 x 256 on white. Captions come from each
  drawing's RDF metadata: its ``dc:title`` (underscores made spaces, a trailing number dropped),
  its ``dc:description`` when it is a real sentence, and "clip art tagged k1, k2, ..." from its
  ``dc:subject`` keywords (ids, author names and collection words removed). Drawings without a
  title, with a file-name-like title ("Tigre01", "HASH(0x...)"), or with a title shared by more
  than three drawings (collection names such as "Lemon SVG theme", "card") are skipped, and so
  are those that fail to render or render blank. About 3,100 drawings qualify; 1,000 are taken.
- ``emoji``: Google's Noto Color Emoji images (Apache-2.0; font under OFL-1.1) from Debian's
  ``fonts-noto-color-emoji``, drawn with Pillow at the font's 109 px size on a 136 x 136 white
  canvas. The emoji are the 1,377 single-code-point fully-qualified emoji of Unicode's
  ``emoji-test.txt`` (Debian ``unicode-data``; skin-tone, flag, keycap and ZWJ sequences are
  left out); 1,000 are taken. Captions: the code point's Unicode name lower-cased ("smiling face
  with open mouth"; the CLDR short name from ``emoji-test.txt`` where Python's Unicode tables are
  older than the emoji), and "<CLDR short name> emoji: <CLDR keywords>" from the English CLDR
  annotations (Debian ``unicode-cldr-core``, Unicode licence) when it has keywords.
- ``samples``: selhn's own ``selhn data samples`` set: 14 scikit-image photos (train) and 850
  pairs of scikit-learn's handwritten digit scans (600 train, 100 dev, 150 test), captioned by
  ``selhn.data.samples``; its own seeded split, not the one above.

Install: see ``APT`` and ``PIP`` below (``apt-get update`` first); a missing tool is reported
with the command that installs it.

Usage: python benchmarks/real_sets.py NAME --out DIR [--limit N] [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import re
import shutil
import subprocess
import sys
import time
import unicodedata
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # Pillow is imported where used, after missing_tools has checked for it
    from PIL import Image, ImageFont

APT = {
    "openclipart": ["openclipart-svg", "librsvg2-bin"],
    "emoji": ["fonts-noto-color-emoji", "unicode-data", "unicode-cldr-core"],
    "samples": [],
}
PIP = {
    "openclipart": ["pillow"],
    "emoji": ["pillow"],
    "samples": ["pillow", "scikit-image", "scikit-learn"],
}
# A file or program that shows each Debian package is installed, and each PyPI package's module.
APT_FILES = {
    "openclipart-svg": "/usr/share/openclipart/svg",
    "librsvg2-bin": "rsvg-convert",
    "fonts-noto-color-emoji": "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "unicode-data": "/usr/share/unicode/emoji/emoji-test.txt",
    "unicode-cldr-core": "/usr/share/unicode/cldr/common/annotations/en.xml",
}
PIP_MODULES = {"pillow": "PIL", "scikit-image": "skimage", "scikit-learn": "sklearn"}

SIZE = 1000  # images per set where the source has that many
SPLIT_SHARES = {"train": 0.70, "dev": 0.12}  # the rest is test

CLIPART = Path(APT_FILES["openclipart-svg"])
CLIPART_SIDE = 256
CLIPART_MARGIN = 8  # white pixels around the drawing's cropped content
MAX_TITLE_USES = 3  # a title shared by more drawings names a collection, not a drawing
NS = {
    "cc": "http://web.resource.org/cc/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
ID_TOKEN = re.compile(r"[a-z]\d|\d[a-z]|@|#|hash\(|https?:|www\.|\.svg", re.IGNORECASE)
COLLECTION = re.compile(r"\b(collection|theme|iconset|clip ?arts?)\b", re.IGNORECASE)
GENERIC_KEYWORDS = {"hash", "icon", "icons", "theme", "clipart", "signs and symbols", "unsorted"}

EMOJI_FONT = APT_FILES["fonts-noto-color-emoji"]
EMOJI_TEST = Path(APT_FILES["unicode-data"])
CLDR_EN = Path(APT_FILES["unicode-cldr-core"])
EMOJI_PX = 109  # Noto Color Emoji's only bitmap size
EMOJI_SIDE = 136
EMOJI_LINE = re.compile(r"^([0-9A-F ]+?)\s*; fully-qualified\s+# \S+ E[\d.]+ (.+)$")

Item = tuple[str, list[str]]  # image path relative to the set's folder, captions
T = TypeVar("T")


def missing_tools(name: str) -> list[str]:
    """Install commands for what set ``name`` needs and this machine lacks."""
    apt = [p for p in APT[name] if not (shutil.which(APT_FILES[p]) or Path(APT_FILES[p]).exists())]
    pip = [p for p in PIP[name] if importlib.util.find_spec(PIP_MODULES[p]) is None]
    commands = [f"apt-get update && apt-get install -y {' '.join(apt)}"] if apt else []
    return commands + ([f"pip install {' '.join(pip)}"] if pip else [])


def split_names(count: int, rng: random.Random) -> list[str]:
    """A shuffled list of ``count`` split names in the shares of SPLIT_SHARES."""
    train = round(count * SPLIT_SHARES["train"])
    dev = round(count * SPLIT_SHARES["dev"])
    names = ["train"] * train + ["dev"] * dev + ["test"] * (count - train - dev)
    rng.shuffle(names)
    return names


def write_manifest(out: Path, items: list[Item], rng: random.Random) -> Path:
    """``out/manifest.jsonl`` for ``items`` with a seeded random split; return its path."""
    splits = split_names(len(items), rng)
    lines = [
        json.dumps({"image": image, "captions": captions, "split": split}) + "\n"
        for (image, captions), split in zip(items, splits, strict=True)
    ]
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(lines), encoding="utf-8")
    return manifest


def take(
    candidates: list[T], limit: int, make: Callable[[T], Item | str], skipped: Counter
) -> list[Item]:
    """Items ``make``-d from ``candidates`` in order until ``limit`` succeed; a string that
    ``make`` returns is a reason to skip that candidate, counted in ``skipped``."""
    items: list[Item] = []
    for candidate in candidates:
        if len(items) == limit:
            break
        made = make(candidate)
        if isinstance(made, str):
            skipped[made] += 1
        else:
            items.append(made)
    return items


# openclipart


def clean_title(title: str) -> str:
    """The title as a caption: no "Clipart by X - " or trailing number; a one-word title's
    underscores, hyphens and camel case as spaces ("arrow-left-blue", "CayennePepper")."""
    title = " ".join(title.replace("_", " ").split())
    title = re.sub(r"^clipart by [^-]+ - ", "", title, flags=re.IGNORECASE)
    if " " not in title:
        title = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", title.replace("-", " "))
    return re.sub(r"\s+\d+$", "", title)


def title_problem(title: str, creator: str) -> str | None:
    """Why a cleaned title cannot be a caption, or None."""
    if not title:
        return "no title"
    if title.lower() == creator.lower():
        return "author's name as title"
    if ID_TOKEN.search(title) or not re.search(r"[a-zA-Z]{3}", title):
        return "file-name-like title"
    if COLLECTION.search(title):
        return "collection name as title"
    return None


def description_caption(description: str, title: str) -> str | None:
    """The description if it is a short real sentence that says more than the title."""
    description = " ".join(description.split())
    words = len(description.split())
    if not 2 <= words <= 40 or description.lower() == title.lower():
        return None
    if ID_TOKEN.search(description) or COLLECTION.search(description):
        return None
    return description


def keyword_caption(keywords: list[str], creator: str) -> str | None:
    """ "clip art tagged a, b, c" from the subject keywords, without ids and author names."""
    author = set(creator.lower().split()) | {creator.lower()}
    kept: list[str] = []
    for keyword in keywords:
        keyword = " ".join(keyword.replace("_", " ").lower().split())
        unusable = keyword in GENERIC_KEYWORDS or keyword in author or ID_TOKEN.search(keyword)
        if not unusable and re.search(r"[a-z]{3}", keyword) and keyword not in kept:
            kept.append(keyword)
    return f"clip art tagged {', '.join(kept[:6])}" if kept else None


def clipart_metadata(path: Path) -> dict[str, str | list[str]] | None:
    """Title, description, keywords and creator from an SVG's RDF metadata (None: unreadable)."""
    try:
        work = ET.parse(path).getroot().find(".//cc:Work", NS)
    except ET.ParseError:
        return None
    if work is None:
        return {"title": "", "description": "", "keywords": [], "creator": ""}
    keywords = [li.text for li in work.findall("dc:subject//rdf:li", NS) if li.text]
    return {
        "title": clean_title(work.findtext("dc:title", "", NS)),
        "description": work.findtext("dc:description", "", NS),
        "keywords": keywords,
        "creator": work.findtext("dc:creator/cc:Agent/dc:title", "", NS).strip(),
    }


def clipart_candidates(skipped: Counter) -> list[tuple[Path, list[str]]]:
    """Every drawing with a usable title, sorted by path, with its captions."""
    metadata = {}
    for path in sorted(CLIPART.rglob("*.svg")):
        meta = clipart_metadata(path)
        if meta is None:
            skipped["unreadable SVG"] += 1
        else:
            metadata[path] = meta
    uses = Counter(str(meta["title"]).lower() for meta in metadata.values())
    candidates = []
    for path, meta in metadata.items():
        title = str(meta["title"])
        problem = title_problem(title, str(meta["creator"]))
        if problem is None and uses[title.lower()] > MAX_TITLE_USES:
            problem = f"title shared by more than {MAX_TITLE_USES} drawings"
        if problem:
            skipped[problem] += 1
            continue
        extra = [
            description_caption(str(meta["description"]), title),
            keyword_caption(list(meta["keywords"]), str(meta["creator"])),
        ]
        candidates.append((path, [title] + [c for c in extra if c]))
    return candidates


def render_svg(path: Path, side: int) -> Image.Image | str:
    """The drawing, cropped to its content and fitted into a white ``side`` x ``side`` RGB
    square, or why it failed."""
    from PIL import Image, ImageOps

    big = str(2 * side)
    command = ["rsvg-convert", "-w", big, "-h", big, "-a", "-b", "white", str(path)]
    try:
        result = subprocess.run(command, capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "render timed out (30 s)"
    if result.returncode != 0 or not result.stdout:
        return "render failed"
    drawing = Image.open(io.BytesIO(result.stdout)).convert("RGB")
    content = ImageOps.invert(drawing.convert("L")).point(lambda v: 255 if v > 5 else 0).getbbox()
    if content is None:
        return "rendered blank"
    drawing = drawing.crop(content)
    drawing.thumbnail((side - 2 * CLIPART_MARGIN,) * 2, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(drawing, ((side - drawing.width) // 2, (side - drawing.height) // 2))
    return canvas


def build_openclipart(out: Path, limit: int, rng: random.Random) -> list[Item]:
    skipped: Counter = Counter()
    candidates = clipart_candidates(skipped)
    print(f"openclipart: {len(candidates)} drawings with a usable title")
    rng.shuffle(candidates)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def make(candidate: tuple[Path, list[str]]) -> Item | str:
        path, captions = candidate
        image = render_svg(path, CLIPART_SIDE)
        if isinstance(image, str):
            return image
        relative = path.relative_to(CLIPART).with_suffix(".png")
        name = f"images/{'-'.join(relative.parts)}"
        image.save(out / name)
        return name, captions

    items = take(candidates, limit, make, skipped)
    report_skipped("openclipart", skipped)
    return items


# emoji


def emoji_list() -> list[tuple[str, str]]:
    """(emoji, CLDR short name) for each single-code-point fully-qualified emoji, in file order."""
    emoji = []
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        match = EMOJI_LINE.match(line)
        if match:
            points = [chr(int(p, 16)) for p in match.group(1).split()]
            if len([p for p in points if p != "\ufe0f"]) == 1:
                emoji.append(("".join(points), match.group(2)))
    return emoji


def cldr_keywords() -> dict[str, list[str]]:
    """English CLDR annotation keywords of each emoji, keyed without variation selectors."""
    root = ET.parse(CLDR_EN).getroot()
    return {
        node.get("cp", "").replace("\ufe0f", ""): [w.strip() for w in node.text.split("|")]
        for node in root.iter("annotation")
        if node.get("type") != "tts" and node.text
    }


def emoji_captions(emoji: str, short_name: str, keywords: dict[str, list[str]]) -> list[str]:
    """The Unicode name (or the CLDR short name) and "<short name> emoji: <keywords>"."""
    base = emoji.replace("\ufe0f", "")
    captions = [unicodedata.name(base, short_name).lower()]
    words = [w for w in keywords.get(base, []) if w.lower() != short_name.lower()]
    if words:
        captions.append(f"{short_name} emoji: {', '.join(words)}")
    return captions


def render_emoji(emoji: str, font: ImageFont.FreeTypeFont) -> Image.Image | str:
    """The emoji centred on a white square, or why it cannot be drawn."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (EMOJI_SIDE, EMOJI_SIDE), "white")
    left, top, right, bottom = font.getbbox(emoji)
    x = (EMOJI_SIDE - (right - left)) // 2 - left
    y = (EMOJI_SIDE - (bottom - top)) // 2 - top
    ImageDraw.Draw(canvas).text((x, y), emoji, font=font, embedded_color=True)
    if canvas.convert("L").getextrema()[0] >= 250:
        return "no glyph in the font"
    return canvas


def build_emoji(out: Path, limit: int, rng: random.Random) -> list[Item]:
    from PIL import ImageFont

    font = ImageFont.truetype(EMOJI_FONT, EMOJI_PX)
    keywords = cldr_keywords()
    candidates = emoji_list()
    print(f"emoji: {len(candidates)} single-code-point emoji")
    rng.shuffle(candidates)
    (out / "images").mkdir(parents=True, exist_ok=True)
    skipped: Counter = Counter()
    cldr_named = [0]

    def make(candidate: tuple[str, str]) -> Item | str:
        emoji, short_name = candidate
        image = render_emoji(emoji, font)
        if isinstance(image, str):
            return image
        if not unicodedata.name(emoji[0], ""):
            cldr_named[0] += 1
        name = f"images/u{ord(emoji[0]):04x}.png"
        image.save(out / name)
        return name, emoji_captions(emoji, short_name, keywords)

    items = take(candidates, limit, make, skipped)
    report_skipped("emoji", skipped)
    version = unicodedata.unidata_version
    print(f"emoji: {cldr_named[0]} newer than Python's Unicode {version}, captioned by CLDR name")
    return items


# samples


def build_samples(out: Path, limit: int, seed: int) -> Path:
    """selhn's sample set with 850 digit pairs (600/100/150), scaled down to ``limit``."""
    from selhn.data.samples import PHOTOS, write_samples

    pairs = max(limit - len(PHOTOS), 3)
    sizes = {"train": 600, "dev": 100, "test": 150}
    scale = min(1.0, pairs / sum(sizes.values()))
    sizes = {split: max(1, round(size * scale)) for split, size in sizes.items()}
    return write_samples(out, seed=seed, **sizes)


# common


def report_skipped(name: str, skipped: Counter) -> None:
    for reason, count in sorted(skipped.items()):
        print(f"{name}: skipped {count}: {reason}")


def summarize(name: str, manifest: Path, seconds: float) -> None:
    """Print images per split and captions per image of a written manifest."""
    from selhn.data.manifest import read_manifest

    records = read_manifest(manifest)  # also checks the manifest
    per_split = Counter(record.split for record in records)
    captions = sum(len(record.captions) for record in records) / len(records)
    splits = ", ".join(f"{per_split[s]} {s}" for s in ("train", "dev", "test"))
    print(
        f"{name}: wrote {manifest} with {len(records)} images ({splits}), "
        f"{captions:.2f} captions per image, in {seconds:.1f} s"
    )


BUILDERS: dict[str, Callable[[Path, int, random.Random], list[Item]]] = {
    "openclipart": build_openclipart,
    "emoji": build_emoji,
}
NAMES = [*BUILDERS, "samples"]


def build(name: str, out: str | Path, limit: int | None = None, seed: int = 0) -> Path:
    """Build set ``name`` into folder ``out`` (at most ``limit`` images); return the manifest."""
    if name not in NAMES:
        raise ValueError(f"unknown set {name!r}; expected one of {NAMES}")
    commands = missing_tools(name)
    if commands:
        raise RuntimeError(f"{name} needs: " + " ; ".join(commands))
    out, limit = Path(out), min(limit or SIZE, SIZE)
    start = time.perf_counter()
    if name == "samples":
        manifest = build_samples(out, limit, seed)
    else:
        rng = random.Random(seed)
        manifest = write_manifest(out, BUILDERS[name](out, limit, rng), rng)
    summarize(name, manifest, time.perf_counter() - start)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=None, help=f"at most this many (<= {SIZE})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        build(args.name, args.out, args.limit, args.seed)
    except RuntimeError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
