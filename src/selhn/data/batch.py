"""A training batch and the padding that builds it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Batch:
    """B captions and their images. ``image_input`` holds the arguments of the model's
    ``encode_images`` (regions and their counts, or pixels and the grid cells kept): one image row
    per caption, or with ``caption_to_image`` N rows that the captions index."""

    image_input: tuple[Tensor, ...]
    tokens: Tensor  # (B, T) token ids, <pad>-padded
    token_lengths: Tensor  # (B,)
    image_ids: Tensor  # (B,) index of each caption's image in its split
    caption_to_image: Tensor | None = None  # (B,) image row of each caption
    caption_ids: Tensor | None = None  # (B,) index of each caption in its split
    row_image_ids: Tensor | None = None  # (N,) with caption_to_image: each image row's image id

    def to(self, device: torch.device | str) -> Batch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            tuple(t.to(device, non_blocking=True) for t in self.image_input),
            self.tokens.to(device, non_blocking=True),
            self.token_lengths.to(device, non_blocking=True),
            self.image_ids.to(device, non_blocking=True),
            move(self.caption_to_image),
            move(self.caption_ids),
            move(self.row_image_ids),
        )

    def image_rows(self) -> Tensor:
        """(N,) the split index of each image row."""
        if self.caption_to_image is None:
            return self.image_ids
        if self.row_image_ids is not None:
            return self.row_image_ids
        rows = torch.zeros(int(self.caption_to_image.max()) + 1, dtype=torch.long,
                           device=self.image_ids.device)  # fmt: skip
        return rows.scatter_(0, self.caption_to_image, self.image_ids)

    def one_row_per_image(self) -> Batch:
        """The same captions with each distinct image once (the input drawn for its first
        caption), rows in order of image id."""
        images, caption_to_image = torch.unique(self.image_ids, return_inverse=True)
        first = torch.full((len(images),), len(self.image_ids), dtype=torch.long)
        first.scatter_reduce_(0, caption_to_image, torch.arange(len(self.image_ids)), "amin")
        return Batch(
            tuple(t[first] for t in self.image_input),
            self.tokens,
            self.token_lengths,
            self.image_ids,
            caption_to_image,
            self.caption_ids,
            images,
        )


def pad_regions(items: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """(B, K_max, F) zero-padded regions and (B,) region counts."""
    lengths = torch.tensor([len(r) for r in items])
    out = torch.zeros(len(items), int(lengths.max()), items[0].shape[1])
    for row, regions in enumerate(items):
        out[row, : len(regions)] = torch.from_numpy(regions)
    return out, lengths


def pad_tokens(items: list[list[int]]) -> tuple[Tensor, Tensor]:
    """(B, T_max) <pad>-padded token ids and (B,) lengths."""
    lengths = torch.tensor([len(t) for t in items])
    out = torch.zeros(len(items), int(lengths.max()), dtype=torch.long)  # <pad> is id 0
    for row, tokens in enumerate(items):
        out[row, : len(tokens)] = torch.tensor(tokens)
    return out, lengths
