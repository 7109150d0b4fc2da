"""Encoding a split once (each image once, each caption once) for evaluation and search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from selhn.data.batch import pad_tokens
from selhn.data.datasets import CaptionDataset, ImageDataset
from selhn.data.inputs import ImageFiles, Split
from selhn.data.vocab import TextVocabulary
from selhn.evaluation import check_finite_embeddings, check_floating, embedding_metrics
from selhn.extras import require
from selhn.features import check_same_features
from selhn.models import DualEncoder


@torch.no_grad()
def encode_split(
    model: DualEncoder,
    split: Split,
    vocab: TextVocabulary,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """(N_images, D) image and (N_captions, D) caption embeddings of a split, on the CPU.

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
        img_emb = [model.encode_images(*(t.to(device) for t in batch)).cpu() for batch in images]
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


def top_k(
    queries: Tensor, gallery: Tensor, k: int, backend: str = "torch", chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """Exact inner-product search: (Q, k) scores and gallery indices, best first.

    Args:
        queries: (Q, D) query embeddings.
        gallery: (N, D) embeddings searched.
        k: results per query (at most N).
        backend: "torch" (chunked matmul + topk) or "faiss" (an exact flat inner-product index,
            from the ``faiss`` extra).

    A non-finite embedding raises ValueError: nothing is ranked on it.
    """
    check_floating("queries", queries)
    check_floating("gallery", gallery)
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries and gallery must be (Q, D) and (N, D); got {tuple(queries.shape)}, "
            f"{tuple(gallery.shape)}"
        )
    if not 1 <= k <= gallery.shape[0]:
        raise ValueError(f"k must be in [1, {gallery.shape[0]}] (the gallery size); got {k}")
    check_finite_embeddings([queries], "query")
    check_finite_embeddings([gallery], "gallery")
    if backend == "faiss":
        require("faiss", "backend='faiss'")
        import faiss

        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery.detach().float().cpu().contiguous().numpy())
        scores, indices = index.search(queries.detach().float().cpu().contiguous().numpy(), k)
        return torch.from_numpy(scores), torch.from_numpy(indices).long()
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'faiss'; got {backend!r}")
    results = [
        (queries[start : start + chunk] @ gallery.T).topk(k, dim=1)
        for start in range(0, queries.shape[0], chunk)
    ]
    return torch.cat([r.values for r in results]), torch.cat([r.indices for r in results])
