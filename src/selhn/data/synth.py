"""A deterministic synthetic image-text data set in the SCAN precomp layout.

Each image is a scene of 2-4 objects on a 3 x 3 grid, with a shape, a colour and a size. Each
object yields two "detections" (region features) and the rest of the K regions are background,
like a detector's boxes: a region feature is a fixed random two-layer network applied to the
object's attributes and grid cell, plus noise, in shuffled order. Five captions per image describe
different subsets of objects and relations ("a big crimson block to the left of a small ball"),
with synonyms. A third of the scenes are near duplicates of an earlier scene of the same split
with two colours swapped, two objects swapped in place, or one attribute changed, so hardest
negatives are informative and a bag of words cannot tell the pair apart: attribute binding and
relations matter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selhn.data.precomp import write_split

SHAPES = {
    "cube": ["cube", "block", "box"],
    "sphere": ["sphere", "ball", "orb"],
    "cylinder": ["cylinder", "tube"],
    "cone": ["cone"],
    "pyramid": ["pyramid"],
    "ring": ["ring", "hoop"],
    "star": ["star"],
    "torus": ["torus", "donut"],
}
COLOURS = {
    "red": ["red", "crimson"],
    "green": ["green", "emerald"],
    "blue": ["blue", "navy"],
    "yellow": ["yellow", "golden"],
    "purple": ["purple", "violet"],
    "orange": ["orange", "amber"],
    "white": ["white", "ivory"],
    "black": ["black", "dark"],
}
SIZES = {
    "small": ["small", "tiny", "little"],
    "medium": ["medium", "mid-sized"],
    "large": ["large", "big"],
}
COLUMNS = ["left", "middle", "right"]
ROWS = ["top", "middle", "bottom"]
RELATIONS = {  # (dx sign, dy sign) of subject relative to object -> phrases
    "left": ["to the left of", "left of"],
    "right": ["to the right of", "right of"],
    "above": ["above", "over"],
    "below": ["below", "under", "beneath"],
}
_WORLD_SEED = 20230301  # the feature map is the same for every data set
_BACKGROUNDS = 16
_HIDDEN = 128
_MAX_OBJECTS = 4


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the generated data set."""

    train: int = 10_000
    dev: int = 1_000
    test: int = 1_000
    regions: int = 12
    feature_dim: int = 256
    captions_per_image: int = 5
    near_duplicates: float = 1 / 3
    noise: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.train, self.dev, self.test) < 1:
            raise ValueError("synth: --train, --dev and --test need at least 1 image each")
        if self.regions < 2 * _MAX_OBJECTS:
            raise ValueError(f"synth: --regions must be >= {2 * _MAX_OBJECTS}, got {self.regions}")
        if self.feature_dim < 1 or self.captions_per_image < 1:
            raise ValueError("synth: --feature-dim and captions per image must be >= 1")


@dataclass
class Scenes:
    """Object attributes of N scenes; -1 marks an absent object slot."""

    shape: np.ndarray  # (N, 4)
    colour: np.ndarray
    size: np.ndarray
    cell: np.ndarray  # 0..8, row-major on the 3 x 3 grid


def _random_scenes(n: int, rng: np.random.Generator) -> Scenes:
    counts = rng.integers(2, _MAX_OBJECTS + 1, size=n)
    present = np.arange(_MAX_OBJECTS)[None, :] < counts[:, None]
    cells = np.argsort(rng.random((n, 9)), axis=1)[:, :_MAX_OBJECTS]

    def attribute(k: int) -> np.ndarray:
        return np.where(present, rng.integers(0, k, size=(n, _MAX_OBJECTS)), -1)

    return Scenes(
        attribute(len(SHAPES)),
        attribute(len(COLOURS)),
        attribute(len(SIZES)),
        np.where(present, cells, -1),
    )


def make_scenes(
    n: int, near_duplicates: float, rng: np.random.Generator
) -> tuple[Scenes, np.ndarray]:
    """N scenes and, per scene, the earlier scene it is a near duplicate of (-1 if none)."""
    scenes = _random_scenes(n, rng)
    return scenes, _perturb(scenes, near_duplicates, rng)


def _perturb(scenes: Scenes, share: float, rng: np.random.Generator) -> np.ndarray:
    """Turn ``share`` of the scenes into near duplicates of earlier ones; return their sources."""
    n = len(scenes.shape)
    source = np.full(n, -1)
    for i in np.flatnonzero(rng.random(n) < share):
        if i == 0:
            continue
        j = int(rng.integers(0, i))
        source[i] = j
        for field in (scenes.shape, scenes.colour, scenes.size, scenes.cell):
            field[i] = field[j]
        count = int((scenes.shape[i] >= 0).sum())
        a, b = rng.choice(count, size=2, replace=False)
        change = rng.integers(3)
        if change == 0 and scenes.colour[i, a] != scenes.colour[i, b]:  # colour binding
            scenes.colour[i, [a, b]] = scenes.colour[i, [b, a]]
        elif change <= 1:  # the same objects in each other's places: relations change
            scenes.cell[i, [a, b]] = scenes.cell[i, [b, a]]
        else:
            scenes.shape[i, a] = (scenes.shape[i, a] + 1 + rng.integers(len(SHAPES) - 1)) % len(
                SHAPES
            )
    return source


