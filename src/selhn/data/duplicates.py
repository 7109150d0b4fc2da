"""False negatives of a split: captions and images that are the same as others of it.

A split pairs each caption with one image, but a caption's text may recur under other images (and
an image file may recur under another name). Such pairs are positives that the standard protocol
counts as negatives. ``split_duplicates`` gives each caption and image a key, equal keys meaning
"the same", which the losses (``selhn.losses.Duplicates``) and the duplicate-aware evaluation read:

- ``same_caption``: captions whose normalised text (``normalise_caption``) is identical, images
  whose file bytes are identical (the stored input where the files are not at hand);
- ``similar``: as ``same_caption``, and captions joined by a chain of pairs whose frozen sentence
  embeddings have cosine >= a threshold.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selhn.data.inputs import Split
from selhn.losses import Duplicates
from selhn.utils.digests import file_sha256


def normalise_caption(text: str) -> str:
    """The words of a caption, case-folded and joined by single spaces: "A dog, running." and
    "a dog running" are the same caption."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))


def equal_keys(values: Iterable[Hashable]) -> np.ndarray:
    """(len(values),) int64: equal values get equal keys (numbered in order of first sight)."""
    seen: dict[Hashable, int] = {}
    return np.array([seen.setdefault(value, len(seen)) for value in values], dtype=np.int64)


def image_keys(split: Split) -> tuple[np.ndarray, str]:
    """((N_images,) keys equal for identical images, what they were read from): the bytes of
    the listed image files where every one is present (names relative to the data directory),
    else each image's stored input."""
    files = split.image_files()
    if files:
        root = split.captions_path.parent
        paths = [Path(f) if Path(f).is_absolute() else root / f for f in files]
        if all(path.is_file() for path in paths):
            return equal_keys(file_sha256(path) for path in paths), "image files"
    stored = (np.asarray(split.image(i)) for i in range(split.num_images))
    keys = equal_keys(hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest() for a in stored)
    return keys, "stored image input"


