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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selhn.data.batch import pad_tokens
from selhn.data.vocab import TextVocabulary
from selhn.extras import EXTRAS
from selhn.models.base import DualEncoder
from selhn.models.class_prior import learned_size, with_prior
from selhn.models.image import PooledLinearEncoder
from selhn.models.pooling import masked_mean
from selhn.models.registry import register_model
from selhn.models.transformer import (
    WordPieceTokenizer,
    build_transformer,
    load_pretrained_transformer,
    load_tokenizer,
    model_directory,
    save_tokenizer,
    with_boundaries,
)


@dataclass
class ProbeSettings:
    """Everything Probe is built from."""

    architecture: str = "probe"  # the registered model
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

    def checks(self) -> list[tuple[bool, str, str]]:
        return [(self.embed_size >= 1, "embed_size", ">= 1")]


class SentenceProbe(nn.Module):
    """Frozen transformer -> mean of its token features -> Linear -> L2 norm.

    The frozen part gives each caption the same sentence embedding every time, so each is
    computed once and kept (per distinct caption: training does not perturb the probe's tokens).
    With ``prior_weight`` (RVSE++'s ``class_prior``) the unit sentence embedding follows the
    learned one (``class_prior.with_prior``).
    """

    def __init__(
        self, model_dir: str | Path | None, embed_size: int, prior_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.model_dir = model_directory(model_dir)
        # frozen: no gradients, and no dropout, in training too (``train``)
        self.transformer = build_transformer(self.model_dir).requires_grad_(False).eval()
        hidden = self.transformer.config.hidden_size
        self.prior_weight = prior_weight
        learned = learned_size(embed_size, hidden) if prior_weight else embed_size
        self.fc = nn.Linear(hidden, learned)
        self.tokenizer = WordPieceTokenizer(self.model_dir)
        self.cls_id, self.sep_id = self.tokenizer.boundary_ids()
        self.sentences: dict[tuple[int, ...], Tensor] = {}  # piece ids -> sentence embedding
        # new transformer weights make the kept embeddings stale
        self.register_load_state_dict_post_hook(lambda module, _: module.sentences.clear())

    def load_pretrained(self) -> None:
        """The transformer's pretrained weights (the kept embeddings are dropped)."""
        load_pretrained_transformer(self.transformer, self.model_dir)
        self.sentences.clear()

    def train(self, mode: bool = True) -> SentenceProbe:
        super().train(mode)
        self.transformer.eval()  # frozen: no dropout either
        return self

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) piece ids (no special tokens), (B,) lengths -> (B, embed_size) unit vectors."""
        keys = [tuple(row[:n]) for row, n in zip(tokens.tolist(), lengths.tolist(), strict=True)]
        new = [i for i, key in enumerate(keys) if key not in self.sentences]
        if new:
            rows = torch.tensor(new, device=tokens.device)
            for i, sentence in zip(
                new, self.embed_sentences(tokens[rows], lengths[rows]), strict=True
            ):
                self.sentences[keys[i]] = sentence.cpu()
        kept = torch.stack([self.sentences[k] for k in keys]).to(self.fc.weight.device)
        embedding = F.normalize(self.fc(kept), dim=-1)
        if not self.prior_weight:
            return embedding
        return with_prior(embedding, F.normalize(kept, dim=-1), self.prior_weight)

    @torch.no_grad()
    def embed_sentences(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """(B, hidden) mean token features of the frozen transformer."""
        ids, mask = with_boundaries(tokens, lengths, self.cls_id, self.sep_id)
        hidden = self.transformer(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return masked_mean(hidden, lengths + 2)  # [CLS] and [SEP] count, as in sentence models

    def embed_texts(self, texts: list[str], batch_size: int = 256) -> Tensor:
        """(len(texts), hidden) sentence embeddings of strings, on the CPU."""
        out = []
        device = self.fc.weight.device
        for start in range(0, len(texts), batch_size):
            pieces = [self.tokenizer.encode(text) for text in texts[start : start + batch_size]]
            tokens, lengths = pad_tokens(pieces)
            out.append(self.embed_sentences(tokens.to(device), lengths.to(device)).cpu())
        return torch.cat(out)


@register_model
class Probe(DualEncoder):
    """Frozen pooled features and sentence embeddings, one linear map per side."""

    architecture = "probe"
    Settings = ProbeSettings
    settings: ProbeSettings

    def __init__(self, settings: ProbeSettings | None = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        s = self.settings
        if s.img_dim is None:
            raise ValueError("img_dim (region feature channels) is needed")
        self.image_encoder = PooledLinearEncoder(s.img_dim, s.embed_size)
        self.text_encoder = SentenceProbe(s.text_model, s.embed_size)

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
