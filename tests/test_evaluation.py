import numpy as np
import pytest
import torch

from selhn.evaluation import metrics as evaluation
from selhn.evaluation.metrics import (
    METRIC_NAMES,
    embedding_metrics,
    format_table,
    retrieval_metrics,
    unique_images,
)


def reference_metrics(sims, caption_to_image):
    """Per-query loops: sort each query's scores; ties put the ground truth last."""
    sims = np.asarray(sims, dtype=np.float64)
    n_img, n_cap = sims.shape
    i2t, t2i = [], []
    for i in range(n_img):
        # the image's best caption, behind every other caption that scores at least as high
        best = max(sims[i, j] for j in range(n_cap) if caption_to_image[j] == i)
        i2t.append(sum(1 for j in range(n_cap) if caption_to_image[j] != i and sims[i, j] >= best))
    for j in range(n_cap):
        order = sorted(range(n_img), key=lambda i: (-sims[i, j], i == caption_to_image[j]))
        t2i.append(order.index(caption_to_image[j]))
    out = {}
    for name, ranks in (("i2t", np.array(i2t)), ("t2i", np.array(t2i))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100 * np.mean(ranks < k)
        out[f"{name}_medr"] = np.floor(np.median(ranks)) + 1
        out[f"{name}_meanr"] = ranks.mean() + 1
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def assert_metrics(got, want):
    assert list(got) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-9), name


def embeddings(n_img, n_cap, dim=6, seed=0, caption_to_image=None):
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(n_img, dim, generator=gen, dtype=torch.float64)
    index = caption_to_image if caption_to_image is not None else torch.arange(n_cap) // 5
    txt = img[index] + 1.5 * torch.randn(n_cap, dim, generator=gen, dtype=torch.float64)
    return img, txt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scores_match_reference(seed):
    img, txt = embeddings(30, 150, seed=seed)
    sims = img @ txt.T
    want = reference_metrics(sims, np.arange(150) // 5)
    assert_metrics(retrieval_metrics(sims, 5), want)
    assert_metrics(embedding_metrics(img, txt, 5), want)


def test_ties_count_against_the_ground_truth():
    gen = torch.Generator().manual_seed(3)
    sims = torch.randint(0, 3, (12, 60), generator=gen).double()  # many exact ties
    assert_metrics(retrieval_metrics(sims, 5), reference_metrics(sims, np.arange(60) // 5))


def test_all_equal_scores_give_zero_recall():
    n_img, n_cap = 20, 100
    metrics = retrieval_metrics(torch.full((n_img, n_cap), 0.3), 5)
    assert metrics["rsum"] == 0
    assert metrics["i2t_meanr"] == n_cap - 5 + 1 and metrics["t2i_meanr"] == n_img
    collapsed = embedding_metrics(torch.ones(n_img, 8) / 8**0.5, torch.ones(n_cap, 8) / 8**0.5, 5)
    assert collapsed == metrics


def test_variable_captions_per_image():
    index = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 1, 3, 0])
    img, txt = embeddings(5, 12, seed=4, caption_to_image=index)
    want = reference_metrics(img @ txt.T, index.numpy())
    assert_metrics(retrieval_metrics(img @ txt.T, caption_to_image=index.tolist()), want)
    assert_metrics(embedding_metrics(img, txt, caption_to_image=index), want)


def test_fold5_averages_five_disjoint_folds():
    img, txt = embeddings(50, 250, seed=5)
    sims = img @ txt.T
    folds = [
        reference_metrics(sims[10 * k : 10 * (k + 1), 50 * k : 50 * (k + 1)], np.arange(50) // 5)
        for k in range(5)
    ]
    want = {name: np.mean([f[name] for f in folds]) for name in METRIC_NAMES}
    assert_metrics(retrieval_metrics(sims, 5, fold5=True), want)
    assert_metrics(embedding_metrics(img, txt, 5, fold5=True), want)


def test_ensemble_averages_score_matrices():
    img_a, txt_a = embeddings(20, 100, seed=6)
    img_b, txt_b = embeddings(20, 100, seed=7)
    sims = (img_a @ txt_a.T + img_b @ txt_b.T) / 2
    want = reference_metrics(sims, np.arange(100) // 5)
    assert_metrics(embedding_metrics([img_a, img_b], [txt_a, txt_b], 5), want)


def test_chunked_ranking_equals_one_chunk(monkeypatch):
    index = torch.tensor([3, 0, 0, 1, 2, 2, 2, 3, 4, 4, 1, 3, 0, 5, 6, 6, 5, 1])
    img, txt = embeddings(7, 18, seed=8, caption_to_image=index)
    whole = embedding_metrics(img, txt, caption_to_image=index)
    whole_sims = retrieval_metrics(img @ txt.T, caption_to_image=index)
    monkeypatch.setattr(evaluation, "_CHUNK_ELEMENTS", 40)  # 2 image rows per chunk
    monkeypatch.setattr(evaluation, "_TILE_ELEMENTS", 60)  # 3 image rows per tile
    assert embedding_metrics(img, txt, caption_to_image=index) == whole
    assert retrieval_metrics(img @ txt.T, caption_to_image=index) == whole_sims


def test_repeated_image_rows_are_deduplicated():
    img, _ = embeddings(4, 20, seed=9)
    repeated = img.repeat_interleave(5, dim=0)
    assert torch.equal(unique_images(repeated, np.arange(20) // 5), img)
    with pytest.raises(ValueError, match="rows of the same image differ"):
        unique_images(torch.randn(20, 6), np.arange(20) // 5)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"captions_per_image=5 does not divide the 12 captions"):
        retrieval_metrics(torch.zeros(3, 12))
    with pytest.raises(ValueError, match=r"caption_to_image must have one entry per caption \(4\)"):
        retrieval_metrics(torch.zeros(2, 4), caption_to_image=[0, 1])
    with pytest.raises(ValueError, match=r"image 2 has no caption"):
        retrieval_metrics(torch.zeros(3, 4), caption_to_image=[0, 1, 1, 0])
    with pytest.raises(ValueError, match=r"fold5 needs the images to split into 5 equal folds"):
        retrieval_metrics(torch.zeros(6, 30), fold5=True)
    with pytest.raises(ValueError, match=r"20 of 20 scores are not finite"):
        retrieval_metrics(torch.full((2, 10), float("nan")))


def test_table_shows_both_directions():
    img, txt = embeddings(20, 100, seed=10)
    metrics = retrieval_metrics(img @ txt.T)
    table = format_table(metrics)
    assert "image->text" in table and "text->image" in table
    assert f"rSum {metrics['rsum']:.1f}" in table
