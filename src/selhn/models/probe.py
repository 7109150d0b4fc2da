"""A linear probe: the baseline that shows whether a full model earns its keep.

Frozen pooled image features (the mean of the regions or grid cells of ``selhn features``) and
frozen sentence embeddings of the pretrained text transformer (the mean of its token features,
as all-MiniLM-L6-v2 is used for sentences), each mapped into the joint space by one linear layer.
Only the two linear layers learn, so it trains in seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selhn.data.facts import DataFacts
from selhn.data.vocab import TextVocabulary
from selhn.models.base import DualEncoder
from selhn.models.image import PooledLinearEncoder
from selhn.models.registry import register_model
from selhn.models.sentence import SentenceEncoder
from selhn.models.transformer import (
    WordPieceTokenizer,
    load_tokenizer,
    save_tokenizer,
)
from selhn.utils.extras import EXTRAS


@dataclass
class ProbeSettings:
    """Everything Probe is built from."""

    architecture: str = "probe"  # the registered model: rvsepp | vsepp | probe
    vocab_size: int | None = None  # from the data: pieces of the tokenizer
    img_dim: int | None = 2048  # from the data: channels per region
    embed_size: int = 1024  # joint embedding dimension
    text_model: str | None = None  # local Hugging Face model directory; None: the packaged
    # all-MiniLM-L6-v2 (text extra)

    @property
    def has_tokenizer(self) -> bool:
        return True

    def extras(self, pretrained: bool = True) -> dict[str, tuple[str, ...]]:
        """The optional packages these settings need (the packaged text model only for a new
        model that names no other)."""
        return {"text": EXTRAS["text"] if pretrained and not self.text_model else ("transformers",)}

    def fit(self, facts: DataFacts, given: set[str]) -> list[str]:
        """Nothing of these settings depends on the data."""
        return []

    def checks(self) -> list[tuple[bool, str, str]]:
        return [(self.embed_size >= 1, "embed_size", ">= 1")]


@register_model
class Probe(DualEncoder):
    """Frozen pooled features and sentence embeddings, one linear map per side."""

    architecture = "probe"
    Settings = ProbeSettings
    settings: ProbeSettings

    def __init__(self, settings: ProbeSettings) -> None:
        super().__init__(settings)
        s = self.settings
        if s.img_dim is None:
            raise ValueError("img_dim (region feature channels) is needed")
        self.image_encoder = PooledLinearEncoder(s.img_dim, s.embed_size)
        self.text_encoder = SentenceEncoder(s.text_model, s.embed_size)

    @property
    def augments_text(self) -> bool:
        return False

    @classmethod
    def make_vocabulary(
        cls, settings: ProbeSettings, captions: list[str], vocab_file: str | None, min_count: int
    ) -> TextVocabulary:
        return WordPieceTokenizer(settings.text_model)

    def save_vocabulary(self, vocab: TextVocabulary, directory: Path) -> dict[str, Any]:
        return save_tokenizer(vocab, directory, asdict(self.settings))

    @classmethod
    def load_vocabulary(
        cls, settings: dict[str, Any], directory: Path
    ) -> tuple[dict[str, Any], TextVocabulary]:
        return load_tokenizer(settings, directory)

    def load_pretrained(self, vocab: TextVocabulary) -> list[str]:
        self.text_encoder.load_pretrained()
        return [f"loaded the frozen text transformer {self.text_encoder.model_dir}"]
