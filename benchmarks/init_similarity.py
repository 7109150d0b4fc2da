"""How alike RVSE++'s embeddings are at initialisation (why hardest negatives start stalled).

RVSEPP(vocab_size=8500) at the paper's sizes, seeded, in eval mode, on 64 random non-negative
36 x 2048 region sets and 64 random captions of 8-19 tokens: the mean pairwise cosine among the
images and among the captions, and the mean and standard deviation of the image-caption scores.

Usage: python benchmarks/init_similarity.py [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from selhn.models import RVSEPP


def mean_pairwise(emb: torch.Tensor) -> float:
    sims = emb @ emb.T
    off = ~torch.eye(len(emb), dtype=torch.bool)
    return sims[off].mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = RVSEPP(vocab_size=8500).eval()
    gen = torch.Generator().manual_seed(args.seed)
    regions = torch.rand(64, 36, 2048, generator=gen)
    lengths = torch.randint(8, 20, (64,), generator=gen)
    tokens = torch.randint(4, 8500, (64, int(lengths.max())), generator=gen)
    with torch.no_grad():
        img = model.encode_images(regions)
        txt = model.encode_texts(tokens, lengths)
    scores = img @ txt.T
    print(f"image-image cosine {mean_pairwise(img):.2f}, caption-caption {mean_pairwise(txt):.2f}, "
          f"image-caption {scores.mean():.2f} ± {scores.std():.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
