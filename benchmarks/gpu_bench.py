"""Training-step time at the paper's defaults in float32 and bfloat16, and the evaluation time of
a 5,000 x 25,000 problem, on one device (a CUDA GPU; the CPU only for a smoke run).

The step is the trainer's own (``selhn.training.trainer.train_step``: forward, SelHN loss, backward,
gradient norms, clipping, AdamW) on a synthetic batch shaped like the release's (B = 128, 36 x
2048 regions, captions of 8-19 tokens, 8,500 words; ``common.make_batch``). bf16 is the
trainer's ``train.amp=bf16`` autocast. Evaluation is ``embedding_metrics`` on embeddings already
on the device. Times are medians after warm-up, with the device synchronised.

Usage: python benchmarks/gpu_bench.py [--device cuda] [--steps 20] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import make_batch

from selhn import SelHNLoss
from selhn.evaluation.metrics import embedding_metrics
from selhn.models import create_model
from selhn.training.objective import TrainingObjective
from selhn.training.trainer import train_step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_seconds(args: argparse.Namespace, device: torch.device, amp: str) -> float:
    torch.manual_seed(0)
    model = create_model("rvsepp", vocab_size=args.vocab, img_dim=args.img_dim).to(device)
    network = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    dtype = torch.bfloat16 if amp == "bf16" else None
    objective = TrainingObjective(network, {"selhn": SelHNLoss()}, amp=dtype)
    batch = make_batch(args.batch, args.regions, args.img_dim, args.vocab).to(device)
    return median_seconds(
        lambda: train_step(objective, objective, model, optimizer, batch, 2.0), device, args.steps
    )


def eval_seconds(args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(args.images, 1024, generator=gen), dim=1)
    txt = img.repeat_interleave(5, dim=0) + 0.7 * torch.randn(args.images * 5, 1024, generator=gen)
    img, txt = img.to(device), F.normalize(txt, dim=1).to(device)
    metrics = {}

    def run() -> None:
        metrics.update(embedding_metrics(img, txt, 5))

    return median_seconds(run, device, repeats=3, warmup=1), metrics["rsum"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--img-dim", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, batch {args.batch}, "
          f"{args.regions} x {args.img_dim} regions")  # fmt: skip
    fp32 = step_seconds(args, device, "none")
    bf16 = step_seconds(args, device, "bf16")
    print(f"train step fp32 {fp32 * 1e3:.1f} ms   bf16 {bf16 * 1e3:.1f} ms   "
          f"fp32/bf16 {fp32 / bf16:.2f}")  # fmt: skip
    if args.compile:
        args_compiled = argparse.Namespace(**{**vars(args), "compile": True})
        compiled = step_seconds(args_compiled, device, "bf16")
        print(f"train step bf16 + torch.compile {compiled * 1e3:.1f} ms")
    seconds, rsum = eval_seconds(args, device)
    print(f"evaluation {args.images} x {args.images * 5}: {seconds:.3f} s (rSum {rsum:.1f})")


if __name__ == "__main__":
    main()
