"""The losses as users call them in their own loops: autocast, several captions per image,
per-pair output, input checks, autograd hygiene. References: the float32 computation, the same
pairs with each image repeated, and per-anchor loops."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_losses import random_pairs, reference_infonce, tied_scores

from selhn import AllNegativesLoss, HardestNegativeLoss, InfoNCELoss, SelHNLoss
from selhn.losses import hinges

LOSSES = {
    "selhn": lambda **kw: SelHNLoss(epsilon=0.1, **kw),
    "hardest": lambda **kw: HardestNegativeLoss(**kw),
    "all": lambda **kw: AllNegativesLoss(**kw),
    "infonce": lambda **kw: InfoNCELoss(temperature=0.1, **kw),
}


def value_and_grads(fn, *inputs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    value = fn(*leaves)
    value.backward()
    return value.detach(), [x.grad for x in leaves]


def low_precision_pairs():
    """bfloat16 embeddings on which SelHN(epsilon=0.1) takes both branches."""
    img, txt = random_pairs("random", seed=2)
    return img.to(torch.bfloat16), txt.to(torch.bfloat16)


# --- autocast and low precision -------------------------------------------------------------


def test_low_precision_inputs_take_both_selhn_branches():
    img, txt = low_precision_pairs()
    loss = LOSSES["selhn"]()
    loss(img, txt)
    assert 0 < loss.stats["vanishing_i2t"] < 1 and 0 < loss.stats["vanishing_t2i"] < 1


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("inside_autocast", [True, False])
@pytest.mark.parametrize("form", ["embeddings", "scores"])
def test_bfloat16_inputs_are_scored_in_float32(name, inside_autocast, form):
    img, txt = low_precision_pairs()
    loss = LOSSES[name]()
    if form == "embeddings":
        inputs, call = (img, txt), loss
    else:
        inputs, call = ((img.float() @ txt.float().T).to(torch.bfloat16),), loss.from_scores
    expected, expected_grads = value_and_grads(call, *(x.float() for x in inputs))

    def under_test(*leaves):
        if not inside_autocast:
            return call(*leaves)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return call(*leaves)

    value, grads = value_and_grads(under_test, *inputs)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    for grad, want in zip(grads, expected_grads, strict=True):
        assert grad.dtype == torch.bfloat16
        torch.testing.assert_close(grad, want.to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("name", LOSSES)
def test_float32_inputs_inside_autocast_are_not_rounded(name):
    """Under autocast a plain ``img @ txt.T`` would run in bfloat16 (scores ~0.004 apart near 1,
    coarser than epsilon): the loss must score in float32 anyway."""
    img, txt = (x.float() for x in random_pairs("clustered", seed=1))
    loss = LOSSES[name]()
    expected, expected_grads = value_and_grads(loss, img, txt)

    def in_autocast(a, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss(a, b)

    value, grads = value_and_grads(in_autocast, img, txt)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    for grad, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", LOSSES)
def test_mixed_precision_training_step(name):
    """An ordinary loop: encoders and loss inside autocast, backward outside; the loss equals the
    float32 loss of the encoders' (bfloat16) outputs and the parameters get float32 gradients."""
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    image_model, text_model = torch.nn.Linear(12, 16), torch.nn.Linear(10, 16)
    x, y = torch.randn(8, 12, generator=gen), torch.randn(8, 10, generator=gen)
    loss_fn = LOSSES[name]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = F.normalize(image_model(x), dim=1)
        txt = F.normalize(text_model(y), dim=1)
        loss = loss_fn(img, txt)
    loss.backward()
    assert img.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(loss.detach(), loss_fn(img.detach().float(), txt.detach().float()))
    for parameter in [*image_model.parameters(), *text_model.parameters()]:
        assert parameter.grad.dtype == torch.float32 and parameter.grad.abs().sum() > 0


# --- autograd hygiene -----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["embeddings", "scores"])
def test_double_backward_raises(form):
    img, txt = (x.requires_grad_() for x in random_pairs("clustered", seed=3))
    loss = SelHNLoss(epsilon=0.05)
    value = loss(img, txt) if form == "embeddings" else loss.from_scores(img @ txt.T)
    with pytest.raises(RuntimeError, match=r"first derivatives only.*double backward"):
        torch.autograd.grad(value, img, create_graph=True)


def test_backward_state_goes_through_save_for_backward():
    """Saved-tensor hooks (used to offload activations) see every tensor the backward pass
    reads, and a round trip through them changes nothing."""
    img, txt = random_pairs("clustered", seed=4)
    loss = SelHNLoss(epsilon=0.05)
    expected = value_and_grads(loss, img, txt)
    packed = []

    def pack(tensor):
        packed.append(tuple(tensor.shape))
        return tensor.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        value, grads = value_and_grads(loss, img, txt)
    per_anchor = [shape for shape in packed if shape == (8,)]
    assert len(per_anchor) >= 9  # the selection: branches, hardest negatives, counts
    assert (8, 8) in packed and (8, 6) in packed  # scores and embeddings
    torch.testing.assert_close(value, expected[0], rtol=0, atol=0)
    for grad, want in zip(grads, expected[1], strict=True):
        torch.testing.assert_close(grad, want, rtol=0, atol=0)


