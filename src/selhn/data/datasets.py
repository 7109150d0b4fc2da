"""Datasets over a split: training pairs with the release's augmentation, and each image or
caption once for encoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from selhn.data.augment import Augmentation
from selhn.data.batch import Batch, pad_tokens
from selhn.data.inputs import Split
from selhn.data.vocab import TextVocabulary


class PairDataset(Dataset):
    """One training pair per caption: (its image as training reads it, its token ids, image
    index, caption index).

    Augmentation draws from a generator keyed by (seed, epoch, caption), so a run is reproducible
    whatever the number of loader workers and across a resume: first the image's, then the
    caption's.
    """

    def __init__(
        self,
        split: Split,
        vocab: TextVocabulary,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.split, self.vocab, self.augmentation, self.seed = split, vocab, augmentation, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split.captions)

    def __getitem__(self, index: int) -> tuple[Any, list[int], int, int]:
        image = int(self.split.caption_images[index])
        rng = None
        if self.augmentation is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
        visual = self.split.training_image(image, self.augmentation, rng)
        tokens = self.vocab.encode(self.split.captions[index])
        if rng is not None:
            tokens = self.augmentation.tokens(tokens, self.vocab, rng)
        return visual, tokens, image, index

    def collate(self, items: list[tuple[Any, list[int], int, int]]) -> Batch:
        """The DataLoader's collate function for these pairs."""
        visuals, tokens, images, captions = zip(*items, strict=True)
        token_ids, token_lengths = pad_tokens(list(tokens))
        image_input = self.split.collate_training_images(list(visuals))
        return Batch(image_input, token_ids, token_lengths, torch.tensor(images),
                     caption_ids=torch.tensor(captions))  # fmt: skip


class ImageDataset(Dataset):
    """Each image of a split once, for encoding (collate with ``split.collate_images``)."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return self.split.num_images

    def __getitem__(self, index: int) -> Any:
        return self.split.image(index)


class CaptionDataset(Dataset):
    """Each caption of a split once, for encoding."""

    def __init__(self, captions: list[str], vocab: TextVocabulary) -> None:
        self.captions, self.vocab = captions, vocab

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> list[int]:
        return self.vocab.encode(self.captions[index])
