"""Time and peak extra memory of SelHNLoss forward+backward against a release-style baseline.

Each measurement runs in a fresh process. Memory: inputs are built, the peak resident set size is
reset (/proc/self/clear_refs), then one forward+backward is measured, in a process with a fixed
glibc mmap threshold (64 KB), so every large tensor is mapped when allocated and unmapped when
freed and the peak counts it whether or not an earlier step freed its size. Time: the median of
repeats after a warm-up, in another process with the default allocator. Two input regimes are
measured, since they take different branches:

  trained: positives clearly above negatives, almost every anchor on the hardest branch;
  init:    every embedding points nearly the same way (mean cosine ~0.96, as at initialisation),
           so most anchors fall back to the mean of their hinges.

Two shapes: B pairs (one image per caption), and N images with 5 captions each (M = 5N), where
selhn scores the N x M matrix (``caption_to_image``) and the baseline repeats each image per
caption and masks the captions of one image (``ids``), as one would without that argument.

Usage: python benchmarks/loss_bench.py [--batch 4096 8192] [--images 1024] [--dim 1024]
       [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from baseline_loss import baseline_selhn_loss
from common import memory_bytes

from selhn import SelHNLoss

CAPTIONS_PER_IMAGE = 5


def make_inputs(
    regime: str, images: int, captions_per_image: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, dim) and (images x captions_per_image, dim) unit vectors, caption -> image."""
    gen = torch.Generator().manual_seed(0)
    owner = torch.arange(images).repeat_interleave(captions_per_image)
    captions = len(owner)
    if regime == "trained":
        img = torch.randn(images, dim, generator=gen)
        txt = img[owner] + torch.randn(captions, dim, generator=gen)
    else:
        common = torch.randn(dim, generator=gen) * 5
        img = common + torch.randn(images, dim, generator=gen)
        txt = common + torch.randn(captions, dim, generator=gen)
    return F.normalize(img, dim=1), F.normalize(txt, dim=1), owner


def measure(impl: str, regime: str, images: int, per_image: int, dim: int, repeats: int) -> dict:
    img, txt, owner = make_inputs(regime, images, per_image, dim)
    img.requires_grad_()
    txt.requires_grad_()
    selhn_loss = SelHNLoss()
    multi = {"caption_to_image": owner} if per_image > 1 else {}

    def loss_fn(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        if impl == "selhn":
            return selhn_loss(img, txt, **multi)
        if per_image > 1:
            return baseline_selhn_loss(img[owner], txt, ids=owner)
        return baseline_selhn_loss(img, txt)

    def step() -> None:
        loss_fn(img, txt).backward()
        img.grad = txt.grad = None

    step()  # warm-up
    if repeats == 0:  # the memory measurement
        Path("/proc/self/clear_refs").write_text("5")
        before = memory_bytes("VmRSS")
        step()
        return {"peak_extra_bytes": memory_bytes("VmHWM") - before}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times)}
    if impl == "selhn":  # the share of anchors on the mean branch
        selhn_loss(img, txt, **multi)
        result["mean_branch_share"] = selhn_loss.stats["vanishing_i2t"].item()
    return result


def check_baseline() -> None:
    """Exit unless the baseline computes SelHN's loss and gradients (float64, 1e-12), on random
    and on clustered pairs (many gaps below epsilon), with and without ids."""
    gen = torch.Generator().manual_seed(3)
    centers = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    which = torch.arange(8) % 3
    cases = {
        "random": (torch.randn(8, 6, generator=gen, dtype=torch.float64),) * 2,
        "clustered": (centers[which], centers[which]),
    }
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])
    for name, (img, txt) in cases.items():
        img = F.normalize(img + 0.2 * torch.randn(img.shape, generator=gen, dtype=img.dtype), dim=1)
        txt = F.normalize(txt + 0.8 * torch.randn(txt.shape, generator=gen, dtype=txt.dtype), dim=1)
        for eps, group in ((0.01, None), (0.05, ids)):
            results = []
            for fn in (SelHNLoss(epsilon=eps), lambda a, b, e=eps, g=group: baseline_selhn_loss(
                    a, b, epsilon=e, ids=g)):  # fmt: skip
                a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
                value = fn(a, b, group) if isinstance(fn, SelHNLoss) else fn(a, b)
                value.backward()
                results.append((value.detach(), a.grad, b.grad))
            for x, y in zip(*results, strict=True):
                if not torch.allclose(x, y, rtol=1e-12, atol=1e-12):
                    sys.exit(f"the baseline differs from SelHNLoss ({name}, epsilon {eps})")
    print("baseline check: the same loss and gradients as SelHNLoss (float64, to 1e-12)")


def child(cmd: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--images", type=int, nargs="*", default=[1024])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # impl regime images per
    args = parser.parse_args()
    if args.child:
        impl, regime, images, per_image = args.child
        result = measure(impl, regime, int(images), int(per_image), args.dim, args.repeats)
        print(json.dumps(result))
        return

    check_baseline()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {args.dim}, float32")
    header = (
        "regime   shape        baseline s  selhn s  time ratio  baseline MB  selhn MB  memory ratio"
    )
    print(header)
    shapes = [(b, 1) for b in args.batch] + [(n, CAPTIONS_PER_IMAGE) for n in args.images]
    for regime in ("trained", "init"):
        for images, per_image in shapes:
            runs = {}
            for impl in ("baseline", "selhn"):
                cmd = [sys.executable, __file__, "--child", impl, regime, str(images)]
                cmd += [str(per_image), "--dim", str(args.dim)]
                mapped = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 << 10)}
                runs[impl] = child([*cmd, "--repeats", str(args.repeats)], dict(os.environ))
                runs[impl] |= child([*cmd, "--repeats", "0"], mapped)
            base, ours = runs["baseline"], runs["selhn"]
            mb = 1 << 20
            shape = f"B={images}" if per_image == 1 else f"{images}x{images * per_image}"
            print(
                f"{regime:8s} {shape:12s} {base['seconds']:10.3f}  {ours['seconds']:7.3f}  "
                f"{ours['seconds'] / base['seconds']:10.2f}  {base['peak_extra_bytes'] / mb:11.0f}"
                f"  {ours['peak_extra_bytes'] / mb:8.0f}  "
                f"{ours['peak_extra_bytes'] / base['peak_extra_bytes']:12.2f}"
                f"   (mean-branch share {ours['mean_branch_share']:.2f})"
            )


if __name__ == "__main__":
    main()