# --- several captions per image -------------------------------------------------------------


def multi_caption_batch(seed=5, images=4, dim=6):
    """4 images, 10 captions in shuffled order (1 to 4 captions an image)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.tensor([2, 0, 3, 1, 0, 2, 3, 0, 2, 0])
    img = F.normalize(torch.randn(images, dim, generator=gen, dtype=torch.float64), dim=1)
    txt = img[rows] + 0.6 * torch.randn(len(rows), dim, generator=gen, dtype=torch.float64)
    return img, F.normalize(txt, dim=1), rows


def assert_same(a, b, tol=1e-12):
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    for x, y in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.3, math.inf])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_caption_to_image_equals_repeated_images(epsilon, reduction):
    img, txt, rows = multi_caption_batch()
    loss = SelHNLoss(epsilon=epsilon, reduction=reduction)
    weights = torch.rand(2, len(rows), generator=torch.Generator().manual_seed(0), dtype=img.dtype)

    def reduce(value):
        return value if reduction == "mean" else (weights * value).sum()

    shared = value_and_grads(lambda a, b: reduce(loss(a, b, caption_to_image=rows)), img, txt)
    repeated = value_and_grads(lambda a, b: reduce(loss(a[rows], b, ids=rows)), img, txt)
    assert_same(shared, repeated)
    scores = img @ txt.T
    from_scores = value_and_grads(
        lambda s: reduce(loss.from_scores(s, caption_to_image=rows)), scores
    )
    repeated_scores = value_and_grads(lambda s: reduce(loss.from_scores(s[rows], ids=rows)), scores)
    assert_same(from_scores, repeated_scores)


def test_caption_to_image_with_ids_and_ties():
    """Images 0 and 3 share an id (near-duplicates); scores on a grid of quarters tie."""
    rows = torch.tensor([1, 0, 3, 2, 0, 1, 3, 0, 2, 3])
    image_ids = torch.tensor([7, 8, 9, 7])
    scores = tied_scores(batch=10, seed=6)[:4]  # (4 images, 10 captions)
    ids = image_ids[rows]
    for epsilon in (0.0, 0.25, 0.5, math.inf):
        loss = SelHNLoss(epsilon=epsilon)
        shared = value_and_grads(
            lambda s, loss=loss: loss.from_scores(s, ids=ids, caption_to_image=rows), scores
        )
        repeated = value_and_grads(lambda s, loss=loss: loss.from_scores(s[rows], ids=ids), scores)
        assert_same(shared, repeated)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_infonce_caption_to_image_equals_repeated_images(reduction):
    img, txt, rows = multi_caption_batch(seed=7)
    loss = InfoNCELoss(temperature=0.1, reduction=reduction).double()
    weights = torch.rand(2, len(rows), generator=torch.Generator().manual_seed(1), dtype=img.dtype)

    def reduce(value):
        return value if reduction == "mean" else (weights * value).sum()

    shared = value_and_grads(lambda a, b: reduce(loss(a, b, caption_to_image=rows)), img, txt)
    repeated = value_and_grads(lambda a, b: reduce(loss(a[rows], b, ids=rows)), img, txt)
    assert_same(shared, repeated)
    temperature = 1 / loss.logit_scale.detach().exp()
    reference = value_and_grads(
        lambda a, b: reference_infonce(a[rows] @ b.T, temperature, rows.tolist()), img, txt
    )
    if reduction == "mean":
        assert_same(shared, reference)


def test_infonce_anchor_without_negatives_contributes_zero():
    img, txt = random_pairs("random", batch=4, seed=8)
    loss = InfoNCELoss(temperature=0.1).double()
    value, grads = value_and_grads(lambda a, b: loss(a, b, torch.tensor([5, 5, 5, 6])), img, txt)
    temperature = 1 / loss.logit_scale.detach().exp()
    torch.testing.assert_close(value, reference_infonce(img @ txt.T, temperature, [5, 5, 5, 6]))
    assert all(torch.isfinite(g).all() for g in grads)
    value, grads = value_and_grads(
        lambda a, b: loss(a, b, torch.zeros(4, dtype=torch.long)), img, txt
    )
    assert value.item() == 0.0 and all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_bad_caption_to_image_is_rejected():
    img, txt, rows = multi_caption_batch()
    loss = SelHNLoss()
    cases = [
        (rows.float(), r"caption_to_image must be a length-10 integer tensor.*torch.float32"),
        (rows[:9], r"caption_to_image must be a length-10 integer tensor.*shape \(9,\)"),
        (torch.where(rows == 3, 4, rows), r"must index the 4 image rows \(0 to 3\); found 4"),
        (torch.where(rows == 3, -1, rows), r"must index the 4 image rows \(0 to 3\); found -1"),
        (torch.where(rows == 3, 0, rows), r"every image row needs a caption.*rows \[3\] have none"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            loss(img, txt, caption_to_image=bad)
    with pytest.raises(ValueError, match=r"image row 0 has captions with ids 4 and 5"):
        loss(img, txt, ids=torch.where(torch.arange(10) == 4, 5, 4), caption_to_image=rows)
    with pytest.raises(ValueError, match=r"got \(4, 10\) \(for N images and P captions, pass"):
        loss.from_scores(img @ txt.T)
    with pytest.raises(ValueError, match=r"\(N, D\) and \(P, D\) with the same D; got \(4, 6\)"):
        loss(img, txt[:, :5], caption_to_image=rows)


# --- per-pair output ------------------------------------------------------------------------


def reference_anchor_terms(scores, margin, epsilon):
    """(2, B) per-anchor SelHN terms by a plain loop (the SelHN rule per anchor)."""

    def term(pos, negatives):
        hinges = (margin + torch.stack(negatives) - pos).clamp(min=0)
        values = torch.stack(negatives).detach()
        gap = abs(pos.item() - values.max().item())
        return hinges.mean() if gap < epsilon else hinges[int(values.argmax())]

    batch = scores.shape[0]
    others = [[k for k in range(batch) if k != a] for a in range(batch)]
    rows = [term(scores[i, i], [scores[i, j] for j in others[i]]) for i in range(batch)]
    cols = [term(scores[j, j], [scores[i, j] for i in others[j]]) for j in range(batch)]
    return torch.stack([torch.stack(rows), torch.stack(cols)])


@pytest.mark.parametrize("epsilon", [0.0, 0.05, math.inf])
def test_reduction_none_gives_each_pairs_terms(epsilon):
    img, txt = random_pairs("clustered", seed=9)
    weights = torch.rand(2, 8, generator=torch.Generator().manual_seed(2), dtype=img.dtype)
    per_pair = SelHNLoss(epsilon=epsilon, reduction="none")
    got = value_and_grads(lambda a, b: (weights * per_pair(a, b)).sum(), img, txt)
    want = value_and_grads(
        lambda a, b: (weights * reference_anchor_terms(a @ b.T, 0.2, epsilon)).sum(), img, txt
    )
    assert_same(got, want)
    terms = per_pair(img, txt)
    assert terms.shape == (2, 8)
    torch.testing.assert_close(terms.mean(), SelHNLoss(epsilon=epsilon)(img, txt))


def test_infonce_reduction_none_gives_each_pairs_terms():
    img, txt = random_pairs("random", seed=10)
    loss = InfoNCELoss(temperature=0.1, reduction="none").double()
    terms = loss(img, txt)
    logits = loss.logit_scale.detach().exp() * (img @ txt.T)
    target = torch.arange(8)
    expected = torch.stack(
        [
            F.cross_entropy(logits, target, reduction="none"),
            F.cross_entropy(logits.T, target, reduction="none"),
        ]
    )
    torch.testing.assert_close(terms, expected, rtol=1e-6, atol=1e-6)


def test_bad_reduction_is_rejected():
    with pytest.raises(ValueError, match=r"reduction must be one of mean, none; got 'sum'"):
        SelHNLoss(reduction="sum")
    with pytest.raises(ValueError, match=r"reduction must be one of mean, none; got 'sum'"):
        InfoNCELoss(reduction="sum")


# --- input checks and synchronisation -------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_unchecked_non_finite_input_gives_non_finite_loss(name):
    img, txt = (x.float() for x in random_pairs("clustered", seed=11))
    img[3, 1] = math.nan
    with pytest.raises(ValueError, match=r"img_emb must be finite; found nan at index \[3, 1\]"):
        LOSSES[name]()(img, txt)
    assert not torch.isfinite(LOSSES[name](check_inputs=False)(img, txt))


def test_loss_without_host_reads_equals_the_default(monkeypatch):
    """Off the CPU the backward pass never asks whether an anchor took the mean branch: forcing
    that path here gives the same loss and gradients as the CPU's shortcut."""
    img, txt = random_pairs("random", seed=12)  # every anchor on its hardest branch
    loss = SelHNLoss()
    shortcut = value_and_grads(loss, img, txt)
    assert loss.stats["vanishing_i2t"] == 0 and loss.stats["vanishing_t2i"] == 0
    monkeypatch.setattr(hinges, "needs_dense_backward", lambda selection, device: True)
    assert_same(value_and_grads(loss, img, txt), shortcut)
