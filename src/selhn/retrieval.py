"""Encoding a split once (each image once, each caption once) for evaluation and search."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from selhn.data.collate import CaptionDataset, ImageDataset, pad_regions, pad_tokens
from selhn.data.images import ImageSplit, open_data_split, stack_images
from selhn.data.precomp import PrecompSplit
from selhn.data.vocab import TextVocabulary
from selhn.models import DualEncoder


@torch.no_grad()
def encode_split(
    model: DualEncoder,
    split: PrecompSplit | ImageSplit,
    vocab: TextVocabulary,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """(N_images, D) image and (N_captions, D) caption embeddings of a split, on the CPU.

    An end-to-end model needs the split as images (``split_for``), any other its features."""
    was_training = model.training
    model.eval()
    try:
        collate = stack_images if isinstance(split, ImageSplit) else pad_regions
        images = DataLoader(
            ImageDataset(split), batch_size, num_workers=num_workers, collate_fn=collate
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


def split_for(model: DualEncoder, root: str | Path, split: str) -> PrecompSplit | ImageSplit:
    """A data directory's split as ``model`` reads it: image files at the model's input size for
    an end-to-end model (one with a backbone), precomputed features otherwise."""
    backbone = getattr(model.sizes, "backbone", None)
    return open_data_split(root, split, model.sizes.image_size if backbone else None)


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
    """
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries and gallery must be (Q, D) and (N, D); got {tuple(queries.shape)}, "
            f"{tuple(gallery.shape)}"
        )
    if not 1 <= k <= gallery.shape[0]:
        raise ValueError(f"k must be in [1, {gallery.shape[0]}] (the gallery size); got {k}")
    if backend == "faiss":
        try:
            import faiss
        except ImportError as err:
            raise ValueError(
                "backend='faiss' needs the faiss extra: pip install 'selhn[faiss]'"
            ) from err
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
