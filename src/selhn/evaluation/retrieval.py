"""Exact top-k search over embeddings, and the hits of ``selhn search`` on a split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from selhn.data.inputs import Split
from selhn.evaluation.metrics import check_finite_embeddings, check_floating
from selhn.utils.extras import require


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


def image_hits(
    split: Split, query: Tensor, img_emb: Tensor, k: int, backend: str = "torch"
) -> list[dict[str, Any]]:
    """The ``k`` images of ``split`` nearest a (1, D) caption embedding: each image's index,
    score, a caption of it, and its file where the split lists image files."""
    owner = split.caption_to_image()
    files = split.image_files()
    scores, indices = top_k(query, img_emb, k, backend)
    return [
        {"image": i, "score": s, "caption": split.captions[int((owner == i).argmax())]}
        | ({"file": files[i]} if files else {})
        for i, s in zip(indices[0].tolist(), scores[0].tolist(), strict=True)
    ]


def caption_hits(
    split: Split, image: int, img_emb: Tensor, txt_emb: Tensor, k: int, backend: str = "torch"
) -> list[dict[str, Any]]:
    """The ``k`` captions of ``split`` nearest its image ``image``, each marked whether it
    describes that image."""
    if not 0 <= image < split.num_images:
        raise ValueError(f"--image-index must be in [0, {split.num_images}); got {image}")
    owner = split.caption_to_image()
    scores, indices = top_k(img_emb[image : image + 1], txt_emb, k, backend)
    return [
        {
            "caption_index": j,
            "score": s,
            "caption": split.captions[j],
            "match": bool(owner[j] == image),
        }
        for j, s in zip(indices[0].tolist(), scores[0].tolist(), strict=True)
    ]
