import math

import pytest
import torch
import torch.nn.functional as F

from selhn import STAT_NAMES, AllNegativesLoss, HardestNegativeLoss, InfoNCELoss, SelHNLoss
from selhn.losses import hinges as losses_module

EPSILONS = [0.0, 0.01, 0.05, math.inf]


def reference_loss(scores, margin, epsilon, ids=None):
    """Per-anchor loop over the SelHN rule; the hardest negative is the first maximal one."""
    batch = scores.shape[0]

    def anchor_loss(pos, neg_scores):
        if not neg_scores:
            return scores.new_zeros(())
        values = torch.stack(neg_scores)
        hinges = (margin + values - pos).clamp(min=0)
        hardest = int(values.detach().argmax())
        gap = abs(pos.item() - values[hardest].item())
        return hinges.mean() if gap < epsilon else hinges[hardest]

    def negatives(anchor):
        return [k for k in range(batch) if k != anchor and (ids is None or ids[k] != ids[anchor])]

    rows = [anchor_loss(scores[i, i], [scores[i, j] for j in negatives(i)]) for i in range(batch)]
    cols = [anchor_loss(scores[j, j], [scores[i, j] for i in negatives(j)]) for j in range(batch)]
    return 0.5 * (torch.stack(rows).mean() + torch.stack(cols).mean())


