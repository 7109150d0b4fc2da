"""A frozen pretrained text transformer's sentence embeddings (the mean of its token features, as
all-MiniLM-L6-v2 is used for sentences) mapped into the joint space by one linear layer: the text
side of the probe, and of RVSE++ with ``text_encoder="sentence"``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selhn.data.batch import pad_tokens
from selhn.models.bert import PlainBert, plain_bert_config
from selhn.models.class_prior import learned_size, with_prior
from selhn.models.packaged import mark
from selhn.models.pooling import masked_mean
from selhn.models.transformer import (
    WordPieceTokenizer,
    build_transformer,
    load_pretrained_transformer,
    model_directory,
    packaged_text_weights,
    with_boundaries,
)


class SentenceEncoder(nn.Module):
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
        self.default = model_dir is None  # the packaged all-MiniLM-L6-v2
        # frozen: no gradients, and no dropout, in training too (``train``); a BERT is computed
        # by selhn's own module, which loads in a fraction of the time transformers takes
        plain = plain_bert_config(self.model_dir)
        with torch.random.fork_rng(devices=[]):  # its weights are loaded, never drawn: the
            # learned parts start from the same random numbers whatever the text model
            transformer = PlainBert(plain) if plain else build_transformer(self.model_dir)
        self.transformer = transformer.requires_grad_(False).eval()
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
        mark(self.transformer, packaged_text_weights() if self.default else None)
        self.sentences.clear()

    def train(self, mode: bool = True) -> SentenceEncoder:
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
