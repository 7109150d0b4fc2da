"""Time of the false-negative option and of selective InfoNCE against InfoNCE, forward + backward.

B pairs of unit D-dimensional embeddings (positives above the negatives, as in training), the
median of ``--repeats`` steps after a warm-up, in one process. With duplicates every image has
``--keys`` caption keys (as a split with 5 captions per image gives) and 5% of the captions share
their key with a caption of another image of the batch, so the masks are not empty. Prints each
loss's seconds and its ratio to InfoNCE without duplicates.

Usage: python benchmarks/false_negative_bench.py [--batch 4096] [--dim 1024] [--keys 5]
       [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from selhn import InfoNCELoss, SelHNLoss
from selhn.losses import Duplicates, SelectiveInfoNCELoss


def make_batch(batch: int, dim: int, keys: int) -> tuple[torch.Tensor, torch.Tensor, Duplicates]:
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(batch, dim, generator=gen)
    txt = img + torch.randn(batch, dim, generator=gen)
    image_captions = torch.arange(batch)[:, None] * keys + torch.arange(keys)  # distinct keys
    caption_keys = image_captions[:, 0].clone()  # caption p is its image's first caption
    shared = torch.randperm(batch, generator=gen)[: batch // 20]  # 5%: another image's words
    caption_keys[shared] = caption_keys[torch.randint(0, batch, (len(shared),), generator=gen)]
    duplicates = Duplicates(torch.arange(batch), caption_keys, image_captions)
    return F.normalize(img, dim=1), F.normalize(txt, dim=1), duplicates


def seconds(loss, img: torch.Tensor, txt: torch.Tensor, duplicates, repeats: int) -> float:
    img, txt = img.clone().requires_grad_(), txt.clone().requires_grad_()

    def step() -> None:
        loss(img, txt, duplicates=duplicates).backward()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    img, txt, duplicates = make_batch(args.batch, args.dim, args.keys)
    losses = {
        "infonce": InfoNCELoss(),
        "selnce": SelectiveInfoNCELoss(),
        "selhn": SelHNLoss(),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B = {args.batch}, "
          f"D = {args.dim}, float32, median of {args.repeats}")  # fmt: skip
    base = seconds(losses["infonce"], img, txt, None, args.repeats)
    print("loss      duplicates  seconds  / infonce")
    for name, loss in losses.items():
        for given in (None, duplicates):
            took = base if (name, given) == ("infonce", None) else seconds(
                loss, img, txt, given, args.repeats)  # fmt: skip
            label = "yes" if given is not None else "no"
            print(f"{name:9s} {label:10s}  {took:7.3f}  {took / base:8.2f}")


if __name__ == "__main__":
    main()
