"""Encoding a split once (each image once, each caption once) for evaluation and search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from selhn.checkpoint import load_model
from selhn.data.batch import pad_tokens
from selhn.data.datasets import CaptionDataset, ImageDataset
from selhn.data.duplicates import split_duplicates
from selhn.data.facts import check_same_features
from selhn.data.inputs import ImageFiles, Split
from selhn.data.vocab import TextVocabulary
from selhn.evaluation.extended import extended_metrics
from selhn.evaluation.metrics import embedding_metrics
from selhn.models import DualEncoder
from selhn.utils.progress import tracked


@torch.no_grad()
def encode_split(
    model: DualEncoder,
    split: Split,
    vocab: TextVocabulary,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(N_images, D) image and (N_captions, D) caption embeddings of a split, on the CPU, with
    their progress shown if ``progress``.

    The split must be opened as the model reads it (``split_for``)."""
    was_training = model.training
    model.eval()
    try:
        images = DataLoader(
            ImageDataset(split),
            batch_size,
            num_workers=num_workers,
            collate_fn=split.collate_images,
        )
        images = tracked(images, f"encoding {split.name} images", split.num_images, "images",
                         progress, lambda batch: len(batch[0]))  # fmt: skip
        img_emb = [model.encode_images(*(t.to(device) for t in batch)).cpu() for batch in images]
        texts = DataLoader(
            CaptionDataset(split.captions, vocab),
            batch_size,
            num_workers=num_workers,
            collate_fn=pad_tokens,
        )
        texts = tracked(texts, f"encoding {split.name} captions", len(split.captions), "captions",
                        progress, lambda batch: len(batch[0]))  # fmt: skip
        txt_emb = [model.encode_texts(t.to(device), n.to(device)).cpu() for t, n in texts]
    finally:
        model.train(was_training)
    return torch.cat(img_emb), torch.cat(txt_emb)


def split_for(
    model: DualEncoder, root: str | Path, split: str, meta: dict[str, Any] | None = None
) -> Split:
    """A data directory's split as ``model`` reads it: image files at the model's input size for
    an end-to-end model (one with a backbone), precomputed features otherwise.

    ``meta``: the model's ``config.json`` (``checkpoint.load_model``); features that were not
    made as its training features were (its ``image_features``) are refused."""
    reads = model.reads()
    if meta is not None and "image_features" in meta and not isinstance(reads, ImageFiles):
        check_same_features(meta["image_features"], root, "the model")
    return reads.open(root, split)


def evaluate(
    model: DualEncoder,
    split: Split,
    vocab: TextVocabulary,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
) -> dict[str, float]:
    """Recall metrics of ``model`` on a split (``evaluation.embedding_metrics``)."""
    img_emb, txt_emb = encode_split(model, split, vocab, batch_size, device, num_workers)
    return embedding_metrics(img_emb, txt_emb, caption_to_image=split.caption_to_image())


# The duplicate-aware metrics hold the images x captions positives whole (one byte each)
DUPLICATE_AWARE_LIMIT = 250_000_000


def duplicate_aware(
    split: Split, img_embs: list[Tensor], txt_embs: list[Tensor], fold5: bool = False
) -> dict[str, float] | None:
    """The duplicate-aware metrics of a split's embeddings (``extended_metrics``; identical
    caption words and image files are the same), ``extra_pairs``: how many positive pairs that
    adds to the split's own, and ``images_compared_by``: what identical images were found by.
    None for a split of more than ``DUPLICATE_AWARE_LIMIT`` image-caption pairs."""
    owners = split.caption_to_image()
    if split.num_images * len(owners) > DUPLICATE_AWARE_LIMIT:
        return None
    keys = split_duplicates(split, "same_caption")
    positives = keys.describes(owners)
    metrics = extended_metrics(img_embs, txt_embs, positives, fold5, owners)
    extra = int(positives.sum()) - len(owners)
    return {"extra_pairs": extra, "images_compared_by": keys.image_source, **metrics}


def encode_checkpoints(
    checkpoints: list[str | Path],
    data: str | Path,
    split: str,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[Split, list[Tensor], list[Tensor]]:
    """(the split, each checkpoint's image embeddings, each one's caption embeddings): the
    models of an ensemble, each reading the split as it reads images (``split_for``)."""
    img_embs, txt_embs, opened = [], [], None
    for checkpoint in checkpoints:
        model, vocab, meta = load_model(checkpoint, device)
        opened = split_for(model, data, split, meta)
        img, txt = encode_split(model, opened, vocab, batch_size, device, progress=progress)
        img_embs.append(img)
        txt_embs.append(txt)
    return opened, img_embs, txt_embs
