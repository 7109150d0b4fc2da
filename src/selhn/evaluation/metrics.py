"""Exact image-text retrieval metrics (docs/method.md), ranked by counting in chunks.

A query's rank is the number of wrong items that score at least as high as its best right item,
so ties count against the ground truth: a model whose scores are all equal gets rank N - 1, not 0.
Nothing is sorted: each chunk of rows is compared once with per-query thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

METRIC_NAMES = (
    "i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
    "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr",
    "rsum",
)  # fmt: skip
RECALL_KS = (1, 5, 10)
# Scores compared at once: a block of a given matrix (2M elements, cache-friendly comparisons), and
# a tile computed from embeddings (4M: larger products run closer to the matmul's peak);
# benchmarks/eval_bench.py times both paths.
_CHUNK_ELEMENTS = 1 << 21
_TILE_ELEMENTS = 1 << 22


def caption_index(
    num_captions: int, captions_per_image: int = 5, caption_to_image: Sequence[int] | None = None
) -> Tensor:
    """(N_captions,) image index of every caption: explicit, or ``j // captions_per_image``."""
    if caption_to_image is None:
        if captions_per_image < 1 or num_captions % captions_per_image:
            raise ValueError(
                f"captions_per_image={captions_per_image} does not divide the "
                f"{num_captions} captions; pass caption_to_image= instead"
            )
        return torch.arange(num_captions) // captions_per_image
    index = torch.as_tensor(caption_to_image)
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"caption_to_image must hold integer image indices; got {index.dtype}")
    index = index.long()
    if index.shape != (num_captions,):
        raise ValueError(
            f"caption_to_image must have one entry per caption ({num_captions}); "
            f"got shape {tuple(index.shape)}"
        )
    return index


def _check_images(index: Tensor, num_images: int) -> None:
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= num_images):
        raise ValueError(
            f"caption_to_image must lie in [0, {num_images}); "
            f"found {int(index.min())}..{int(index.max())}"
        )
    empty = torch.bincount(index, minlength=num_images).eq(0)
    if empty.any():
        missing = int(empty.nonzero()[0])
        raise ValueError(f"image {missing} has no caption; every image needs at least one")


def _count_reaching(block: Tensor, thresholds: Tensor, dim: int) -> Tensor:
    """How many scores of each row (dim=1) or column (dim=0) of ``block`` reach its threshold."""
    thresholds = thresholds[:, None] if dim == 1 else thresholds[None, :]
    return (block >= thresholds).sum(dim=dim, dtype=torch.int32)  # int32 sums run fastest


