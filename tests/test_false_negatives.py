"""False negatives (``Duplicates``: an identical caption or image elsewhere in the batch) in every
loss, against per-anchor loops written from the definitions: the triplet losses leave them out
of the hardest choice, the gap test and the mean; InfoNCE counts them as targets."""

import math

import pytest
import torch
import torch.nn.functional as F

from selhn import AllNegativesLoss, HardestNegativeLoss, InfoNCELoss, SelHNLoss
from selhn.losses import SelectiveInfoNCELoss
from selhn.losses.infonce import Candidates
from selhn.losses.inputs import Duplicates, PairIndex

TRIPLET = {
    "selhn": (lambda: SelHNLoss(epsilon=0.1), 0.1),
    "hardest": (lambda: HardestNegativeLoss(), 0.0),
    "all": (lambda: AllNegativesLoss(), math.inf),
}


def batch(seed=0, images=6, per_image=(2, 1, 2, 1, 1, 2), dim=5):
    """Clustered embeddings (many gaps below epsilon), each image's captions, and duplicates:
    images 1 and 4 are the same file; caption 3 (of image 2) reads like caption 0 (of image 0)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.tensor([i for i, n in enumerate(per_image) for _ in range(n)])
    centres = torch.randn(3, dim, generator=gen, dtype=torch.float64)
    img = F.normalize(centres[torch.arange(images) % 3] + 0.3 * torch.randn(
        images, dim, generator=gen, dtype=torch.float64), dim=1)  # fmt: skip
    txt = F.normalize(img[rows] + 0.3 * torch.randn(len(rows), dim, generator=gen,
                                                   dtype=torch.float64), dim=1)  # fmt: skip
    image_keys = torch.tensor([0, 1, 2, 3, 1, 5])
    caption_keys = torch.arange(len(rows))
    caption_keys[3] = caption_keys[0]  # caption 3 (of image 2) is word for word caption 0
    known = [[q for q in range(len(rows)) if rows[q] == i] for i in range(images)]
    width = max(len(k) for k in known)
    image_captions = torch.tensor(
        [[int(caption_keys[q]) for q in k] + [-1] * (width - len(k)) for k in known]
    )
    return img, txt, rows, Duplicates(image_keys, caption_keys, image_captions)


def describes(dup, image, caption, rows):
    """Caption ``caption`` describes image row ``image``: the definition, written out."""
    same_file = dup.image_keys[image] == dup.image_keys[rows[caption]]
    named = int(dup.caption_keys[caption]) in dup.image_captions[image].tolist()
    return bool(same_file) or named


def triplet_reference(scores, rows, dup, margin, epsilon):
    """(2, P) per-anchor SelHN terms over the pair matrix S'[p, q] = S[rows[p], q]."""
    pairs = len(rows)

    def excluded(p, q):
        return rows[p] == rows[q] or (dup is not None and describes(dup, rows[p], q, rows))

    def anchor(pos, negatives):
        if not negatives:
            return scores.new_zeros(())
        values = torch.stack(negatives)
        hinges = (margin + values - pos).clamp(min=0)
        gap = abs(pos.item() - values.max().item())
        return hinges.mean() if gap < epsilon else hinges.max()

    image = [anchor(scores[rows[p], p], [scores[rows[p], q] for q in range(pairs)
                                        if not excluded(p, q)]) for p in range(pairs)]  # fmt: skip
    text = [anchor(scores[rows[q], q], [scores[rows[p], q] for p in range(pairs)
                                       if not excluded(p, q)]) for q in range(pairs)]  # fmt: skip
    return torch.stack([torch.stack(image), torch.stack(text)])


def infonce_reference(logits, rows, dup):
    """(2, P) InfoNCE terms with duplicates as targets (an image counted once per caption among
    a caption's candidates, as if repeated)."""
    images, pairs = logits.shape
    count = torch.bincount(rows, minlength=images).to(logits.dtype)

    def target(i, q):
        return dup is not None and rows[q] != i and describes(dup, i, q, rows)

    image_terms, text_terms = [], []
    for p in range(pairs):
        i = int(rows[p])
        wanted = [logits[i, p]] + [logits[i, q] for q in range(pairs) if target(i, q)]
        others = [logits[i, q] for q in range(pairs) if rows[q] != i and not target(i, q)]
        good = torch.logsumexp(torch.stack(wanted), 0)
        image_terms.append(torch.logsumexp(torch.stack([*wanted, *others]), 0) - good)
    for q in range(pairs):
        own = int(rows[q])
        wanted = [logits[own, q]] + [logits[i, q] + count[i].log() for i in range(images)
                                     if target(i, q)]  # fmt: skip
        others = [logits[i, q] + count[i].log() for i in range(images)
                  if i != own and not target(i, q)]  # fmt: skip
        good = torch.logsumexp(torch.stack(wanted), 0)
        text_terms.append(torch.logsumexp(torch.stack([*wanted, *others]), 0) - good)
    return torch.stack([torch.stack(image_terms), torch.stack(text_terms)])


