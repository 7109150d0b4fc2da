"""All-gather of a batch over the default process group, with gradients, for losses that mine
negatives over the global batch.

Each rank's embeddings are concatenated in rank order. The all-gather's backward pass sums every
rank's gradient for a part into the rank that made it; every rank computes the same global loss,
so after DistributedDataParallel averages the parameter gradients each rank holds exactly the
gradient of one process on the whole batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor


def process_group_size() -> int:
    """Processes in the default group; 1 when there is none."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_rows(tensor: Tensor, sizes: list[int]) -> Tensor:
    """Every rank's (sizes[rank], ...) tensor, concatenated in rank order. Ranks may hold
    different numbers of rows: each part is padded to the largest for the collective."""
    padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, max(sizes) - tensor.shape[0]))
    if tensor.requires_grad:
        with warnings.catch_warnings():  # deprecated for a private module; still public API
            warnings.simplefilter("ignore", FutureWarning)
            parts = dist_fn.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def gather_batch(
    img_emb: Tensor, txt_emb: Tensor, rows: Tensor | None, ids: Tensor | None, duplicates=None
) -> tuple:
    """The global batch: (N, D) images, (P, D) captions, each caption's image row (offset past
    the earlier ranks' images), id and ``duplicates`` (``inputs.Duplicates``: its image keys
    gathered with the images, its caption keys with the captions), from every rank.

    One small exchange of the ranks' batch sizes comes first; reading it waits for the device.
    ``rows``, ``ids`` and ``duplicates`` must be given on every rank or on none, and
    ``duplicates.image_captions`` must be as wide on every rank.
    """
    width = duplicates.image_captions.shape[1] if duplicates is not None else -1
    given = [rows is not None, ids is not None, duplicates is not None, width]
    local = torch.tensor([img_emb.shape[0], txt_emb.shape[0], *given], device=img_emb.device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    table = torch.stack(sizes).tolist()
    if len({tuple(r[2:]) for r in table}) > 1:
        raise ValueError(
            "ids, caption_to_image and duplicates (of one width) must be given on every rank or "
            "on none; ranks differ: "
            + ", ".join(
                f"rank {k}: ids {bool(r[3])}, caption_to_image {bool(r[2])}, duplicates "
                f"{bool(r[4])} (width {r[5]})"
                for k, r in enumerate(table)
            )
        )
    n_images, n_pairs = [r[0] for r in table], [r[1] for r in table]
    img_all = _gather_rows(img_emb, n_images)
    txt_all = _gather_rows(txt_emb, n_pairs)
    if rows is not None:
        offset = sum(n_images[: dist.get_rank()])
        rows = _gather_rows(rows + offset, n_pairs)
    if ids is not None:
        ids = _gather_rows(ids, n_pairs)
    if duplicates is not None:
        duplicates = type(duplicates)(
            _gather_rows(duplicates.image_keys, n_images),
            _gather_rows(duplicates.caption_keys, n_pairs),
            _gather_rows(duplicates.image_captions, n_images),
        )
    return img_all, txt_all, rows, ids, duplicates