def _rows_per_chunk(width: int, elements: int) -> int:
    return max(1, elements // max(width, 1))


def ranks_from_sims(sims: Tensor, caption_to_image: Tensor) -> tuple[Tensor, Tensor]:
    """0-based ranks of a (N_images, N_captions) score matrix.

    Returns:
        i2t: (N_images,) rank of each image's best-ranked caption among all captions.
        t2i: (N_captions,) rank of each caption's image among all images.
    """
    num_images, num_captions = sims.shape
    index = caption_to_image.to(sims.device)
    gt = sims[index, torch.arange(num_captions, device=sims.device)]  # caption's own score
    best = torch.full((num_images,), -torch.inf, dtype=sims.dtype, device=sims.device)
    best = best.scatter_reduce(0, index, gt, reduce="amax")
    # own captions that reach the image's threshold are counted by the comparison; take them out
    own_ties = torch.zeros(num_images, dtype=torch.long, device=sims.device)
    own_ties.index_add_(0, index, (gt >= best[index]).long())
    i2t = torch.empty(num_images, dtype=torch.long, device=sims.device)
    t2i = torch.zeros(num_captions, dtype=torch.long, device=sims.device)
    suspect = torch.zeros((), dtype=torch.bool, device=sims.device)
    step = _rows_per_chunk(num_captions, _CHUNK_ELEMENTS)
    for start in range(0, num_images, step):
        block = sims[start : start + step]
        i2t[start : start + step] = _count_reaching(block, best[start : start + step], 1)
        t2i += _count_reaching(block, gt, 0)
        # a NaN or infinity anywhere makes the chunk's sum non-finite (a sum can also overflow
        # on finite scores: the exact check below tells the two apart)
        suspect |= ~torch.isfinite(block.sum())
    if bool(suspect):
        _check_finite_scores(sims)
    return (i2t - own_ties).cpu(), (t2i - 1).cpu()  # the own image always reaches its threshold


def _check_finite_scores(sims: Tensor) -> None:
    bad = int((~torch.isfinite(sims)).sum())
    if bad:
        raise ValueError(
            f"{bad} of {sims.numel()} scores are not finite (NaN or infinite); a ranking of "
            "them would be arbitrary"
        )


def check_floating(name: str, value: Tensor) -> None:
    """TypeError unless ``value`` holds real floating-point numbers (scores and embeddings)."""
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor; got {value.dtype}")


def check_finite_embeddings(embs: Sequence[Tensor], side: str) -> None:
    """Raise ValueError naming how many rows of each (N, D) matrix are not finite."""
    for model, emb in enumerate(embs):
        of = f" of ensemble member {model}" if len(embs) > 1 else ""
        bad = int((~torch.isfinite(emb)).any(dim=1).sum())
        if bad:
            raise ValueError(
                f"{bad} of {emb.shape[0]} {side} embeddings{of} are not finite (NaN or "
                "infinite): the model's weights or its inputs are not finite, or overflow in it"
            )


def ensemble_scores(img_embs: Sequence[Tensor], txt_embs: Sequence[Tensor]) -> Tensor:
    """The (N_images, N_captions) score matrix of an ensemble: each model's averaged."""
    return _mean_scores(img_embs, txt_embs, slice(None), slice(None))


def _mean_scores(img_embs: Sequence[Tensor], txt_embs: Sequence[Tensor], rows, cols) -> Tensor:
    block = img_embs[0][rows] @ txt_embs[0][cols].T
    for img, txt in zip(img_embs[1:], txt_embs[1:], strict=True):
        block += img[rows] @ txt[cols].T
    return block / len(img_embs) if len(img_embs) > 1 else block


def ranks_from_embeddings(
    img_embs: Sequence[Tensor], txt_embs: Sequence[Tensor], caption_to_image: Tensor
) -> tuple[Tensor, Tensor]:
    """Ranks of the (averaged) score matrix ``mean_m img_embs[m] @ txt_embs[m].T``, never built.

    Every score is computed exactly once, in tiles. The tiles that pair a block of images with
    their own captions come first: they hold every threshold, so the remaining tiles are only
    compared, and ties are judged on the very values compared.
    """
    num_images, num_captions = img_embs[0].shape[0], txt_embs[0].shape[0]
    device = img_embs[0].device
    order = torch.argsort(caption_to_image, stable=True)  # captions grouped by image
    grouped = bool((caption_to_image[1:] >= caption_to_image[:-1]).all())
    index = caption_to_image[order].to(device)
    if not grouped:  # the usual layouts are grouped already: no copy then
        txt_embs = [t[order.to(t.device)] for t in txt_embs]
    bounds = torch.searchsorted(index, torch.arange(num_images + 1, device=device)).tolist()

    step = _rows_per_chunk(num_captions, _TILE_ELEMENTS)
    blocks = [(s, min(s + step, num_images)) for s in range(0, num_images, step)]
    gt = torch.empty(num_captions, dtype=img_embs[0].dtype, device=device)
    best = torch.empty(num_images, dtype=gt.dtype, device=device)
    i2t = torch.zeros(num_images, dtype=torch.long, device=device)
    t2i = torch.zeros(num_captions, dtype=torch.long, device=device)
    for start, stop in blocks:  # own tiles: thresholds, and counts inside the tile
        first, last = bounds[start], bounds[stop]
        tile = _mean_scores(img_embs, txt_embs, slice(start, stop), slice(first, last))
        local = index[first:last] - start
        gt[first:last] = tile[local, torch.arange(last - first, device=device)]
        best[start:stop] = torch.full_like(best[start:stop], -torch.inf).scatter_reduce(
            0, local, gt[first:last], reduce="amax"
        )
        own_ties = torch.zeros_like(i2t[start:stop]).index_add_(
            0, local, (gt[first:last] >= best[start:stop][local]).long()
        )
        i2t[start:stop] = _count_reaching(tile, best[start:stop], 1) - own_ties
        t2i[first:last] = _count_reaching(tile, gt[first:last], 0) - 1
    for start, stop in blocks:  # every other tile: comparisons only
        first, last = bounds[start], bounds[stop]
        for cols in (slice(0, first), slice(last, num_captions)):
            if cols.start == cols.stop:
                continue
            tile = _mean_scores(img_embs, txt_embs, slice(start, stop), cols)
            i2t[start:stop] += _count_reaching(tile, best[start:stop], 1)
            t2i[cols] += _count_reaching(tile, gt[cols], 0)
    unsorted = torch.empty_like(t2i)
    unsorted[order.to(device)] = t2i
    return i2t.cpu(), unsorted.cpu()


def metrics_from_ranks(i2t: Tensor, t2i: Tensor) -> dict[str, float]:
    """R@1/5/10 (percent), medr and meanr (1-based) of both directions, and rSum."""
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t.numpy()), ("t2i", t2i.numpy())):
        for k in RECALL_KS:
            out[f"{name}_r{k}"] = 100.0 * float(np.mean(ranks < k))
        out[f"{name}_medr"] = float(np.floor(np.median(ranks)) + 1)
        out[f"{name}_meanr"] = float(np.mean(ranks) + 1)
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    return {name: out[name] for name in METRIC_NAMES}


