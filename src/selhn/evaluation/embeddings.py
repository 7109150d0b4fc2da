"""The embeddings of a split saved by ``selhn encode``, and read back only for the model and
split that made them (``made_by``: the SHA-256 of the model's weights and the split's
fingerprint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selhn.checkpoint import load_tensors, weights_sha256
from selhn.data.inputs import Split, fingerprint


def made_by(checkpoint: str | Path, split: Split) -> dict[str, Any]:
    """What an embeddings file records of its origin: the model's weights and the split."""
    return {"weights_sha256": weights_sha256(checkpoint), "split": fingerprint(split)}


def save_embeddings(
    path: str | Path, checkpoint: str | Path, split: Split, img_emb: Tensor, txt_emb: Tensor
) -> None:
    torch.save(
        {
            "images": img_emb,
            "captions": txt_emb,
            "caption_to_image": torch.from_numpy(split.caption_to_image()),
            "split": split.name,
            "checkpoint": str(checkpoint),
            "made_by": made_by(checkpoint, split),
        },
        path,
    )


def load_embeddings(
    path: str | Path, checkpoint: str | Path, split: Split
) -> tuple[Tensor, Tensor]:
    """(image, caption) embeddings of a ``selhn encode`` file, checked to come from this model
    and split."""
    path = Path(path)
    saved = load_tensors(path, "embeddings written by selhn encode")
    if not isinstance(saved, dict) or "made_by" not in saved:
        raise ValueError(f"{path}: not a file of selhn encode (no 'made_by' record); encode again")
    expected = made_by(checkpoint, split)
    if saved["made_by"]["weights_sha256"] != expected["weights_sha256"]:
        raise ValueError(
            f"{path}: encoded by another model (checkpoint {saved.get('checkpoint')}), not by "
            f"{checkpoint}; encode again with this checkpoint"
        )
    if saved["made_by"]["split"] != expected["split"]:
        was = saved["made_by"]["split"]
        raise ValueError(
            f"{path}: encodes another split ({was['split']}: {was['images']} images, "
            f"{was['captions']} captions) than {split.name} of this data directory; encode again"
        )
    return saved["images"], saved["captions"]
