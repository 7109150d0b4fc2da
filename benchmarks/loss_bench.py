"""Time and peak extra memory of SelHNLoss forward+backward against a release-style baseline.

Each measurement runs in a fresh process: inputs are built, the peak resident set size is reset
(/proc/self/clear_refs), then one forward+backward is measured. Times are the median of repeats
after a warm-up. Two input regimes are measured, since they take different branches:

  trained: positives clearly above negatives, almost every anchor on the hardest branch;
  init:    every embedding points nearly the same way (mean cosine ~0.96, METHOD.md section 2),
           so most anchors fall back to the mean of their hinges.

Usage: python benchmarks/loss_bench.py [--batch 4096 8192] [--dim 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_loss import baseline_selhn_loss

from selhn import SelHNLoss


def make_inputs(regime: str, batch: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if regime == "trained":
        img = torch.randn(batch, dim, generator=gen)
        txt = img + torch.randn(batch, dim, generator=gen)
    else:
        common = torch.randn(dim, generator=gen) * 5
        img = common + torch.randn(batch, dim, generator=gen)
        txt = common + torch.randn(batch, dim, generator=gen)
    return F.normalize(img, dim=1), F.normalize(txt, dim=1)


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(impl: str, regime: str, batch: int, dim: int, repeats: int) -> dict:
    img, txt = make_inputs(regime, batch, dim)
    img.requires_grad_()
    txt.requires_grad_()
    selhn_loss = SelHNLoss()
    loss_fn = selhn_loss if impl == "selhn" else baseline_selhn_loss

    def step() -> None:
        loss_fn(img, txt).backward()
        img.grad = txt.grad = None

    step()  # warm-up
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_bytes("VmRSS")
    step()
    peak = rss_bytes("VmHWM") - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times), "peak_extra_bytes": peak}
    if impl == "selhn":
        selhn_loss(img, txt)
        result["mean_branch_share"] = selhn_loss.stats["vanishing_i2t"].item()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "REGIME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(*args.child, args.batch[0], args.dim, args.repeats)
        print(json.dumps(result))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {args.dim}, float32")
    header = "regime   B      baseline s  selhn s  time ratio  baseline MB  selhn MB  memory ratio"
    print(header)
    for regime in ("trained", "init"):
        for batch in args.batch:
            runs = {}
            for impl in ("baseline", "selhn"):
                cmd = [sys.executable, __file__, "--child", impl, regime, "--batch", str(batch)]
                cmd += ["--dim", str(args.dim), "--repeats", str(args.repeats)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[impl] = json.loads(out.strip().splitlines()[-1])
            base, ours = runs["baseline"], runs["selhn"]
            mb = 1 << 20
            print(
                f"{regime:8s} {batch:<6d} {base['seconds']:10.3f}  {ours['seconds']:7.3f}  "
                f"{ours['seconds'] / base['seconds']:10.2f}  {base['peak_extra_bytes'] / mb:11.0f}"
                f"  {ours['peak_extra_bytes'] / mb:8.0f}  "
                f"{ours['peak_extra_bytes'] / base['peak_extra_bytes']:12.2f}"
                f"   (mean-branch share {ours['mean_branch_share']:.2f})"
            )


if __name__ == "__main__":
    main()