def _as_slice(positions: Tensor) -> slice | Tensor:
    """A slice (a view, no copy) where the positions are consecutive."""
    if len(positions) and int(positions[-1] - positions[0]) == len(positions) - 1:
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return positions


def folds(index: Tensor, num_images: int, fold5: bool) -> list[tuple[slice, Any, Tensor]]:
    """(image rows, caption columns, caption->image within the fold) of each fold."""
    if not fold5:
        return [(slice(0, num_images), slice(0, len(index)), index)]
    if num_images % 5:
        raise ValueError(f"fold5 needs the images to split into 5 equal folds; got {num_images}")
    size = num_images // 5
    folds = []
    for k in range(5):
        cols = ((index >= k * size) & (index < (k + 1) * size)).nonzero().squeeze(1)
        folds.append((slice(k * size, (k + 1) * size), _as_slice(cols), index[cols] - k * size))
    return folds


def _average(per_fold: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([m[name] for m in per_fold])) for name in METRIC_NAMES}


def retrieval_metrics(
    sims: Tensor | np.ndarray,
    captions_per_image: int = 5,
    fold5: bool = False,
    caption_to_image: Sequence[int] | None = None,
) -> dict[str, float]:
    """Metrics of a (N_images, N_captions) score matrix; caption j shows image j // cpi.

    Args:
        sims: scores, larger = closer.
        captions_per_image: used when ``caption_to_image`` is not given.
        fold5: COCO 1K protocol: five disjoint folds of N_images / 5 images, metrics averaged.
        caption_to_image: (N_captions,) image of each caption, for uneven caption counts.

    A score that is NaN or infinite raises ValueError (found in the ranking pass itself).
    """
    sims = torch.as_tensor(sims)
    check_floating("sims", sims)
    if sims.dim() != 2 or 0 in sims.shape:
        raise ValueError(
            f"sims must be (N_images, N_captions), neither of them 0; got {tuple(sims.shape)}"
        )
    index = caption_index(sims.shape[1], captions_per_image, caption_to_image)
    _check_images(index, sims.shape[0])
    per_fold = [
        metrics_from_ranks(*ranks_from_sims(sims[rows, cols], fold_index))
        for rows, cols, fold_index in folds(index, sims.shape[0], fold5)
    ]
    return _average(per_fold)