def selective_reference(scores, scale, rows, dup, epsilon, hardness):
    """(2, P) selective InfoNCE terms and (P,) which image and text anchors are below epsilon,
    anchor by anchor:
    where |s_pos - max s_neg| >= epsilon the negatives' exponentials are weighted by
    exp(hardness * logit) over their (count-weighted) mean, without gradient."""
    images, pairs = scores.shape
    logits = scale * scores
    count = torch.bincount(rows, minlength=images).to(scores.dtype)

    def target(i, q):
        return dup is not None and rows[q] != i and describes(dup, i, q, rows)

    def term(pos, wanted, negatives, counts):
        """negatives: (score, logit) pairs of one anchor, each counted counts[k] times."""
        good = torch.logsumexp(torch.stack(wanted), 0)
        neg_scores = torch.stack([n[0] for n in negatives])
        neg_logits = torch.stack([n[1] for n in negatives])
        small = abs(pos.item() - neg_scores.max().item()) < epsilon
        weight = counts.clone()
        if not small:
            hard = (hardness * neg_logits).detach().exp()
            weight = counts * hard / ((counts * hard).sum() / counts.sum())
        total = torch.logsumexp(torch.stack([*wanted, *(neg_logits + weight.log())]), 0)
        return total - good, small

    image_terms, text_terms, small_i, small_t = [], [], [], []
    for p in range(pairs):
        i = int(rows[p])
        wanted = [logits[i, p]] + [logits[i, q] for q in range(pairs) if target(i, q)]
        negs = [(scores[i, q], logits[i, q]) for q in range(pairs)
                if rows[q] != i and not target(i, q)]  # fmt: skip
        value, small = term(scores[i, p], wanted, negs, torch.ones(len(negs), dtype=scores.dtype))
        image_terms.append(value)
        small_i.append(small)
    for q in range(pairs):
        own = int(rows[q])
        wanted = [logits[own, q]] + [logits[i, q] + count[i].log() for i in range(images)
                                     if target(i, q)]  # fmt: skip
        kept = [i for i in range(images) if i != own and not target(i, q)]
        negs = [(scores[i, q], logits[i, q]) for i in kept]
        value, small = term(scores[own, q], wanted, negs, count[kept])
        text_terms.append(value)
        small_t.append(small)
    terms = torch.stack([torch.stack(image_terms), torch.stack(text_terms)])
    return terms, torch.tensor(small_i), torch.tensor(small_t)


def value_and_grads(fn, img, txt):
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    value = fn(a, b)
    value.sum().backward()
    return value.detach(), a.grad, b.grad


