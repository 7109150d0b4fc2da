"""RVSE++ computed the way the authors' release computes it, on the parameters of a selhn model:
fc and MLP over every padded region slot (BatchNorm statistics include the padding), PyTorch's
packed bidirectional GRU for the text and for GPO, and the release-style loss. It is the baseline
of ``train_step.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from baseline_loss import baseline_selhn_loss
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from selhn.models import GPO, RVSEPP
from selhn.models.pooling import length_mask, positional_encoding


def packed_bigru(gru: nn.GRU, inputs: Tensor, lengths: Tensor) -> Tensor:
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(gru(packed)[0], batch_first=True)
    half = out.shape[-1] // 2
    return (out[..., :half] + out[..., half:]) / 2


def release_gpo(pool: GPO, features: Tensor, lengths: Tensor) -> Tensor:
    max_len = int(lengths.max())
    mask = length_mask(lengths, max_len)[..., None]
    enc = positional_encoding(max_len, pool.pe_dim).expand(len(lengths), -1, -1)
    out = packed_bigru(pool.gru.gru, enc.masked_fill(~mask, 0), lengths)
    scores = pool.linear(out).masked_fill(~mask, -10000)
    weights = torch.softmax(scores / pool.temperature, dim=1)
    ranked = features[:, :max_len].masked_fill(~mask, -10000).sort(dim=1, descending=True)[0]
    return (ranked.masked_fill(~mask, 0) * weights).sum(dim=1)


class ReleaseStyleRVSEPP(nn.Module):
    """Shares every parameter with ``model``; only the computation differs."""

    def __init__(self, model: RVSEPP) -> None:
        super().__init__()
        self.model = model
        self.image_encoder, self.text_encoder = model.image_encoder, model.text_encoder

    def forward(self, image_input, tokens, token_lengths) -> tuple[Tensor, Tensor]:
        features, feature_lengths = image_input
        img = self.image_encoder
        x = img.fc(features)
        batch, slots, dim = x.shape
        x = x + img.mlp(x.reshape(batch * slots, dim)).view(batch, slots, dim)
        img_emb = F.normalize(release_gpo(img.pool, x, feature_lengths), dim=-1)
        txt = self.text_encoder
        words = packed_bigru(txt.rnn.gru, txt.embed(tokens), token_lengths)
        txt_emb = F.normalize(release_gpo(txt.pool, words, token_lengths), dim=-1)
        return img_emb, txt_emb


class ReleaseStyleLoss(nn.Module):
    """The release-style SelHN loss behind the interface ``train_step`` expects."""

    stats: dict[str, Tensor] = {}  # noqa: RUF012 - the release computes no diagnostics

    def forward(self, img_emb: Tensor, txt_emb: Tensor, ids=None, caption_to_image=None) -> Tensor:
        return baseline_selhn_loss(img_emb, txt_emb)
