"""COCO-5K-sized evaluation: ranking by counting against the per-query argsort loop of VSE++ and
VSE-infinity, and a full evaluation from embeddings against the similarity matmul alone.

A random 5,000 x 25,000 problem (D = 1024, float32, captions near their image so recalls are not
trivial) is evaluated three ways in one process:

  loop:    the reference implementation's i2t/t2i, argsort per query (numpy), on the score matrix;
  ranking: selhn's ranks_from_sims on the same score matrix (both produce identical ranks),
           and retrieval_metrics with its input checks (finiteness found in the ranking pass);
  full:    selhn's embedding_metrics from the embeddings (tiled matmul + ranking + metrics),
           compared with the matmul img @ txt.T alone.

Peak extra memory of the full evaluation (resident set size above the embeddings) is printed too.

Usage: python benchmarks/eval_bench.py [--images 5000] [--dim 1024]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import memory_bytes

from selhn.evaluation.metrics import embedding_metrics, ranks_from_sims, retrieval_metrics


def loop_ranks(sims: np.ndarray, per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """VSE++/VSE-infinity style: argsort every query's scores, find the ground truth."""
    n_img = sims.shape[0]
    i2t = np.zeros(n_img, dtype=np.int64)
    for i in range(n_img):
        order = np.argsort(sims[i])[::-1]
        i2t[i] = min(np.where(order == j)[0][0] for j in range(per_image * i, per_image * (i + 1)))
    t2i = np.zeros(sims.shape[1], dtype=np.int64)
    columns = np.ascontiguousarray(sims.T)
    for j in range(sims.shape[1]):
        order = np.argsort(columns[j])[::-1]
        t2i[j] = np.where(order == j // per_image)[0][0]
    return i2t, t2i


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=1024)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(args.images, args.dim, generator=gen), dim=1)
    index = torch.arange(args.images * args.per_image) // args.per_image
    noise = torch.randn(len(index), args.dim, generator=gen)
    txt = F.normalize(img[index] + 1.2 * noise / args.dim**0.5 * 8, dim=1)
    del noise
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"problem: {args.images} images x {len(index)} captions, D = {args.dim}, float32")

    # The full evaluation first, so its peak memory is measured before any score matrix exists.
    embedding_metrics(img[:500], txt[: 500 * args.per_image], args.per_image)  # warm-up
    Path("/proc/self/clear_refs").write_text("5")
    before = memory_bytes("VmRSS")
    metrics, full_s = timed(lambda: embedding_metrics(img, txt, args.per_image))
    peak = memory_bytes("VmHWM") - before
    sims, matmul_s = timed(lambda: img @ txt.T)
    _, matmul_s2 = timed(lambda: img @ txt.T)
    matmul_s = min(matmul_s, matmul_s2)
    (i2t, t2i), rank_s = timed(lambda: ranks_from_sims(sims, index))
    _, checked_s = timed(lambda: retrieval_metrics(sims, args.per_image))
    _, isfinite_s = timed(lambda: bool(torch.isfinite(sims).all()))
    (loop_i2t, loop_t2i), loop_s = timed(lambda: loop_ranks(sims.numpy(), args.per_image))
    assert np.array_equal(i2t.numpy(), loop_i2t) and np.array_equal(t2i.numpy(), loop_t2i)

    sims_mb = sims.numel() * 4 / 2**20
    print(f"rSum of the problem: {metrics['rsum']:.1f}")
    print(f"ranking: per-query argsort loop {loop_s:.2f} s, counting {rank_s:.3f} s")
    print(f"  speed-up over the loop: {loop_s / rank_s:.0f}x (identical ranks)")
    print(
        f"retrieval_metrics on the score matrix (input checks included): {checked_s:.3f} s; "
        f"ranking alone {rank_s:.3f} s"
    )
    print(
        f"  ratio checked / ranking alone: {checked_s / rank_s:.2f} "
        f"(a separate isfinite pass alone takes {isfinite_s:.3f} s)"
    )
    print(f"full evaluation from embeddings: {full_s:.3f} s; matmul alone {matmul_s:.3f} s")
    print(f"  ratio full / matmul: {full_s / matmul_s:.2f}")
    print(
        f"  peak extra memory: {peak / 2**20:.0f} MB "
        f"({peak / 2**20 / sims_mb:.2f}x the {sims_mb:.0f} MB score matrix, which is never built)"
    )


if __name__ == "__main__":
    main()
