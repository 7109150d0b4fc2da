"""The probe baseline: frozen pooled features and sentence embeddings, one linear map each."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from selhn.checkpoint import load_model
from selhn.cli import main
from selhn.data.batch import pad_tokens
from selhn.data.precomp import open_split
from selhn.data.synth import SynthConfig, generate
from selhn.evaluation.evaluate import evaluate
from selhn.models import Probe, create_model
from selhn.models.transformer import WordPieceTokenizer, default_text_model

CAPTIONS = ["a red seven next to a blue two", "a cat", "the handwritten digits 4 and 9"]


@pytest.fixture(scope="module")
def probe():
    torch.manual_seed(0)
    tokenizer = WordPieceTokenizer()
    model = create_model("probe", vocab_size=len(tokenizer), img_dim=6, embed_size=8)
    model.load_pretrained(tokenizer)
    return model, tokenizer


def test_the_probe_maps_mean_features_and_sentence_embeddings(probe):
    model, tokenizer = probe
    reference = AutoModel.from_pretrained(default_text_model()).eval()
    hf = AutoTokenizer.from_pretrained(default_text_model())
    tokens, lengths = pad_tokens([tokenizer.encode(c) for c in CAPTIONS])
    model.train()  # the frozen transformer stays in eval mode: no dropout
    got = model.encode_texts(tokens, lengths)
    for row, caption in enumerate(CAPTIONS):
        with torch.no_grad():  # all-MiniLM-L6-v2's sentence embedding: the mean token feature
            hidden = reference(**hf(caption, return_tensors="pt")).last_hidden_state[0]
        want = F.normalize(model.text_encoder.fc(hidden.mean(dim=0)), dim=-1)
        torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-5)

    regions = torch.randn(2, 4, 6)
    got = model.encode_images(regions, torch.tensor([4, 2]))
    for row, count in enumerate((4, 2)):
        want = F.normalize(model.image_encoder.fc(regions[row, :count].mean(dim=0)), dim=-1)
        torch.testing.assert_close(got[row], want)


def test_only_the_linear_maps_learn(probe):
    model, tokenizer = probe
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    tokens, lengths = pad_tokens([tokenizer.encode(c) for c in CAPTIONS])
    img, txt = model((torch.randn(3, 4, 6),), tokens, lengths)
    (img @ txt.T).diagonal().sum().backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {
        "image_encoder.fc.weight",
        "image_encoder.fc.bias",
        "text_encoder.fc.weight",
        "text_encoder.fc.bias",
    }


@pytest.mark.training
def test_the_probe_trains_and_evaluates_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "data"
    generate(data, SynthConfig(train=64, dev=16, test=16, regions=8, feature_dim=32, seed=3))
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--no-progress"]
    argv += ["--architecture", "probe", "--model.embed_size=64", "--batch-size=64", "--lr=1e-2"]
    assert main([*argv, "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "training probe on cpu" in out and "learn)" in out  # frozen parameters are counted
    model, tokenizer, _ = load_model(tmp_path / "run" / "best")
    assert isinstance(model, Probe)
    test = open_split(data, "test")
    trained = evaluate(model, test, tokenizer, 64, torch.device("cpu"))["rsum"]
    torch.manual_seed(0)
    untrained = create_model(replace(model.settings, text_model=None))  # the packaged weights
    untrained.load_pretrained(tokenizer)
    assert trained > evaluate(untrained, test, tokenizer, 64, torch.device("cpu"))["rsum"] + 30
    argv = ["eval", "--checkpoint", str(tmp_path / "run" / "best"), "--data", str(data)]
    assert main(argv) == 0
    assert f"rSum {trained:.1f}" in capsys.readouterr().out


def test_each_sentence_embedding_is_computed_once(probe, monkeypatch):
    model, tokenizer = probe
    model.text_encoder.sentences.clear()
    tokens, lengths = pad_tokens([tokenizer.encode(c) for c in CAPTIONS])
    first = model.encode_texts(tokens, lengths)
    seen = []
    original = model.text_encoder.embed_sentences
    monkeypatch.setattr(
        model.text_encoder, "embed_sentences", lambda t, n: seen.append(len(t)) or original(t, n)
    )
    again = model.encode_texts(tokens[[2, 0]], lengths[[2, 0]])
    torch.testing.assert_close(again, first[[2, 0]])
    assert seen == []  # both kept from the first call
    model.encode_texts(*pad_tokens([tokenizer.encode("a dog"), tokenizer.encode("a cat")]))
    assert seen == [1]  # only the new caption
    model.load_state_dict(model.state_dict())  # new weights: nothing kept is trusted
    assert model.text_encoder.sentences == {}
