"""A small real-image data set from images that ship in PyPI packages, written as PNG files and a
JSON-lines manifest, for trying the raw-image path offline (``selhn data samples``).

- Photos from ``skimage.data`` (astronaut, cat, coffee, rocket, ...) with captions written here,
  all in the train split.
- Pairs of real handwritten digits from scikit-learn's digits set (1,797 scans, 8 x 8), drawn side
  by side in one of six ink colours: "a red three next to a red seven". Each digit scan is used
  once, so no two images share pixels; they make the train, dev and test splits. Every third
  pair has one caption, the others two.

Needs the ``samples`` extra (scikit-image, scikit-learn, Pillow).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PHOTOS = {
    "astronaut": ["an astronaut in a white space suit in front of a flag", "a smiling astronaut"],
    "chelsea": ["a tabby cat looking to the side", "a cat with green eyes and striped fur"],
    "coffee": ["a cup of coffee on a saucer with a spoon", "a red coffee cup seen from above"],
    "rocket": ["a rocket on its launch pad", "a space rocket standing on the pad at dusk"],
    "camera": ["a man with a camera on a tripod", "a photographer in a black coat outdoors"],
    "coins": ["rows of old coins on a dark background", "many small coins"],
    "horse": ["the silhouette of a horse", "a black horse shape on white"],
    "moon": ["the surface of the moon with craters", "a grey cratered lunar surface"],
    "page": ["a page of printed text", "an old scanned page of a book"],
    "hubble_deep_field": ["distant galaxies in deep space", "a telescope image of many galaxies"],
    "immunohistochemistry": ["a stained tissue sample under a microscope", "brown and blue cells"],
    "retina": ["a photograph of the retina of an eye", "blood vessels in the back of an eye"],
    "colorwheel": ["a colour wheel", "a circle of rainbow colours"],
    "stereo_motorcycle": ["a motorcycle parked indoors", "a red and black motorbike"],
}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INKS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
}


def _photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo pairs
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def _digit_pair(left: np.ndarray, right: np.ndarray, ink: tuple[int, int, int]) -> np.ndarray:
    """Two 8 x 8 scans (0..16) -> a (64, 128, 3) uint8 image of coloured ink on black."""
    strokes = np.concatenate([left, right], axis=1) / 16.0  # (8, 16)
    strokes = np.kron(strokes, np.ones((8, 8)))  # (64, 128), nearest-neighbour upscaling
    return (strokes[..., None] * np.array(ink)).astype(np.uint8)


def digit_captions(left: int, right: int, colour: str) -> list[str]:
    a, b = NUMBERS[left], NUMBERS[right]
    return [
        f"a {colour} {a} next to a {colour} {b}",
        f"the handwritten digits {left} and {right} in {colour} ink",
    ]


def write_samples(
    out: str | Path, train: int = 600, dev: int = 100, test: int = 150, seed: int = 0
) -> Path:
    """Write the PNG files and ``out/manifest.jsonl``; return the manifest's path."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    if 2 * (train + dev + test) > len(digits.images):
        raise ValueError(
            f"samples: {train + dev + test} digit pairs need {2 * (train + dev + test)} scans; "
            f"the digits set has {len(digits.images)}"
        )
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for name, captions in PHOTOS.items():
        Image.fromarray(_photo(name)).save(out / "images" / f"{name}.png")
        lines.append({"image": f"images/{name}.png", "captions": captions, "split": "train"})
    scans = rng.permutation(len(digits.images))
    colours = list(INKS)
    splits = ["train"] * train + ["dev"] * dev + ["test"] * test
    for number, split in enumerate(splits):
        i, j = scans[2 * number], scans[2 * number + 1]
        colour = colours[rng.integers(len(colours))]
        image = _digit_pair(digits.images[i], digits.images[j], INKS[colour])
        path = f"images/digits-{number:04d}.png"
        Image.fromarray(image).save(out / path)
        captions = digit_captions(int(digits.target[i]), int(digits.target[j]), colour)
        captions = captions[:1] if number % 3 == 0 else captions  # one caption is common too
        lines.append({"image": path, "captions": captions, "split": split})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return manifest
