"""Encoding a split once (each image once, each caption once) for evaluation and search."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from selhn.data.collate import CaptionDataset, ImageDataset, pad_regions, pad_tokens
from selhn.data.precomp import PrecompSplit
from selhn.data.vocab import Vocabulary
from selhn.models import RVSEPP


@torch.no_grad()
def encode_split(
    model: RVSEPP,
    split: PrecompSplit,
    vocab: Vocabulary,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """(N_images, D) image and (N_captions, D) caption embeddings of a split, on the CPU."""
    was_training = model.training
    model.eval()
    try:
        images = DataLoader(
            ImageDataset(split), batch_size, num_workers=num_workers, collate_fn=pad_regions
        )
        img_emb = [model.encode_images(f.to(device), n.to(device)).cpu() for f, n in images]
        texts = DataLoader(
            CaptionDataset(split.captions, vocab),
            batch_size,
            num_workers=num_workers,
            collate_fn=pad_tokens,
        )
        txt_emb = [model.encode_texts(t.to(device), n.to(device)).cpu() for t, n in texts]
    finally:
        model.train(was_training)
    return torch.cat(img_emb), torch.cat(txt_emb)