def random_pairs(kind, batch=8, dim=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        img = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
        txt = img + 0.8 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    elif kind == "clustered":  # near-duplicate pairs: many gaps below epsilon
        centers = torch.randn(3, dim, generator=gen, dtype=torch.float64)
        which = torch.arange(batch) % 3
        img = centers[which] + 0.2 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
        txt = centers[which] + 0.2 * torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    else:
        raise AssertionError(kind)
    return F.normalize(img, dim=1), F.normalize(txt, dim=1)


def tied_scores(batch=8, seed=0):
    """Scores on a grid of quarters: ties among negatives and between gaps; margin 0.2 keeps every
    hinge off its kink."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (batch, batch), generator=gen).to(torch.float64) / 4


def grads_of(fn, *inputs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


def assert_same(fn_a, fn_b, *inputs):
    value_a, grads_a = grads_of(fn_a, *inputs)
    value_b, grads_b = grads_of(fn_b, *inputs)
    torch.testing.assert_close(value_a, value_b, rtol=1e-12, atol=1e-12)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_embeddings_match_reference(kind, epsilon):
    img, txt = random_pairs(kind)
    loss = SelHNLoss(margin=0.2, epsilon=epsilon)
    assert_same(loss, lambda a, b: reference_loss(a @ b.T, 0.2, epsilon), img, txt)


@pytest.mark.parametrize("epsilon", [*EPSILONS, 0.25, 0.5])
def test_tied_scores_match_reference(epsilon):
    scores = tied_scores()
    loss = SelHNLoss(margin=0.2, epsilon=epsilon)
    assert_same(loss.from_scores, lambda s: reference_loss(s, 0.2, epsilon), scores)


def test_clustered_inputs_exercise_both_branches():
    img, txt = random_pairs("clustered")
    loss = SelHNLoss()
    loss(img, txt)
    assert 0 < loss.stats["vanishing_i2t"] < 1


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_epsilon_zero_is_vse_pp_and_infinity_is_vse0(kind):
    img, txt = random_pairs(kind, seed=1)
    scores = img @ txt.T
    batch = scores.shape[0]
    off = ~torch.eye(batch, dtype=torch.bool)
    hinge_i2t = (0.2 + scores - scores.diag()[:, None]).clamp(min=0) * off
    hinge_t2i = (0.2 + scores - scores.diag()[None, :]).clamp(min=0) * off
    vse_pp = hinge_i2t.max(1).values.sum() + hinge_t2i.max(0).values.sum()
    vse0 = hinge_i2t.sum() + hinge_t2i.sum()

    torch.testing.assert_close(HardestNegativeLoss()(img, txt), vse_pp / (2 * batch))
    torch.testing.assert_close(SelHNLoss(epsilon=0)(img, txt), vse_pp / (2 * batch))
    torch.testing.assert_close(AllNegativesLoss()(img, txt), vse0 / (2 * batch * (batch - 1)))
    torch.testing.assert_close(
        SelHNLoss(epsilon=math.inf)(img, txt), vse0 / (2 * batch * (batch - 1))
    )


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_from_scores_equals_embedding_form(epsilon):
    img, txt = random_pairs("clustered", seed=2)
    loss = SelHNLoss(epsilon=epsilon)
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4])
    assert_same(loss, lambda a, b: loss.from_scores(a @ b.T), img, txt)
    assert_same(lambda a, b: loss(a, b, ids), lambda a, b: loss.from_scores(a @ b.T, ids), img, txt)


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_ids_mask_shared_pairs(kind, epsilon):
    img, txt = random_pairs(kind, seed=4)
    ids = [7, 7, 3, 9, 3, 3, 1, 0]
    loss = SelHNLoss(epsilon=epsilon)
    assert_same(
        lambda a, b: loss(a, b, torch.tensor(ids)),
        lambda a, b: reference_loss(a @ b.T, 0.2, epsilon, ids),
        img,
        txt,
    )


def test_distinct_ids_change_nothing():
    img, txt = random_pairs("clustered", seed=5)
    loss = SelHNLoss()
    ids = torch.tensor([40, 3, 17, 8, 25, 1, 99, 6])
    assert_same(loss, lambda a, b: loss(a, b, ids), img, txt)


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_anchor_without_negatives_contributes_zero(epsilon):
    img, txt = random_pairs("random", batch=4, seed=6)
    loss = SelHNLoss(epsilon=epsilon)
    value, grads = grads_of(lambda a, b: loss(a, b, torch.zeros(4, dtype=torch.long)), img, txt)
    assert value.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    # Pairs 0-2 share an id: only anchor 3 has negatives, anchors 0-2 contribute zero.
    ids = torch.tensor([5, 5, 5, 6])
    value, _ = grads_of(lambda a, b: loss(a, b, ids), img, txt)
    expected = reference_loss(img @ txt.T, 0.2, epsilon, ids.tolist())
    assert math.isfinite(value.item())
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("epsilon", [0.0, 0.3, math.inf])
def test_gradcheck(epsilon):
    img, txt = random_pairs("clustered", batch=5, dim=4, seed=7)
    loss = SelHNLoss(epsilon=epsilon)
    ids = torch.tensor([0, 1, 2, 2, 3])
    img, txt = img.requires_grad_(), txt.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: loss(a, b, ids), (img, txt))
    scores = (img @ txt.T).detach().requires_grad_()
    assert torch.autograd.gradcheck(loss.from_scores, (scores,))


def test_chunked_reduction_equals_single_chunk(monkeypatch):
    img, txt = random_pairs("clustered", batch=8, seed=8)
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 4, 5])
    loss = SelHNLoss(epsilon=0.05)
    whole = grads_of(lambda a, b: loss(a, b, ids), img, txt)
    monkeypatch.setattr(losses_module, "_CHUNK_ELEMENTS", 3 * 8)  # 3-row chunks, a ragged tail
    chunked = grads_of(lambda a, b: loss(a, b, ids), img, txt)
    torch.testing.assert_close(whole[0], chunked[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(whole[1], chunked[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_loss_is_nonnegative_and_permutation_invariant():
    for seed in range(5):
        img, txt = random_pairs("clustered", seed=seed)
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
        for loss in (SelHNLoss(), HardestNegativeLoss(), AllNegativesLoss()):
            value = loss(img, txt)
            assert value.item() >= 0
            torch.testing.assert_close(loss(img[perm], txt[perm]), value)


def test_diagnostics_on_hand_computed_case():
    scores = torch.tensor(
        [[0.5, 0.495, 0.1], [0.2, 0.6, 0.3], [0.0, 0.1, 0.9]], dtype=torch.float64
    )
    loss = SelHNLoss(margin=0.2, epsilon=0.01)
    value = loss.from_scores(scores)
    # Image anchor 0: gap |0.5 - 0.495| = 0.005 < 0.01 -> mean of hinges (0.195, 0) = 0.0975.
    # Text anchor 1: gap 0.105, hardest hinge 0.2 + 0.495 - 0.6 = 0.095. Every other hinge is 0.
    torch.testing.assert_close(
        value, torch.tensor(0.5 * (0.0975 / 3 + 0.095 / 3), dtype=torch.float64)
    )
    expected = {
        "vanishing_i2t": 1 / 3,
        "vanishing_t2i": 0.0,
        "gap_i2t": (0.005 + 0.3 + 0.8) / 3,
        "gap_t2i": (0.3 + 0.105 + 0.6) / 3,
        "active_i2t": 1 / 6,
        "active_t2i": 1 / 6,
    }
    assert set(loss.stats) == set(STAT_NAMES)
    for name, want in expected.items():
        assert loss.stats[name].requires_grad is False
        assert loss.stats[name].item() == pytest.approx(want, abs=1e-12), name


def test_hardest_loss_measures_vanishing_without_acting_on_it():
    scores = torch.tensor([[0.5, 0.495], [0.0, 0.9]], dtype=torch.float64)
    loss = HardestNegativeLoss()
    value = loss.from_scores(scores)
    torch.testing.assert_close(value, torch.tensor(0.5 * (0.195 / 2), dtype=torch.float64))
    assert loss.stats["vanishing_i2t"].item() == 0.5


def test_reduced_precision_inputs_give_float32_loss():
    img, txt = random_pairs("random", seed=9)
    expected = SelHNLoss()(img.float(), txt.float())
    value = SelHNLoss()(img.half(), txt.half())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize(
    ("img_shape", "txt_shape", "message"),
    [
        ((4, 3), (5, 3), r"same shape; got \(4, 3\) and \(5, 3\)"),
        ((4, 3), (4, 2), r"same shape; got \(4, 3\) and \(4, 2\)"),
        ((4,), (4,), r"\(B, D\).*got \(4,\) and \(4,\)"),
        ((1, 3), (1, 3), r"B >= 2 pairs; got B = 1"),
    ],
)
def test_bad_embeddings_are_rejected(img_shape, txt_shape, message):
    with pytest.raises(ValueError, match=message):
        SelHNLoss()(torch.randn(img_shape), torch.randn(txt_shape))


def test_bad_scores_and_ids_are_rejected():
    loss = SelHNLoss()
    with pytest.raises(ValueError, match=r"scores must be a square \(B, B\) matrix; got \(3, 4\)"):
        loss.from_scores(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"scores needs B >= 2 pairs; got \(1, 1\)"):
        loss.from_scores(torch.zeros(1, 1))
    scores = torch.zeros(3, 3)
    scores[1, 2] = math.nan
    with pytest.raises(ValueError, match=r"scores must be finite; found nan at index \[1, 2\]"):
        loss.from_scores(scores)
    img = torch.randn(3, 2)
    img[2, 0] = math.inf
    with pytest.raises(ValueError, match=r"img_emb must be finite; found inf at index \[2, 0\]"):
        loss(img, torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"ids must be a length-3 integer tensor.*shape \(2,\)"):
        loss(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"ids must be .*dtype torch.float32"):
        loss(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([1.0, 2.0, 3.0]))


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match=r"margin must be a finite number >= 0, got -0\.1"):
        SelHNLoss(margin=-0.1)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        SelHNLoss(epsilon=-1)


def reference_infonce(scores, temperature, ids=None):
    batch = scores.shape[0]
    total = 0.0
    for direction in (scores, scores.T):
        for i in range(batch):
            keep = [j for j in range(batch) if j == i or ids is None or ids[j] != ids[i]]
            logits = direction[i, keep] / temperature
            total = total - (logits[keep.index(i)] - torch.logsumexp(logits, dim=0))
    return total / (2 * batch)


@pytest.mark.parametrize("ids", [None, [0, 1, 1, 2, 3, 3, 3, 4]])
def test_infonce_matches_reference(ids):
    img, txt = random_pairs("random", seed=11)
    loss = InfoNCELoss(temperature=0.1).double()
    temperature = 1 / loss.logit_scale.detach().exp()  # 0.1 up to float32 rounding
    ids_tensor = None if ids is None else torch.tensor(ids)
    assert_same(
        lambda a, b: loss(a, b, ids_tensor),
        lambda a, b: reference_infonce(a @ b.T, temperature, ids),
        img,
        txt,
    )
    value = loss(img, txt)
    value.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0
    assert loss.stats["temperature"].item() == pytest.approx(0.1)


def test_infonce_fixed_temperature_is_a_buffer():
    loss = InfoNCELoss(temperature=0.05, learnable=False)
    assert list(loss.parameters()) == [] and "logit_scale" in loss.state_dict()
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0"):
        InfoNCELoss(temperature=0)
