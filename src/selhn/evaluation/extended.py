"""Duplicate-aware retrieval metrics: a retrieved item counts as correct when it is one of the
query's extended positives (``data.duplicates``: its own, or one whose caption text or image
bytes are identical to a true positive's), beside the standard protocol's exact metrics.

R@K: a query is a hit when fewer than K non-positives score at least as high as its best
positive (ties count against it, as in the standard ranks). mAP@R: with R extended positives,
the mean over the first R retrieved of precision at each positive's position, divided by R
(ECCV Caption's measure); equal scores are ordered non-positives first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from selhn.evaluation.metrics import RECALL_KS, ensemble_scores, folds

EXTENDED_NAMES = tuple(
    [f"{d}_r{k}" for d in ("i2t", "t2i") for k in RECALL_KS] + ["rsum", "i2t_map_r", "t2i_map_r"]
)
_CHUNK_ELEMENTS = 1 << 22


def _query_metrics(scores: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """(ranks, AP@R) of queries (rows of ``scores``) against their candidates (columns)."""
    best = scores.masked_fill(~positives, -torch.inf).max(dim=1).values
    ranks = ((scores >= best[:, None]) & ~positives).sum(dim=1)
    # order: non-positives before positives among equal scores (two stable sorts)
    by_label = torch.sort(positives.to(torch.int8), dim=1, stable=True).indices
    by_score = torch.sort(scores.gather(1, by_label), dim=1, descending=True, stable=True).indices
    relevant = positives.gather(1, by_label.gather(1, by_score)).double()
    counts = positives.sum(dim=1)
    first = relevant[:, : int(counts.max())]
    position = torch.arange(1, first.shape[1] + 1, dtype=first.dtype)
    inside = position[None, :] <= counts[:, None]
    precision = first.cumsum(dim=1) / position
    ap = (precision * first * inside).sum(dim=1) / counts
    return ranks, ap


def _direction(img_embs: list[Tensor], txt_embs: list[Tensor], positives: Tensor, by_image: bool):
    """Ranks and AP@R of every query of one direction, computed in row chunks."""
    queries = positives.shape[0] if by_image else positives.shape[1]
    width = positives.shape[1] if by_image else positives.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    ranks, aps = [], []
    for start in range(0, queries, step):
        rows = slice(start, start + step)
        if by_image:
            block = ensemble_scores([e[rows] for e in img_embs], txt_embs)
            wanted = positives[rows]
        else:
            block = ensemble_scores(img_embs, [e[rows] for e in txt_embs]).T
            wanted = positives[:, rows].T
        r, ap = _query_metrics(block.float().cpu(), wanted)
        ranks.append(r)
        aps.append(ap)
    return torch.cat(ranks), torch.cat(aps)


def extended_metrics(
    img_emb: Tensor | Sequence[Tensor],
    txt_emb: Tensor | Sequence[Tensor],
    positives: Tensor,
    fold5: bool = False,
    caption_to_image: Sequence[int] | None = None,
) -> dict[str, float]:
    """R@1/5/10 of both directions (percent), their sum and mAP@R (percent) over the extended
    positives: ``positives`` (N_images, N_captions) bool, True where the caption describes the
    image (its own pairs included). Lists of embeddings average an ensemble's scores. With
    ``fold5`` (and ``caption_to_image``, whose folds are the standard protocol's), the mean over
    five folds, each ranked within itself."""
    img_embs = [img_emb] if isinstance(img_emb, Tensor) else list(img_emb)
    txt_embs = [txt_emb] if isinstance(txt_emb, Tensor) else list(txt_emb)
    shape = (img_embs[0].shape[0], txt_embs[0].shape[0])
    if positives.shape != shape or positives.dtype != torch.bool:
        raise ValueError(
            f"positives must be a {shape} bool matrix (images x captions); got "
            f"{tuple(positives.shape)}, {positives.dtype}"
        )
    if not bool(positives.any(dim=1).all() and positives.any(dim=0).all()):
        raise ValueError("every image and every caption needs a positive")
    if fold5:
        if caption_to_image is None:
            raise ValueError("fold5 needs caption_to_image (the image of each caption)")
        index = torch.as_tensor(caption_to_image)
        return average([
            _metrics([e[rows] for e in img_embs], [e[cols] for e in txt_embs],
                     positives[rows][:, cols])
            for rows, cols, _ in folds(index, shape[0], fold5)
        ])  # fmt: skip
    return _metrics(img_embs, txt_embs, positives)


def _metrics(img_embs: list[Tensor], txt_embs: list[Tensor], positives: Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, by_image in (("i2t", True), ("t2i", False)):
        ranks, ap = _direction(img_embs, txt_embs, positives, by_image)
        for k in RECALL_KS:
            out[f"{name}_r{k}"] = 100.0 * float((ranks < k).double().mean())
        out[f"{name}_map_r"] = 100.0 * float(ap.mean())
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    return {name: out[name] for name in EXTENDED_NAMES}


def average(per_fold: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([m[name] for m in per_fold])) for name in EXTENDED_NAMES}


def format_extended(metrics: dict[str, float], extra_pairs: int, compared_by: str) -> str:
    """The duplicate-aware row of ``selhn eval``."""
    recalls = " ".join(
        f"{d} R@{k} {metrics[f'{d}_r{k}']:.1f}" for d in ("i2t", "t2i") for k in RECALL_KS
    )
    return (
        f"duplicate-aware ({extra_pairs} extra positive pairs: captions with the same words, "
        f"identical images by {compared_by}): {recalls}; rSum {metrics['rsum']:.1f}; mAP@R i2t "
        f"{metrics['i2t_map_r']:.1f}, t2i {metrics['t2i_map_r']:.1f}"
    )
