import pytest
import torch

from selhn.evaluation.retrieval import top_k


def brute_force(queries, gallery, k):
    scores = queries @ gallery.T
    order = [
        sorted(range(gallery.shape[0]), key=lambda j, q=q: -scores[q, j])[:k]
        for q in range(len(queries))
    ]
    indices = torch.tensor(order)
    return scores.gather(1, indices), indices


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_top_k_is_exact(backend):
    gen = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(7, 5, generator=gen), torch.randn(40, 5, generator=gen)
    scores, indices = top_k(
        queries, gallery, 6, backend=backend, **({"chunk": 3} if backend == "torch" else {})
    )
    want_scores, want_indices = brute_force(queries, gallery, 6)
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(scores, want_scores)


def test_top_k_rejects_bad_requests():
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\] \(the gallery size\); got 5"):
        top_k(torch.randn(2, 3), torch.randn(4, 3), 5)
    with pytest.raises(ValueError, match=r"queries and gallery must be \(Q, D\) and \(N, D\)"):
        top_k(torch.randn(2, 3), torch.randn(4, 2), 1)
    with pytest.raises(ValueError, match=r"backend must be 'torch' or 'faiss'"):
        top_k(torch.randn(2, 3), torch.randn(4, 3), 1, backend="annoy")