def assert_same(fn, reference, img, txt):
    for got, want in zip(value_and_grads(fn, img, txt), value_and_grads(reference, img, txt),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", TRIPLET)
@pytest.mark.parametrize("form", ["embeddings", "scores"])
@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_losses_leave_duplicates_out_of_the_negatives(name, form, seed):
    img, txt, rows, dup = batch(seed)
    make, epsilon = TRIPLET[name]
    loss = make()
    loss.reduction = "none"

    def under_test(a, b):
        if form == "embeddings":
            return loss(a, b, caption_to_image=rows, duplicates=dup)
        return loss.from_scores(a @ b.T, caption_to_image=rows, duplicates=dup)

    assert_same(under_test, lambda a, b: triplet_reference(a @ b.T, rows, dup, 0.2, epsilon),
                img, txt)  # fmt: skip
    plain = triplet_reference(img @ txt.T, rows, None, 0.2, epsilon)
    assert not torch.allclose(plain, under_test(img, txt).detach())  # the duplicates count


@pytest.mark.parametrize("seed", [0, 1])
def test_infonce_counts_duplicates_as_targets(seed):
    img, txt, rows, dup = batch(seed)
    loss = InfoNCELoss(temperature=0.1, learnable=False, reduction="none").double()
    scale = loss.logit_scale.exp()
    assert_same(lambda a, b: loss(a, b, caption_to_image=rows, duplicates=dup),
                lambda a, b: infonce_reference(scale * (a @ b.T), rows, dup), img, txt)  # fmt: skip
    without = loss(img, txt, caption_to_image=rows)
    assert torch.allclose(without, infonce_reference(scale * (img @ txt.T), rows, None))


@pytest.mark.parametrize("name", ["selhn", "infonce"])
def test_duplicates_of_nothing_change_nothing_and_are_checked(name):
    img, txt, rows, _ = batch(2)
    loss = SelHNLoss(epsilon=0.1) if name == "selhn" else InfoNCELoss(temperature=0.1)
    loss = loss.double()
    alone = Duplicates(torch.arange(6), torch.arange(len(rows)), torch.full((6, 1), -1))
    torch.testing.assert_close(loss(img, txt, caption_to_image=rows, duplicates=alone),
                               loss(img, txt, caption_to_image=rows))  # fmt: skip
    with pytest.raises(ValueError, match=r"duplicates.caption_keys must be a length-9 integer"):
        loss(img, txt, caption_to_image=rows, duplicates=Duplicates(
            torch.arange(6), torch.arange(4), torch.full((6, 1), -1)))  # fmt: skip


@pytest.mark.parametrize("name", ["selhn", "infonce"])
def test_duplicates_inside_autocast_score_in_float32(name):
    img, txt, rows, dup = batch(3)
    img, txt = img.float(), txt.float()
    loss = SelHNLoss(epsilon=0.1) if name == "selhn" else InfoNCELoss(temperature=0.1)
    expected = loss(img, txt, caption_to_image=rows, duplicates=dup)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(img, txt, caption_to_image=rows, duplicates=dup)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("form", ["embeddings", "scores"])
@pytest.mark.parametrize("seed", [0, 1])
def test_selective_infonce_weights_hard_negatives_only_past_the_gap_test(duplicates, form, seed):
    img, txt, rows, dup = batch(seed)
    dup = dup if duplicates else None
    loss = SelectiveInfoNCELoss(0.1, epsilon=0.1, hardness=0.7, learnable=False,
                                reduction="none").double()  # fmt: skip
    scale = loss.logit_scale.exp()

    def under_test(a, b):
        if form == "embeddings":
            return loss(a, b, caption_to_image=rows, duplicates=dup)
        return loss.from_scores(a @ b.T, caption_to_image=rows, duplicates=dup)

    def reference(a, b):
        return selective_reference(a @ b.T, scale, rows, dup, 0.1, 0.7)[0]

    assert_same(under_test, reference, img, txt)
    infonce = infonce_reference(scale * (img @ txt.T), rows, dup)
    assert not torch.allclose(under_test(img, txt).detach(), infonce)  # the weights count
    _, small_i, small_t = selective_reference(img @ txt.T, scale, rows, dup, 0.1, 0.7)
    assert any(len(set(small_i[rows == i].tolist())) == 2 for i in range(len(img)))  # an image
    # whose captions take both branches
    small_i, small_t = small_i.double().mean().item(), small_t.double().mean().item()
    assert 0 < small_i < 1 and 0 < small_t < 1  # both branches taken
    assert loss.stats["vanishing_i2t"].item() == pytest.approx(small_i)
    assert loss.stats["vanishing_t2i"].item() == pytest.approx(small_t)


@pytest.mark.parametrize("options", [{"hardness": 0.0}, {"epsilon": math.inf}])
def test_selective_infonce_without_hardness_or_with_infinite_epsilon_is_infonce(options):
    img, txt, rows, dup = batch(4)
    plain = InfoNCELoss(temperature=0.1).double()
    selective = SelectiveInfoNCELoss(temperature=0.1, **options).double()
    for duplicates in (None, dup):
        options = {"caption_to_image": rows, "duplicates": duplicates}
        assert_same(lambda a, b, o=options: selective(a, b, **o),
                    lambda a, b, o=options: plain(a, b, **o), img, txt)  # fmt: skip


def test_selective_infonce_square_batch_and_autocast():
    img, txt, _, _ = batch(5)
    txt = txt[: len(img)]
    loss = SelectiveInfoNCELoss(temperature=0.1, epsilon=0.1, learnable=False)
    scale = loss.logit_scale.exp()
    want = selective_reference((img @ txt.T).float(), scale, torch.arange(len(img)), None, 0.1,
                               0.5)[0].mean()  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(img.float(), txt.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("value", [{"hardness": -1.0}, {"hardness": math.inf}, {"epsilon": -0.1}])
def test_selective_infonce_refuses_bad_options(value):
    with pytest.raises(ValueError, match=next(iter(value))):
        SelectiveInfoNCELoss(**value)


def test_negative_caption_keys_and_keys_on_another_device_are_refused():
    img, txt, rows, dup = batch(6)
    loss = SelHNLoss()
    padded_like = Duplicates(dup.image_keys, dup.caption_keys - 1, dup.image_captions)
    with pytest.raises(ValueError, match=r"duplicates.caption_keys must be >= 0"):
        loss(img, txt, caption_to_image=rows, duplicates=padded_like)
    elsewhere = Duplicates(*(t.to("meta") for t in dup.tensors()))
    with pytest.raises(ValueError, match=r"duplicates.image_keys is on meta; the scores are on"):
        loss(img, txt, caption_to_image=rows, duplicates=elsewhere)


@pytest.mark.parametrize("seed", range(3))
def test_the_pairs_found_by_sorting_keys_are_the_ones_the_definition_names(seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(30):
        images = int(torch.randint(2, 9, (1,), generator=gen))
        captions = int(torch.randint(images, 16, (1,), generator=gen))
        extra = torch.randint(0, images, (captions - images,), generator=gen)
        rows = torch.cat([torch.arange(images), extra])
        width = int(torch.randint(1, 4, (1,), generator=gen))
        dup = Duplicates(
            torch.randint(0, 4, (images,), generator=gen, dtype=torch.int32),  # a narrower type
            torch.randint(0, 6, (captions,), generator=gen),
            torch.randint(-1, 6, (images, width), generator=gen),
        )
        expected = {(i, q) for i in range(images) for q in range(captions)
                    if describes(dup, i, q, rows)}  # fmt: skip
        image, caption = dup.pairs(rows)
        found = list(zip(image.tolist(), caption.tolist(), strict=True))
        assert len(found) == len(set(found)) and set(found) == expected


def random_duplicates(seed, images=7, captions=12):
    """A batch whose keys collide at random: images that are one file, captions sharing words,
    and images whose known captions (padded with -1) include ones outside the batch."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.cat([torch.arange(images), torch.randint(0, images, (captions - images,),
                                                          generator=gen)])  # fmt: skip
    img = F.normalize(torch.randn(images, 4, generator=gen, dtype=torch.float64), dim=1)
    txt = F.normalize(img[rows] + 0.7 * torch.randn(captions, 4, generator=gen,
                                                    dtype=torch.float64), dim=1)  # fmt: skip
    caption_keys = torch.randint(0, 8, (captions,), generator=gen)
    known = [caption_keys[rows == i].tolist() + torch.randint(-1, 10, (2,), generator=gen).tolist()
             for i in range(images)]  # fmt: skip
    width = max(len(k) for k in known)
    table = torch.tensor([k + [-1] * (width - len(k)) for k in known])
    image_keys = torch.randint(0, 5, (images,), generator=gen)
    return img, txt, rows, Duplicates(image_keys, caption_keys, table)


@pytest.mark.parametrize("seed", range(4))
def test_infonce_and_selective_infonce_match_their_loops_on_random_duplicates(seed):
    img, txt, rows, dup = random_duplicates(seed)
    infonce = InfoNCELoss(temperature=0.2, learnable=False, reduction="none").double()
    scale = infonce.logit_scale.exp()
    assert_same(lambda a, b: infonce(a, b, caption_to_image=rows, duplicates=dup),
                lambda a, b: infonce_reference(scale * (a @ b.T), rows, dup), img, txt)  # fmt: skip
    selective = SelectiveInfoNCELoss(0.2, epsilon=0.05, hardness=0.7, learnable=False,
                                     reduction="none").double()  # fmt: skip
    assert_same(lambda a, b: selective(a, b, caption_to_image=rows, duplicates=dup),
                lambda a, b: selective_reference(a @ b.T, scale, rows, dup, 0.05, 0.7)[0],
                img, txt)  # fmt: skip
    image, caption = dup.pairs(rows)
    assert bool((rows[caption] != image).any())  # some pairs are false negatives, not their own


@pytest.mark.parametrize("seed", range(3))
def test_negative_totals_count_the_negatives_of_the_mask(seed):
    img, _, rows, dup = random_duplicates(seed)
    square_ids = torch.randint(0, 3, (len(img),), generator=torch.Generator().manual_seed(seed))
    cases = [
        (PairIndex.of(rows, None, dup), len(img), len(rows)),
        (PairIndex.of(rows, None), len(img), len(rows)),
        (PairIndex.of(None, square_ids), len(img), len(img)),
        (PairIndex(), len(img), len(img)),
    ]
    for pairs, n_images, n_pairs in cases:
        candidates = Candidates.of(pairs, n_images, n_pairs, img.device)
        negative = candidates.negative.long()
        count = torch.ones(n_images, 1, dtype=torch.long)
        if candidates.count is not None:
            count = candidates.count.long()
        row_total, col_total = candidates.negative_totals(pairs)
        assert torch.equal(row_total, negative.sum(1))
        assert torch.equal(col_total, (negative * count).sum(0))