class FeatureMap:
    """A fixed random two-layer network from region attributes to detector-like features."""

    def __init__(self, feature_dim: int) -> None:
        rng = np.random.default_rng(_WORLD_SEED)
        self.inputs = len(SHAPES) + len(COLOURS) + len(SIZES) + 3 + 3 + 2 + _BACKGROUNDS
        self.w1 = rng.normal(0, 1 / np.sqrt(8), (self.inputs, _HIDDEN)).astype(np.float32)
        self.b1 = rng.normal(0, 0.5, _HIDDEN).astype(np.float32)
        self.w2 = rng.normal(0, 1 / np.sqrt(_HIDDEN), (_HIDDEN, feature_dim)).astype(np.float32)

    def __call__(self, codes: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
        hidden = np.maximum(codes @ self.w1 + self.b1, 0)
        out = hidden @ self.w2
        out += rng.normal(0, noise, out.shape).astype(np.float32)
        return np.maximum(out, 0)  # non-negative, like pooled CNN activations


def _region_codes(scenes: Scenes, regions: int, rng: np.random.Generator) -> np.ndarray:
    """(N, regions, inputs) attribute codes: two jittered detections per object, then background."""
    n = len(scenes.shape)
    offsets = np.cumsum([0, len(SHAPES), len(COLOURS), len(SIZES), 3, 3, 2])
    codes = np.zeros((n, regions, offsets[-1] + _BACKGROUNDS), dtype=np.float32)
    image, obj = np.nonzero(scenes.shape >= 0)
    attributes = (scenes.shape, scenes.colour, scenes.size, scenes.cell % 3, scenes.cell // 3)
    for det in range(2):
        region = obj + det * _MAX_OBJECTS
        for offset, values in zip(offsets[:5], attributes, strict=True):
            codes[image, region, offset + values[image, obj]] = 1
        codes[image, region, offsets[5] : offsets[6]] = rng.normal(0, 0.3, (len(image), 2))
    background = np.ones((n, regions), dtype=bool)
    for det in range(2):
        background[:, det * _MAX_OBJECTS : (det + 1) * _MAX_OBJECTS] = scenes.shape < 0
    image, region = np.nonzero(background)
    kind = rng.integers(0, _BACKGROUNDS, len(image))
    codes[image, region, offsets[-1] + kind] = 1
    codes[image, region, offsets[5] : offsets[6]] = rng.normal(0, 0.3, (len(image), 2))
    order = np.argsort(rng.random((n, regions)), axis=1)  # detectors give no fixed order
    return np.take_along_axis(codes, order[..., None], axis=1)


def _phrase(scenes: Scenes, i: int, k: int, rng: np.random.Generator, with_size: bool) -> str:
    def pick(table: dict[str, list[str]], index: int) -> str:
        options = list(table.values())[index]
        return options[rng.integers(len(options))]

    words = ["a"]
    if with_size:
        words.append(pick(SIZES, scenes.size[i, k]))
    words += [pick(COLOURS, scenes.colour[i, k]), pick(SHAPES, scenes.shape[i, k])]
    return " ".join(words)


def _relation(cell_a: int, cell_b: int, rng: np.random.Generator) -> str:
    dx, dy = cell_a % 3 - cell_b % 3, cell_a // 3 - cell_b // 3
    options = ([] if dx == 0 else ["left" if dx < 0 else "right"]) + (
        [] if dy == 0 else ["above" if dy < 0 else "below"]
    )
    name = options[rng.integers(len(options))]
    return RELATIONS[name][rng.integers(len(RELATIONS[name]))]


def _caption(scenes: Scenes, i: int, template: int, rng: np.random.Generator) -> str:
    count = int((scenes.shape[i] >= 0).sum())
    a, b = (int(x) for x in rng.choice(count, size=2, replace=False))
    sized = bool(rng.random() < 0.6)
    if template == 0:
        cell = scenes.cell[i, a]
        where = f"{ROWS[cell // 3]} {COLUMNS[cell % 3]}".replace("middle middle", "centre")
        return f"{_phrase(scenes, i, a, rng, sized)} in the {where} of the picture"
    if template == 1:
        rel = _relation(int(scenes.cell[i, a]), int(scenes.cell[i, b]), rng)
        return f"{_phrase(scenes, i, a, rng, sized)} {rel} {_phrase(scenes, i, b, rng, sized)}"
    if template == 2:
        return f"{_phrase(scenes, i, a, rng, sized)} and {_phrase(scenes, i, b, rng, sized)}"
    others = [k for k in range(count) if k != a]
    listed = " and ".join(_phrase(scenes, i, k, rng, False) for k in others)
    number = ["no", "one", "two", "three", "four"][count]
    return f"{number} objects : {_phrase(scenes, i, a, rng, True)} with {listed}"


def _captions(scenes: Scenes, per_image: int, rng: np.random.Generator) -> list[str]:
    out = []
    for i in range(len(scenes.shape)):
        templates = rng.permutation(np.resize(np.arange(4), max(per_image, 4)))[:per_image]
        out += [_caption(scenes, i, int(t), rng) for t in templates]
    return out


def generate(out: str | Path, config: SynthConfig = SynthConfig()) -> dict[str, float]:
    """Write train/dev/test splits to ``out``; return the seconds taken and bytes written."""
    start = time.perf_counter()
    feature_map = FeatureMap(config.feature_dim)
    root = Path(out)
    for index, (split, n) in enumerate(
        (("train", config.train), ("dev", config.dev), ("test", config.test))
    ):
        rng = np.random.default_rng((config.seed, index))
        scenes, _ = make_scenes(n, config.near_duplicates, rng)
        codes = _region_codes(scenes, config.regions, rng)
        features = feature_map(codes, config.noise, rng)
        write_split(root, split, features, _captions(scenes, config.captions_per_image, rng))
    size = sum(f.stat().st_size for f in root.glob("*_*.*"))
    return {"seconds": time.perf_counter() - start, "bytes": size}