def similar_groups(embeddings: Tensor, threshold: float, elements: int = 1 << 24) -> np.ndarray:
    """(M,) keys of the connected components of rows whose cosine is >= ``threshold`` (the rows
    of an (M, H) matrix, compared on its device in blocks of about ``elements`` scores)."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
    parent = np.arange(len(unit))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    step = max(1, elements // max(len(unit), 1))
    for start in range(0, len(unit), step):
        close = (unit[start : start + step] @ unit.T >= threshold).nonzero().cpu().numpy()
        for a, b in close:
            ra, rb = root(start + int(a)), root(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return equal_keys(root(i) for i in range(len(unit)))


@dataclass(frozen=True)
class SplitDuplicates:
    """Keys of a split's images and captions; equal keys are the same image (caption).

    ``image_keys``: (N_images,); ``caption_keys``: (N_captions,); ``image_captions``: (N_images,
    K) the caption keys of the captions of each image and of every image identical to it, -1
    padded; ``image_source``: what the image keys were read from.
    """

    image_keys: np.ndarray
    caption_keys: np.ndarray
    image_captions: np.ndarray
    image_source: str = ""

    @classmethod
    def of(
        cls,
        image_keys: np.ndarray,
        caption_keys: np.ndarray,
        caption_images: np.ndarray,
        image_source: str = "",
    ) -> SplitDuplicates:
        """The keys of images and captions, with ``caption_images`` the image of each caption.
        Identical images share their captions: a caption of one describes the others."""
        _, image_class = np.unique(image_keys, return_inverse=True)
        if not len(caption_keys):
            return cls(image_keys, caption_keys, np.full((len(image_keys), 1), -1), image_source)
        owner = image_class[caption_images]  # each caption's class of identical images
        pairs = np.unique(np.stack([owner, caption_keys]), axis=1)  # distinct (class, key)
        per_class = np.bincount(pairs[0], minlength=int(image_class.max(initial=-1)) + 1)
        table = np.full((len(per_class), max(int(per_class.max(initial=0)), 1)), -1, np.int64)
        starts = np.concatenate([[0], np.cumsum(per_class)[:-1]]).astype(np.int64)
        slot = np.arange(pairs.shape[1]) - starts[pairs[0]]  # pairs are sorted by class
        table[pairs[0], slot] = pairs[1]
        return cls(image_keys, caption_keys, table[image_class], image_source)

    def tensors(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        return tuple(
            torch.as_tensor(a, device=device)
            for a in (self.image_keys, self.caption_keys, self.image_captions)
        )

    def describes(self, caption_images: np.ndarray, elements: int = 1 << 24) -> Tensor:
        """(N_images, N_captions) bool: caption q describes image i (its own image, an identical
        image, or an image with an identical caption), built in blocks of images."""
        keys = Duplicates(*self.tensors())
        owners = torch.as_tensor(caption_images)
        n_images, width = len(self.image_keys), self.image_captions.shape[1]
        step = max(1, elements // max(len(owners) * width, 1))
        blocks = [
            keys.describes(torch.arange(start, min(start + step, n_images)), owners)
            for start in range(0, n_images, step)
        ]
        return torch.cat(blocks) if blocks else torch.zeros(0, len(owners), dtype=torch.bool)

    def summary(self, caption_images: np.ndarray) -> str:
        """How many captions describe another image too, and how many images recur (counted
        from the keys, without an images x captions matrix)."""
        _, image_key, images_per_key = np.unique(
            self.image_keys, return_inverse=True, return_counts=True
        )
        _, caption_key = np.unique(self.caption_keys, return_inverse=True)
        pairs = np.unique(np.stack([caption_key, image_key[caption_images]]), axis=1)
        described = np.zeros(int(caption_key.max(initial=-1)) + 1, dtype=np.int64)
        np.add.at(described, pairs[0], images_per_key[pairs[1]])  # images each text describes
        shared = int((described[caption_key] > 1).sum())
        recurring = int((images_per_key[image_key] > 1).sum())
        return (
            f"{shared} of {len(self.caption_keys)} captions also describe another image; "
            f"{recurring} of {len(self.image_keys)} images recur (compared by "
            f"{self.image_source or 'key'})"
        )

    def counts(self, caption_images: np.ndarray) -> dict[str, float]:
        """How many extended positives the split has beyond its pairs: captions describing an
        image that is not theirs, and the mean positives per image and per caption."""
        described = self.describes(caption_images)
        extra = int(described.sum()) - len(caption_images)
        return {
            "extra_pairs": extra,
            "captions_per_image": float(described.sum(1).float().mean()),
            "images_per_caption": float(described.sum(0).float().mean()),
            "captions_with_extra_images": int((described.sum(0) > 1).sum()),
        }


def split_duplicates(
    split: Split,
    mode: str,
    embed_texts: Callable[[list[str]], Tensor] | None = None,
    threshold: float = 0.95,
    device: torch.device | str = "cpu",
) -> SplitDuplicates:
    """The keys of ``split`` for a false-negative ``mode`` (``same_caption`` or ``similar``).

    ``embed_texts``: for ``similar``, a function from a list of strings to their (M, H) frozen
    sentence embeddings, compared on ``device``; ``threshold``: the cosine at which two
    captions are similar.
    """
    if mode not in ("same_caption", "similar"):
        raise ValueError(f"split_duplicates: mode must be same_caption or similar; got {mode!r}")
    texts = [normalise_caption(c) for c in split.captions]
    caption_keys = equal_keys(texts)
    if mode == "similar":
        if embed_texts is None:
            raise ValueError(
                "false_negatives=similar needs frozen sentence embeddings: a model with "
                "text_encoder=sentence (or the probe)"
            )
        distinct = list(dict.fromkeys(texts))  # in key order
        if distinct:
            embeddings = embed_texts(distinct).to(device)
            caption_keys = similar_groups(embeddings, threshold)[caption_keys]
    caption_images = np.asarray(split.caption_to_image(), dtype=np.int64)
    keys, source = image_keys(split)
    return SplitDuplicates.of(keys, caption_keys, caption_images, source)
