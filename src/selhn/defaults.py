"""Settings chosen from the data: what ``auto`` becomes for a given data directory.

``model.text_encoder=auto`` is the pretrained text transformer for features of ``selhn
features`` (pretrained image features are matched best by pretrained text features: on real
sets of about 1,000 images it beats the BiGRU learned from scratch by far, see
docs/training.md), and the paper's BiGRU otherwise (region features such as SCAN's, synthetic
data, a given word vocabulary or GloVe vectors).
"""

from __future__ import annotations

from pathlib import Path

from selhn.config import Config
from selhn.extras import installed
from selhn.features import JOB_FILE


def choose_for_data(config: Config, data: str | Path) -> list[str]:
    """Replace ``auto`` settings of ``config`` by their choice for ``data``; return one line per
    choice, with its reason."""
    model = config.model
    if getattr(model, "text_encoder", None) != "auto":
        return []
    from_features = (Path(data) / JOB_FILE).is_file()
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
