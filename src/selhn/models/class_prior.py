"""The backbone's ImageNet classifier read as text: a prior that scores images and captions
without training.

EfficientNet-Lite0's pretrained classifier scores the 1,000 ImageNet classes from the mean of the
cells of its last stage. Their names (``imagenet_classes.txt``: the WordNet lemmas of the
ImageNet-1k synsets in sorted synset order, the classifier's, as the PyPI package timm lists
them), embedded once by the frozen sentence model, turn an image's class
probabilities into a point of that model's space: the probability-weighted sum of the names'
unit embeddings, normalised. A caption's frozen sentence embedding lies in the same space, so
their cosine scores the pair, also for objects that no training caption names.

With ``model.class_prior = w`` RVSE++ appends that point to an image's learned embedding and the
caption's unit sentence embedding to the caption's (``with_prior``): the score of a pair is
``(learned score + w * prior score) / (1 + w)``. Both sides keep ``embed_size`` dimensions in
all, of which the last ``text_dim`` (384 for all-MiniLM-L6-v2) hold the prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selhn.models.backbones import efficientnet_lite0_weights

PRIOR_BACKBONE = "efficientnet-lite0"  # the backbone whose classifier selhn ships


def class_names() -> list[str]:
    """The 1,000 ImageNet class names, in the order of the classifier's outputs."""
    text = resources.files("selhn.models").joinpath("imagenet_classes.txt").read_text("utf-8")
    return text.splitlines()


def load_classifier() -> tuple[Tensor, Tensor]:
    """(1000, 1280) weight and (1000,) bias of EfficientNet-Lite0's pretrained classifier."""
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    return state["_fc.weight"], state["_fc.bias"]


class ClassPrior(nn.Module):
    """(B, channels) pooled cells -> (B, text_dim) unit vectors: the class names' embeddings
    weighted by the classifier's probabilities. Frozen: its tensors are buffers, saved with
    the model; ``load_pretrained`` fills them."""

    def __init__(self, channels: int, text_dim: int, classes: int = 1000) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(classes, channels))
        self.register_buffer("bias", torch.zeros(classes))
        self.register_buffer("names", torch.zeros(classes, text_dim))

    def load_pretrained(self, embed_texts: Callable[[list[str]], Tensor]) -> None:
        """The classifier's weights, and the class names embedded by ``embed_texts``."""
        weight, bias = load_classifier()
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        self.names.copy_(F.normalize(embed_texts(class_names()), dim=-1))

    def forward(self, pooled: Tensor) -> Tensor:
        probs = F.linear(pooled, self.weight, self.bias).softmax(dim=-1)
        return F.normalize(probs @ self.names, dim=-1)


def learned_size(embed_size: int, text_dim: int) -> int:
    """The dimensions of ``embed_size`` left to a learned embedding beside a prior of
    ``text_dim``; ValueError if none are."""
    if embed_size <= text_dim:
        raise ValueError(
            f"embed_size must exceed the text model's {text_dim} dimensions with a class prior "
            f"(its last {text_dim} hold the prior); got {embed_size}"
        )
    return embed_size - text_dim


def with_prior(learned: Tensor, prior: Tensor, weight: float) -> Tensor:
    """``[learned, sqrt(weight) * prior] / sqrt(1 + weight)``: a unit vector when both parts are,
    so the dot product of two such is ``(learned score + weight * prior score) / (1 + weight)``."""
    joined = torch.cat([learned, math.sqrt(weight) * prior.to(learned.dtype)], dim=-1)
    return joined / math.sqrt(1 + weight)
