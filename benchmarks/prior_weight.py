"""The class prior's weight, re-weighted after training: test and dev rSum of trained models at
other weights, and of the probe with the prior added.

A model trained with ``model.class_prior = w`` scores a pair ``(learned + w * prior) / (1 + w)``;
its embeddings hold both parts (``selhn.models.class_prior.with_prior``), so the two scores are
recovered exactly and recombined as ``learned + v * prior`` for each weight v (rank-equivalent to
the model's own score at v = w). The probe's scores get the same prior, computed from the frozen
pooled features (``{split}_ims.npy``) and the captions' sentence embeddings. Reads the runs of
``benchmarks/real_data.py`` (``WORK/SET/runs/{full,probe}-seedS/best``); trains nothing.

Usage: python benchmarks/prior_weight.py [--sets emoji,openclipart,samples] [--seeds 3]
           [--work runs/real_data] [--weights 0,0.1,0.2,0.3,0.5,0.8,1.2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from real_data import mean_std
from torch import Tensor

from selhn.checkpoint import load_model
from selhn.evaluation import metrics_from_ranks, ranks_from_sims
from selhn.models.class_prior import ClassPrior
from selhn.models.probe import SentenceProbe
from selhn.retrieval import encode_split, split_for


def rsum(scores: Tensor, caption_to_image: Tensor) -> float:
    return metrics_from_ranks(*ranks_from_sims(scores, caption_to_image))["rsum"]


def parts(run: Path, features: Path, split: str) -> tuple[Tensor, Tensor, Tensor]:
    """(learned scores, prior scores, caption -> image) of a model trained with the prior."""
    model, vocab, _ = load_model(run)
    weight = model.settings.class_prior
    if not weight:
        raise ValueError(f"{run}: trained without the class prior (model.class_prior = 0)")
    data = split_for(model, features, split)
    images, captions = encode_split(model, data, vocab)
    width = model.text_encoder.transformer.config.hidden_size
    cut = images.shape[1] - width
    learned = images[:, :cut] @ captions[:, :cut].T * (1 + weight)
    prior = images[:, cut:] @ captions[:, cut:].T * (1 + weight) / weight
    return learned, prior, torch.as_tensor(data.caption_to_image())


def probe_scores(run: Path, features: Path, split: str) -> Tensor:
    model, vocab, _ = load_model(run)
    images, captions = encode_split(model, split_for(model, features, split), vocab)
    return images @ captions.T


def zero_shot(prior: ClassPrior, text: SentenceProbe, features: Path, split: str) -> Tensor:
    """The prior's scores from the frozen pooled features and the captions' sentences."""
    pooled = torch.from_numpy(np.load(features / f"{split}_ims.npy")).float().mean(dim=1)
    captions = (features / f"{split}_caps.txt").read_text(encoding="utf-8").splitlines()
    return prior(pooled) @ F.normalize(text.embed_texts(captions), dim=-1).T


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="emoji,openclipart,samples")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", default="runs/real_data")
    parser.add_argument("--weights", default="0,0.1,0.2,0.3,0.5,0.8,1.2")
    args = parser.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    text = SentenceProbe(None, 1)
    text.load_pretrained()
    prior = ClassPrior(1280, text.transformer.config.hidden_size)
    prior.load_pretrained(text.embed_texts)
    header = " | ".join(f"{w:g}" for w in weights)
    print(f"| set | split | model | {header} |\n|---|---|---|{'---|' * len(weights)}")
    for name in args.sets.split(","):
        features, runs = Path(args.work) / name / "features", Path(args.work) / name / "runs"
        for split in ("dev", "test"):
            full: dict[float, list[float]] = {w: [] for w in weights}
            probe: dict[float, list[float]] = {w: [] for w in weights}
            prior_scores = zero_shot(prior, text, features, split)
            for seed in range(args.seeds):
                learned, own, index = parts(runs / f"full-seed{seed}" / "best", features, split)
                scores = probe_scores(runs / f"probe-seed{seed}" / "best", features, split)
                for w in weights:
                    full[w].append(rsum(learned + w * own, index))
                    probe[w].append(rsum(scores + w * prior_scores, index))
            for model, values in (("full", full), ("probe + prior", probe)):
                cells = " | ".join(mean_std(values[w]) for w in weights)
                print(f"| {name} | {split} | {model} | {cells} |", flush=True)
            print(f"| {name} | {split} | prior alone | {rsum(prior_scores, index):.1f} |")


if __name__ == "__main__":
    main()
