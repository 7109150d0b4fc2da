import json
from dataclasses import asdict

import pytest
import torch

from selhn import SelHNLoss
from selhn.checkpoint import load_model, save_model
from selhn.data.vocab import Vocabulary
from selhn.models import GPO, create_model


def count(module):
    return sum(p.numel() for p in module.parameters())


def small_model(vocab_size=50):
    torch.manual_seed(0)
    return create_model(
        "rvsepp", vocab_size=vocab_size, img_dim=20, embed_size=16, word_dim=8, mlp_hidden=12
    )


def batch(gen, n=4, regions=6, tokens=7, img_dim=20, vocab=50):
    features = torch.randn(n, regions, img_dim, generator=gen)
    feature_lengths = torch.tensor([regions, 3, 1, 5][:n])
    ids = torch.randint(1, vocab, (n, tokens), generator=gen)
    token_lengths = torch.tensor([tokens, 2, 5, 4][:n])
    return features, feature_lengths, ids, token_lengths


def test_parameter_counts_match_the_release():
    model = create_model("rvsepp", vocab_size=8500)
    assert count(model.image_encoder) == 3_162_016
    assert count(model.text_encoder) == 10_709_648


def test_embeddings_are_unit_vectors_of_the_joint_size():
    model = small_model().eval()
    features, feature_lengths, ids, token_lengths = batch(torch.Generator().manual_seed(0))
    img, txt = model((features, feature_lengths), ids, token_lengths)
    assert img.shape == txt.shape == (4, 16)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_embedding_does_not_depend_on_batch_padding(mode):
    model = small_model()
    model.train(mode == "train")
    features, feature_lengths, ids, token_lengths = batch(torch.Generator().manual_seed(1))
    img, txt = model((features, feature_lengths), ids, token_lengths)
    pad_regions = torch.cat([features, torch.randn(4, 5, 20)], dim=1)
    pad_tokens = torch.cat([ids, torch.randint(1, 50, (4, 3))], dim=1)
    img_padded, txt_padded = model((pad_regions, feature_lengths), pad_tokens, token_lengths)
    torch.testing.assert_close(img_padded, img, rtol=0, atol=1e-6)
    torch.testing.assert_close(txt_padded, txt, rtol=0, atol=1e-6)
    if mode == "eval":  # alone, an item has no batch padding at all
        alone = model.encode_images(features[1:2, :3], feature_lengths[1:2])
        torch.testing.assert_close(alone[0], img[1], rtol=0, atol=1e-6)
        alone = model.encode_texts(ids[1:2, :2], token_lengths[1:2])
        torch.testing.assert_close(alone[0], txt[1], rtol=0, atol=1e-6)


def test_gpo_is_a_weighted_sum_of_sorted_values():
    torch.manual_seed(0)
    pool = GPO()
    features = torch.randn(2, 5, 3)
    lengths = torch.tensor([5, 3])
    pooled = pool(features, lengths)
    for b, n in enumerate(lengths.tolist()):
        weights = pool.weights(torch.tensor([n]), n)[0, :, 0]
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
        for channel in range(3):
            ranked = sorted(features[b, :n, channel].tolist(), reverse=True)
            expected = sum(w * v for w, v in zip(weights.tolist(), ranked, strict=True))
            assert pooled[b, channel].item() == pytest.approx(expected, abs=1e-5)
    weights = pool.weights(lengths, 5)
    assert torch.equal(weights[1, 3:], torch.zeros(2, 1))


