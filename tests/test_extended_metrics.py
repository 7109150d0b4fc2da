"""Duplicate-aware metrics against a per-query reference written from the definitions."""

import numpy as np
import pytest
import torch

from selhn.evaluation import extended
from selhn.evaluation.extended import extended_metrics
from selhn.evaluation.metrics import embedding_metrics


def reference(scores: np.ndarray, positives: np.ndarray) -> dict[str, float]:
    """Each query sorted by score, non-positives first among equal scores: R@K from the first
    positive's position, AP@R from the first R positions."""
    out = {}
    for name, s, p in (("i2t", scores, positives), ("t2i", scores.T, positives.T)):
        firsts, aps = [], []
        for row, wanted in zip(s, p, strict=True):
            order = sorted(range(len(row)), key=lambda j: (-row[j], bool(wanted[j])))
            hits = [bool(wanted[j]) for j in order]
            firsts.append(hits.index(True))
            r = int(wanted.sum())
            found, ap = 0, 0.0
            for position, hit in enumerate(hits[:r], start=1):
                if hit:
                    found += 1
                    ap += found / position
            aps.append(ap / r)
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * np.mean(np.array(firsts) < k)
        out[f"{name}_map_r"] = 100.0 * np.mean(aps)
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def problem(seed: int, images: int = 20, per_image: int = 3, dim: int = 6, steps: float = 0):
    """Embeddings (scores rounded to multiples of ``steps`` if given, for ties) and positives:
    each caption's own image, plus random extra pairs."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(images, dim, generator=gen), dim=1)
    owners = torch.arange(images * per_image) // per_image
    txt = torch.nn.functional.normalize(img[owners] + torch.randn(len(owners), dim, generator=gen),
                                        dim=1)  # fmt: skip
    if steps:  # one-hot-ish embeddings whose scores take few values
        img = torch.randint(0, 3, (images, dim), generator=gen).float()
        txt = torch.randint(0, 3, (len(owners), dim), generator=gen).float()
    positives = torch.zeros(images, len(owners), dtype=torch.bool)
    positives[owners, torch.arange(len(owners))] = True
    positives |= torch.rand(images, len(owners), generator=gen) < 0.05
    return img, txt, positives, owners


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ties", [False, True])
def test_extended_metrics_match_the_reference(seed, ties, monkeypatch):
    img, txt, positives, _ = problem(seed, steps=1 if ties else 0)
    want = reference((img @ txt.T).numpy(), positives.numpy())
    got = extended_metrics(img, txt, positives)
    assert got == pytest.approx(want, abs=1e-9)
    monkeypatch.setattr(extended, "_CHUNK_ELEMENTS", 70)  # one query row (or two) per chunk
    assert extended_metrics(img, txt, positives) == pytest.approx(want, abs=1e-9)


def test_with_only_the_own_pairs_the_recalls_are_the_standard_protocols():
    img, txt, _, owners = problem(3)
    own = torch.zeros(len(img), len(txt), dtype=torch.bool)
    own[owners, torch.arange(len(txt))] = True
    got = extended_metrics(img, txt, own)
    standard = embedding_metrics(img, txt, caption_to_image=owners)
    for name in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"):
        assert got[name] == pytest.approx(standard[name]), name
    # one caption per image: AP@R is the precision at the single positive, 1 / (rank + 1)


def test_fold5_and_ensembles():
    img, txt, positives, owners = problem(4, images=25, per_image=2)
    folds = []
    for k in range(5):
        rows, cols = slice(5 * k, 5 * k + 5), slice(10 * k, 10 * k + 10)
        folds.append(reference((img[rows] @ txt[cols].T).numpy(), positives[rows, cols].numpy()))
    want = {name: np.mean([f[name] for f in folds]) for name in folds[0]}
    got = extended_metrics(img, txt, positives, fold5=True, caption_to_image=owners)
    assert got == pytest.approx(want, abs=1e-9)
    img2, txt2, _, _ = problem(5, images=25, per_image=2)
    mean = (img @ txt.T + img2 @ txt2.T) / 2
    ensemble = extended_metrics([img, img2], [txt, txt2], positives)
    assert ensemble == pytest.approx(reference(mean.numpy(), positives.numpy()), abs=1e-9)


def test_bad_positives_are_refused():
    img, txt, positives, _ = problem(6)
    with pytest.raises(ValueError, match=r"positives must be a \(20, 60\) bool matrix"):
        extended_metrics(img, txt, positives.float())
    with pytest.raises(ValueError, match="fold5 needs caption_to_image"):
        extended_metrics(img, txt, positives, fold5=True)
    positives[:, 0] = False
    with pytest.raises(ValueError, match="every image and every caption needs a positive"):
        extended_metrics(img, txt, positives)