def embedding_metrics(
    img_emb: Tensor | Sequence[Tensor],
    txt_emb: Tensor | Sequence[Tensor],
    captions_per_image: int = 5,
    fold5: bool = False,
    caption_to_image: Sequence[int] | None = None,
) -> dict[str, float]:
    """Metrics of ``img_emb @ txt_emb.T`` computed in tiles, without the full score matrix.

    Lists of embeddings (one pair per model) evaluate the ensemble: their score matrices are
    averaged before ranking. An embedding that is not finite, or large enough for a score to
    overflow, raises ValueError naming how many there are: nothing is ranked on them.
    """
    img_embs = [img_emb] if isinstance(img_emb, Tensor) else list(img_emb)
    txt_embs = [txt_emb] if isinstance(txt_emb, Tensor) else list(txt_emb)
    if not img_embs or len(img_embs) != len(txt_embs):
        raise ValueError(
            f"need one text embedding per image embedding; got {len(img_embs)} and {len(txt_embs)}"
        )
    for img, txt in zip(img_embs, txt_embs, strict=True):
        check_floating("img_emb", img)
        check_floating("txt_emb", txt)
        if img.dim() != 2 or txt.dim() != 2 or img.shape[1] != txt.shape[1]:
            raise ValueError(
                f"embeddings must be (N, D) with the same D; got {tuple(img.shape)}, "
                f"{tuple(txt.shape)}"
            )
        if img.shape[0] != img_embs[0].shape[0] or txt.shape[0] != txt_embs[0].shape[0]:
            raise ValueError("every model of an ensemble must embed the same images and captions")
        if 0 in img.shape or 0 in txt.shape:
            raise ValueError(
                f"no images or no captions to evaluate: {tuple(img.shape)}, {tuple(txt.shape)}"
            )
    check_finite_embeddings(img_embs, "image")
    check_finite_embeddings(txt_embs, "caption")
    for img, txt in zip(img_embs, txt_embs, strict=True):
        # |score| <= |img row| * |txt row|: below the dtype's range, no score can overflow
        bound = img.norm(dim=1).max().double() * txt.norm(dim=1).max().double()
        if bound >= torch.finfo(img.dtype).max / 4:
            raise ValueError(
                f"embeddings too large for {img.dtype}: their dot products can overflow "
                f"(norms up to {bound:.3g}); normalise them"
            )
    index = caption_index(txt_embs[0].shape[0], captions_per_image, caption_to_image)
    _check_images(index, img_embs[0].shape[0])
    per_fold = []
    for rows, cols, fold_index in folds(index, img_embs[0].shape[0], fold5):
        fold_img = [e[rows] for e in img_embs]
        fold_txt = [e[cols if isinstance(cols, slice) else cols.to(e.device)] for e in txt_embs]
        per_fold.append(metrics_from_ranks(*ranks_from_embeddings(fold_img, fold_txt, fold_index)))
    return _average(per_fold)


def unique_images(img_emb: Tensor, caption_to_image: Sequence[int]) -> Tensor:
    """One row per image from a loader that repeats each image once per caption.

    Raises if two rows of the same image differ, which means the rows were not repeats.
    """
    index = torch.as_tensor(caption_to_image, dtype=torch.long)
    if img_emb.shape[0] != len(index):
        raise ValueError(
            f"img_emb has {img_emb.shape[0]} rows but caption_to_image has {len(index)} entries"
        )
    num_images = int(index.max()) + 1
    first = torch.full((num_images,), len(index)).scatter_reduce(
        0, index, torch.arange(len(index)), reduce="amin"
    )
    if bool((first == len(index)).any()):
        raise ValueError("caption_to_image skips an image index")
    unique = img_emb[first.to(img_emb.device)]
    if not torch.equal(unique[index.to(img_emb.device)], img_emb):
        raise ValueError("rows of the same image differ: img_emb does not repeat each image")
    return unique


def format_table(metrics: dict[str, float]) -> str:
    """Both directions' R@1/5/10, medr and meanr, and rSum, as a text table."""
    lines = [f"{'':12s}{'R@1':>8s}{'R@5':>8s}{'R@10':>8s}{'medr':>8s}{'meanr':>9s}"]
    for name, label in (("i2t", "image->text"), ("t2i", "text->image")):
        lines.append(
            f"{label:12s}"
            + "".join(f"{metrics[f'{name}_r{k}']:8.1f}" for k in RECALL_KS)
            + f"{metrics[f'{name}_medr']:8.0f}{metrics[f'{name}_meanr']:9.1f}"
        )
    lines.append(f"rSum {metrics['rsum']:.1f}")
    return "\n".join(lines)