def test_every_parameter_gets_a_finite_gradient():
    model = small_model().train()
    gen = torch.Generator().manual_seed(2)
    features, feature_lengths, ids, token_lengths = batch(gen)
    img, txt = model((features, feature_lengths), ids, token_lengths)
    SelHNLoss(epsilon=1.0)(img, txt).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_model_directory_round_trip(tmp_path):
    model = small_model(vocab_size=7).eval()
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "red", "cube"])
    assert len(vocab) == 7  # <mask> is added
    save_model(tmp_path / "m", model, vocab, meta={"epoch": 3})
    loaded, loaded_vocab, meta = load_model(tmp_path / "m")
    assert meta["epoch"] == 3 and meta["model"] == asdict(model.settings)
    assert loaded_vocab.idx2word == vocab.idx2word
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json", "model.safetensors", "vocab.json",
    ]  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    save_model(tmp_path / "m", model, vocab, meta={"epoch": 4})  # replaces the directory
    assert load_model(tmp_path / "m")[2]["epoch"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    gen = torch.Generator().manual_seed(3)
    features, feature_lengths, _, _ = batch(gen)
    ids = torch.randint(1, 7, (4, 7), generator=gen)
    token_lengths = torch.tensor([7, 2, 5, 4])
    for a, b in zip(
        model((features, feature_lengths), ids, token_lengths),
        loaded((features, feature_lengths), ids, token_lengths),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_loading_a_non_model_directory_says_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json: not found"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "other"}))
    with pytest.raises(
        ValueError, match=r"config.json: expected an 'architecture' name and a 'model'"
    ):
        load_model(tmp_path)


def test_unrolled_bigru_equals_the_packed_cudnn_style_gru():
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from selhn.models.rnn import BiGRU

    torch.manual_seed(0)
    rnn = BiGRU(5, 4).double()
    inputs = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 6, 1])
    ours = rnn(inputs, lengths)
    packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
    ref, _ = pad_packed_sequence(rnn.gru(packed)[0], batch_first=True)
    ref = (ref[..., :4] + ref[..., 4:]) / 2
    torch.testing.assert_close(ours, ref)
    weights = torch.randn_like(ref)
    params = [inputs, *rnn.parameters()]
    for a, b in zip(
        torch.autograd.grad((ours * weights).sum(), params),
        torch.autograd.grad((ref * weights).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_vsepp_architecture_and_registry(tmp_path):
    from selhn.models import VSEPP

    torch.manual_seed(0)
    model = create_model("vsepp", vocab_size=50, img_dim=20, embed_size=16, word_dim=8)
    assert isinstance(model, VSEPP)
    features, feature_lengths, ids, token_lengths = batch(torch.Generator().manual_seed(4))
    img, txt = model((features, feature_lengths), ids, token_lengths)
    # mean of the projected valid regions; the GRU state after each caption's last token
    want = model.image_encoder.fc(features[1, :3]).mean(dim=0)
    torch.testing.assert_close(img[1], want / want.norm())
    _, last = model.text_encoder.rnn(model.text_encoder.embed(ids[1:2, :2]))
    torch.testing.assert_close(txt[1], last[0, 0] / last[0, 0].norm())
    SelHNLoss(epsilon=1.0)(img, txt).backward()
    assert all(p.grad is not None for p in model.parameters())

    vocab = Vocabulary.build(["a b c"] * 1)
    small = create_model("vsepp", vocab_size=len(vocab), img_dim=20, embed_size=16, word_dim=8)
    save_model(tmp_path / "v", small, vocab)
    loaded, _, meta = load_model(tmp_path / "v")
    assert isinstance(loaded, VSEPP) and meta["architecture"] == "vsepp"
    with pytest.raises(ValueError, match=r"unknown architecture 'vit'"):
        create_model("vit", vocab_size=5)
    with pytest.raises(ValueError, match=r"architecture 'vsepp' takes no \['mlp_hidden'\]"):
        create_model("vsepp", vocab_size=5, mlp_hidden=3)


def test_region_models_encode_every_region_without_lengths():
    model = small_model().eval()
    features = torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(5))
    every = model.encode_images(features, torch.tensor([4, 4, 4]))
    torch.testing.assert_close(model.encode_images(features), every)

    vsepp = create_model("vsepp", vocab_size=9, img_dim=20, embed_size=16, word_dim=8)
    torch.testing.assert_close(
        vsepp.encode_images(features), vsepp.encode_images(features, torch.tensor([4, 4, 4]))
    )
