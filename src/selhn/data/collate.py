"""Datasets over a precomp split, the release's training augmentation, and batch collation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from selhn.data.precomp import PrecompSplit
from selhn.data.vocab import TextVocabulary

if TYPE_CHECKING:
    from selhn.data.images import ImageSplit


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation of the release (METHOD.md section 5); off at evaluation."""

    region_drop: float = 0.2  # each region is dropped with this probability (one always stays)
    token_prob: float = 0.2  # each token is perturbed with this probability: of those,
    token_mask: float = 0.5  # this share becomes <mask>,
    token_random: float = 0.1  # this share a random word, and the rest is deleted
    crop_scale: float = 1.0  # images (end to end): crop sides are random shares in [this, 1]

    def regions(self, regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        keep = rng.random(len(regions)) >= self.region_drop
        if not keep.any():
            keep[rng.integers(len(regions))] = True
        return regions[keep]

    def tokens(self, ids: list[int], vocab: TextVocabulary, rng: np.random.Generator) -> list[int]:
        out = []
        for token in ids:
            draw = rng.random()
            if draw >= self.token_prob:
                out.append(token)
                continue
            draw /= self.token_prob
            if draw < self.token_mask:
                out.append(vocab.mask_id)
            elif draw < self.token_mask + self.token_random:
                out.append(int(rng.integers(len(vocab))))
        return out or ids[:1]


@dataclass
class Batch:
    """B captions and their images: one image row per caption, or with ``caption_to_image`` N
    image rows that the captions index."""

    features: Tensor  # (B, K, F) regions, zero-padded; or (B, 3, S, S) uint8 images
    feature_lengths: Tensor  # (B,) region counts; or (B, cells) bool: grid cells kept
    tokens: Tensor  # (B, T) token ids, <pad>-padded
    token_lengths: Tensor  # (B,)
    image_ids: Tensor  # (B,) index of each caption's image in its split
    caption_to_image: Tensor | None = None  # (B,) image row of each caption

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(None if t is None else t.to(device, non_blocking=True) for t in vars(self).values())
        )

    def one_row_per_image(self) -> Batch:
        """The same captions with each distinct image once (the input drawn for its first
        caption), rows in order of image id."""
        images, caption_to_image = torch.unique(self.image_ids, return_inverse=True)
        first = torch.full((len(images),), len(self.image_ids), dtype=torch.long)
        first.scatter_reduce_(0, caption_to_image, torch.arange(len(self.image_ids)), "amin")
        return Batch(
            self.features[first],
            self.feature_lengths[first],
            self.tokens,
            self.token_lengths,
            self.image_ids,
            caption_to_image,
        )


class PairDataset(Dataset):
    """One training pair per caption: (its image's regions, its token ids, image index).

    Augmentation draws from a generator keyed by (seed, epoch, caption), so a run is reproducible
    whatever the number of loader workers and across a resume: first the image's (``image_input``,
    which subclasses reading other inputs override), then the caption's.
    """

    def __init__(
        self,
        split: PrecompSplit,
        vocab: TextVocabulary,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.split, self.vocab, self.augmentation, self.seed = split, vocab, augmentation, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split.captions)

    def image_input(self, image: int, rng: np.random.Generator | None) -> Any:
        """The image's regions, some dropped when augmenting (``rng`` given)."""
        regions = self.split.image(image)
        return regions if rng is None else self.augmentation.regions(regions, rng)

    def __getitem__(self, index: int) -> tuple[Any, list[int], int]:
        image = int(self.split.caption_images[index])
        rng = None
        if self.augmentation is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
        visual = self.image_input(image, rng)
        tokens = self.vocab.encode(self.split.captions[index])
        if rng is not None:
            tokens = self.augmentation.tokens(tokens, self.vocab, rng)
        return visual, tokens, image

    @staticmethod
    def collate(items: list[tuple[Any, list[int], int]]) -> Batch:
        """The DataLoader's collate function for these pairs."""
        return collate_pairs(items)


class ImageDataset(Dataset):
    """Each image of a split once (its regions, or its pixels for a split of image files), for
    encoding."""

    def __init__(self, split: PrecompSplit | ImageSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.num_images

    def __getitem__(self, index: int) -> np.ndarray | Tensor:
        return self.split.image(index)


class CaptionDataset(Dataset):
    """Each caption of a split once, for encoding."""

    def __init__(self, captions: list[str], vocab: TextVocabulary) -> None:
        self.captions, self.vocab = captions, vocab

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> list[int]:
        return self.vocab.encode(self.captions[index])


def pad_regions(items: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(r) for r in items])
    out = torch.zeros(len(items), int(lengths.max()), items[0].shape[1])
    for row, regions in enumerate(items):
        out[row, : len(regions)] = torch.from_numpy(regions)
    return out, lengths


def pad_tokens(items: list[list[int]]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(t) for t in items])
    out = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)  # <pad> is id 0
    for row, tokens in enumerate(items):
        out[row, : len(tokens)] = torch.tensor(tokens)
    return out, lengths


def collate_pairs(items: list[tuple[np.ndarray, list[int], int]]) -> Batch:
    regions, tokens, images = zip(*items, strict=True)
    features, feature_lengths = pad_regions(list(regions))
    token_ids, token_lengths = pad_tokens(list(tokens))
    return Batch(features, feature_lengths, token_ids, token_lengths, torch.tensor(images))
