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
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from selhn.data.inputs import Split
from selhn.losses import Duplicates


def normalise_caption(text: str) -> str:
    """The words of a caption, case-folded and joined by single spaces: "A dog, running." and
    "a dog running" are the same caption."""
    return " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold()))


def equal_keys(values: Iterable[Hashable]) -> np.ndarray:
    """(len(values),) int64: equal values get equal keys (numbered in order of first sight)."""
    seen: dict[Hashable, int] = {}
    return np.array([seen.setdefault(value, len(seen)) for value in values], dtype=np.int64)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image_keys(split: Split) -> np.ndarray:
    """(N_images,) keys equal for images with identical file bytes: those of the listed image
    files where every one is present, else those of each image's stored input."""
    files = split.image_files()
    if files and all(Path(f).is_file() for f in files):
        return equal_keys(_file_digest(Path(f)) for f in files)
    stored = (np.asarray(split.image(i)) for i in range(split.num_images))
    return equal_keys(hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest() for a in stored)


def similar_groups(embeddings: Tensor, threshold: float, chunk: int = 4096) -> np.ndarray:
    """(M,) keys of the connected components of rows whose cosine is >= ``threshold`` (the rows
    of an (M, H) matrix, compared in chunks on its device)."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
    parent = np.arange(len(unit))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(unit), chunk):
        close = (unit[start : start + chunk] @ unit.T >= threshold).nonzero().cpu().numpy()
        for a, b in close:
            ra, rb = root(start + int(a)), root(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return equal_keys(root(i) for i in range(len(unit)))


@dataclass(frozen=True)
class SplitDuplicates:
    """Keys of a split's images and captions; equal keys are the same image (caption).

    ``image_keys``: (N_images,); ``caption_keys``: (N_captions,); ``image_captions``: (N_images,
    K) the caption keys of each image's captions, -1 padded.
    """

    image_keys: np.ndarray
    caption_keys: np.ndarray
    image_captions: np.ndarray

    @classmethod
    def of(cls, image_keys: np.ndarray, caption_keys: np.ndarray, caption_images: np.ndarray):
        """The keys of images and captions, with ``caption_images`` the image of each caption."""
        n_images = len(image_keys)
        per_image = np.bincount(caption_images, minlength=n_images)
        table = np.full((n_images, max(int(per_image.max(initial=0)), 1)), -1, dtype=np.int64)
        order = np.argsort(caption_images, kind="stable")
        starts = np.concatenate([[0], np.cumsum(per_image)[:-1]])
        slot = np.arange(len(order)) - starts[caption_images[order]]
        table[caption_images[order], slot] = caption_keys[order]
        return cls(image_keys, caption_keys, table)

    def tensors(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        return tuple(
            torch.as_tensor(a, device=device)
            for a in (self.image_keys, self.caption_keys, self.image_captions)
        )

    def describes(self, caption_images: np.ndarray) -> Tensor:
        """(N_images, N_captions) bool: caption q describes image i (its own image, an identical
        image, or an image with an identical caption)."""
        images, captions, table = self.tensors()
        keys = Duplicates(images, captions, table)
        every = torch.arange(len(images))
        return keys.describes(every, torch.as_tensor(caption_images))

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
            f"{recurring} of {len(self.image_keys)} images recur"
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
    split: Split, mode: str, embed_texts=None, threshold: float = 0.95
) -> SplitDuplicates:
    """The keys of ``split`` for a false-negative ``mode`` (``same_caption`` or ``similar``).

    ``embed_texts``: for ``similar``, a function from a list of strings to their (M, H) frozen
    sentence embeddings; ``threshold``: the cosine at which two captions are similar.
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
        caption_keys = similar_groups(embed_texts(distinct), threshold)[caption_keys]
    caption_images = np.asarray(split.caption_to_image(), dtype=np.int64)
    return SplitDuplicates.of(image_keys(split), caption_keys, caption_images)
