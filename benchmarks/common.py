"""What several benchmarks share: a process's memory as the kernel counts it, and a training
batch shaped like the release's."""

from __future__ import annotations

from pathlib import Path

import torch

from selhn.data.batch import Batch


def memory_bytes(field: str = "VmRSS", pid: int | str = "self") -> int:
    """A memory field of ``/proc/PID/status`` (VmRSS: resident now; VmHWM: its peak), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def make_batch(batch: int, regions: int, img_dim: int, vocab: int, seed: int = 0) -> Batch:
    """A batch of random region features (about 80% of ``regions`` kept, as region dropout
    keeps) and captions of 8-19 tokens."""
    gen = torch.Generator().manual_seed(seed)
    kept = round(0.8 * regions)  # region dropout keeps 80% on average
    feature_lengths = (kept + torch.randint(-3, 4, (batch,), generator=gen)).clamp(1, regions)
    features = torch.rand(batch, int(feature_lengths.max()), img_dim, generator=gen)
    token_lengths = torch.randint(8, 20, (batch,), generator=gen)
    tokens = torch.randint(4, vocab, (batch, int(token_lengths.max())), generator=gen)
    return Batch((features, feature_lengths), tokens, token_lengths, torch.arange(batch))
