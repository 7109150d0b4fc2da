"""Seconds per RVSE++ training step at the paper's defaults against a release-style step, and the
share of the machine's matmul FLOP rate that the step reaches.

The batch is synthetic but shaped like the release's: B = 128 pairs, 36 x 2048 regions of which
each keeps ~80% after region dropout, captions of 8-19 tokens, a vocabulary of 8,500 words. The
step is the trainer's own (`selhn.training.trainer.train_step`: forward, SelHN loss, backward,
per-encoder gradient norms, clipping, AdamW). The baseline runs the same step on the same
parameters, computed as the release computes it (`baseline_rvsepp.py`); the two alternate in one
process. The FLOP count is that of the matrix products in the forward pass times three (forward
+ two backward products); the reference rate is a float32 matmul of the image projection's
size, timed in the same process.

Usage: python benchmarks/train_step.py [--batch 128] [--steps 5] [--breakdown]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from baseline_rvsepp import ReleaseStyleLoss, ReleaseStyleRVSEPP
from common import make_batch

from selhn import SelHNLoss
from selhn.data.batch import Batch
from selhn.models import RVSEPP, create_model
from selhn.training.objective import TrainingObjective
from selhn.training.trainer import train_step


def step_flops(model: RVSEPP, batch: Batch) -> float:
    """Multiply-add FLOPs of the step's matrix products (forward x 3)."""
    s = model.settings
    regions = int(batch.image_input[1].sum())
    tokens = int(batch.token_lengths.sum())
    image = regions * (s.img_dim * s.embed_size + 2 * s.embed_size * s.mlp_hidden)
    text = tokens * 2 * 3 * (s.word_dim + s.embed_size) * s.embed_size  # two GRU directions
    scores = len(batch.token_lengths) ** 2 * s.embed_size
    return 3 * 2 * (image + text + scores)


def matmul_rate(rows: int, inner: int, cols: int, repeats: int = 5) -> float:
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * inner * cols * repeats / (time.perf_counter() - start)


def _seconds(fn, repeats: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def breakdown(model: RVSEPP, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Seconds of each part of the step, timed alone."""
    dim = model.settings.embed_size
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(len(batch.token_lengths), dim, generator=gen).requires_grad_()
    txt = torch.randn(len(batch.token_lengths), dim, generator=gen).requires_grad_()
    loss = SelHNLoss()
    return {
        "image encoder": _seconds(lambda: model.encode_images(*batch.image_input).sum().backward()),
        "text encoder": _seconds(
            lambda: model.encode_texts(batch.tokens, batch.token_lengths).sum().backward()
        ),
        "loss": _seconds(lambda: loss(img, txt).backward()),
        "AdamW step": _seconds(optimizer.step),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--img-dim", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true", help="print where the time goes")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model("rvsepp", vocab_size=args.vocab, img_dim=args.img_dim).train()
    batch = make_batch(args.batch, args.regions, args.img_dim, args.vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    objectives = {
        "selhn": TrainingObjective(model, {"selhn": SelHNLoss()}),
        "release-style": TrainingObjective(
            ReleaseStyleRVSEPP(model), {"release": ReleaseStyleLoss()}
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in objectives}
    for objective in objectives.values():
        train_step(objective, objective, model, optimizer, batch, 2.0)  # warm-up
    for _ in range(args.steps):
        for name, objective in objectives.items():
            start = time.perf_counter()
            train_step(objective, objective, model, optimizer, batch, 2.0)
            times[name].append(time.perf_counter() - start)
    seconds = statistics.median(times["selhn"])
    baseline = statistics.median(times["release-style"])
    regions = int(batch.image_input[1].sum())
    flops = step_flops(model, batch)
    rate = matmul_rate(regions, args.img_dim, 1024)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"B = {args.batch}, {regions} regions, "
        f"{int(batch.token_lengths.sum())} tokens, V = {args.vocab}"
    )
    print(
        f"seconds per step (median of {args.steps}): "
        f"selhn {seconds:.3f}, release-style {baseline:.3f}"
    )
    print(f"throughput ratio selhn / release-style: {baseline / seconds:.2f}x")
    print(f"step matmul work: {flops / 1e9:.1f} GFLOP -> {flops / seconds / 1e9:.0f} GFLOP/s")
    print(f"machine float32 matmul rate: {rate / 1e9:.0f} GFLOP/s")
    print(f"share of the matmul rate reached: {flops / seconds / rate:.2f}")
    if args.breakdown:
        print("where the time goes (forward + backward of each part, seconds):")
        for part, seconds in breakdown(model, batch, optimizer).items():
            print(f"  {part:14s} {seconds:.3f}")


if __name__ == "__main__":
    main()
