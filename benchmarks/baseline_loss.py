"""A straightforward SelHN loss in the style of the authors' release: dense masks and B x B
intermediates for every branch. It is the baseline of ``loss_bench.py`` and is checked against the
per-anchor reference in ``tests/test_losses.py``. ``ids`` (pairs that share one are not negatives)
extends the release's diagonal mask, for the multi-caption comparison."""

from __future__ import annotations

import torch
from torch import Tensor


def baseline_selhn_loss(
    img_emb: Tensor,
    txt_emb: Tensor,
    margin: float = 0.2,
    epsilon: float = 0.01,
    ids: Tensor | None = None,
) -> Tensor:
    scores = img_emb @ txt_emb.T
    batch = scores.shape[0]
    if ids is None:
        off_diagonal = 1 - torch.eye(batch, device=scores.device, dtype=scores.dtype)
    else:
        off_diagonal = (ids[:, None] != ids[None, :]).to(scores.dtype)
    pos = scores.diag()

    hinge_rows = (margin + scores - pos[:, None]).clamp(min=0) * off_diagonal
    hinge_cols = (margin + scores - pos[None, :]).clamp(min=0) * off_diagonal
    mean_rows = hinge_rows.sum(1) / off_diagonal.sum(1)
    mean_cols = hinge_cols.sum(0) / off_diagonal.sum(0)
    max_rows = hinge_rows.max(1)[0]
    max_cols = hinge_cols.max(0)[0]

    detached = scores.detach()
    negatives = detached * off_diagonal - (1 - off_diagonal)  # positives pushed below any cosine
    gap_rows = (detached.diag() - negatives.max(1)[0]).abs()
    gap_cols = (detached.diag() - negatives.max(0)[0]).abs()
    rows = torch.where(gap_rows < epsilon, mean_rows, max_rows)
    cols = torch.where(gap_cols < epsilon, mean_cols, max_cols)
    return (rows.mean() + cols.mean()) / 2
