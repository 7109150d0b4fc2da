"""The class prior: EfficientNet-Lite0's ImageNet classifier read through its class names by the
frozen sentence model, appended to RVSE++'s learned embeddings."""

import math

import pytest
import torch
import torch.nn.functional as F

from selhn.data.image_files import load_image
from selhn.models import create_model
from selhn.models.class_prior import ClassPrior, class_names, with_prior
from selhn.models.sentence import SentenceEncoder


@pytest.mark.training
def test_the_prior_reads_real_photos_by_their_class_names(samples, backbone):
    photos = samples.parent / "images"
    pixels = torch.stack(
        [load_image(photos / f"{name}.png", 224) for name in ("chelsea", "coffee")]
    )
    with torch.no_grad():
        pooled = backbone(pixels).mean(dim=(2, 3))
    text = SentenceEncoder(None, 16)  # a new module is in training mode: the frozen part is not
    text.load_pretrained()
    assert torch.equal(text.embed_texts(["a cat"]), text.embed_texts(["a cat"]))  # no dropout
    prior = ClassPrior(1280, 384)
    prior.load_pretrained(text.embed_texts)
    names = class_names()
    assert len(names) == 1000 and names[281] == "tabby, tabby cat"
    top = F.linear(pooled, prior.weight, prior.bias).argmax(dim=1).tolist()
    assert "cat" in names[top[0]]  # ImageNet's domestic cats
    assert names[top[1]] in ("espresso", "cup", "coffee mug")
    captions = F.normalize(text.embed_texts(["a photo of a cat", "a cup of coffee"]), dim=-1)
    with torch.no_grad():
        scores = prior(pooled) @ captions.T
    assert scores.argmax(dim=1).tolist() == [0, 1]  # each photo its own caption, untrained


def test_the_prior_is_the_probability_weighted_sum_of_the_class_names():
    torch.manual_seed(0)
    prior = ClassPrior(channels=6, text_dim=5, classes=7)
    for buffer in prior.buffers():
        buffer.copy_(torch.randn_like(buffer))
    pooled = torch.randn(3, 6)
    for row, out in zip(pooled, prior(pooled), strict=True):
        logits = [float(prior.weight[c] @ row + prior.bias[c]) for c in range(7)]
        total = sum(math.exp(v) for v in logits)
        mixed = sum(math.exp(v) / total * prior.names[c] for c, v in enumerate(logits))
        torch.testing.assert_close(out, mixed / mixed.norm())


def test_with_prior_scores_the_weighted_mean_of_the_two_scores():
    torch.manual_seed(0)
    learned = F.normalize(torch.randn(2, 4, 8), dim=-1)
    prior = F.normalize(torch.randn(2, 4, 3), dim=-1)
    images, captions = (with_prior(a, z, 0.3) for a, z in zip(learned, prior, strict=True))
    assert images.shape == (4, 11)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(4))
    expected = (learned[0] @ learned[1].T + 0.3 * prior[0] @ prior[1].T) / 1.3
    torch.testing.assert_close(images @ captions.T, expected)


def test_rvsepp_scores_pairs_by_its_learned_score_and_the_prior():
    torch.manual_seed(0)
    common = {"vocab_size": 30522, "backbone_stage": "efficientnet-lite0",
              "text_encoder": "sentence", "image_head": "mean"}  # fmt: skip
    model = create_model("rvsepp", **common, embed_size=400, class_prior=0.5).eval()
    prior = model.image_encoder.prior
    for buffer in prior.buffers():
        buffer.copy_(torch.randn_like(buffer))
    # the learned part alone: the same weights in a model of the other 16 dimensions
    plain = create_model("rvsepp", **common, embed_size=16, class_prior=0).eval()
    state = {k: v for k, v in model.state_dict().items() if ".prior." not in k}
    plain.load_state_dict(state)
    trunk = torch.randn(3, 112, 4, 4)
    tokens, lengths = torch.tensor([[2023, 2003, 1037], [4937, 0, 0]]), torch.tensor([3, 1])
    with torch.no_grad():
        scores = model.encode_images(trunk) @ model.encode_texts(tokens, lengths).T
        learned = plain.encode_images(trunk) @ plain.encode_texts(tokens, lengths).T
        pooled = model.image_encoder.backbone(trunk).mean(dim=(2, 3))
        sentences = F.normalize(model.text_encoder.embed_sentences(tokens, lengths), dim=-1)
    probs = torch.softmax(pooled @ prior.weight.T + prior.bias, dim=1)
    zero_shot = F.normalize(probs @ prior.names, dim=-1) @ sentences.T
    torch.testing.assert_close(scores, (learned + 0.5 * zero_shot) / 1.5)
    learning = {id(p) for group in model.param_groups(0.1, 0.01, 2.0) for p in group["params"]}
    assert not {id(b) for b in prior.buffers()} & learning  # frozen, saved with the weights
    assert "image_encoder.prior.names" in model.state_dict()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"text_encoder": "bigru"}, "class_prior needs text_encoder sentence"),
        ({"backbone_stage": None, "img_dim": 1280}, "class_prior needs backbone or backbone_st"),
        ({"embed_size": 384}, "embed_size must exceed the text model's 384 dimensions"),
    ],
)
def test_a_model_the_prior_cannot_join_is_refused(settings, message):
    common = {"vocab_size": 30522, "backbone_stage": "efficientnet-lite0", "class_prior": 0.3,
              "text_encoder": "sentence", "embed_size": 512}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        create_model("rvsepp", **common | settings)
